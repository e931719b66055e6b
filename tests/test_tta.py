"""Test-time adaptation: each method's step against a hand computation on a tiny model, and one end-to-end
``hf-transfer tta`` run whose before/after numbers are ``hf-transfer evaluate``'s."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hf_transfer.cli.main import main as cli_main
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.tta import build_tta_method
from hf_transfer.methods.tta.base import configure_for_tta, norm_affine_parameters

from conftest import tiny_args

LR = 0.1


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4))


def entropies(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(1)
    return -(p * torch.log(p)).sum(1)


def set_up(name: str, **options):
    model = tiny_model()
    params = configure_for_tta(model)
    optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9)
    return model, params, build_tta_method(name, params, optimizer, num_classes=4, **options)


def expected_step(model: nn.Module, x: torch.Tensor, loss_fn) -> list[torch.Tensor]:
    """The adapted parameters after one plain SGD step (momentum's first step) on ``loss_fn(logits)``, by autograd
    on a copy of the model."""
    twin = copy.deepcopy(model)
    params = norm_affine_parameters(twin)
    grads = torch.autograd.grad(loss_fn(twin(x)), params)
    return [p.detach() - LR * g for p, g in zip(params, grads, strict=True)]


def test_configure_adapts_only_the_norm_affine_parameters_with_batch_statistics():
    model = tiny_model()
    params = configure_for_tta(model)
    bn = model[1]
    assert [p is q for p, q in zip(params, [bn.weight, bn.bias], strict=True)] == [True, True]
    assert not any(p.requires_grad for p in (model[0].weight, model[3].weight))
    assert bn.training and not model.training and bn.momentum is None


def test_tent_is_one_entropy_step_and_predicts_with_the_logits_before_it():
    model, params, tent = set_up("tent")
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    before = model(x).detach()
    expected = expected_step(model, x, lambda z: entropies(z).mean())
    logits = tent.adapt(lambda: model(x))
    torch.testing.assert_close(logits, before)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e)


def test_eata_filters_unreliable_and_redundant_rows_and_weights_by_confidence():
    model, params, eata = set_up("eata", entropy_margin=0.4, redundancy_margin=0.5)
    margin = 0.4 * math.log(4)
    logits = torch.tensor([[4.0, 0, 0, 0], [0, 1.5, 0, 0], [0.1, 0, 0, 0], [0, 0, 5.0, 0]])
    h = entropies(logits)
    assert (h < margin).tolist() == [True, False, False, True]  # rows 1 and 2 too uncertain: unreliable
    eata.moving_mean = torch.tensor([0.0, 0.0, 1.0, 0.0])  # row 3 predicts what the stream already did
    assert eata.select(logits).tolist() == [0]  # row 3 is redundant (cosine 1 with the mean)
    captured = []
    eata.step = captured.append
    eata.adapt(lambda: logits)
    assert captured[0].item() == pytest.approx(float(torch.exp(margin - h[0]) * h[0]), rel=1e-5)
    p0 = logits[0].softmax(0)
    torch.testing.assert_close(eata.moving_mean, 0.9 * torch.tensor([0.0, 0, 1, 0]) + 0.1 * p0)


def test_sar_steps_with_the_gradient_at_the_sharpness_perturbed_weights():
    model, params, sar = set_up("sar", entropy_margin=1.0, rho=0.05)  # margin ln 4: every row reliable here
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    twin = copy.deepcopy(model)
    tp = norm_affine_parameters(twin)
    g = torch.autograd.grad(entropies(twin(x)).mean(), tp)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    with torch.no_grad():
        for p, gi in zip(tp, g, strict=True):
            p.add_(0.05 * gi / norm)
    assert (entropies(twin(x)).detach() < math.log(4)).all()
    g2 = torch.autograd.grad(entropies(twin(x)).mean(), tp)
    start = [p.detach().clone() for p in params]
    sar.adapt(lambda: model(x))
    for p, s, gi in zip(params, start, g2, strict=True):
        torch.testing.assert_close(p.detach(), s - LR * gi, rtol=1e-4, atol=1e-6)
    nothing = set_up("sar", entropy_margin=0.0)  # no reliable row: no step
    kept = [p.detach().clone() for p in nothing[1]]
    nothing[2].adapt(lambda: nothing[0](x))
    assert all(torch.equal(p, k) for p, k in zip(nothing[1], kept, strict=True))


@pytest.fixture(scope="module")
def printed_digits_model(tmp_path_factory):
    """A tiny classifier trained on printed digits: handwritten digits are a shifted target for it."""
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    tmp = tmp_path_factory.mktemp("printed")
    args = tiny_args(tmp, mode="domain", method="source_only", source="builtin:digits-printed", max_steps=12)
    run_transfer(*arguments_from_dict(args))
    return args["output_dir"]


def test_tent_run_writes_an_adapted_model_whose_before_and_after_are_evaluates(
    printed_digits_model, tmp_path, hub_server
):
    from hf_transfer.cli.evaluate import _parser
    from hf_transfer.evaluation.evaluate import evaluate

    out = str(tmp_path / "tent")
    target = "builtin:digits-handwritten"
    argv = [printed_digits_model, "--target", target, "--output_dir", out, "--max_samples", "48"]
    assert (
        cli_main(["tta", *argv, "--batch_size", "16", "--learning_rate", "0.01", "--handler", "--device", "cpu"]) == 0
    )
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["method"] == "tent" and results["tta"]["adapted_batches"] == 3
    scored = {}
    for name, model in (("before", printed_digits_model), ("after", out)):
        scored[name] = evaluate(_parser().parse_args([model, target, "--max_samples", "48", "--device", "cpu"]))
        assert results["before_after"][name]["accuracy"] == scored[name]["metrics"]["accuracy"]
    start, adapted = (
        load_file(os.path.join(printed_digits_model, "model.safetensors")),
        load_file(os.path.join(out, "model.safetensors")),
    )
    norm_affine = [k for k in start if k.endswith(("bn1.weight", "bn1.bias"))]
    assert norm_affine and all(not torch.equal(start[k], adapted[k]) for k in norm_affine)
    conv = [k for k in start if k.endswith("conv1.weight")]
    assert conv and all(torch.equal(start[k], adapted[k]) for k in conv)  # only the normalisation layers adapt
    card = open(os.path.join(out, "README.md")).read()
    assert "changes with its inputs" in card
    ba = results["before_after"]
    assert results["tta"]["worse_than_start"] == (ba["after"]["accuracy"] < ba["before"]["accuracy"])
    assert ("Worse than the starting model" in card) == results["tta"]["worse_than_start"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("tta_handler_under_test", os.path.join(out, "handler.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(out)
    examples = os.path.join(printed_digits_model, "examples")
    images = [os.path.join(examples, name) for name in sorted(os.listdir(examples)) if name.endswith(".png")][:3]
    params = handler.optimizer.param_groups[0]["params"]
    start = [p.detach().clone() for p in params]
    answers = handler({"inputs": images})
    assert len(answers) == len(images) == 3 and handler.updates == 1
    assert any(not torch.equal(s, p.detach()) for s, p in zip(start, params, strict=True))  # served: it adapted
    handler({"inputs": images[0]})  # one image: predicted without an update
    assert handler.updates == 1
    from huggingface_hub import hf_hub_download

    from hf_transfer.hub.push import push_run

    push_run(out, "user/tent")  # Hub-ready like a train run: the round-trip check (pipeline and handler) passes
    card = open(hf_hub_download("user/tent", "README.md")).read()
    assert "adapted at test time" in card and "changes with its inputs" in card


def test_tta_refusals_name_the_option(printed_digits_model, tmp_path):
    base = [printed_digits_model, "--target", "builtin:digits-handwritten", "--output_dir", str(tmp_path / "x")]
    from hf_transfer.cli.tta import parse
    from hf_transfer.training.tta import tta_settings

    with pytest.raises(TransferConfigError, match="collapse_entropy 0.3 has no effect with --reset never"):
        tta_settings(parse([*base, "--collapse_entropy", "0.3"]))
    with pytest.raises(TransferConfigError, match="batch_size 1"):
        tta_settings(parse([*base, "--batch_size", "1"]))
    with pytest.raises(TransferConfigError, match="unknown method_args"):
        tta_settings(parse([*base, "--method", "sar", "--method_args", '{"rh": 1}']))
    assert tta_settings(parse([*base, "--method", "sar"]))["reset"] == "on_collapse"  # SAR's recovery by default


def test_a_written_model_worse_than_its_start_is_flagged_on_the_card():
    from hf_transfer.hub.card_tta import render_tta_card
    from hf_transfer.training.tta import worse_than_start

    before_after = {"before": {"accuracy": 0.51}, "online": {"accuracy": 0.51}, "after": {"accuracy": 0.097}}
    assert worse_than_start(before_after)
    assert not worse_than_start({**before_after, "after": {"accuracy": 0.55}})
    assert not worse_than_start({"before": {"accuracy": 0.51}})  # not scored after: nothing to say
    results = {
        "method": "sar",
        "target": "builtin:digits-blended",
        "starting_model": "runs/source_only",
        "tta": {"reset": "on_collapse", "resets": 4, "worse_than_start": True},
        "before_after": before_after,
        "metrics": {"target": {"accuracy": 0.097, "macro_f1": 0.02, "num_samples": 299}},
    }
    assert "Worse than the starting model" in render_tta_card(results, "sar")
    results["tta"]["worse_than_start"] = False
    assert "Worse than the starting model" not in render_tta_card(results, "sar")
