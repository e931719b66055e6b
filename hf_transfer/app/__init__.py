"""Try a model in a browser: ``hf-transfer app`` (a local Gradio page of one model or two side by side) and the
Gradio Space ``hf-transfer push --space`` publishes beside a model repo.

``page.py`` is the page itself and ships as the Space's ``app.py`` (stock libraries only); ``models.py`` resolves
the command's models (a run folder, a repo, a Hub id; the source-only baseline of a domain-adaptation run);
``space.py`` writes and pushes the Space's files; ``serve.py`` starts the page on this machine.
"""
