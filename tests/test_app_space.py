"""``hf-transfer push RUN REPO --space USER/NAME`` against the Hub test server: the Space holds exactly its files
(a self-contained ``app.py``, a pinned ``requirements.txt``, a README with ``sdk: gradio`` and ``models:``), the
model card links to it, ``--private`` and ``--create_pr`` act on it as on the model, and its ``app.py``, run from a
download of the Space, serves pipeline()'s predictions of the pushed model."""

import ast
import json
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import tiny_args

SPACE_FILES = {".gitattributes", "README.md", "app.py", "requirements.txt"}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    out = tmp_path_factory.mktemp("space_run") / "task"
    run_transfer(*arguments_from_dict(tiny_args(out.parent, mode="task", method="full", output_dir=str(out))))
    return out


def _front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_push_space_holds_its_files_and_its_app_runs_from_a_download(
    hub_server, hub_subprocess_env, run_folder, tmp_path
):
    from gradio_client import Client, handle_file
    from huggingface_hub import snapshot_download
    from transformers import pipeline

    from hf_transfer.app.models import load
    from hf_transfer.cli.main import main

    assert main(["push", str(run_folder), "user/digits", "--space", "user/digits-demo"]) == 0
    files = hub_server.files("user/digits-demo", "space")
    assert set(files) == SPACE_FILES
    meta = _front_matter(files["README.md"].decode())
    assert meta["sdk"] == "gradio" and meta["models"] == ["user/digits"] and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == metadata.version("gradio")
    pins = dict(line.split("==") for line in files["requirements.txt"].decode().split())
    assert {"gradio", "transformers", "torch", "huggingface_hub", "pillow", "timm"} <= set(pins)
    assert all(pins[d] == metadata.version(d).split("+")[0] for d in pins)
    app = files["app.py"].decode()
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(ast.parse(app))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert "hf_transfer" not in imported and "MODELS: list[str] = ['user/digits']" in app
    card = hub_server.files("user/digits")["README.md"].decode()
    assert f"[the demo Space]({hub_server.url}/spaces/user/digits-demo)" in card
    image = str(run_folder / json.loads((run_folder / "reference_predictions.json").read_text())[0]["file"])
    want = [
        (p["label"], f"{p['score']:.4f}")
        for p in pipeline("image-classification", model=str(run_folder))(image, top_k=3)
    ]
    hub_model = load("user/digits")  # `hf-transfer app user/digits`: the model by its Hub id
    assert [(p["label"], f"{p['score']:.4f}") for p in hub_model.predict(image, 3)] == want

    # app.py from a download of the Space, in a fresh interpreter with an empty cache, serves the pushed model
    space = Path(snapshot_download("user/digits-demo", repo_type="space", local_dir=tmp_path / "space"))
    port = _free_port()
    env = {**hub_subprocess_env(), "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"app.py exited {proc.returncode}:\n{proc.stdout.read()[-4000:]}"
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "app.py did not serve within 240 s"
                time.sleep(0.5)
        outputs = Client(url, verbose=False, analytics_enabled=False).predict(
            handle_file(image), 3, api_name="/on_image"
        )
        shown = [(r.split("</td>")[0].split(">")[-1], r.split('"score">')[1][:6]) for r in outputs[1].split("<tr>")[2:]]
        assert shown == want
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_space_takes_the_models_private_and_pull_request_options(hub_server, run_folder):
    from huggingface_hub import HfApi

    from hf_transfer.app.space import push_space

    first = push_space("user/private-demo", "user/digits", run_folder, private=True)
    api = HfApi()
    assert api.space_info("user/private-demo").private and first.pr_url is None
    assert set(hub_server.files("user/private-demo", "space")) == SPACE_FILES
    main_before = hub_server.head("user/private-demo", "space")
    second = push_space("user/private-demo", "user/digits", run_folder, revision="refs/pr/1", create_pr=True)
    assert second.pr_url and hub_server.head("user/private-demo", "space") == main_before
    app = hub_server.files("user/private-demo", "space", revision="refs/pr/1")["app.py"].decode()
    assert "REVISIONS: list[str | None] = ['refs/pr/1']" in app


def test_a_space_id_without_namespace_is_refused_before_any_push(hub_server, run_folder, capsys):
    from hf_transfer.cli.main import main

    assert main(["push", str(run_folder), "user/digits2", "--space", "digits-demo"]) == 1
    assert "give the Space as USER/NAME" in capsys.readouterr().err
    assert hub_server.head("user/digits2") is None
