"""The accelerate launch configs in recipes/accelerate/: each loads with accelerate's own config class, and
what ``accelerate launch`` makes of it (the processes' environment, the torchrun arguments) is what it is for.

An FSDP or DeepSpeed launch on the CPU is refused: accelerate 1.16 switches to FSDP only for GPU process groups
(``AcceleratorState`` sets ``DistributedType.FSDP`` inside its MULTI_GPU/NPU/XPU/... branch; DeepSpeed needs
``not cpu``), so on the CPU such a launch trains as plain DDP (MULTI_CPU, no parameter is a DTensor) without a
word. The FSDP run itself needs GPUs (scripts/gpu_bench.sh's machine)."""

import os
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from hf_transfer.config import arguments_from_dict, check_training_arguments
from hf_transfer.config.checks import check_launch_engine, check_own_step, launched_engine
from hf_transfer.errors import TransferConfigError

from conftest import tiny_args

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "accelerate")
#: file -> (distributed type, processes, machines)
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, 1),
    "ddp_8gpu.yaml": (DistributedType.MULTI_GPU, 8, 1),
    "ddp_multinode.yaml": (DistributedType.MULTI_GPU, 16, 2),
    "fsdp2_8gpu.yaml": (DistributedType.FSDP, 8, 1),
    "deepspeed_zero2_8gpu.yaml": (DistributedType.DEEPSPEED, 8, 1),
}


def _launch_args(name: str, *flags: str):
    """``accelerate launch --config_file NAME FLAGS script.py`` resolved as the launcher resolves it."""
    parsed = launch_command_parser().parse_args(["--config_file", os.path.join(CONFIGS, name), *flags, "train.py"])
    args, defaults, _ = _validate_launch_command(parsed)
    return args, defaults


def test_every_config_is_listed_and_loads_with_accelerates_config_class():
    assert sorted(n for n in os.listdir(CONFIGS) if n.endswith(".yaml")) == sorted(EXPECTED)
    launch_options = {a.dest for a in launch_command_parser()._actions}
    for name, (kind, processes, machines) in EXPECTED.items():
        config = ClusterConfig.from_yaml_file(os.path.join(CONFIGS, name))  # unknown keys raise here
        assert (config.distributed_type, config.num_processes, config.num_machines) == (kind, processes, machines)
        assert config.mixed_precision == "bf16" and not config.use_cpu, name
        # every key of the engine sections is an option accelerate reads (it would ignore any other)
        for key in {**config.fsdp_config, **config.deepspeed_config}:
            assert key in launch_options, f"{name}: {key} is not an accelerate launch option"


def test_fsdp2_config_reaches_the_processes_as_fsdp_version_2():
    args, _ = _launch_args("fsdp2_8gpu.yaml")
    env = prepare_multi_gpu_env(args)
    assert args.nproc_per_node == "8"
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert (env["FSDP_AUTO_WRAP_POLICY"], env["FSDP_STATE_DICT_TYPE"]) == ("SIZE_BASED_WRAP", "FULL_STATE_DICT")
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"


def test_multinode_config_takes_machine_rank_and_main_process_ip_from_the_command_line():
    args, _ = _launch_args("ddp_multinode.yaml", "--machine_rank", "1", "--main_process_ip", "10.1.2.3")
    prepare_multi_gpu_env(args)
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert args.rdzv_endpoint == "10.1.2.3:29500"
    assert ClusterConfig.from_yaml_file(os.path.join(CONFIGS, "ddp_multinode.yaml")).main_process_ip is None


def test_deepspeed_config_reaches_the_processes_as_zero_stage_2():
    args, defaults = _launch_args("deepspeed_zero2_8gpu.yaml")
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"


def test_single_gpu_and_ddp_configs_start_the_processes_they_say():
    single, _ = _launch_args("single_gpu.yaml")
    ddp, _ = _launch_args("ddp_8gpu.yaml")
    assert (single.multi_gpu, single.num_processes) == (False, 1)
    assert (ddp.multi_gpu, ddp.use_fsdp, ddp.num_processes) == (True, False, 8)


def test_a_sharded_launch_on_the_cpu_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(TransferConfigError, match="launched for FSDP.*plain DDP"):
        check_training_arguments(*arguments_from_dict(tiny_args(tmp_path, mode="task")))
    # DeepSpeed alike (TrainingArguments itself needs the deepspeed package under that launch: checked alone)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert launched_engine() == "DeepSpeed"
    with pytest.raises(TransferConfigError, match="launched for DeepSpeed"):
        check_launch_engine(SimpleNamespace(use_cpu=True))


def test_a_method_that_owns_its_step_is_refused_under_a_sharded_launch(tmp_path, monkeypatch):
    args, _ = arguments_from_dict(tiny_args(tmp_path, mode="domain", method="mcd", source="builtin:digits-printed"))
    plain = SimpleNamespace(fsdp="", deepspeed=None)  # the launch config never sets TrainingArguments.fsdp
    check_own_step(args, plain)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(TransferConfigError, match="owns its training step"):
        check_own_step(args, plain)
