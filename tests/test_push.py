"""Push through the Hub test server with the real clients: round-trip check, one commit, card updates
that keep hand-written text, failures that leave the remote unchanged, tokens that never leak, and
the end-to-end loop (Hub datasets + Hub backbone -> training -> push -> fresh-cache load)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
import httpx2  # huggingface_hub's HTTP client
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_transfer.errors import TransferConfigError
from hf_transfer.hub import card_inputs
from hf_transfer.hub.card_metadata import BASELINE_CONFIG
from hf_transfer.hub.push import PushError, files_to_push, push_run
from hf_transfer.hub.round_trip import RoundTripError
from hf_transfer.testing.hub_common import USER_TOKEN

TINY = dict(
    image_size=32,
    crop_pct=1.0,
    augment="light",
    max_steps=2,
    per_device_train_batch_size=8,
    max_train_samples=32,
    max_eval_samples=16,
    use_cpu=True,
    report_to="none",
    save_strategy="no",
    eval_strategy="no",
    learning_rate=0.01,
    optim="adamw_torch_fused",  # the Trainer's own optimizer, not the domain recipe's SGD: 2 steps give peaked scores
    logging_steps=1,
    disable_tqdm=True,
    dataloader_num_workers=0,
)


@pytest.fixture(scope="module")
def so_run(tmp_path_factory):
    """A tiny source-only run: the baseline, and (pushed) the backbone of the end-to-end test."""
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    out = tmp_path_factory.mktemp("push_run") / "source_only"
    a, t = arguments_from_dict(
        dict(
            mode="domain",
            method="source_only",
            backbone="test_resnet",
            source="builtin:digits-printed",
            target="builtin:digits-handwritten",
            output_dir=str(out),
            **TINY,
        )
    )
    run_transfer(a, t)
    return out


@pytest.fixture
def run_copy(so_run, tmp_path):
    """A fresh copy of the run folder, with litter that must never be pushed."""
    d = tmp_path / "run"
    shutil.copytree(so_run, d)
    (d / "checkpoint-2").mkdir()
    (d / "checkpoint-2" / "model.safetensors").write_bytes(b"old")
    (d / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (d / ".staging-files-host-1-abc").mkdir()
    (d / ".staging-files-host-1-abc" / "config.json").write_text("{}")
    (d / "training_args.bin").write_bytes(b"x")
    (d / "weights.tmp").write_bytes(b"x")
    return d


def _baseline(so_run, acc=0.01):
    b = json.loads((so_run / "results.json").read_text())
    b["metrics"]["target"]["accuracy"] = acc
    return b


def _digests(folder: Path) -> dict:
    return {
        p: hashlib.sha256((folder / p).read_bytes()).hexdigest()
        for p in files_to_push(folder)
        if p not in ("README.md", card_inputs.CONFUSION_PNG, card_inputs.CURVES_PNG, card_inputs.CONFIG_FILE)
    }


def _state(server, repo_id="user/digits"):
    return server.head(repo_id), server.files(repo_id)


def test_push_one_commit_with_card(hub_server, run_copy, so_run):
    as_dann = json.loads((run_copy / "results.json").read_text())
    as_dann.update(method="dann", paper="https://arxiv.org/abs/1505.07818")
    (run_copy / "results.json").write_text(json.dumps(as_dann))
    res = push_run(run_copy, "digits", baseline_results=_baseline(so_run))
    assert res.repo_id == "user/digits" and res.revision == "main"
    files = hub_server.files("user/digits")
    assert sorted(files) == sorted([".gitattributes", *res.files])
    assert not [p for p in files if p.startswith(("checkpoint-", ".staging-")) or p.endswith((".bin", ".tmp"))]
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "results.json",
        "reference_predictions.json",
        card_inputs.CONFUSION_PNG,
        card_inputs.CURVES_PNG,
        card_inputs.CONFIG_FILE,
    ):
        assert name in files, name
    assert any(p.startswith("examples/") and p.endswith(".png") for p in files)
    assert files["model.safetensors"] == (so_run / "model.safetensors").read_bytes()
    commits = HfApi().list_repo_commits("user/digits")
    assert len(commits) == 2  # initial commit + ONE push
    acc = 100 * as_dann["metrics"]["target"]["accuracy"]
    assert commits[0].title == res.commit_message
    assert "domain/dann" in res.commit_message and f"target acc {acc:.1f}%" in res.commit_message
    assert "source-only 1.0%" in res.commit_message
    card = ModelCard.load("user/digits")
    assert card.data.pipeline_tag == "image-classification" and "dann" in card.data.tags
    evals = model_index_to_eval_results(card.data.to_dict()["model-index"])[1]
    assert any(e.metric_config == BASELINE_CONFIG and e.metric_value == 0.01 for e in evals)
    assert "/user/digits/resolve/main/examples/" in card.data.widget[0]["src"]
    # unchanged folder pushed again: nothing new is committed
    assert push_run(run_copy, "user/digits", baseline_results=_baseline(so_run)).commit_oid == hub_server.head(
        "user/digits"
    )
    assert len(HfApi().list_repo_commits("user/digits")) == 2


def test_branch_and_pull_request(hub_server, run_copy):
    push_run(run_copy, "user/digits")
    res = push_run(run_copy, "user/digits", revision="exp", private=True)
    assert res.revision == "exp" and hub_server.head("user/digits", revision="exp") == res.commit_oid
    assert 'revision="exp"' in hub_server.files("user/digits", revision="exp")["README.md"].decode()
    pr = push_run(
        run_copy,
        "user/digits",
        create_pr=True,
        commit_message="Update from a PR",
        baseline_results={"metrics": {"target": {"accuracy": 0.03}}},
    )
    assert pr.pr_url.endswith("/discussions/1") and pr.revision == "refs/pr/1"
    assert HfApi().list_repo_commits("user/digits", revision="refs/pr/1")[0].title == "Update from a PR"
    assert "value: 0.03\n" in hub_server.files("user/digits", revision="refs/pr/1")["README.md"].decode()
    assert "value: 0.03\n" not in hub_server.files("user/digits")["README.md"].decode()


def test_round_trip_mismatch_pushes_nothing(hub_server, run_copy):
    config_path = run_copy / "config.json"
    good = config_path.read_text()
    before = _digests(run_copy)
    # labels written in the wrong order (complaint: predictions under the wrong names)
    cfg = json.loads(good)
    cfg["label_names"] = cfg["label_names"][::-1]
    config_path.write_text(json.dumps(cfg))
    with pytest.raises(RoundTripError, match=r"examples/0_\w+\.png .*trained model predicted .*Nothing was pushed"):
        push_run(run_copy, "user/digits")
    # normalisation that differs from training (timm processors read config.json's pretrained_cfg); the
    # test model is barely trained, so its scores move by ~1e-4 only: check at a tight tolerance
    cfg = json.loads(good)
    cfg["pretrained_cfg"].update(mean=[0.0, 0.0, 0.0], std=[0.1, 0.1, 0.1])
    config_path.write_text(json.dumps(cfg))
    with pytest.raises(RoundTripError, match="largest score difference"):
        push_run(run_copy, "user/digits", atol=1e-6)
    assert not any(r["path"].startswith(("/api/repos/create", "/api/models/user/digits")) for r in hub_server.requests)
    assert hub_server.head("user/digits") is None
    config_path.write_text(good)
    assert _digests(run_copy) == before
    (run_copy / "reference_predictions.json").unlink()
    with pytest.raises(RoundTripError, match="reference_predictions.json is missing"):
        push_run(run_copy, "user/digits")


@pytest.mark.parametrize(
    "fault",
    [dict(point="lfs_upload", status=500, times=None), dict(point="commit", drop=True)],
    ids=["lfs-5xx", "dropped-commit"],
)
def test_failed_push_leaves_remote_unchanged_and_rerun_completes(hub_server, run_copy, fault):
    api = HfApi()
    api.create_repo("digits")
    ref = json.loads((run_copy / card_inputs.REFERENCE_PREDICTIONS).read_text())  # fewer LFS files: faster retries
    for row in ref[1:]:
        (run_copy / row["file"]).unlink()
    (run_copy / card_inputs.REFERENCE_PREDICTIONS).write_text(json.dumps(ref[:1]))
    before, local = _state(hub_server), _digests(run_copy)
    hub_server.faults.add(**fault)
    with pytest.raises(PushError, match="run the same command again"):
        push_run(run_copy, "user/digits")
    assert _state(hub_server) == before and _digests(run_copy) == local
    hub_server.faults.clear()
    uploads = hub_server.faults.seen.get("lfs_upload", 0)
    res = push_run(run_copy, "user/digits")  # the same command again completes it
    assert hub_server.head("user/digits") == res.commit_oid and "model.safetensors" in hub_server.files("user/digits")
    assert len(api.list_repo_commits("user/digits")) == 2
    if fault["point"] == "commit":  # blobs uploaded by the failed attempt are not sent again
        assert hub_server.faults.seen.get("lfs_upload", 0) == uploads


def test_repush_keeps_hand_written_sections(hub_server, run_copy):
    api = HfApi()
    push_run(run_copy, "user/digits")
    remote = hub_server.files("user/digits")["README.md"].decode()
    edited = remote.replace(
        "<!-- hf-transfer:begin method -->",
        "## Team notes\n\nValidated on our lab images.\n\n<!-- hf-transfer:begin method -->",
    )
    edited = edited.replace("pipeline_tag: image-classification", "pipeline_tag: image-classification\nlanguage: en")
    api.upload_file(
        path_or_fileobj=edited.encode(),
        path_in_repo="README.md",
        repo_id="user/digits",
        commit_message="Edit the card by hand",
    )
    res = push_run(run_copy, "user/digits", baseline_results={"metrics": {"target": {"accuracy": 0.02}}})
    card = hub_server.files("user/digits")["README.md"].decode()
    assert "## Team notes\n\nValidated on our lab images." in card
    assert "value: 0.02\n" in card and "language: en" in card
    assert card.index("## Team notes") < card.index("## How it was adapted")
    assert (run_copy / "README.md").read_text() == card
    assert [c.title for c in api.list_repo_commits("user/digits")][:2] == [res.commit_message, "Edit the card by hand"]


def test_tokens_never_leak(hub_server, hub_subprocess_env, run_copy, capfd, caplog, monkeypatch):
    import subprocess
    import sys

    hub_server.log = True
    caplog.set_level(logging.DEBUG)
    # 1. the CLI in another process, token only in the `hf auth login` cache, most verbose client logs
    env = hub_subprocess_env(token=None)
    Path(env["HF_HOME"]).mkdir(parents=True, exist_ok=True)
    (Path(env["HF_HOME"]) / "token").write_text(USER_TOKEN)
    env.update(HF_HUB_VERBOSITY="debug", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-m", "hf_transfer.cli", "push", str(run_copy), "user/digits", "--private"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Pushed" in proc.stdout and HfApi().model_info("user/digits").private
    # 2. from HF_TOKEN (set by the fixture) and 3. an explicit token with nothing in the environment
    logging.getLogger("huggingface_hub").setLevel(logging.DEBUG)
    assert os.environ["HF_TOKEN"] == USER_TOKEN
    push_run(run_copy, "user/digits", revision="from-env", baseline_results={"metrics": {"target": {"accuracy": 0.5}}})
    monkeypatch.delenv("HF_TOKEN")
    res = push_run(run_copy, "user/digits", token=USER_TOKEN, revision="explicit")
    assert res.revision == "explicit"
    # no token anywhere: refused, nothing pushed
    head = hub_server.head("user/digits")
    with pytest.raises(PushError, match="answered 401 .*No token was sent"):
        push_run(run_copy, "user/digits", token=False, revision="anonymous")
    assert hub_server.head("user/digits") == head

    out = capfd.readouterr()
    haystacks = {
        "child stdout": proc.stdout,
        "child stderr": proc.stderr,
        "stdout": out.out,
        "stderr": out.err,
        "logs": caplog.text,
        "server requests": json.dumps(hub_server.requests),
    }
    login_cache = Path(env["HF_HOME"]) / "token"
    for base in (run_copy, hub_server.root, Path(os.environ["HF_HOME"]), Path(env["HF_HOME"])):
        for p in Path(base).rglob("*"):
            if p.is_file() and p != login_cache:
                haystacks[str(p)] = p.read_bytes().decode("latin-1")
    assert len(haystacks) > 20 and "/api/models/user/digits/commit/main" in haystacks["server requests"]
    leaked = [name for name, text in haystacks.items() if USER_TOKEN in text or USER_TOKEN[3:] in text]
    assert leaked == []


def test_only_the_main_process_pushes(hub_server, run_copy, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert push_run(run_copy, "user/digits") is None
    assert hub_server.requests == [] and hub_server.head("user/digits") is None


@pytest.mark.slow
def test_end_to_end_hub_datasets_backbone_train_push_and_fresh_load(hub_server, run_with_hub, so_run, tmp_path):
    """Built-in pair pushed as Hub datasets, the source-only export pushed as a backbone, a DANN run
    whose source, target and backbone are Hub ids, pushed by --push_to_hub; then loaded from a fresh
    cache in another interpreter, and the card's code run there."""
    import datasets

    from hf_transfer.config import arguments_from_dict
    from hf_transfer.data.builtin import load_builtin
    from hf_transfer.training.run import run_transfer

    for name in ("digits-printed", "digits-handwritten"):
        dsd = load_builtin(name)
        small = datasets.DatasetDict({s: dsd[s].select(range(min(len(dsd[s]), 80))) for s in dsd})
        small.push_to_hub(f"user/{name}")
    api = HfApi()
    api.create_repo("tiny-backbone")
    base_card = "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# a source-only backbone\n"
    (tmp_path / "README.md").write_text(base_card)
    api.upload_folder(
        folder_path=so_run,
        repo_id="user/tiny-backbone",
        allow_patterns=["config.json", "model.safetensors", "preprocessor_config.json"],
    )
    api.upload_file(path_or_fileobj=base_card.encode(), path_in_repo="README.md", repo_id="user/tiny-backbone")

    out = tmp_path / "adapted"
    a, t = arguments_from_dict(
        dict(
            mode="domain",
            method="dann",
            backbone="user/tiny-backbone",
            source="user/digits-printed",
            target="user/digits-handwritten",
            output_dir=str(out),
            push_to_hub=True,
            hub_model_id="user/adapted",
            **TINY,
        )
    )
    results = run_transfer(a, t)
    assert results["base_model"] == "user/tiny-backbone"
    files = hub_server.files("user/adapted")
    assert "model.safetensors" in files and not any(p.startswith("checkpoint-") for p in files)
    assert len(api.list_repo_commits("user/adapted")) == 2  # the Trainer itself pushed nothing
    meta = ModelCard(files["README.md"].decode()).data
    assert meta.base_model == "user/tiny-backbone" and meta.base_model_relation == "finetune"
    assert meta.license == "apache-2.0"  # from the base model's card
    assert meta.datasets == ["user/digits-printed", "user/digits-handwritten"]
    assert {e.dataset_type for e in meta.eval_results} == {"user/digits-printed", "user/digits-handwritten"}

    proc = run_with_hub(
        """
        import json, re
        import torch
        from huggingface_hub import hf_hub_download
        from transformers import AutoModelForImageClassification, pipeline

        repo = "user/adapted"
        ref = json.load(open(hf_hub_download(repo, "reference_predictions.json")))
        clf = pipeline("image-classification", model=repo)
        worst = 0.0
        for row in ref:
            preds = {p["label"]: p["score"] for p in clf(hf_hub_download(repo, row["file"]), top_k=len(row["scores"]))}
            assert set(preds) == set(row["scores"]), preds
            worst = max(worst, max(abs(preds[k] - v) for k, v in row["scores"].items()))
            assert max(preds, key=preds.get) == max(row["scores"], key=row["scores"].get), (row, preds)
        model = AutoModelForImageClassification.from_pretrained(repo)
        assert model.config.id2label[0] == "zero", model.config.id2label
        card = open(hf_hub_download(repo, "README.md")).read()
        blocks = re.findall(r"```python\\n(.*?)```", card, re.S)
        assert len(blocks) == 3, len(blocks)  # pipeline, AutoModel, timm
        for code in blocks:
            exec(compile(code, "card", "exec"), {})
        print("WORST", worst)
    """,
        timeout=240,
    )
    worst = float(proc.stdout.split("WORST")[-1])
    assert worst < 1e-4, proc.stdout


def test_training_push_can_open_a_pull_request(hub_server, run_copy, tmp_path):
    """--push_to_hub with --hub_create_pr: the finished run lands on refs/pr/N, main is untouched."""
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    push_run(run_copy, "user/pr-target")
    main_head = hub_server.head("user/pr-target")
    a, t = arguments_from_dict(
        dict(
            mode="task",
            method="full",
            backbone="test_resnet",
            target="builtin:digits-handwritten",
            output_dir=str(tmp_path / "pr"),
            push_to_hub=True,
            hub_model_id="user/pr-target",
            hub_create_pr=True,
            **TINY,
        )
    )
    run_transfer(a, t)
    assert hub_server.head("user/pr-target") == main_head
    assert "model.safetensors" in hub_server.files("user/pr-target", revision="refs/pr/1")


# ------------------------------------------------------------------------------------------------
# errors: one line naming the repo and what to do, a non-zero exit, nothing left behind on the Hub
# ------------------------------------------------------------------------------------------------
def _fewer_examples(run_copy):
    """One example image (the round trip and the LFS uploads take less time)."""
    ref = json.loads((run_copy / card_inputs.REFERENCE_PREDICTIONS).read_text())
    for row in ref[1:]:
        (run_copy / row["file"]).unlink()
    (run_copy / card_inputs.REFERENCE_PREDICTIONS).write_text(json.dumps(ref[:1]))


def _cli(capsys, *args) -> tuple[int, list[str], str]:
    from hf_transfer.cli.main import main

    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    return rc, err.strip().splitlines(), err


HUB_FAILURES = {  # case -> (HF_TOKEN, repo id, fault, expected error line)
    "401-bad-token": (
        "hf_not_a_valid_token_0123456789",
        "user/digits",
        None,
        r"Push to user/digits failed: the Hub at \S+ answered 401 .*Invalid credentials.*HF_TOKEN",
    ),
    "403-other-namespace": (USER_TOKEN, "other/digits", None, r"answered 403 .*no write access"),
    "404": (
        USER_TOKEN,
        "user/digits",
        dict(point="repo_info", status=404, code="RepoNotFound", message="Repository not found", times=None),
        r"answered 404 .*Repository not found.*check the repo id",
    ),
    "503": (
        USER_TOKEN,
        "user/digits",
        dict(point="repo_info", status=503, times=None),
        r"answered 503 .*run the same command again later",
    ),
    "server-down": (
        USER_TOKEN,
        "user/digits",
        "stop",
        r"cannot reach the Hub at http://127\.0\.0\.1:\d+ .*HF_ENDPOINT",
    ),
}


@pytest.mark.parametrize("case", list(HUB_FAILURES))
def test_hub_errors_end_in_one_line_and_leave_no_repo(hub_server, run_copy, capsys, monkeypatch, case):
    token, repo_id, fault, expected = HUB_FAILURES[case]
    _fewer_examples(run_copy)
    monkeypatch.setenv("HF_TOKEN", token)
    if fault == "stop":
        hub_server.stop()
    elif fault:
        hub_server.faults.add(**fault)
    rc, lines, err = _cli(capsys, "push", run_copy, repo_id)
    assert rc == 1 and "Traceback" not in err
    assert lines[-1].startswith("hf-transfer: error: PushError: ") and re.search(expected, lines[-1]), lines[-1]
    assert hub_server.storage.meta("model", repo_id) is None  # the repo created before the 404/503 was deleted


def test_debug_shows_the_hub_error_behind_the_line(hub_server, run_copy):
    from huggingface_hub.errors import HfHubHTTPError

    from hf_transfer.cli.main import main

    _fewer_examples(run_copy)
    hub_server.faults.add("repo_info", status=503, times=None)
    with pytest.raises(PushError, match="answered 503") as info:
        main(["push", str(run_copy), "user/digits", "--debug"])
    assert isinstance(info.value.__cause__, HfHubHTTPError)


@pytest.mark.parametrize("case", ["first-push", "new-branch", "cleanup-fails"])
def test_failed_commit_deletes_the_repo_or_branch_it_created(hub_server, run_copy, monkeypatch, case):
    _fewer_examples(run_copy)
    if case == "new-branch":
        push_run(run_copy, "user/digits")
    before = _state(hub_server) if case == "new-branch" else None
    if case == "cleanup-fails":

        def refuse(*args, **kwargs):
            raise httpx2.ConnectError("connection refused")

        monkeypatch.setattr(HfApi, "delete_repo", refuse)
    hub_server.faults.add("commit", status=500, times=None)
    revision = "exp" if case == "new-branch" else None
    expected = "could not delete the repo user/digits it created" if case == "cleanup-fails" else "answered 500"
    with pytest.raises(PushError, match=expected):
        push_run(run_copy, "digits", revision=revision)
    if case == "cleanup-fails":
        assert hub_server.head("user/digits") is not None
        return
    if case == "first-push":
        assert hub_server.storage.meta("model", "user/digits") is None  # no empty repo left behind
    else:
        assert _state(hub_server) == before and hub_server.head("user/digits", revision="exp") is None
    hub_server.faults.clear()
    res = push_run(run_copy, "digits", revision=revision)
    assert res.commit_oid == hub_server.head("user/digits", revision=revision or "main")


def test_repo_id_is_checked_before_the_round_trip(hub_server, run_copy):
    (run_copy / card_inputs.REFERENCE_PREDICTIONS).unlink()  # the round trip would fail, and later
    for bad in ("user/bad..name", "a/b/c", "user/"):
        with pytest.raises(PushError, match=rf"Invalid repo id {re.escape(repr(bad))}"):
            push_run(run_copy, bad)
    assert hub_server.requests == []


def test_invalid_results_json_names_the_file(hub_server, run_copy, tmp_path, capsys):
    from hf_transfer.errors import TransferConfigError

    results = run_copy / card_inputs.RESULTS_FILE
    good = results.read_text()
    results.write_text(good[: len(good) // 2])  # cut short, as by a full disk
    rc, lines, err = _cli(capsys, "push", run_copy, "user/digits")
    assert rc == 2 and "Traceback" not in err
    assert f"{results} is not valid JSON" in lines[-1]
    results.write_text(good)
    baseline = tmp_path / "baseline.json"
    baseline.write_text("[0.5]")
    with pytest.raises(TransferConfigError, match=rf"{re.escape(str(baseline))} holds a JSON list"):
        push_run(run_copy, "user/digits", baseline_results=baseline)
    assert hub_server.requests == []


def test_adapter_on_a_local_base_is_refused_unless_allowed(hub_server, tmp_path, capsys):
    """A LoRA adapter whose base is a folder on this machine: refused in one line naming the base and the
    flag, before the round-trip check and before any Hub call; pushed with --allow_local_base."""
    import sys
    import warnings

    sys.path.insert(0, str(Path(__file__).parent))
    from test_adapters import lora_args, make_base

    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    base = make_base(tmp_path / "base")
    out = tmp_path / "adapter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_transfer(*arguments_from_dict(lora_args(base, out, max_steps=1)))
    with pytest.raises(PushError, match=r"local folder .*base.*--allow_local_base") as err:
        push_run(out, "user/lora-local", check=False)
    assert str(Path(base).resolve()) in str(err.value) and "\n" not in str(err.value)
    assert hub_server.storage.meta("model", "user/lora-local") is None
    rc, lines, _ = _cli(capsys, "push", out, "user/lora-local")
    assert rc == 1 and "--allow_local_base" in lines[-1]
    rc, _, _ = _cli(capsys, "push", out, "user/lora-local", "--allow_local_base")
    assert rc == 0 and "adapter/adapter_model.safetensors" in hub_server.files("user/lora-local")
    # --push_to_hub at training time: refused before any training, not after it
    with pytest.raises(TransferConfigError, match=r"--push_to_hub with method=lora on the local base"):
        run_transfer(
            *arguments_from_dict(lora_args(base, tmp_path / "never", push_to_hub=True, hub_model_id="user/lora-local2"))
        )
    assert not (tmp_path / "never").exists()


RACES = {  # case -> (revision, the point A is held at, fault A meets after B's push, what A's error says)
    # A creates the repo, B finds it (409) and lands its commit while A's commit is on the way: A's commit,
    # pinned to the initial commit, gets 412
    "new-repo": (None, "commit", None, r"answered 412"),
    # the same for a new branch of an existing repo
    "new-branch": ("exp", "commit", None, r"answered 412"),
    # both list the refs before either creates the branch: B's create lands first, A's gets 409 (the branch
    # is B's, not A's), then A's commit fails on its own
    "new-branch-created-twice": ("exp", "branch", dict(point="commit", status=500, times=None), r"answered 500"),
    # A created the repo and B's work is on another branch only (main untouched): still not A's to delete
    "new-repo-work-on-another-branch": (None, "commit", dict(point="commit", status=500, times=None), "answered 500"),
}


@pytest.mark.parametrize("case", list(RACES))
def test_a_failed_push_never_deletes_another_writers_work(hub_server, run_copy, tmp_path, case):
    """Two first pushes to one new repo (or branch) at the same moment, one failing after the creation: the
    loser never deletes what the winner pushed, and the winner's result points at a commit that exists."""
    import threading

    revision, point, fault, loser_error = RACES[case]
    _fewer_examples(run_copy)
    other = tmp_path / "other_run"  # the second writer: another run (other results, so other files)
    shutil.copytree(run_copy, other)
    results = json.loads((other / card_inputs.RESULTS_FILE).read_text())
    results["train_loss"] = 1.0 + (results.get("train_loss") or 0.0)
    (other / card_inputs.RESULTS_FILE).write_text(json.dumps(results))
    if revision:
        push_run(run_copy, "user/race", check=False)
    hold = hub_server.faults.hold(point)
    outcome = {}

    def push_a():
        try:
            outcome["a"] = push_run(run_copy, "race", revision=revision, check=False)
        except Exception as err:
            outcome["a"] = err

    a = threading.Thread(target=push_a)
    a.start()
    try:
        assert hold.wait_reached(120), "push A never reached the held request"
        if case == "new-repo-work-on-another-branch":
            winner = push_run(other, "user/race", revision="b-work", check=False)
        else:
            winner = push_run(other, "user/race", revision=revision, check=False)
        if fault:
            hub_server.faults.add(**fault)
    finally:
        hold.release()
        a.join(120)
    hub_server.faults.clear()
    # the winner's commit survives, and the winner's result points at it
    assert hub_server.head("user/race", revision=winner.revision) == winner.commit_oid
    assert "model.safetensors" in hub_server.files("user/race", revision=winner.revision)
    assert any(
        c.commit_id == winner.commit_oid for c in HfApi().list_repo_commits("user/race", revision=winner.revision)
    )
    assert isinstance(outcome["a"], PushError) and re.search(loser_error, str(outcome["a"])), outcome["a"]
    if case == "new-repo":  # the message says what was left and why: the winner's commit
        assert "left the repo user/race it created: it holds more than that creation" in str(outcome["a"])
        assert f"the newest {winner.commit_message!r} by user" in str(outcome["a"])
    elif case == "new-repo-work-on-another-branch":
        assert "left the repo user/race it created: it holds more than that creation (the branch 'b-work')" in str(
            outcome["a"]
        )
    elif case == "new-branch":
        assert "left the branch 'exp' it created in user/race: it holds more than that creation" in str(outcome["a"])
        assert f"the newest {winner.commit_message!r} by user" in str(outcome["a"])
