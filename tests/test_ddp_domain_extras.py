"""Domain mode's extras under real 2-process DDP (CPU, gloo): what each process ends with is the same on both
(the discriminator's weights after training, PADA's class weights, the BatchNorm statistics AdaBN re-estimated),
and the unsupervised validators are computed on every target row once (the gathered predictions give what one
process computes alone on all rows: nothing lost, nothing counted twice)."""

import json
import os
import subprocess

import pytest

from conftest import two_process_launch

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.ddp
def test_domain_extras_agree_across_processes(tmp_path):
    cmd = two_process_launch(os.path.join(HERE, "ddp_domain_extras.py"), str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    # the discriminator trained, to the same weights on both processes
    assert first["discriminator_params"] > 0 and first["discriminator"] != first["discriminator_before"]
    assert first["discriminator"] == second["discriminator"]
    # PADA re-estimated at steps 1 and 2 of 3, to the same (non-uniform) weights
    assert first["pada_updates"] == second["pada_updates"] == 2
    assert first["pada_weights"] == second["pada_weights"] and min(first["pada_weights"]) < 1.0
    # AdaBN on every target training row (40 rows, 3 batches of 16) on each process: the same statistics
    assert first["batchnorm_batches"] == second["batchnorm_batches"] == [3]
    assert first["batchnorm"] == second["batchnorm"]
    # validators: the same on both, and over the 21 gathered rows equal to one process's pass over all 21
    assert first["validators_gathered"] == second["validators_gathered"]
    for name, alone in first["validators_alone"].items():
        assert first["validators_gathered"][f"u_{name}"] == pytest.approx(alone, rel=1e-6, abs=1e-9), name
