"""Launch a transfer run: ``python recipes/train.py ...`` or ``accelerate launch recipes/train.py ...``.

Nothing launcher-specific here: accelerate (through the Trainer) reads the launch environment.

    accelerate launch recipes/train.py --config recipes/configs/digits_dann.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/train.py --config ... --use_cpu true
"""

import sys

from hf_transfer.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
