"""Model cards: metadata through ModelCardData (model-index round trip, validate-yaml checks), the body
that tells the transfer, figures, and updates that keep hand-written text. Offline; one tiny run."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

pytest.importorskip("huggingface_hub")
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_transfer.hub import cards
from hf_transfer.hub.card_merge import merge_body
from hf_transfer.hub.card_metadata import BASELINE_CONFIG
from hf_transfer.testing.hub_cards import card_metadata

REPO = "user/digits-dann"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    out = tmp_path_factory.mktemp("card_run") / "dann"
    a, t = arguments_from_dict(
        dict(
            mode="domain",
            method="dann",
            backbone="test_resnet",
            source="builtin:digits-printed",
            target="builtin:digits-handwritten",
            image_size=32,
            crop_pct=1.0,
            augment="light",
            output_dir=str(out),
            max_steps=3,
            per_device_train_batch_size=8,
            max_train_samples=32,
            max_eval_samples=16,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            learning_rate=0.01,
            optim="sgd",
            optim_args="momentum=0.9",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
    )
    run_transfer(a, t)
    return out


@pytest.fixture(scope="module")
def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def _variant(results, **changes):
    r = copy.deepcopy(results)
    r.update(changes)
    return r


def _baseline(results, target_acc=0.05):
    b = copy.deepcopy(results)
    b["method"] = "source_only"
    b["metrics"]["target"]["accuracy"] = target_acc
    return b


def test_metadata_and_model_index_round_trip(run_dir, results):
    baseline = _baseline(results)
    card = cards.render_card(run_dir, REPO, baseline_results=baseline)
    text = str(card)
    meta, errors = card_metadata(text)  # the test server's validate-yaml checks
    assert errors == [] and meta is not None
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert {"hf-transfer", "domain-adaptation", "dann", "timm", "transfer-mode-domain"} <= set(meta["tags"])
    # random init: no base_model (and the body says so); built-in data: no Hub dataset ids
    assert "base_model" not in meta and "base_model_relation" not in meta and "datasets" not in meta
    assert "random initialisation" in card.text and "no `base_model`" in card.text
    assert "license" not in meta
    # model-index: target + source, this model + the source-only baseline, accuracy + macro-F1
    name, evals = model_index_to_eval_results(meta["model-index"])
    assert name == "digits-dann"
    assert cards.validate_card(text) == evals
    by = {(e.dataset_name, e.metric_type, e.metric_config): e.metric_value for e in evals}
    tacc = round(results["metrics"]["target"]["accuracy"], 4)
    assert by[("builtin:digits-handwritten (target)", "accuracy", None)] == tacc
    assert by[("builtin:digits-handwritten (target)", "accuracy", BASELINE_CONFIG)] == 0.05
    assert ("builtin:digits-printed (source)", "f1", "macro") in by
    assert all(e.dataset_split == "test" and e.task_type == "image-classification" for e in evals)
    # widget examples come from examples/
    assert [w["src"].rsplit("/", 2)[-2:] for w in meta["widget"]][0][0] == "examples"
    assert meta["widget"][0]["src"].startswith("https://huggingface.co/user/digits-dann/resolve/main/examples/")


def test_body_tells_the_transfer(run_dir, results):
    baseline = _baseline(results, target_acc=0.05)
    upper = _variant(results, mode="task", method="full")
    upper["metrics"] = {"target": {**results["metrics"]["target"], "accuracy": 0.99}}
    text = cards.render_card(run_dir, REPO, baseline_results=baseline, upper_bound_results=upper).text
    acc = 100 * results["metrics"]["target"]["accuracy"]
    assert f"{acc:.1f}% accuracy" in text
    assert f"{abs(acc - 5.0):.1f} points" in text and "source-only baseline (5.0%)" in text
    assert "https://arxiv.org/abs/1505.07818" in text  # the method's paper
    for heading in (
        "## How it was adapted",
        "## Data and label alignment",
        "## Training hyper-parameters",
        "## Results",
        "## Per-class accuracy",
        "## How to use it",
        "## Limitations",
        "## Reproduce this run",
        "## Framework versions",
    ):
        assert heading in text, heading
    assert "source-only baseline |" in text and "upper bound: trained on target labels" in text
    assert "10 shared classes" in text and "No class was dropped" in text
    assert "| zero |" in text  # the per-class table names the classes
    assert "| optim | sgd |" in text  # the optimizer by its plain name
    assert 'timm.create_model("hf-hub:user/digits-dann", pretrained=True)' in text
    assert 'pipeline("image-classification", model="user/digits-dann")' in text
    assert "hf-transfer train --config train_config.yaml" in text
    assert "OptimizerNames" not in text and "SchedulerType" not in text
    assert "More information needed" not in text
    for v in results["versions"].values():
        assert v in text
    # the reproduce block is valid YAML with the run's arguments
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL).group(1)
    cfg = yaml.safe_load(block)
    assert cfg["mode"] == "domain" and cfg["method"] == "dann" and cfg["target"] == "builtin:digits-handwritten"
    assert cfg["image_size"] == 32 and cfg["max_steps"] == 3


def test_modes_and_hub_ids(run_dir, results):
    hub = _variant(
        results,
        mode="task",
        method="full",
        source=None,
        base_model="org/backbone",
        backbone="org/backbone",
        target="org/target-ds@v1",
        label_alignment=None,
    )
    hub["metrics"] = {"target": results["metrics"]["target"]}
    card = cards.render_card(run_dir, "user/ft", results=hub, license="apache-2.0", revision="dev")
    meta = card_metadata(str(card))[0]
    assert meta["base_model"] == "org/backbone" and meta["base_model_relation"] == "finetune"
    assert meta["datasets"] == ["org/target-ds"] and meta["license"] == "apache-2.0" and "fine-tuning" in meta["tags"]
    evals = cards.validate_card(str(card))
    assert {e.dataset_type for e in evals} == {"org/target-ds"} and evals[0].dataset_revision == "v1"
    assert "/resolve/dev/examples/" in meta["widget"][0]["src"] and 'revision="dev"' in card.text
    assert "hf-hub:user/ft@dev" in card.text and "https://arxiv.org/abs/1411.1792" in card.text
    feat = _variant(results, mode="feature", method="linear")
    text = cards.render_card(run_dir, "user/probe", results=feat).text
    assert "linear probe on the frozen features" in text and "https://arxiv.org/abs/1805.08974" in text
    so = _variant(results, method="source_only", paper="")
    text = cards.render_card(run_dir, "user/so", results=so).text
    assert "*is* the source-only baseline" in text


def test_update_keeps_hand_written_sections(run_dir, results):
    first = str(cards.render_card(run_dir, REPO))
    edited = first.replace("pipeline_tag: image-classification", "pipeline_tag: image-classification\nlanguage: en")
    edited = edited.replace(
        "<!-- hf-transfer:begin method -->",
        "## My notes\n\nHand-written, keep me.\n\n<!-- hf-transfer:begin method -->",
    )
    edited += "\n## Citation\n\nMine too.\n"
    edited = edited.replace("## Limitations", "## Limitations (edited inside a generated section)")
    better = _variant(results)
    better["metrics"] = copy.deepcopy(results["metrics"])
    better["metrics"]["target"]["accuracy"] = 0.777
    merged = str(cards.merge_card(edited, cards.render_card(run_dir, REPO, results=better)))
    assert "Hand-written, keep me." in merged and "## Citation\n\nMine too." in merged
    assert merged.index("## My notes") < merged.index("## How it was adapted")
    assert "77.7% accuracy" in merged and "(edited inside a generated section)" not in merged
    meta = card_metadata(merged)[0]
    assert meta["language"] == "en"
    assert model_index_to_eval_results(meta["model-index"])[1][0].metric_value == 0.777
    # idempotent, and a missing generated section comes back in place
    again = str(cards.merge_card(merged, cards.render_card(run_dir, REPO, results=better)))
    assert again == merged
    gone = re.sub(r"<!-- hf-transfer:begin usage -->.*?<!-- hf-transfer:end usage -->\n", "", merged, flags=re.DOTALL)
    back = merge_body(gone, cards.render_card(run_dir, REPO, results=better).text)
    assert back.index("## Per-class accuracy") < back.index("## How to use it") < back.index("## Limitations")
    # a hand-written card without markers is kept below the generated one
    old = "---\nlicense: mit\n---\n# Old card\n\nWritten by hand.\n"
    plain = cards.merge_card(old, cards.render_card(run_dir, REPO))
    assert "Written by hand." in str(plain) and plain.data.license == "mit"


def test_write_card_and_figures(run_dir, tmp_path):
    import shutil

    from PIL import Image

    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    text = cards.write_card(folder, REPO)
    assert (folder / "README.md").read_text() == text
    for name in (cards.CONFUSION_PNG, cards.CURVES_PNG):
        with Image.open(folder / name) as im:
            assert im.format == "PNG" and im.width > 200
        assert f"]({name})" in text
    assert (folder / cards.CONFIG_FILE).is_file()
    ModelCard(text)
    # a second write merges into the local README (hand-written text kept)
    (folder / "README.md").write_text(text + "\n## Local notes\n\nkeep\n")
    assert "## Local notes" in cards.write_card(folder, REPO)


def test_validate_card_rejects_broken_metadata():
    with pytest.raises(yaml.YAMLError):
        cards.validate_card("---\nlicense: [unclosed\n---\nbody\n")
    with pytest.raises(ValueError, match="library_name"):
        cards.validate_card("---\nlibrary_name: [a, b]\npipeline_tag: image-classification\n---\nbody\n")


def test_example_card_in_repo_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "model_cards" / "examples" / "README.md"
    if not example.is_file():
        pytest.skip("no example card rendered yet")
    text = example.read_text()
    assert cards.validate_card(text) and card_metadata(text)[1] == []
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):
        assert (example.parent / name).is_file(), name


def test_domain_gap_section(run_dir, results):
    gap = results["domain_gap"]
    assert {"before", "after"} <= set(gap)
    text = cards.render_card(run_dir, REPO).text
    assert "## Domain gap" in text and "<!-- hf-transfer:begin domain-gap -->" in text
    b, a = gap["before"]["proxy_a_distance"], gap["after"]["proxy_a_distance"]
    assert f"| proxy A-distance | {b:.3f} | {a:.3f} | {a - b:+.4f} |" in text
    assert f"| {gap['before']['mmd']:.4f} | {gap['after']['mmd']:.4f} |" in text
    n = gap["after"]["num_samples"]
    assert f"on {n['source']} source and {n['target']} target images" in text
    assert cards.validate_card(str(cards.render_card(run_dir, REPO)))  # still a valid card
    no_gap = _variant(results, mode="task", method="full", domain_gap=None)
    assert "## Domain gap" not in cards.render_card(run_dir, "user/ft", results=no_gap).text


def test_partial_label_space_and_shared_options_in_card(run_dir, results):
    al = {
        **results["label_alignment"],
        "policy": "partial",
        "setting": "partial",
        "source_only": ["eight", "nine"],
        "shared": results["label_names"][:8],
    }
    excl = _variant(
        results,
        label_alignment=al,
        partial_weighting={"method": "exclude", "excluded_classes": ["eight", "nine"], "excluded_source_rows": 7},
    )
    text = cards.render_card(run_dir, REPO, results=excl).text
    assert "Classes only in the source, kept in the label space: `eight`, `nine`" in text
    assert "does not declare `eight`, `nine`, so their 7 source training rows were left out of training" in text
    weights = {n: (0.1 if n in ("eight", "nine") else 1.0) for n in results["label_names"]}
    pada = _variant(
        results,
        label_alignment=al,
        partial_weighting={
            "method": "pada",
            "every_steps": 50,
            "updates": 3,
            "class_weights": weights,
            "down_weighted": ["eight", "nine"],
            "down_weighted_below": 0.5,
            "paper": "https://arxiv.org/abs/1808.04205",
        },
    )
    text = cards.render_card(run_dir, REPO, results=pada).text
    assert "[PADA](https://arxiv.org/abs/1808.04205)" in text and "every 50 steps, 3 estimates" in text
    assert "`eight` 0.10" in text and "Down-weighted (below 0.5): `eight`, `nine`." in text
    # nothing to say when nothing was excluded or weighted (the closed-set run itself)
    assert "Partial label space" not in cards.render_card(run_dir, REPO).text
    opts = _variant(results, bottleneck_dim=64, trade_off_schedule="dann", target_batch_ratio=2.0)
    text = cards.render_card(run_dir, REPO, results=opts).text
    assert "**Bottleneck:** Linear + BatchNorm to 64 dims" in text and "folded exactly" in text
    assert "**Transfer-loss weight schedule:** `dann`" in text
    assert "**Target images per source image in a batch:** 2.0." in text
    assert "Bottleneck" not in cards.render_card(run_dir, REPO).text


def test_finished_run_folder_has_its_card_and_figures(run_dir, results, tmp_path):
    """Training ends with README.md + figures in the folder; a later push (write_card, no remote card) renders
    exactly what it renders for a folder without that card, with or without a baseline."""
    import shutil

    text = (run_dir / "README.md").read_text()
    assert (run_dir / cards.CONFUSION_PNG).is_file() and (run_dir / cards.CURVES_PNG).is_file()
    ModelCard(text)
    assert f"# {run_dir.name}\n" in text  # no --hub_model_id: the card is titled after the folder
    for kwargs in ({}, {"baseline_results": _baseline(results)}):
        with_card, without = tmp_path / f"with{len(kwargs)}", tmp_path / f"without{len(kwargs)}"
        shutil.copytree(run_dir, with_card)
        shutil.copytree(run_dir, without)
        (without / "README.md").unlink()
        assert cards.write_card(with_card, REPO, **kwargs) == cards.write_card(without, REPO, **kwargs)


def test_optimizer_arguments_in_hyperparameter_table(run_dir, results):
    assert results["hyperparameters"]["optim_args"] == "momentum=0.9"
    assert "| optim_args | momentum=0.9 |" in str(cards.render_card(run_dir, REPO))
    old = _variant(results, hyperparameters={k: v for k, v in results["hyperparameters"].items() if k != "optim_args"})
    assert "| optim_args | momentum=0.9 |" in str(cards.render_card(run_dir, REPO, results=old))  # from arguments


def test_training_curves_one_quantity_per_panel():
    from hf_transfer.evaluation.plots import curve_panels

    history = []
    for step in range(1, 9):
        history.append(
            {"step": step, "loss": 0.02 / step, "cls_loss": 0.01, "trade_off": 1.0, "domain_acc": 0.5 + step / 100}
        )
        if step % 4 == 0:
            for domain, acc in (("target", 0.3 + step / 100), ("source", 0.9)):
                history.append({"step": step, f"eval_{domain}_accuracy": acc, f"eval_{domain}_loss": 1.0 / step})
            history.append({"step": step, "eval_target_unlabelled_loss": 0.0})
    panels = {p["title"]: p for p in curve_panels(history)}
    assert sorted(panels["evaluation accuracy"]["series"]) == ["source", "target"]
    assert panels["evaluation accuracy"]["ylim"] == (0.0, 1.0)
    assert panels["training loss"]["ylim"][0] == 0.0  # losses >= 0: the axis starts at 0, not below
    assert sorted(panels["evaluation loss"]["series"]) == ["source", "target"]  # unlabelled (all 0) left out
    assert list(panels["domain_acc"]["series"]) == ["domain_acc"]
    assert not any("trade_off" in p["series"] for p in panels.values())  # a constant is not plotted
    assert all(
        len(p["series"]) == 1 for t, p in panels.items() if t not in ("training loss",) and "evaluation" not in t
    )


# ------------------------------------------------------------------------------------------------
# cards that tell the chain
# ------------------------------------------------------------------------------------------------
def _write_run(folder, results) -> str:
    """A run folder as far as a card reads it: its results.json (no weights needed)."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return str(folder)


def _summary(text: str) -> str:
    return text.split("<!-- hf-transfer:begin summary -->")[1].split("<!-- hf-transfer:end summary -->")[0]


def _reproduce_yaml(text: str) -> dict:
    block = text.split("## Reproduce this run")[1]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", block, re.DOTALL).group(1))


@pytest.fixture(scope="module")
def chained_dir(run_dir):
    """A tiny task run whose backbone is the DANN run folder (a local run folder, not a Hub id)."""
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    out = run_dir.parent / "task_on_dann"
    a, t = arguments_from_dict(
        dict(
            mode="task",
            method="full",
            backbone=str(run_dir),
            target="builtin:digits-handwritten",
            image_size=32,
            crop_pct=1.0,
            output_dir=str(out),
            max_steps=2,
            per_device_train_batch_size=8,
            max_train_samples=16,
            max_eval_samples=16,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            learning_rate=0.01,
            optim="sgd",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
    )
    run_transfer(a, t)
    return out


def test_run_on_a_local_run_folder_records_and_tells_its_chain(run_dir, chained_dir):
    """results.json records where the base folder's own weights came from; the card tells the chain, and the
    metadata declares no base_model (a local folder is not a Hub id; the chain started from random init)."""
    results = json.loads((chained_dir / "results.json").read_text())
    assert results["base_model"] is None
    assert results["provenance"] == [
        {"step": "origin", "init": "random", "model": "test_resnet"},
        {
            "step": "run",
            "folder": "dann",
            "path": str(run_dir),
            "mode": "domain",
            "method": "dann",
            "source": "builtin:digits-printed",
            "target": "builtin:digits-handwritten",
            "target_accuracy": json.loads((run_dir / "results.json").read_text())["metrics"]["target"]["accuracy"],
        },
    ]
    text = (chained_dir / "README.md").read_text()
    chain = (
        "test_resnet (random init) -> dann on builtin:digits-printed + unlabelled builtin:digits-handwritten -> "
        "this run: task on builtin:digits-handwritten"
    )
    assert f"- **Lineage:** {chain}" in text
    assert "the local run folder `dann`" in text and "random initialisation" not in _summary(text)
    meta = card_metadata(text)[0]
    assert "base_model" not in meta and "base_model_relation" not in meta
    # the backbone was trained from random weights, through the chain: the limitation still applies
    assert "The backbone started from random weights" in text


def test_chain_is_read_recursively_from_results_files(tmp_path, results):
    """The named case (a test_resnet trained source-only on printed digits, then fine-tuned on handwritten
    ones), a chain two runs deep from a Hub model (the card declares that Hub id, never a folder), a run
    recorded before provenance existed, and a loop of folders naming each other."""
    from hf_transfer.hub.card_provenance import run_provenance

    so = _write_run(
        tmp_path / "outputs" / "demo" / "seed0" / "source_only",
        _variant(results, method="source_only", provenance=None),  # recorded before the chain was
    )
    task = _variant(results, mode="task", method="full", backbone=so, base_model=None)
    task["provenance"] = run_provenance(so)
    text = cards.render_card(tmp_path, "user/task", results=task, figures=False).text
    assert (
        "test_resnet (random init) -> source_only on builtin:digits-printed -> this run: task on "
        "builtin:digits-handwritten"
    ) in text
    # recursively: a run on the task folder carries the whole chain, from the task folder's own results.json
    task_dir = _write_run(tmp_path / "task", task)
    deeper = _variant(results, mode="feature", method="linear", backbone=task_dir, base_model=None, provenance=None)
    assert [link.get("folder") or link["model"] for link in run_provenance(task_dir)] == [
        "test_resnet",
        "source_only",
        "task",
    ]
    assert "source_only on builtin:digits-printed -> task on builtin:digits-handwritten -> this run: feature on" in (
        cards.render_card(tmp_path, "user/probe", results=deeper, figures=False).text
    )
    # from a Hub model: metadata base_model is that Hub id, the local folders never are
    hub_so = _write_run(
        tmp_path / "hub_so",
        _variant(results, method="source_only", backbone="org/backbone", base_model="org/backbone", provenance=None),
    )
    on_hub = _variant(results, mode="task", method="full", backbone=hub_so, base_model=None)
    on_hub["provenance"] = run_provenance(hub_so)
    card = cards.render_card(tmp_path, "user/on-hub", results=on_hub, figures=False)
    meta = card_metadata(str(card))[0]
    assert meta["base_model"] == "org/backbone" and meta["base_model_relation"] == "finetune"
    assert "org/backbone (Hub) -> source_only on builtin:digits-printed -> this run: task" in card.text
    # a loop (a folder whose results.json names itself as backbone) ends instead of recursing forever
    loop = tmp_path / "loop"
    _write_run(loop, _variant(results, backbone=str(loop), base_model=None, provenance=None))
    chain = run_provenance(str(loop))
    assert chain[0]["init"] == "local" and len(chain) <= 3


def test_demo_cards_include_the_demo_baseline(run_dir, results, tmp_path):
    """The demo re-writes every run's card with its seed's source-only run as the baseline."""
    import shutil

    from hf_transfer import demo

    outputs = {}
    for name in ("scratch", "source_only", "dann"):
        outputs[name] = str(tmp_path / "seed0" / name)
        shutil.copytree(run_dir, outputs[name])
    so = _variant(results, method="source_only")
    so["metrics"]["target"]["accuracy"] = 0.05
    (tmp_path / "seed0" / "source_only" / "results.json").write_text(json.dumps(so))
    (tmp_path / "seed0" / "scratch" / "results.json").write_text(
        json.dumps(_variant(results, mode="task", method="full", source=None))
    )
    assert sorted(demo.attach_baseline(outputs)) == sorted([outputs["scratch"], outputs["dann"]])
    for name in ("scratch", "dann"):
        text = (tmp_path / "seed0" / name / "README.md").read_text()
        assert "source-only baseline (5.0%)" in _summary(text), name
        assert "no source-only baseline was given" not in text.lower(), name
        assert "| source-only baseline |" in text
    configs = {e.metric_config for e in cards.validate_card((tmp_path / "seed0" / "dann" / "README.md").read_text())}
    assert BASELINE_CONFIG in configs
    assert demo.attach_baseline({"dann": outputs["dann"]}) == []  # no source-only run: nothing to attach


def test_wording_follows_the_initialisation(run_dir, results):
    """Random init: "trains ... from random initialisation", never "fine-tunes"; a Hub base is fine-tuned."""
    scratch = _variant(results, mode="task", method="full", source=None, label_alignment=None)
    summary = _summary(cards.render_card(run_dir, "user/scratch", results=scratch, figures=False).text)
    assert "trains a `test_resnet` from random initialisation" in summary and "fine-tunes" not in summary
    probe = _variant(results, mode="feature", method="linear")
    summary = _summary(cards.render_card(run_dir, "user/probe", results=probe, figures=False).text)
    assert "frozen features of a randomly initialised `test_resnet`" in summary
    summary = _summary(cards.render_card(run_dir, REPO, figures=False).text)
    assert "adapts a randomly initialised `test_resnet` image classifier" in summary
    hub = _variant(scratch, backbone="org/backbone", base_model="org/backbone")
    summary = _summary(cards.render_card(run_dir, "user/ft", results=hub, figures=False).text)
    assert "fine-tunes [`org/backbone`]" in summary and "random" not in summary


def test_accuracy_intervals_are_wilson(run_dir, results):
    """18/18 correct is not "100.0% (+-0.0)": its 95% Wilson interval starts at 82.4%; no count, no interval."""
    perfect = _variant(results)
    perfect["metrics"]["target"].update(accuracy=1.0, num_samples=18)
    perfect["metrics"]["source"].update(accuracy=0.0, num_samples=18)
    text = cards.render_card(run_dir, REPO, results=perfect, figures=False).text
    row = next(line for line in text.splitlines() if line.startswith("| **this model**"))
    assert "100.0% (82.4-100.0)" in row and "0.0% (0.0-17.6)" in row and "+-" not in text
    assert "95% Wilson score interval" in text
    uncounted = _variant(results)
    uncounted["metrics"]["target"].pop("num_samples")
    row = next(
        line
        for line in cards.render_card(run_dir, REPO, results=uncounted, figures=False).text.splitlines()
        if line.startswith("| **this model**")
    )
    assert row.split(" | ")[1] == f"{100 * results['metrics']['target']['accuracy']:.1f}%"


def test_reproduce_block_uses_placeholders_for_local_paths(run_dir, results, tmp_path):
    """The output folder, a local backbone, a local dataset and a cache folder become placeholders, said as
    such; a config that still holds one is refused before anything runs."""
    from hf_transfer.config import arguments_from_dict, load_config_file, parse_args
    from hf_transfer.errors import TransferConfigError

    local = _variant(
        results,
        mode="task",
        method="full",
        backbone="outputs/demo/seed0/source_only",
        base_model=None,
        target="/data/my_digits",
    )
    local["arguments"] = {
        **results["arguments"],
        "mode": "task",
        "method": "full",
        "backbone": "outputs/demo/seed0/source_only",
        "target": "/data/my_digits",
        "decoded_cache_dir": "cache/decoded",
    }
    text = cards.render_card(run_dir, None, results=local, figures=False).text
    cfg = _reproduce_yaml(text)
    assert cfg["output_dir"] == "<OUTPUT_DIR>"
    assert cfg["backbone"] == "<PATH_TO: outputs/demo/seed0/source_only>"
    assert cfg["target"] == "<PATH_TO: /data/my_digits>" and cfg["decoded_cache_dir"] == "<PATH_TO: cache/decoded>"
    assert cfg["source"] == "builtin:digits-printed" and cfg["max_steps"] == 3  # the rest as it ran
    assert "placeholders to replace before running it" in text and "`<OUTPUT_DIR>` is a new folder" in text
    assert "hf-transfer push <OUTPUT_DIR> <REPO_ID>" in text and "outputs/dann" not in text
    # the card of the DANN run itself: only the output folder is local
    cfg = _reproduce_yaml(cards.render_card(run_dir, REPO, figures=False).text)
    assert cfg["output_dir"] == "<OUTPUT_DIR>" and cfg["backbone"] == "test_resnet"
    # train_config.yaml holds the same; running it unchanged is refused, naming the placeholder
    cards.write_card(tmp_path, None, results=local, existing="")
    with pytest.raises(TransferConfigError, match=r"backbone is '<PATH_TO: outputs/demo/seed0/source_only>'"):
        load_config_file(str(tmp_path / cards.CONFIG_FILE))
    with pytest.raises(TransferConfigError, match="output_dir.*a new folder of your choice"):
        parse_args(["--mode", "task", "--backbone", "test_resnet", "--target", "x", "--output_dir=<OUTPUT_DIR>"])
    with pytest.raises(TransferConfigError, match="output_dir"):
        arguments_from_dict(dict(mode="task", backbone="test_resnet", target="x", output_dir="<OUTPUT_DIR>"))


def test_hyperparameter_table_shows_what_governed_the_length(run_dir, results):
    """max_steps > 0 overrides the epochs: the table shows max_steps, not num_train_epochs 3.0; a run whose
    epochs governed shows the epochs (and the steps they came to)."""
    text = cards.render_card(run_dir, REPO, figures=False).text
    assert "| max_steps | 3 |" in text and "num_train_epochs" not in text.split("## Training hyper-parameters")[1]
    by_epochs = _variant(results, arguments={k: v for k, v in results["arguments"].items() if k != "max_steps"})
    by_epochs["arguments"]["num_train_epochs"] = 2.0
    by_epochs["hyperparameters"] = {**results["hyperparameters"], "num_train_epochs": 2.0, "max_steps": 8}
    table = cards.render_card(run_dir, REPO, results=by_epochs, figures=False).text.split("## Results")[0]
    assert "| num_train_epochs | 2.0 |" in table and "| training steps (set by num_train_epochs) | 8 |" in table
    assert "| max_steps |" not in table


def test_local_card_has_no_hub_links_until_a_push(run_dir, tmp_path):
    """Training without a repo writes a card with no links into a repo that does not exist; a push (write_card
    with the real repo id) fills them in."""
    import shutil

    text = (run_dir / "README.md").read_text()
    meta = card_metadata(text)[0]
    assert "widget" not in meta and "huggingface.co/" not in text
    assert f'"{run_dir.name}"' not in text and 'model="<REPO_ID>"' in text and "hf-hub:<REPO_ID>" in text
    assert "`hf-transfer push` fills it in" in text
    folder = tmp_path / "pushed"
    shutil.copytree(run_dir, folder)
    pushed = cards.write_card(folder, REPO)
    assert f'model="{REPO}"' in pushed and "<REPO_ID>" not in pushed
    assert card_metadata(pushed)[0]["widget"][0]["src"].startswith(f"https://huggingface.co/{REPO}/resolve/main/")


def test_example_card_links_to_no_model_repo():
    """The committed example card is a local card: no link to a Hub model repo (none was pushed)."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "model_cards" / "examples" / "README.md"
    text = example.read_text()
    repo_links = re.findall(r"huggingface\.co/(?!datasets/)[\w.-]+/[\w.-]+", text)
    assert repo_links == [] and "hf-hub:<REPO_ID>" in text
    assert "no source-only baseline was given" not in text.lower() and "+-" not in text
