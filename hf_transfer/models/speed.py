"""Speed options applied to the model before training and to the feature-extraction pass.

``channels_last`` (TransferArguments): NHWC memory format for convolutional backbones, which
cuDNN (tensor cores) and oneDNN run faster; ``auto`` turns it on for a convolutional backbone on CUDA
and on the CPU. Transformers (ViT: one patch-embedding convolution) gain nothing and stay NCHW.
Measured on the CPU (2 cores, one training step fwd + bwd + AdamW, fp32, NCHW ms / NHWC ms, idle,
``python benchmarks/channels_last_cpu.py``): test_resnet 1.30x at 64 px and 1.18x at 128 px; resnet18 1.19x
at 64 px and 1.17x at 224 px; resnet50 1.10x at 160 px; efficientnet_b0 1.31x at 160 px; convnext_atto 0.97x
(about even: ``--channels_last false`` turns it off). An earlier ad-hoc run of the same loop had resnet18 at
64 px at 0.88x, so short steps can go either way. Same results as NCHW up to float rounding.

``torch.compile`` is NOT a TransferArguments option: ``TrainingArguments.torch_compile`` (and
``torch_compile_backend`` / ``torch_compile_mode``) already compiles the training model through
accelerate; :func:`compile_options` reads the same fields so that the extraction pass of the
feature mode is compiled too.

``cpu_threads`` (TransferArguments): the training process's intra-op threads, from the core count and
what the loader workers do (:func:`resolve_cpu_threads`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_transfer.errors import TransferConfigError

if TYPE_CHECKING:
    from transformers import TrainingArguments

CHANNELS_LAST = ("auto", "true", "false")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def normalize_auto_flag(value: bool | str, option: str = "channels_last") -> str:
    """The tri-state option ``option`` as ``auto``, ``true`` or ``false``, from a bool (YAML) or a string (flags).

    Used for ``channels_last`` and ``features_on_device``; errors name ``option``."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in _TRUE:
        return "true"
    if text in _FALSE:
        return "false"
    raise TransferConfigError(f"{option} must be one of {CHANNELS_LAST} (or a bool), got {value!r}.")


def is_convolutional(model: nn.Module) -> bool:
    """More than one 2-D convolution: a convnet. A ViT has one (its patch embedding)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def use_channels_last(value: bool | str, model: nn.Module, device: torch.device | str) -> bool:
    """The resolved option: ``auto`` is on for a convolutional backbone on CUDA or the CPU, off otherwise."""
    value = normalize_auto_flag(value)
    if value == "auto":
        return torch.device(device).type in ("cuda", "cpu") and is_convolutional(model)
    return value == "true"


def set_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """4-D weights (and buffers) of ``model`` in channels_last, or back to contiguous, in place."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def compile_options(training_args: TrainingArguments) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from ``TrainingArguments.torch_compile*`` (None: eager)."""
    if not getattr(training_args, "torch_compile", False):
        return None
    options: dict[str, Any] = {}
    if training_args.torch_compile_backend:
        options["backend"] = training_args.torch_compile_backend
    if training_args.torch_compile_mode:
        options["mode"] = training_args.torch_compile_mode
    return options


def use_features_on_device(value: bool | str, nbytes: int, device: torch.device | str, fraction: float = 0.25) -> bool:
    """The resolved ``features_on_device``: ``auto`` is on for CUDA when the features fit in a share of free memory.

    The share is ``fraction`` of the device's free memory for ``nbytes`` (the head and its optimizer need almost
    nothing beside them)."""
    value = normalize_auto_flag(value, "features_on_device")
    if value != "auto":
        return value == "true"
    device = torch.device(device)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container quota)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_cpu_threads(
    value: int | str, input_path: str, num_workers: int, local_processes: int = 1
) -> tuple[int, str]:
    """The intra-op thread count of the training process from ``cpu_threads``, with the reason for it.

    ``auto``: ``OMP_NUM_THREADS`` when the user set it (a shared machine's choice wins); otherwise the
    usable cores shared by the local processes, minus one core per loader worker on the stock input path
    (each worker decodes and augments with PIL: about a core's worth of work, which would otherwise
    oversubscribe the cores and slow every step), at least 1. The fast path's workers only copy uint8 rows
    out of a memmap, so its compute keeps every core. An integer is used as given."""
    text = str(value).strip().lower()
    if text != "auto":
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise TransferConfigError(f"cpu_threads={value!r}: give 'auto' or a positive number of threads.")
        return n, "cpu_threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = max(1, usable_cores() // max(1, local_processes))
    busy = min(num_workers, cores - 1) if input_path == "stock" else 0
    return max(1, cores - busy), f"{cores} cores" + (f" - {busy} PIL loader workers" if busy else "")


def busy_machine_note(threads: int) -> str | None:
    """A warning when ``threads`` intra-op threads start on a machine whose cores other processes keep busy.

    Busy: a 1-minute load average above half the usable cores. OpenMP threads that wait for each other
    on shared cores make every step several times slower, and the thread count is not lowered silently
    (results depend on it, so it must follow the command, not the machine's load)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = usable_cores()
    if threads <= 1 or load <= 0.5 * cores:
        return None
    return (
        f"The machine is busy (load average {load:.1f} on {cores} cores) and training starts {threads} intra-op "
        "threads, which then wait for each other on shared cores; on a shared machine set OMP_NUM_THREADS=1 "
        "or --cpu_threads 1."
    )
