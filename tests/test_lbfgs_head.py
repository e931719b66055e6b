"""head_solver=lbfgs: the full-batch L-BFGS linear probe on cached features (methods/feature/lbfgs_head.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from hf_transfer.config import arguments_from_dict
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.feature.lbfgs_head import fit_linear_head
from hf_transfer.training.run import run_transfer

from conftest import tiny_args as _tiny_args


def tiny_args(tmp_path, **overrides) -> dict:
    """The suite's tiny run without its learning rate (head_solver=lbfgs refuses one)."""
    args = _tiny_args(tmp_path, **overrides)
    if "learning_rate" not in overrides:
        args.pop("learning_rate", None)
    return args


def _blobs(n=300, d=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (k, d))
    y = rng.integers(0, k, n)
    x = centres[y] + rng.normal(0, 1.0, (n, d))
    return x.astype(np.float32), y


def test_lbfgs_head_reaches_scikit_learns_logistic_regression_optimum():
    x, y = _blobs()
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], 4)
    info = fit_linear_head(head, x, y, max_iter=500)
    assert info["converged"] and info["l2"] == pytest.approx(1 / len(x))
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=5000).fit(x, y)  # same objective, times C * n
    weight = head.weight.detach().numpy()
    # softmax parameters are defined up to a constant per feature: compare after centring over classes
    centred = lambda w: w - w.mean(0, keepdims=True)  # noqa: E731
    assert np.allclose(centred(weight), centred(reference.coef_), atol=2e-3)
    with torch.no_grad():
        ours = head(torch.from_numpy(x)).argmax(1).numpy()
    assert (ours == reference.predict(x)).mean() > 0.99


def test_chunked_objective_gives_the_same_head():
    x, y = _blobs(n=257)
    heads = []
    for rows in (1000, 50):
        torch.manual_seed(0)
        head = torch.nn.Linear(x.shape[1], 4)
        info = fit_linear_head(head, x, y, max_iter=50, chunk_rows=rows)
        heads.append((head.weight.detach().clone(), info["loss"]))
    assert torch.allclose(heads[0][0], heads[1][0], atol=1e-3)  # float32 sums in another order
    assert heads[0][1] == pytest.approx(heads[1][1], rel=1e-5)


def test_weight_decay_sets_the_penalty_and_max_steps_the_iterations(tmp_path):
    x, y = _blobs()
    strong, weak = torch.nn.Linear(12, 4), torch.nn.Linear(12, 4)
    fit_linear_head(strong, x, y, l2=1.0)
    fit_linear_head(weak, x, y, l2=1e-4)
    assert strong.weight.norm() < 0.5 * weak.weight.norm()
    capped = fit_linear_head(torch.nn.Linear(12, 4), x, y, max_iter=2)
    assert capped["iterations"] == 2 and not capped["converged"]


def test_feature_run_with_lbfgs_head(tmp_path):
    base = dict(mode="feature", max_train_samples=64, per_device_train_batch_size=16)
    sgd = run_transfer(*arguments_from_dict(tiny_args(tmp_path, **base, max_steps=-1, num_train_epochs=3)))
    lbfgs = run_transfer(*arguments_from_dict(tiny_args(tmp_path, **base, head_solver="lbfgs", max_steps=-1)))
    solver = lbfgs["head_solver"]
    assert solver["name"] == "lbfgs" and 0 < solver["iterations"] <= 100
    assert sgd["head_solver"] == {"name": "sgd"}
    # the card's hyper-parameters are the solve's, not the Trainer optimizer's (which did not run)
    hp = lbfgs["hyperparameters"]
    assert hp["iterations"] == solver["iterations"] and "learning_rate" not in hp and "optim" not in hp
    assert "learning_rate" in sgd["hyperparameters"]
    logged = [e for e in lbfgs["log_history"] if "lbfgs_iterations" in e]
    assert len(logged) == 1 and logged[0]["lbfgs_iterations"] == solver["iterations"]
    # the convex optimum on the same cached features: at least as good as 3 epochs of SGD on the train rows
    assert lbfgs["train_loss"] < sgd["train_loss"]
    assert lbfgs["metrics"]["target"]["accuracy"] >= sgd["metrics"]["target"]["accuracy"] - 0.05


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"learning_rate": 0.1}, "learning_rate=0.1 has no effect with head_solver=lbfgs"),
        ({"num_train_epochs": 10}, "num_train_epochs=10"),
        ({"features_on_device": "true"}, "features_on_device=true"),
        ({"resume_from_checkpoint": "last"}, "resume_from_checkpoint: head_solver=lbfgs"),
    ],
)
def test_options_that_lbfgs_does_not_use_are_refused(tmp_path, extra, message):
    from hf_transfer.config import check_training_arguments

    args = arguments_from_dict(tiny_args(tmp_path, mode="feature", head_solver="lbfgs", **extra))
    with pytest.raises(TransferConfigError, match=message):
        check_training_arguments(*args)
    with pytest.raises(TransferConfigError, match="head_solver='newton'"):
        arguments_from_dict(tiny_args(tmp_path, mode="feature", head_solver="newton"))
