"""Fast input path, second half: augment whole uint8 batches on the device.

The batches come from :class:`~hf_transfer.data.decoded.DecodedImages`; its module doc says how the
storage keeps the crop distribution of the stock ``RandomResizedCrop`` (the boxes are drawn from the
original ``(H, W)``).

:class:`BatchAugment`
    an ``nn.Module`` without parameters that turns a ``uint8`` batch into the normalised float
    batch the backbone expects. In ``.train()`` mode it applies a per-sample random resized crop
    (+ horizontal flip for ``"standard"``), with the crop parameters drawn exactly like
    ``torchvision.transforms.RandomResizedCrop.get_params`` (vectorised); on CUDA the crops are
    ONE ``grid_sample`` call over the batch, on the CPU a loop of uint8 antialiased resizes of
    crop views (faster there). In ``.eval()`` mode it only converts and normalises. Put it in
    front of the model (inside its ``forward``) so it runs on the model's device.

What does differ from the stock transform, by construction:

* resolution: a crop is resampled from the storage (short side ``storage_size``), not from the
  original, so crops of images much larger than the storage are softer (as if the dataset had
  been resized to ``storage_size`` first, which is what FFCV-style pipelines do);
* resampling filter: the CPU ``loop`` uses torch's antialiased uint8 kernels, within 1 grey
  level of PIL's. The CUDA ``grid`` path (``grid_sample``, ``cfg.interpolation``) does not
  antialias: most random crops are upscaled to ``size``, where both are plain interpolation;
  large crops are downscaled, by at most ``storage_size / size`` (1.14x with the default storage
  size) times the crop's aspect ratio (<= 4/3) along one axis, where PIL averages a little more.
  Per-pixel mean and std of augmented images match the stock transform to within draw-to-draw
  noise with both (tests/test_fast_input.py);
* box rounding (``loop`` only): when the storage is NOT at the original resolution (images whose
  short side exceeds ``storage_size``), box edges are rounded to storage pixels (<= 0.5 px).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hf_transfer.data.transforms import AUGMENTATIONS, DataConfig
from hf_transfer.errors import TransferConfigError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["BatchAugment", "sample_crop_params"]

#: ``RandomResizedCrop`` (scale, ratio) per augmentation, as in :func:`transforms.train_transform`.
CROP_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "standard": ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)),
    "light": ((0.75, 1.0), (0.9, 1.1)),
}
FLIP = {"standard": True, "light": False}

_GRID_MODES = ("bilinear", "bicubic", "nearest")


@torch.compiler.disable
def sample_crop_params(
    heights: torch.Tensor,
    widths: torch.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``RandomResizedCrop.get_params`` for a batch of image sizes, vectorised.

    Same algorithm as torchvision: up to ``attempts`` tries of an area fraction uniform in
    ``scale`` and an aspect ratio log-uniform in ``ratio`` (``w = round(sqrt(A r))``,
    ``h = round(sqrt(A / r))``), the first try that fits wins and its offset is uniform over the
    valid positions; if none fits, the largest central crop with the ratio clamped to ``ratio``.
    Returns int64 CPU tensors ``(top, left, height, width)``, each ``[B]``. Draws from ``generator``
    (default: torch's global CPU generator, so the Trainer's RNG checkpoints cover it).
    """
    heights = torch.as_tensor(heights).to(device="cpu", dtype=torch.int64).reshape(-1)
    widths = torch.as_tensor(widths).to(device="cpu", dtype=torch.int64).reshape(-1)
    b = heights.shape[0]
    H, W = heights.double(), widths.double()
    area = (H * W)[:, None]
    u = torch.rand(3, b, attempts, generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.round(torch.sqrt(target * aspect))  # torch.round == Python round (half to even)
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    found = fits.any(dim=1)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    w_try, h_try = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # fallback: central crop, the whole image with its aspect ratio clamped into ``ratio``
    in_ratio = W / H
    lo, hi = min(ratio), max(ratio)
    w_fb = torch.where(in_ratio > hi, torch.round(H * hi), W)
    h_fb = torch.where(in_ratio < lo, torch.round(W / lo), H)
    ch = torch.where(found, h_try, h_fb).to(torch.int64)
    cw = torch.where(found, w_try, w_fb).to(torch.int64)
    # offsets uniform over [0, H - h] x [0, W - w] (torch.randint(0, H - h + 1))
    top_rand = torch.minimum(torch.floor(u[2, :, 0] * (heights - ch + 1)).to(torch.int64), heights - ch)
    left_u = torch.rand(b, generator=generator, dtype=torch.float64)
    left_rand = torch.minimum(torch.floor(left_u * (widths - cw + 1)).to(torch.int64), widths - cw)
    top = torch.where(found, top_rand, (heights - ch) // 2)
    left = torch.where(found, left_rand, (widths - cw) // 2)
    return top, left, ch, cw


#: fewer rows than this per thread: the CPU crop loop uses fewer threads (a thread hand-off costs more)
LOOP_ROWS_PER_THREAD = 8
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


@functools.lru_cache(maxsize=1)
def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime torch's kernels use (``libgomp`` shipped in ``torch/lib``), or None."""
    import ctypes.util
    import glob

    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    candidates = sorted(
        glob.glob(os.path.join(lib_dir, "libgomp*.so*")) + glob.glob(os.path.join(lib_dir, "libiomp5*"))
    )
    candidates += [c for c in (ctypes.util.find_library("gomp"), ctypes.util.find_library("iomp5")) if c]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            lib.omp_set_num_threads  # noqa: B018 - the symbol must exist
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _one_openmp_thread() -> None:
    """Pool-thread initializer: the kernels this thread runs use ONE OpenMP thread.

    The crop loop's ops are small (one image each); with several OpenMP threads each pays a barrier,
    which on a busy machine costs far more than it gains (the loop ran 15x slower with 2 threads on 2
    shared cores). ``torch.set_num_threads`` would change the count for every thread, and changing it
    back and forth around each forward made the model's own steps slower; ``omp_set_num_threads``
    called in this thread sets this thread's OpenMP setting only.

    It must come AFTER ATen's per-thread lazy init, which sets the thread's count to the process's on the
    thread's first ``parallel_for`` (a small op such as ``zeros(1).add_(1)`` runs serially and does not
    trigger it; ``torch.get_num_threads()`` does). Otherwise every pool thread started its own team of
    OpenMP threads on its first big copy, and with more OpenMP threads than cores libgomp stops spinning
    between parallel regions for the whole process: the model's forward + backward of test_vit ran
    25-35% slower from the first augmented batch on (tests/test_fast_input.py checks the count after a
    big kernel)."""
    torch.get_num_threads()  # ATen's lazy init of this thread, now rather than on its first big kernel
    runtime = _openmp_runtime()
    if runtime is not None:  # the pool runs only where it is (see _crops_loop)
        runtime.omp_set_num_threads(1)


def _loop_pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` one-OpenMP-thread threads for the CPU crop loop (one per size)."""
    key = (os.getpid(), threads)  # a forked child (a loader worker) must not reuse its parent's dead threads
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="hf_transfer-augment", initializer=_one_openmp_thread
        )
    return _POOLS[key]


@contextlib.contextmanager
def _one_cpu_thread() -> Iterator[None]:
    """Without an OpenMP runtime to set per thread (see :func:`_one_openmp_thread`): the crop loop runs in
    this thread with one intra-op thread, then the setting is restored."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class BatchAugment(nn.Module):
    """uint8 ``[B, 3, Hs, Ws]`` -> normalised ``[B, 3, size, size]`` (``out_dtype``), on the input's device.

    ``.train()``: per-sample random resized crop (torchvision's ``get_params``, see
    :func:`sample_crop_params`) + horizontal flip with p=0.5 for ``"standard"``; ``"light"`` is
    the smaller crop range without flip; ``"none"`` behaves as in eval mode. ``.eval()``:
    ``x / 255`` and ``Normalize`` only (if the input is not ``size x size``: the eval recipe of the
    config's ``crop_mode`` on the stored image first: antialiased resize to ``floor(size / crop_pct)``
    of the short side (center), of both sides (squash) or of the long side and a pad with the mean
    colour (border), then a center crop).

    Two implementations of the crops, same parameters (the same draws give the same boxes):

    * ``"grid"`` (default on CUDA): ONE ``grid_sample`` over the batch with a per-sample affine
      grid (box + flip), on float input; no antialiasing. Boxes are exact in normalised
      coordinates whatever the storage scale.
    * ``"loop"`` (default on CPU): per sample, a uint8 crop view resized with
      ``F.interpolate(antialias=True)`` (torch's fast uint8 kernels, PIL-like filters), then one
      batched conversion + normalisation. On the CPU this reads only the crop and stays in uint8
      until the output, about 3x faster than ``grid``, and it antialiases like PIL. When the
      storage is not at the original resolution, box edges are rounded to storage pixels.

    On the CPU the crop loop's per-image resizes run in a pool of threads that each use one OpenMP thread
    (see :func:`_one_openmp_thread`); the batched conversion and normalisation use the process's threads.

    Args:
        cfg: the backbone's data config (size, mean, std, interpolation, crop_pct).
        augment: ``"standard"``, ``"light"`` or ``"none"``.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` for the crops (default
            ``cfg.interpolation``, like the stock transforms; ``"bilinear"`` is cheaper with ``grid``).
        impl: ``"auto"`` (``grid`` on CUDA, ``loop`` elsewhere), ``"grid"`` or ``"loop"``.
        out_dtype: output dtype (e.g. ``torch.bfloat16``); the arithmetic is float32.
        channels_last: return a channels_last tensor.
        generator: a ``torch.Generator`` on the CPU for the crop/flip draws (default: global RNG).
        policy: an augmentation policy, PIL -> PIL (:func:`hf_transfer.data.policies.policy_transform`, timm's
            ``--aa``), applied to each uint8 crop after the flip, as ``create_transform`` orders it. Its ops are
            PIL ones: the crops then run in the ``loop`` implementation and the policy on the CPU, one image at a
            time in this process (its draws come from python's RNG, which the Trainer's checkpoints save).
        erasing: timm's ``RandomErasing`` (``--reprob``), applied to the normalised batch on its device, each
            image drawn on its own.

    ``forward(x, image_size=None)``: ``image_size`` (int ``[B, 2]``, the original ``(H, W)`` from
    ``DecodedImages(return_image_size=True)``) is only needed for datasets of mixed aspect ratios;
    by default the boxes are drawn for an image of the input's own ``(Hs, Ws)``. Random draws are
    made on the CPU whatever the device (same boxes on CPU and CUDA for the same seed).
    """

    # the buffers registered in __init__ (float32, [1, 3, 1, 1]; they follow .to(device))
    fill: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    high: torch.Tensor

    def __init__(
        self,
        cfg: DataConfig,
        augment: str = "standard",
        *,
        interpolation: str | None = None,
        impl: str = "auto",
        out_dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        generator: torch.Generator | None = None,
        policy: Callable[[Image.Image], Image.Image] | None = None,
        erasing: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if augment not in AUGMENTATIONS:
            raise TransferConfigError(f"Unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}.")
        if impl not in ("auto", "grid", "loop"):
            raise TransferConfigError(f"impl must be 'auto', 'grid' or 'loop', got {impl!r}.")
        mode = interpolation or cfg.interpolation
        if mode not in _GRID_MODES:
            mode = "bilinear"  # the stock transforms' fallback for unknown names
        eval_mode = cfg.interpolation if cfg.interpolation in _GRID_MODES else "bilinear"
        self.augment, self.mode, self.eval_mode, self.impl = augment, mode, eval_mode, impl
        self.size = cfg.size
        self.crop_pct = float(cfg.crop_pct)
        self.crop_mode = cfg.crop_mode
        self.register_buffer(
            "fill", torch.tensor(cfg.border_fill, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.out_dtype, self.channels_last, self.generator = out_dtype, channels_last, generator
        self.policy, self.erasing = policy, erasing
        # buffers (not parameters): move with .to(device); not saved in state_dicts
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", 1.0 / (255.0 * self.std), persistent=False)
        self.register_buffer("shift", -self.mean / self.std, persistent=False)
        self.register_buffer("high", (1.0 - self.mean) / self.std, persistent=False)

    def extra_repr(self) -> str:
        return (
            f"augment={self.augment!r}, size={self.size}, mode={self.mode!r}, impl={self.impl!r}, "
            f"out_dtype={self.out_dtype}, channels_last={self.channels_last}, policy={self.policy is not None}, "
            f"erasing={self.erasing is not None}"
        )

    def forward(self, x: torch.Tensor, image_size: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"BatchAugment expects [B, 3, H, W], got {tuple(x.shape)}.")
        if x.dtype != torch.uint8:
            raise TypeError(f"BatchAugment expects uint8 pixels (DecodedImages), got {x.dtype}.")
        if self.training and self.augment != "none":
            impl = self.impl if self.impl != "auto" else ("grid" if x.is_cuda else "loop")
            if self.policy is not None:
                impl = "loop"  # the policy's PIL ops take the uint8 crops
            boxes = self._draw(x.shape[0], x.shape[2], x.shape[3], image_size)
            out = self._crops_grid(x, *boxes) if impl == "grid" else self._crops_loop(x, *boxes)
            if self.erasing is not None:
                self.erasing.device = out.device  # type: ignore[attr-defined]  # timm's RandomErasing draws its noise there
                out = self.erasing(out)
        else:
            out = self._eval_resize(x.float())
            out = out.div_(255.0).sub_(self.mean).div_(self.std)  # the same float32 ops as ToTensor + Normalize
        if out.dtype != self.out_dtype:
            out = out.to(self.out_dtype)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _eval_resize(self, x: torch.Tensor) -> torch.Tensor:
        hs, ws = x.shape[-2:]
        if (hs, ws) == (self.size, self.size):
            return x
        short = math.floor(self.size / self.crop_pct)
        if self.crop_mode == "squash":
            new = (short, short)
        elif self.crop_mode == "border":  # the long side to ``short``, as timm's ResizeKeepRatio(longest=1)
            ratio = max(hs, ws) / short
            new = (max(1, round(hs / ratio)), max(1, round(ws / ratio)))
        elif hs <= ws:
            new = (short, max(short, int(short * ws / hs)))
        else:
            new = (max(short, int(short * hs / ws)), short)
        mode = self.eval_mode if self.eval_mode != "nearest" else "nearest-exact"
        x = F.interpolate(
            x,
            size=new,
            mode=mode,
            antialias=mode in ("bilinear", "bicubic"),
            align_corners=False if mode != "nearest-exact" else None,
        )
        if min(new) < self.size:  # border: pad with the mean colour to the size first (CenterCropOrPad)
            pad_h, pad_w = max(0, self.size - new[0]), max(0, self.size - new[1])
            padded = self.fill.expand(x.shape[0], 3, new[0] + pad_h, new[1] + pad_w).clone()
            padded[..., pad_h // 2 : pad_h // 2 + new[0], pad_w // 2 : pad_w // 2 + new[1]] = x
            x, new = padded, (new[0] + pad_h, new[1] + pad_w)
        top, left = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        return x[..., top : top + self.size, left : left + self.size].clamp_(0, 255)

    @torch.compiler.disable
    def _draw(
        self, b: int, hs: int, ws: int, image_size: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes as fractions of the image, ``(x0, y0, x1, y1)`` float64 ``[B]`` each, and flips."""
        if image_size is None:
            heights = torch.full((b,), hs, dtype=torch.int64)
            widths = torch.full((b,), ws, dtype=torch.int64)
        else:
            image_size = torch.as_tensor(image_size).to("cpu", torch.int64).reshape(b, 2)
            heights, widths = image_size[:, 0], image_size[:, 1]
        scale, ratio = CROP_RANGES[self.augment]
        top, left, h, w = sample_crop_params(heights, widths, scale, ratio, generator=self.generator)
        if FLIP[self.augment]:
            flip = torch.rand(b, generator=self.generator) < 0.5
        else:
            flip = torch.zeros(b, dtype=torch.bool)
        H, W = heights.double(), widths.double()
        return left / W, top / H, (left + w) / W, (top + h) / H, flip

    def _normalise(self, out: torch.Tensor) -> torch.Tensor:
        """0..255 values (any dtype) -> float32 ``(x / 255 - mean) / std``, in two passes."""
        return out.to(torch.float32).mul_(self.scale).add_(self.shift)

    def _crops_grid(
        self,
        x: torch.Tensor,
        x0: torch.Tensor,
        y0: torch.Tensor,
        x1: torch.Tensor,
        y1: torch.Tensor,
        flip: torch.Tensor,
    ) -> torch.Tensor:
        b = x.shape[0]
        dev = x.device
        # box centre and half-size in normalised [-1, 1] coordinates (align_corners=False: -1/+1
        # are the outer pixel edges); a flip negates the x scale
        cx, cy = x0 + x1 - 1, y0 + y1 - 1
        sx, sy = torch.where(flip, x0 - x1, x1 - x0), y1 - y0
        base = (torch.arange(self.size, dtype=torch.float64) * 2 + 1) / self.size - 1  # output pixel centres
        gx = (cx[:, None] + sx[:, None] * base[None, :]).float().to(dev, non_blocking=True)
        gy = (cy[:, None] + sy[:, None] * base[None, :]).float().to(dev, non_blocking=True)
        grid = torch.empty((b, self.size, self.size, 2), dtype=torch.float32, device=dev)
        grid[..., 0] = gx[:, None, :]
        grid[..., 1] = gy[:, :, None]
        # interpolation is linear in the pixel values: normalise the input, in the pass that
        # converts it to float anyway, rather than the output
        out = F.grid_sample(self._normalise(x), grid, mode=self.mode, padding_mode="border", align_corners=False)
        if self.mode == "bicubic":  # cubic overshoot; PIL clamps to [0, 255] too
            out = torch.maximum(torch.minimum(out, self.high), self.shift)
        return out

    @torch.compiler.disable
    def _crops_loop(
        self,
        x: torch.Tensor,
        x0: torch.Tensor,
        y0: torch.Tensor,
        x1: torch.Tensor,
        y1: torch.Tensor,
        flip: torch.Tensor,
    ) -> torch.Tensor:
        b, _, hs, ws = x.shape
        # box edges in storage pixels (exact when the storage is at the original resolution)
        c0 = torch.round(x0 * ws).long().clamp_(0, ws - 1)
        r0 = torch.round(y0 * hs).long().clamp_(0, hs - 1)
        c1 = torch.maximum(torch.round(x1 * ws).long().clamp_(max=ws), c0 + 1)
        r1 = torch.maximum(torch.round(y1 * hs).long().clamp_(max=hs), r0 + 1)
        in_uint8 = x.device.type == "cpu"  # torch's uint8 resize kernels are CPU ones
        src = x if in_uint8 else x.float()
        out = torch.empty((b, 3, self.size, self.size), dtype=src.dtype, device=x.device)
        aa = self.mode in ("bilinear", "bicubic")
        mode = self.mode if self.mode != "nearest" else "nearest-exact"
        boxes = list(zip(r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist(), flip.tolist(), strict=True))

        def crop_rows(rows: range) -> None:
            for k in rows:
                a, bb, c, d, f = boxes[k]
                crop = F.interpolate(
                    src[k : k + 1, :, a:bb, c:d],
                    size=(self.size, self.size),
                    mode=mode,
                    antialias=aa,
                    align_corners=False if aa else None,
                )
                out[k] = crop[0].flip(-1) if f else crop[0]

        threads = torch.get_num_threads()
        if not in_uint8 or threads == 1:
            crop_rows(range(b))
        elif _openmp_runtime() is not None:
            # the resize kernels release the GIL: the rows split over up to the process's intra-op thread count
            # of pool threads, each running its kernels on one OpenMP thread
            parts = max(1, min(threads, b // LOOP_ROWS_PER_THREAD))
            list(_loop_pool(parts).map(crop_rows, [range(i, b, parts) for i in range(parts)]))  # waits; raises
        else:
            with _one_cpu_thread():
                crop_rows(range(b))
        if not in_uint8:
            out.clamp_(0, 255)
        if self.policy is not None:
            out = self._apply_policy(out)
        return self._normalise(out)

    @torch.compiler.disable
    def _apply_policy(self, crops: torch.Tensor) -> torch.Tensor:
        """The policy on each crop (0..255 values, any device) through PIL, back as uint8 on that device."""
        from PIL import Image

        assert self.policy is not None
        cpu = crops.detach().to("cpu")
        if cpu.dtype != torch.uint8:
            cpu = cpu.round().to(torch.uint8)
        rows = []
        for image in cpu.permute(0, 2, 3, 1).numpy():
            rows.append(torch.from_numpy(np.asarray(self.policy(Image.fromarray(image)), dtype=np.uint8).copy()))
        return torch.stack(rows).permute(0, 3, 1, 2).to(crops.device)
