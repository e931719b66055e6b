"""``python -m hf_transfer.cli ...``: the ``hf-transfer`` command."""

import sys

from hf_transfer.cli.main import main

sys.exit(main())
