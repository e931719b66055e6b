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
    """The Trainer's runner over ``model``'s three parts (``features``, ``classifier``, ``method``)."""
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


# --------------------------------------------------------------------------- the methods' steps, against their papers'
class PairedToy(nn.Module):
    """A paired-batch model that routes each pass to a stepped method, as the domain mode does."""

    def __init__(self, method):
        super().__init__()
        torch.manual_seed(0)
        self.features, self.classifier, self.method = nn.Linear(3, 5), nn.Linear(5, 4), method

    def encode(self, x):
        return torch.relu(self.features(x))

    def forward(self, x_s, y_s, x_t, phase):
        x = torch.cat([x_s, x_t])
        if phase in self.method.frozen_feature_phases:
            with torch.no_grad():
                f = self.encode(x)
        else:
            f = self.encode(x)
        logits, n = self.classifier(f), x_s.shape[0]
        loss, metrics = self.method.phase_loss(
            phase, f[:n], f[n:], logits[:n], logits[n:], lambda lg: nn.functional.cross_entropy(lg, y_s), 1.0
        )
        return {"loss": loss, "metrics": metrics}


def _paired_batch(seed=2):
    g = torch.Generator().manual_seed(seed)
    return {"x_s": torch.randn(6, 3, generator=g), "y_s": torch.randint(0, 4, (6,), generator=g)} | {
        "x_t": torch.randn(6, 3, generator=g) + 1.0
    }


def _run_stepped(model, optimizer):
    """The method's passes through the runner, then the Trainer's own step (as TransferTrainer does)."""
    model.method.train_step(_runner(model, [_paired_batch()], optimizer))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)


def test_mcd_step_is_the_papers_three_steps_with_an_optimizer_for_g_and_one_for_the_classifiers():
    from hf_transfer.methods.domain.entropy import mean_entropy
    from hf_transfer.methods.domain.mcd import MCDLoss, classifier_discrepancy

    ours = PairedToy(MCDLoss(5, 4, num_k=3))
    reference = PairedToy(MCDLoss(5, 4, num_k=3))
    reference.load_state_dict(ours.state_dict())
    # one optimizer over everything (ours) against TLlib's two (G; F1 and F2), over two optimizer steps (the
    # momentum of the first carries into the second)
    opt_ours = _sgd(ours.parameters())
    g = reference.features
    f1, f2 = reference.classifier, reference.method.second_head
    opt_g, opt_f = _sgd(g.parameters()), _sgd([*f1.parameters(), *f2.parameters()])
    eta = reference.method.options.entropy_weight
    for _ in range(2):
        _run_stepped(ours, opt_ours)
        b = _paired_batch()
        for step in ("A", "B", *["C"] * 3):
            opt_g.zero_grad(), opt_f.zero_grad()
            f = reference.encode(torch.cat([b["x_s"], b["x_t"]]))
            y1, y2 = f1(f), f2(f)
            ce = nn.functional.cross_entropy(y1[:6], b["y_s"]) + nn.functional.cross_entropy(y2[:6], b["y_s"])
            ent = mean_entropy(y1[6:]) + mean_entropy(y2[6:])
            disc = classifier_discrepancy(y1[6:], y2[6:])
            loss = {"A": ce + eta * ent, "B": ce + eta * ent - disc, "C": disc}[step]
            loss.backward()
            if step in ("A", "C"):
                opt_g.step()
            if step in ("A", "B"):
                opt_f.step()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_sdat_step_is_sam_on_the_classification_loss_with_the_discriminator_unperturbed():
    from hf_transfer.methods.domain.sdat import SDATLoss

    ours = PairedToy(SDATLoss(5, 4, rho=0.05, hold=0.0))
    reference = PairedToy(SDATLoss(5, 4, rho=0.05, hold=0.0))
    reference.load_state_dict(ours.state_dict())
    for m in (ours, reference):
        m.method.set_progress(0.5)
    opt_ours = _sgd(ours.parameters())
    opt_ref = _sgd(reference.parameters())
    model_params = [*reference.features.parameters(), *reference.classifier.parameters()]
    for _ in range(2):
        _run_stepped(ours, opt_ours)
        b = _paired_batch()
        opt_ref.zero_grad()
        reference(**b, phase="sharpness")["loss"].backward()  # first pass: the classification loss alone
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model_params]))
        eps = [0.05 * p.grad / (norm + 1e-12) for p in model_params]
        with torch.no_grad():
            for p, e in zip(model_params, eps, strict=True):
                p.add_(e)
        opt_ref.zero_grad()
        reference(**b, phase="sdat")["loss"].backward()  # second pass at w + e: CE + trade-off * (CDAN + MCC)
        with torch.no_grad():
            for p, e in zip(model_params, eps, strict=True):
                p.sub_(e)
        opt_ref.step()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
