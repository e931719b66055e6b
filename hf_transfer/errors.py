"""User-facing errors: raised before long work starts, each naming the thing to fix.

Every module imports this one, so it is also where a package whose ``__init__.py`` is PyPI's ``hf-transfer``'s
(same import name, see :mod:`hf_transfer.installation`) stops with an ImportError that says what to do."""

from hf_transfer.installation import require_own_package

require_own_package()


class TransferConfigError(ValueError):
    """A dataset spec, column, label, backbone id or option that cannot work as given."""
