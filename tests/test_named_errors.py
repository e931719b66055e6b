"""Errors name the thing: a damaged backbone file, a rank candidate that cannot load, a label column that is not
one class per image; a failed run leaves its folder free for the corrected retry; ``plan`` refuses what
``train`` refuses."""

import importlib.util
import json
import os

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_transfer.cli.main import main
from hf_transfer.data.columns import standardize_columns
from hf_transfer.errors import TransferConfigError
from hf_transfer.testing.tiny_models import convnext_folder
from hf_transfer.training.checkpoints import IDENTITY_FILE

from conftest import tiny_args

TARGET = "builtin:digits-handwritten"


def _argv(args: dict) -> list[str]:
    return [part for key, value in args.items() for part in (f"--{key}", str(value))]


def _cli(argv, capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def _damage(folder: str) -> str:
    """Overwrite the start of model.safetensors' JSON header (as a bad copy or a disk error would)."""
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"{garbage")
    return path


@pytest.fixture(scope="module")
def good_and_damaged(tmp_path_factory):
    """Two tiny ConvNeXt folders: one intact, one whose model.safetensors header is corrupt."""
    root = tmp_path_factory.mktemp("backbones")
    good = convnext_folder(root / "good", 10)
    damaged = convnext_folder(root / "damaged", 10)
    return good, damaged, _damage(damaged)


# --- a damaged backbone ----------------------------------------------------------------------------------


def test_a_damaged_local_backbone_is_named_before_any_work(tmp_path, capsys, good_and_damaged):
    good, damaged, bad_file = good_and_damaged
    args = tiny_args(tmp_path, mode="task", backbone=damaged)
    for command in ("plan", "train"):
        rc, err = _cli([command, *_argv(args)], capsys)
        assert rc == 2 and repr(bad_file) in err and "cannot be read" in err, err
    assert not os.path.exists(args["output_dir"])  # refused before the folder was claimed
    rc, err = _cli(["train", *_argv({**args, "backbone": good})], capsys)  # the corrected retry, same folder
    assert rc == 0, err
    assert os.path.isfile(os.path.join(args["output_dir"], "results.json"))


def test_a_damaged_download_is_named_and_its_run_leaves_the_folder_free(tmp_path, capsys, hub_server):
    """A Hub backbone is only on disk once the load downloads it: the failed load names the cached file, and the
    run, which claimed its folder already, releases it for the retry with another backbone."""
    from huggingface_hub import HfApi

    api = HfApi()
    for repo, damage in (("user/convnext-bad", True), ("user/convnext-good", False)):
        folder = convnext_folder(tmp_path / repo.split("/")[1], 10)
        if damage:
            _damage(folder)
        api.create_repo(repo)
        api.upload_folder(folder_path=folder, repo_id=repo)
    args = tiny_args(tmp_path, mode="task", backbone="user/convnext-bad")
    assert _cli(["plan", *_argv(args)], capsys)[0] == 0  # nothing on disk to check yet
    rc, err = _cli(["train", *_argv(args)], capsys)
    assert rc == 2 and "user/convnext-bad" in err and "model.safetensors" in err and "cannot be read" in err, err
    assert "Delete" in err and "cached download" in err
    out = args["output_dir"]  # the claim was released: nothing of value was written (a folder the run made is gone)
    assert not os.path.exists(out) or os.listdir(out) == []
    rc, err = _cli(["train", *_argv({**args, "backbone": "user/convnext-good"})], capsys)
    assert rc == 0, err


def test_a_run_that_fails_before_writing_anything_releases_its_folder(tmp_path, capsys):
    """Own case: any failure after the folder is claimed (here a label column that does not exist, found when
    the data loads) must not make the corrected retry "a different run"."""
    args = tiny_args(tmp_path, mode="task", label_column="no_such_column")
    rc, err = _cli(["train", *_argv(args)], capsys)
    assert rc == 2 and "'no_such_column' not found" in err
    assert not os.path.exists(os.path.join(args["output_dir"], IDENTITY_FILE))
    del args["label_column"]
    rc, err = _cli(["train", *_argv(args)], capsys)
    assert rc == 0, err


def test_a_failed_run_keeps_a_claim_that_guards_written_work(tmp_path):
    """The release is only for a folder holding nothing but the identity: another entry keeps it."""
    from hf_transfer.training.run_folder import release_claim, write_identity

    folder = tmp_path / "run"
    folder.mkdir()
    write_identity(str(folder), {"seed": 1})
    (folder / "checkpoint-2").mkdir()
    assert not release_claim(str(folder), {"seed": 1})
    os.rmdir(folder / "checkpoint-2")
    assert not release_claim(str(folder), {"seed": 2})  # another run's claim is not ours to release
    assert release_claim(str(folder), {"seed": 1}) and os.listdir(folder) == []


# --- rank ---------------------------------------------------------------------------------------------


def _rank_argv(tmp_path, backbones):
    return ["rank", "--target", TARGET, "--backbones", *backbones, "--image_size", "32"]


def test_rank_names_a_damaged_local_candidate_before_any_work(tmp_path, capsys, good_and_damaged):
    good, damaged, bad_file = good_and_damaged
    out = tmp_path / "rank"
    argv = [*_rank_argv(tmp_path, ["test_resnet", damaged, good]), "--output_dir", str(out)]
    rc, err = _cli(argv, capsys)
    assert rc == 2 and repr(bad_file) in err, err
    assert not out.exists()


def test_rank_ranks_the_others_when_one_download_is_damaged(tmp_path, capsys, hub_server):
    from huggingface_hub import HfApi

    folder = _damage(convnext_folder(tmp_path / "bad", 10)).rsplit(os.sep, 1)[0]
    HfApi().create_repo("user/bad-candidate")
    HfApi().upload_folder(folder_path=folder, repo_id="user/bad-candidate")
    good = convnext_folder(tmp_path / "good", 10)
    out = tmp_path / "rank"
    argv = _rank_argv(tmp_path, ["test_resnet", "user/bad-candidate", good])
    argv += ["--output_dir", str(out), "--max_train_samples", "40", "--feature_cache_dir", str(tmp_path / "f")]
    rc, err = _cli([*argv, "--top_k", "3"], capsys)
    assert rc == 2 and "not ranked" in err and "user/bad-candidate" in err and "model.safetensors" in err, err
    ranking = json.loads((out / "ranking.json").read_text())
    assert sorted(ranking["ranking"]) == sorted(["test_resnet", good])
    assert [e["backbone"] for e in ranking["not_ranked"]] == ["user/bad-candidate"]
    assert len(ranking["top_k"]) == 2  # configs only for what was ranked


# --- label columns ------------------------------------------------------------------------------------


def _with_columns() -> datasets.DatasetDict:
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "tags": datasets.List(datasets.ClassLabel(names=["cat", "dog", "bird"])),
            "score": datasets.Value("float32"),
            "label": datasets.ClassLabel(names=["cat", "dog"]),
        }
    )
    rows = {"image": [image] * 4, "tags": [[0, 1], [2], [], [1]], "score": [0.1, 0.2, 0.3, 0.4], "label": [0, 1] * 2}
    return datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=features))


def test_a_multi_label_list_column_is_refused_by_name():
    with pytest.raises(TransferConfigError, match=r"label column 'tags' holds a list per image \(multi-label\)"):
        standardize_columns(_with_columns(), "Dataset X", label_column="tags")


def test_a_float_label_column_is_refused_not_made_into_classes():
    # own case: each distinct float became a "class" silently
    with pytest.raises(TransferConfigError, match=r"label column 'score' holds float32 numbers"):
        standardize_columns(_with_columns(), "Dataset X", label_column="score")
    assert standardize_columns(_with_columns(), "Dataset X", label_column="label")["train"].features["label"].names == [
        "cat",
        "dog",
    ]


# --- plan refuses what train refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"report_to": "bogus"}, "report_to=['bogus']: bogus is not supported"),
        ({"push_to_hub": True, "hub_model_id": "a/b/c"}, "hub_model_id 'a/b/c' is not a valid Hub repo id"),
    ],
)
def test_plan_refuses_what_train_refuses_before_any_work(tmp_path, capsys, extra, message):
    args = tiny_args(tmp_path, mode="task", **extra)
    for command in ("plan", "train"):
        rc, err = _cli([command, *_argv(args)], capsys)
        assert rc == 2 and message in err, (command, err)
    assert not os.path.exists(args["output_dir"])  # train refused before it claimed the folder


def test_a_missing_report_to_package_is_a_problem_of_this_machine(tmp_path, capsys):
    """The recipe may be meant for a machine that has the package: plan reports it, train refuses before work."""
    missing = next((n for n in ("swanlab", "clearml", "dvclive") if importlib.util.find_spec(n) is None), None)
    if missing is None:
        pytest.skip("every candidate integration package is installed here")
    args = tiny_args(tmp_path, mode="task", report_to=missing)
    rc = main(["plan", *_argv(args)])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert json.loads(out)["training"]["on_this_machine"].startswith(f"train would stop here: report_to=['{missing}']")
    rc, err = _cli(["train", *_argv(args)], capsys)
    assert rc == 2 and f"report_to=['{missing}']" in err and "install" in err
    assert not os.path.exists(args["output_dir"])
