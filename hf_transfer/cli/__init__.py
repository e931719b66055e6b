"""The ``hf-transfer`` command: the dispatcher (main.py: one-line errors, ``--debug``, ``--verbose``) and the
options of each sub-command (train, plan, demo, push, rank, evaluate: one module each). Command-line parsing
and console output only: each command calls its library code in the layer that does the work."""
