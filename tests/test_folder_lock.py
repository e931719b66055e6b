"""One output folder, one writer: two runs started together into one folder cannot both
write it, a lock left by a killed process is taken over, and a push or evaluate into a folder a run is
writing is refused, naming the run's pid and host."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hf_transfer.runtime.folder_lock import LOCK_FILE, FolderInUseError, lock_folder

from conftest import tiny_args, two_process_launch

ROOT = Path(__file__).resolve().parents[1]

# a run that waits at its first training step until the test opens the gate (so the two runs overlap for sure)
GATED_RUN = """
import json, os, sys, time
from transformers import TrainerCallback
from hf_transfer.config import arguments_from_dict
from hf_transfer.errors import TransferConfigError
from hf_transfer.training.run import run_transfer

args, gate = json.loads(sys.argv[1]), sys.argv[2]

class Gate(TrainerCallback):
    def on_train_begin(self, *a, **k):
        open(f"{gate}.reached.{os.getpid()}", "w").close()
        deadline = time.time() + 300
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.05)

try:
    run_transfer(*arguments_from_dict(args), callbacks=[Gate()])
except TransferConfigError as err:  # what `hf-transfer train` does with it
    print(f"hf-transfer: error: {err}", file=sys.stderr)
    sys.exit(2)
"""

# holds a folder's lock as a run does, until killed
HOLDER = """
import sys, time
from hf_transfer.runtime.folder_lock import lock_folder
lock = lock_folder(sys.argv[1], "hf-transfer train")
print("held", flush=True)
time.sleep(600)
"""


def _env() -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def holder(tmp_path):
    """A separate process holding ``tmp_path / "held"`` (killed at the end)."""
    folder = tmp_path / "held"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline().strip() == b"held", proc.stderr.read().decode()[-2000:]
    yield folder, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_two_identical_runs_into_one_folder(tmp_path):
    args = tiny_args(tmp_path, mode="task", method="full", output_dir=str(tmp_path / "shared"))
    gate = str(tmp_path / "gate")
    script = tmp_path / "gated_run.py"
    script.write_text(GATED_RUN)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(args), gate],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.time() + 300
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if len(list(tmp_path.glob("gate.reached.*"))) == 2:
                break  # both runs are training into the one folder: the failure this test is about
            time.sleep(0.1)
        Path(gate).touch()  # the run that holds the folder goes on
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [err[-3000:] for _, err in outs]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    refusal = outs[loser][1]
    assert f"by hf-transfer train (pid {procs[winner].pid} on host {socket.gethostname()}" in refusal, refusal[-2000:]
    assert str(tmp_path / "shared") in refusal and "one writer at a time" in refusal
    # the winner's folder is whole: its results, identity, card and examples, and nothing of the loser's
    out = tmp_path / "shared"
    results = json.loads((out / "results.json").read_text())
    assert results["hyperparameters"]["max_steps"] == 4
    assert json.loads((out / "run_identity.json").read_text())["max_steps"] == 4
    reference = json.loads((out / "reference_predictions.json").read_text())
    assert reference and all((out / row["file"]).is_file() for row in reference)
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    assert not (out / LOCK_FILE).exists()  # released (and removed) at the end of the run
    from hf_transfer.hub.round_trip import check_round_trip

    check_round_trip(out)  # the exported model still predicts what the winner's run predicted


def test_a_lock_left_by_a_killed_process_is_taken_over(holder, caplog):
    from hf_transfer.training.run_folder import check_output_dir

    folder, proc = holder
    with pytest.raises(FolderInUseError, match=rf"pid {proc.pid} on host {socket.gethostname()}"):
        lock_folder(folder, "hf-transfer train")
    proc.kill()  # kill -9: no chance to release or remove anything
    proc.wait()
    assert (folder / LOCK_FILE).is_file()  # the stale lock file is there ...
    assert check_output_dir(str(folder), {}, resume=False, overwrite=False) == []  # ... but not "another run"
    with caplog.at_level(logging.WARNING, logger="hf_transfer.runtime.folder_lock"):
        lock = lock_folder(folder, "hf-transfer train")
    assert f"left by hf-transfer train (pid {proc.pid}" in caplog.text
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_FILE).exists()


def test_push_and_evaluate_into_a_folder_a_run_writes_are_refused(holder, hub_server, capsys):
    from hf_transfer.cli.main import main
    from hf_transfer.runtime.folder_lock import check_output_folder

    folder, proc = holder
    (folder / "results.json").write_text('{"mode": "task", "metr')  # the run is writing it right now
    rc = main(["push", str(folder), "user/busy"])
    err = capsys.readouterr().err
    assert rc == 2 and f"hf-transfer train (pid {proc.pid} on host {socket.gethostname()}" in err, err
    assert hub_server.requests == []  # refused before any Hub call
    with pytest.raises(FolderInUseError, match=rf"pid {proc.pid}"):
        check_output_folder(str(folder), "hf-transfer evaluate", ("evaluation.json",), overwrite=True)
    assert (folder / "results.json").read_text() == '{"mode": "task", "metr'  # untouched


def test_the_lock_nests_in_its_thread_and_refuses_another(tmp_path):
    folder = tmp_path / "mine"
    with lock_folder(folder, "hf-transfer train"):
        with lock_folder(folder, "hf-transfer push"):  # a run pushing its own folder
            pass
        assert (folder / LOCK_FILE).is_file()  # the outer hold is still there
        errors = []
        thread = threading.Thread(target=lambda: errors.append(_try_lock(folder)))
        thread.start()
        thread.join()
        assert errors and "this process, another thread" in errors[0]
    assert not folder.exists()  # made by the lock, empty, removed with it


def _try_lock(folder) -> str:
    try:
        lock_folder(folder, "hf-transfer push").release()
    except FolderInUseError as err:
        return str(err)
    return "not refused"


DDP_RUN = """
import sys
from conftest import tiny_args
from hf_transfer.config import arguments_from_dict
from hf_transfer.training.run import run_transfer
run_transfer(*arguments_from_dict(tiny_args(sys.argv[1], mode="task", method="full", output_dir=sys.argv[2])))
"""


@pytest.mark.ddp
def test_a_refused_ddp_launch_ends_on_every_rank(holder, tmp_path):
    """Under DDP only the main process locks; when it is refused, every rank ends with the same refusal
    (none waits forever at the next barrier)."""
    folder, proc = holder
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN)
    env = {**_env(), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    done = subprocess.run(
        two_process_launch(str(script), str(tmp_path), str(folder)),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    for rank in (0, 1):
        assert re.search(rf"\[rank{rank}\]: .*FolderInUseError: .*pid {proc.pid} on host", done.stderr), done.stderr[
            -3000:
        ]
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # the holder's folder: nothing written


def test_rank_into_a_folder_another_writer_holds_is_refused_before_any_work(holder, capsys):
    """hf-transfer rank writes ranking.json, ranking.png and train configs into --output_dir: it holds the folder's
    lock too, and a held folder is refused naming the holder, before a candidate is loaded."""
    from hf_transfer.cli.main import main

    folder, proc = holder
    argv = [
        "rank",
        "--target",
        "builtin:digits-handwritten",
        "--backbones",
        "test_resnet",
        "test_vit",
        "--image_size",
        "32",
    ]
    rc = main([*argv, "--output_dir", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2 and f"pid {proc.pid} on host {socket.gethostname()}" in err, err
    assert not (folder / "ranking.json").exists()
