"""``hf-transfer rank`` end to end on a tiny zoo: a random-init timm architecture (no source head: LEEP/NCE
"n/a") and two saved local checkpoints with heads of their own, on the built-in handwritten digits."""

import json
import math
import os

import pytest
from PIL import Image

from hf_transfer.cli.main import main

TARGET = "builtin:digits-handwritten"


@pytest.fixture(scope="module")
def resnet_with_head(tmp_path_factory):
    """A timm test_resnet saved through transformers with a 3-class head (a stand-in for a source model)."""
    import torch

    from hf_transfer.models.backbones import load_backbone

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("resnet_head")
    load_backbone("test_resnet", ["cat", "dog", "bird"], image_size=32).model.save_pretrained(folder)
    return str(folder)


def _rank(argv, capsys):
    rc = main(["rank", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _train(argv, capsys):
    rc = main([*argv, "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_rank_tiny_zoo_end_to_end(tmp_path, capsys, tiny_vit_dir, resnet_with_head):
    zoo = ["test_resnet", tiny_vit_dir, resnet_with_head]
    out_dir, cache = str(tmp_path / "rank"), str(tmp_path / "features")
    argv = ["--target", TARGET, "--backbones", *zoo, "--image_size", "32", "--max_train_samples", "60"]
    argv += ["--output_dir", out_dir, "--feature_cache_dir", cache, "--top_k", "1", "--probe"]
    rc, out, err = _rank(argv, capsys)
    assert rc == 0, err
    result = json.load(open(os.path.join(out_dir, "ranking.json")))
    by_id = {c["backbone"]: c for c in result["candidates"]}
    assert set(by_id) == set(zoo) and result["num_images"] == 60
    # LEEP/NCE only where the candidate has a pretrained head of its own
    assert by_id["test_resnet"]["source_head"] is None
    assert by_id["test_resnet"]["scores"]["leep"] is None and by_id["test_resnet"]["scores"]["nce"] is None
    assert by_id[tiny_vit_dir]["source_head"] == {"classes": 5}
    assert by_id[resnet_with_head]["source_head"] == {"classes": 3}
    for c in result["candidates"]:
        known = {k: v for k, v in c["scores"].items() if v is not None}
        assert set(known) >= {"logme", "hscore", "sfda", "knn", "probe"}
        assert all(math.isfinite(v) for v in known.values()), c
        assert c["feature_dim"] > 0 and c["num_params"] > 0 and c["seconds"] > 0
        assert c["feature_cache"]["hit"] is False
    sfda_values = [c["scores"]["sfda"] for c in result["candidates"]]
    assert sfda_values == sorted(sfda_values, reverse=True)  # ranked by --rank_by sfda
    assert "n/a" in out and all(b in out for b in zoo)
    with Image.open(os.path.join(out_dir, "ranking.png")) as img:
        assert img.size[0] > 300 and img.size[1] > 300

    # the top-1 candidate is handed on as a feature-mode config that plans as is
    from hf_transfer.cli.plan import plan_from_argv

    top = result["top_k"][0]
    assert top["backbone"] == result["ranking"][0]
    plan = json.dumps(plan_from_argv(["--config", top["config"]]), default=str)
    assert top["backbone"] in plan and '"feature"' in plan
    # ... and trains on the features the ranking cached (the train split is a cache hit)
    rc, _, err = _train(["train", "--config", top["config"], "--max_steps", "2", "--max_eval_samples", "16"], capsys)
    assert rc == 0, err
    run_dir = os.path.join(out_dir, "runs", os.listdir(os.path.join(out_dir, "runs"))[0])
    run = json.load(open(os.path.join(run_dir, "results.json")))
    assert run["feature_cache"]["hits"] == 1
    # ... and its model card says why: every candidate with its scores, this one marked (section rendered
    # from this checkout's template, not from whichever install the environment's package points at)
    from hf_transfer.hub.cards import render_card

    assert (
        run["ranking"]["position"] == 1 and [c["backbone"] for c in run["ranking"]["candidates"]] == result["ranking"]
    )
    template = os.path.join(os.path.dirname(os.path.dirname(__file__)), "model_cards", "model_card.md")
    card = str(render_card(run_dir, "user/top1", template_path=template, figures=False))
    section = card.split("## Why this backbone")[1].split("<!-- hf-transfer:end why-backbone -->")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(zoo) and "(this model)" in rows[0] and "(this model)" not in "".join(rows[1:])
    assert "test_resnet" in section and "n/a" in section and "| sfda |" in section
    sfda = f"{result['candidates'][0]['scores']['sfda']:.4f}"
    assert sfda in rows[0]

    # a second ranking reads every candidate's features from the cache
    rc, _, err = _rank(argv, capsys)
    assert rc == 0, err
    again = json.load(open(os.path.join(out_dir, "ranking.json")))
    assert all(c["feature_cache"]["hit"] for c in again["candidates"])
    assert [c["scores"] for c in again["candidates"]] == [c["scores"] for c in result["candidates"]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backbones", "test_resnet"], "at least two"),
        (["--backbones", "test_resnet", "test_resnet"], "more than once"),
        (["--backbones", "test_resnet", "no_such_arch_xyz"], "no_such_arch_xyz"),
        (["--backbones", "test_resnet", "test_efficientnet", "--top_k", "3"], "--top_k"),
        (["--backbones", "test_resnet", "test_efficientnet", "--rank_by", "probe"], "--probe"),
    ],
)
def test_rank_input_errors_are_one_line(tmp_path, capsys, extra, message):
    rc, _, err = _rank(["--target", TARGET, "--output_dir", str(tmp_path / "o"), *extra], capsys)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
