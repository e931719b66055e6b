"""The Trainer's runner of a method that owns its step: accumulation, updates of one part only, clipping.

End to end (kill + exact resume, 2-process DDP, every pass logged) the stepped methods run in
tests/test_recipes.py; here the runner's contract is checked on a three-part toy model."""

import contextlib
import os
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from hf_transfer.training.stepped import TrainerStepRunner

from conftest import tiny_args

SOURCE = "builtin:digits-printed"


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features, self.classifier, self.method = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x, y, phase):
        h = torch.tanh(self.features(x))
        logits = self.classifier(h) + (self.method(h) if phase == "both" else 0)
        loss = nn.functional.cross_entropy(logits, y)
        return {"loss": loss, "metrics": {"cls_loss": float(loss.detach())}}


def _runner(model, batches, optimizer, max_grad_norm=0.0):
    trainer = SimpleNamespace(
        accelerator=Accelerator(cpu=True),
        compute_loss_context_manager=contextlib.nullcontext,
        args=SimpleNamespace(max_grad_norm=max_grad_norm),
        optimizer=optimizer,
    )
    parts = {
        "features": list(model.features.parameters()),
        "classifier": list(model.classifier.parameters()),
        "method": list(model.method.parameters()),
    }
    return TrainerStepRunner(trainer, model, batches, parts)


def _batches(n=8, k=2):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)
    return [{"x": xs, "y": ys} for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True)], x, y


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def test_accumulated_pass_gives_the_whole_batchs_gradient_and_logs_its_mean():
    model = Toy()
    batches, x, y = _batches()
    runner = _runner(model, batches, torch.optim.SGD(model.parameters(), lr=0.1))
    reported = runner.backward("both")
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    whole = model(x, y, "both")["loss"]
    whole.backward()
    for a, b in zip(accumulated, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(reported, whole.detach())
    assert runner.metrics["both_loss"] == pytest.approx(float(whole.detach()))
    assert runner.metrics["cls_loss"] == pytest.approx(float(whole.detach()))


def test_update_moves_only_its_parts_even_with_momentum_and_weight_decay():
    model = Toy()
    batches, _, _ = _batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    runner = _runner(model, batches, optimizer)
    for _ in range(2):  # the second update has momentum buffers for every part that moved in the first
        runner.backward("both")
        runner.update(("features", "method"))
    before = _snapshot(model.classifier), _snapshot(model.features)
    runner.backward("both")
    runner.update(("classifier",))
    assert all(torch.equal(a, b) for a, b in zip(before[1], model.features.parameters(), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(before[0], model.classifier.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())  # an update clears every gradient


def test_update_clips_the_gradient_of_its_parts():
    model = Toy()
    batches, _, _ = _batches()
    runner = _runner(model, batches, torch.optim.SGD(model.parameters(), lr=1.0), max_grad_norm=0.01)
    runner.backward("both")
    before = _snapshot(model.classifier)
    runner.update(("classifier",))
    steps = [a - p.detach() for a, p in zip(before, model.classifier.parameters(), strict=True)]
    moved = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in steps]))
    assert float(moved) == pytest.approx(0.01, rel=1e-4)  # lr 1: the step is the clipped gradient


def test_keep_leaves_the_gradients_of_its_parts_for_the_trainers_step():
    model = Toy()
    batches, _, _ = _batches()
    runner = _runner(model, batches, torch.optim.SGD(model.parameters(), lr=0.1))
    runner.backward("both")
    runner.keep(("features",))
    assert all(p.grad is not None for p in model.features.parameters())
    assert all(p.grad is None for p in [*model.classifier.parameters(), *model.method.parameters()])
    with pytest.raises(ValueError, match="unknown parameter parts"):
        TrainerStepRunner(runner.trainer, model, batches, {"head": []})


@pytest.mark.parametrize(
    "given, refused",
    [({"learning_rate": "auto"}, "learning_rate=auto"), ({"fsdp": "full_shard"}, "FSDP and DeepSpeed")],
)
def test_what_a_stepped_method_cannot_do_is_refused_before_the_run_starts(tmp_path, given, refused):
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.errors import TransferConfigError
    from hf_transfer.training.run import prepare_run

    config = {**tiny_args(tmp_path), "mode": "domain", "method": "mcd", "source": SOURCE, **given}
    with pytest.raises(TransferConfigError, match=refused):
        prepare_run(*arguments_from_dict(config))
    assert not os.path.exists(config["output_dir"])  # refused before the output folder was claimed
