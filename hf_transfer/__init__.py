"""hf_transfer: transfer learning of vision backbones on the Hugging Face stack.

Three transfer modes (feature transfer, domain adaptation, task adaptation) over any timm or
transformers image backbone, with Hub data in and a Hub-ready model out.

The top-level import stays light (no torch / transformers at import time) so that the CLI
starts fast and test fixtures can configure the Hub endpoint before any client is imported.
Import from the submodules: ``hf_transfer.data``, ``hf_transfer.models.backbones``, ...
"""

__version__ = "0.1.0"
