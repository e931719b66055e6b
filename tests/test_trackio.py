"""``--report_to trackio`` (transformers' own integration): a run's training losses (a domain method's own parts
included), its evaluations and the unsupervised validators land in trackio's local store, and nothing leaves the
machine (tests/conftest.py points ``TRACKIO_DIR`` into the session's folder and drops any Space or server)."""

import ipaddress
import os
import socket

import pytest

from hf_transfer.config import arguments_from_dict
from hf_transfer.training.run import run_transfer

from conftest import tiny_args


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt this process makes outside the loopback is refused and recorded."""
    attempts = []
    connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
            attempts.append(address)
            raise OSError(f"test: no network ({address})")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


CASES = {
    # the domain losses (DANN's parts) and the validators computed on unlabelled target images
    "domain": dict(
        mode="domain",
        method="dann",
        source="builtin:digits-printed",
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
    ),
    # the L-BFGS head, which fits outside the Trainer's loop and logs through it
    "feature": dict(mode="feature", head_solver="lbfgs", logging_steps=1),
}
EXPECTED = {
    "domain": {
        "train/loss",
        "train/cls_loss",
        "train/transfer_loss",
        "train/domain_acc",
        "eval/target_accuracy",
        "eval/target_unlabelled_im",
        "eval/target_unlabelled_snd",
    },
    "feature": {"train/loss", "train/lbfgs_iterations"},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_report_to_trackio_logs_locally(tmp_path, no_network, case):
    from trackio.sqlite_storage import SQLiteStorage

    project = f"hf-transfer-test-{case}"
    args = tiny_args(tmp_path, report_to="trackio", project=project, run_name=f"tiny-{case}", **CASES[case])
    if case == "feature":
        args.pop("learning_rate")  # refused with the L-BFGS solve (no learning rate acts there)
    run_transfer(*arguments_from_dict(args))
    assert SQLiteStorage.get_project_db_path(project).is_relative_to(os.environ["TRACKIO_DIR"])
    assert SQLiteStorage.get_runs(project) == [f"tiny-{case}"]
    logged = {key for row in SQLiteStorage.get_logs(project, f"tiny-{case}") for key in row}
    assert EXPECTED[case] <= logged, sorted(logged)
    assert no_network == []


def test_the_demo_passes_report_to_to_every_run(tmp_path, monkeypatch):
    import hf_transfer.training.run
    from hf_transfer.cli.demo import main

    seen = []

    def fake_run(transfer_args, training_args):
        seen.append(training_args)
        return {"metrics": {"target": {"accuracy": 0.5}}}

    monkeypatch.setattr(hf_transfer.training.run, "run_transfer", fake_run)
    argv = ["--only", "source_only", "--steps", "1", "--output_dir", str(tmp_path), "--report_to", "trackio"]
    assert main(argv) == 0
    assert [(a.report_to, a.run_name) for a in seen] == [(["trackio"], "demo-seed0-source_only")]
