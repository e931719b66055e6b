"""Training: the transfer modes, the one Trainer subclass, checkpoints and the run from arguments to
a Hub-ready output folder."""
