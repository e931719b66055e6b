"""hf_transfer: transfer learning of vision backbones on the Hugging Face stack.

Three transfer modes (feature transfer, domain adaptation, task adaptation) over any timm or
transformers image backbone, with Hub data in and a Hub-ready model out.

The top-level import stays light (no torch / transformers at import time) so that the CLI
starts fast and test fixtures can configure the Hub endpoint before any client is imported.
Import from the submodules: ``hf_transfer.data``, ``hf_transfer.models.backbones``, ...
"""

__version__ = "0.1.0"
#: the distribution this ``hf_transfer`` comes from: PyPI's ``hf-transfer`` installs the same import name
#: (:mod:`hf_transfer.runtime.installation` tells the two apart with it)
__distribution__ = "hf-transfer-learning"


def _warn_if_installed_with_the_other_package() -> None:
    import os
    import sys
    import warnings

    from hf_transfer.runtime.installation import conflict

    if os.path.basename(sys.argv[0]).startswith("hf-transfer"):  # the command says it as its error instead
        return
    if problem := conflict():
        warnings.warn(problem, RuntimeWarning, stacklevel=3)  # at the importer's line


_warn_if_installed_with_the_other_package()
