"""Publishing: the round-trip check and one-commit push, and the model card with its plots."""
