"""User-facing errors: raised before long work starts, each naming the thing to fix."""


class TransferConfigError(ValueError):
    """A dataset spec, column, label, backbone id or option that cannot work as given."""
