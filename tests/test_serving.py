"""The serving contract of every published form, from a repo pushed to the (test) Hub into a fresh cache.

tests/endpoint_contract.py serves a repo the way the Inference Endpoints toolkit's container does (the repo's
``handler.py`` if it has one, else ``pipeline(task, model=dir, feature_extractor=dir, device=-1)``; called with
``{"inputs": PIL.Image}``) and prints the answers. It runs here under the project's venv and under
``.venv-endpoints`` (the toolkit's pins: transformers 4.51.3, huggingface_hub 0.30.2, peft 0.15.1; built by
scripts/setup_endpoints.sh, which scripts/setup.sh calls). Each served form must answer with the real class
names and the trained model's top-1 on the run's example images. The one form that is by design not servable
without arguments (an adapter-only repo, pipeline() with no arguments, a base with other labels) must fail AND
be documented as such in its card.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_adapters import DIGITS, lora_args, make_base

from hf_transfer.config import arguments_from_dict
from hf_transfer.testing.hub_common import USER, USER_TOKEN
from hf_transfer.testing.hub_server import HubTestServer
from hf_transfer.testing.tiny_models import convnext_folder
from hf_transfer.training.run import run_transfer

from conftest import tiny_args

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "tests" / "endpoint_contract.py"
ENDPOINTS_PYTHON = ROOT / ".venv-endpoints" / "bin" / "python"
# The Endpoints toolkit is not on PyPI: its source, when at hand (ENDPOINTS_TOOLKIT_SRC, or a checkout beside this
# repository), is put on the path of .venv-endpoints for the tests that run its own handler factory
TOOLKIT_SRC = Path(
    os.environ.get("ENDPOINTS_TOOLKIT_SRC")
    or ROOT.parent / "shared" / "peers" / "huggingface-inference-toolkit" / "src"
)
TOOLKIT_INSTALL = (
    "git clone https://github.com/huggingface/huggingface-inference-toolkit /tmp/hfit && "
    "ENDPOINTS_TOOLKIT_SRC=/tmp/hfit/src ./scripts/test.sh tests/test_serving.py"
)
PYTHONS = {
    "project": sys.executable,
    "endpoints-pins": str(ENDPOINTS_PYTHON),
}
NEEDS_ENDPOINTS_VENV = pytest.mark.skipif(
    not ENDPOINTS_PYTHON.is_file(),
    reason=".venv-endpoints is missing: run scripts/setup_endpoints.sh (scripts/setup.sh calls it)",
)
NEEDS_TOOLKIT = pytest.mark.skipif(
    not TOOLKIT_SRC.is_dir(),
    reason=f"the Endpoints toolkit (not on PyPI) is not at {TOOLKIT_SRC}; to run these: {TOOLKIT_INSTALL}",
)
VENVS = ["project", pytest.param("endpoints-pins", marks=NEEDS_ENDPOINTS_VENV)]

#: (case, repo, contract flags): every published form, plus the card's adapter-subfolder code under the pins
CASES = [
    ("full transformers-native (ConvNeXt)", "user/convnext-full", []),
    ("full timm (TimmWrapper)", "user/timm-full", []),
    ("LoRA --publish both (merged root)", "user/lora-both", []),
    ("LoRA --publish both, adapter/ with PeftModel subfolder=", "user/lora-both", ["--peft-subfolder", "adapter"]),
    ("LoRA --publish merged", "user/lora-merged", []),
    ("LoRA --publish adapter, base with other labels (handler.py)", "user/lora-adapter-other", []),
    ("LoRA --publish adapter, base with the same labels (handler.py)", "user/lora-adapter-same", []),
    ("LoRA --publish adapter, same-label base, pipeline with no args", "user/lora-adapter-same", ["--no-handler"]),
    ("LoRA on transformers-native ConvNeXt, --publish both", "user/convnext-lora-both", []),
    (
        "LoRA on ConvNeXt, adapter/ with PeftModel subfolder=",
        "user/convnext-lora-both",
        ["--peft-subfolder", "adapter"],
    ),
    ("LoRA on ConvNeXt, --publish adapter (handler.py)", "user/convnext-lora-adapter", []),
]


def _train(tmp: Path, **args) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_transfer(*arguments_from_dict(tiny_args(tmp, **args)))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One test Hub for the module, holding two bases and every published form (pushed by --push_to_hub)."""
    from huggingface_hub import HfApi

    tmp = tmp_path_factory.mktemp("serving")
    with HubTestServer(tmp / "hub", tokens={USER_TOKEN: USER}) as server:
        with server.client_environment(home=tmp / "home", token=USER_TOKEN):
            api = HfApi()
            for repo, labels in (("user/digits-base", DIGITS), ("user/xyz-base", ["x", "y", "z"])):
                api.create_repo(repo)
                api.upload_folder(folder_path=make_base(tmp / repo.split("/")[1], labels=labels), repo_id=repo)
            push = {"push_to_hub": True, "max_steps": 40, "learning_rate": 0.2}  # peaked predictions: a real check
            full = {"mode": "task", "method": "full"}
            convnext = convnext_folder(tmp / "convnext", num_labels=5)  # "other labels" for a LoRA on it
            api.create_repo("user/convnext-base")
            api.upload_folder(folder_path=convnext, repo_id="user/convnext-base")
            _train(tmp, backbone=convnext, hub_model_id="user/convnext-full", **full, **push)
            for publish in ("both", "adapter"):
                _train(
                    tmp,
                    **lora_args(
                        "user/convnext-base", tmp / f"cnx-{publish}", hub_model_id=f"user/convnext-lora-{publish}",
                        publish=publish, **push,
                    ),
                )  # fmt: skip
            _train(tmp, hub_model_id="user/timm-full", **full, **push)
            for publish in ("both", "merged", "adapter"):
                _train(
                    tmp,
                    **lora_args(
                        "user/xyz-base",
                        tmp / f"lora-{publish}",
                        image_size=28,
                        hub_model_id=f"user/lora-{publish}" + ("-other" if publish == "adapter" else ""),
                        publish=publish,
                        **push,
                    ),
                )
            _train(
                tmp,
                **lora_args(
                    "user/digits-base",
                    tmp / "lora-same",
                    hub_model_id="user/lora-adapter-same",
                    publish="adapter",
                    **push,
                ),
            )
            yield server


def contract(hub, tmp_path, python: str, repo: str, *flags: str, pythonpath: str | None = None) -> dict:
    """Run tests/endpoint_contract.py in ``python`` against ``repo`` from a fresh HF_HOME; its JSON answer."""
    env = hub.subprocess_env(tmp_path / "endpoint_home")
    env.pop("PYTHONPATH", None)  # the serving container has no hf_transfer
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [python, str(CONTRACT), repo, "--examples", *flags],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no answer (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    answer = json.loads(lines[-1])
    answer["stderr"] = proc.stderr[-4000:]
    return answer


def assert_served_like_trained(hub, repo: str, answer: dict) -> None:
    assert answer["served"], f"{answer['how']}: {answer['error']}\n{answer['stderr']}"
    reference = json.loads(hub.files(repo)["reference_predictions.json"])
    assert len(answer["predictions"]) == len(reference) > 0
    spread = max(max(r["scores"].values()) - min(r["scores"].values()) for r in reference)
    assert spread > 0.02, f"the trained model is too close to uniform for this check to mean anything: {spread}"
    for ref, preds in zip(reference, answer["predictions"], strict=True):
        assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
        got = {p["label"]: p["score"] for p in preds}
        assert set(got) == set(ref["scores"]), (ref["file"], sorted(got))  # real class names, every class
        ranked = sorted(ref["scores"].values(), reverse=True)
        want_top = max(ref["scores"], key=ref["scores"].get)
        if ranked[0] - ranked[1] > 1e-3:  # the trained model's top-1 (a near-tie may swap, as in the round trip)
            assert preds[0]["label"] == want_top, (ref["file"], preds[:2], want_top)
        assert max(abs(got[k] - v) for k, v in ref["scores"].items()) < 1e-3, (ref["file"], got, ref["scores"])


@pytest.mark.parametrize("venv", VENVS)
@pytest.mark.parametrize("case, repo, flags", CASES, ids=[c[0] for c in CASES])
def test_published_form_is_served_with_real_names(hub, tmp_path, venv, case, repo, flags):
    answer = contract(hub, tmp_path, PYTHONS[venv], repo, *flags)
    if venv == "endpoints-pins":
        assert answer["transformers"] == "4.51.3" and answer["huggingface_hub"] == "0.30.2"
    assert_served_like_trained(hub, repo, answer)


@pytest.mark.parametrize("venv", VENVS)
def test_adapter_only_repo_on_a_base_with_other_labels_is_documented_as_not_servable_without_args(hub, tmp_path, venv):
    """pipeline(model=repo) with no arguments cannot load such a repo (the head is built from the base's
    config): by design, so the card must say so and point at what works (handler.py, --publish both)."""
    answer = contract(hub, tmp_path, PYTHONS[venv], "user/lora-adapter-other", "--no-handler")
    assert not answer["served"], answer
    assert "size mismatch" in answer["error"] + answer["stderr"], answer["error"]  # the head of the run
    card = hub.files("user/lora-adapter-other")["README.md"].decode()
    usage = card.split("hf-transfer:begin usage")[1]
    assert "with no other arguments **does not work**" in usage and "--publish both" in usage
    assert "handler.py" in usage
    same = hub.files("user/lora-adapter-same")["README.md"].decode().split("hf-transfer:begin usage")[1]
    assert "works with no other arguments" in same


@pytest.mark.parametrize(
    "case, repo", [(c, r) for c, r, flags in CASES if not flags], ids=[c for c, _, flags in CASES if not flags]
)
@NEEDS_ENDPOINTS_VENV
@NEEDS_TOOLKIT
def test_the_real_endpoints_toolkit_serves_every_default_form(hub, tmp_path, case, repo):
    """The toolkit itself (its download filter and handler factory), when its source is at hand."""
    answer = contract(hub, tmp_path, PYTHONS["endpoints-pins"], repo, "--toolkit", pythonpath=str(TOOLKIT_SRC))
    assert answer["how"].startswith("huggingface_inference_toolkit")
    assert_served_like_trained(hub, repo, answer)
