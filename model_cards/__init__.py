"""Model card templates, installed as the package ``hf_transfer._model_cards``.

This folder stays at the top of the repository; pyproject.toml maps it into the distribution so
that ``importlib.resources`` finds the templates in a wheel install as in an editable one.
"""
