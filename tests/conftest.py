"""Test-session environment: never reach the internet, never touch the user's caches.

Set before any Hugging Face library is imported, because huggingface_hub reads its
endpoint and cache locations at import time.
"""
import os
import tempfile

_SESSION_HOME = tempfile.mkdtemp(prefix="hf_transfer_tests_")
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf_home")
os.environ.setdefault("HF_TRANSFER_CACHE", os.path.join(_SESSION_HOME, "hf_transfer_cache"))
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("HF_TOKEN", None)
# Offline unless a test starts the local Hub test server (see hf_transfer.testing).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Hub test server fixtures (hub_server, run_with_hub, ...): importing the plugin imports no HF client.
pytest_plugins = ["hf_transfer.testing.pytest_plugin"]
