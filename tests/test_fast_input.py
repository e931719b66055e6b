"""Fast input path: the decoded uint8 cache (hf_transfer.data.decoded) and batched device augmentation
(hf_transfer.data.augment).

Correctness, never speed: crop parameters are distributed like torchvision's
``RandomResizedCrop.get_params``, augmented pixels have the stock statistics, eval outputs equal the
stock eval transform, and the cache is reused, memory-mapped and written atomically. Statistical
tests are seeded (deterministic) and each one also checks that a wrong variant would be rejected.
"""

from __future__ import annotations

import math
import os
import pickle
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from hf_transfer.data import augment as augment_module
from hf_transfer.data import decode as decode_module
from hf_transfer.data import decoded as decoded_module
from hf_transfer.data.augment import BatchAugment, sample_crop_params
from hf_transfer.data.decoded import DecodedImages, collate_decoded, resolve_storage_format, split_kind_for
from hf_transfer.data.paired import ImageDomainDataset, PairedDataset, collate_images
from hf_transfer.data.transforms import DataConfig, eval_transform, train_transform
from hf_transfer.errors import TransferConfigError

RANGES = {"standard": ((0.08, 1.0), (3 / 4, 4 / 3)), "light": ((0.75, 1.0), (0.9, 1.1))}


# ------------------------------------------------------------------------------------------
# helpers


def _photo(h: int, w: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A structured test image: colour ramps, a disk and some noise (so crops and flips show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1), 128 + 60 * np.sin(xx / 5 + yy / 7)], -1)
    disk = (xx - 0.3 * w) ** 2 + (yy - 0.6 * h) ** 2 < (0.2 * min(h, w)) ** 2
    arr[disk] = (250, 20, 90)
    arr += rng.normal(0, 8, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray((np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)))
        return img
    if mode == "P":
        return img.convert("P", palette=Image.ADAPTIVE, colors=64)
    return img.convert(mode)


def _dataset(images, labels=None) -> datasets.Dataset:
    labels = labels if labels is not None else [i % 3 for i in range(len(images))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def _torchvision_params(n: int, h: int, w: int, scale, ratio, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    img = torch.empty(3, h, w)
    return np.array([T.RandomResizedCrop.get_params(img, scale, ratio) for _ in range(n)], dtype=np.float64)


def _ours(n: int, h: int, w: int, scale, ratio, seed: int = 1) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    top, left, ch, cw = sample_crop_params(torch.full((n,), h), torch.full((n,), w), scale, ratio, generator=g)
    return torch.stack([top, left, ch, cw], 1).double().numpy()


def _same_distribution(a: np.ndarray, b: np.ndarray, h: int, w: int) -> float:
    """Smallest KS p-value over area fraction, log aspect ratio and the box centre (x, y)."""
    feats = [
        lambda p: p[:, 2] * p[:, 3] / (h * w),
        lambda p: np.log(p[:, 3] / p[:, 2]),
        lambda p: (p[:, 1] + p[:, 3] / 2) / w,
        lambda p: (p[:, 0] + p[:, 2] / 2) / h,
    ]
    return min(stats.ks_2samp(f(a), f(b)).pvalue for f in feats)


# ------------------------------------------------------------------------------------------
# crop parameters: same distribution as RandomResizedCrop.get_params


@pytest.mark.parametrize(
    "augment,hw",
    [
        ("standard", (256, 320)),
        ("light", (256, 320)),
        ("standard", (60, 400)),
        ("standard", (7, 5)),
        ("light", (32, 32)),
    ],
)
def test_crop_params_distribution_matches_torchvision(augment, hw):
    h, w = hw
    scale, ratio = RANGES[augment]
    ref = _torchvision_params(2000, h, w, scale, ratio)
    ours = _ours(4000, h, w, scale, ratio)
    assert _same_distribution(ref, ours, h, w) > 1e-3
    # valid boxes; area quantiles (this includes the central-crop fallback, frequent at 60x400)
    assert (ours[:, 2] >= 1).all() and (ours[:, 3] >= 1).all()
    assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    for q in (0.1, 0.5, 0.9):
        area_ref = np.quantile(ref[:, 2] * ref[:, 3], q) / (h * w)
        area_ours = np.quantile(ours[:, 2] * ours[:, 3], q) / (h * w)
        assert abs(area_ref - area_ours) < 0.05
    # the same criterion rejects a slightly wrong sampler (so the test can fail): the lower end
    # of the scale range or of the log-ratio range moved by 30% of the range
    (s0, s1), (r0, r1) = scale, ratio
    for wrong in (((s0 + 0.3 * (s1 - s0), s1), ratio), (scale, (r0 * (r1 / r0) ** 0.3, r1))):
        assert _same_distribution(ref, _ours(4000, h, w, *wrong), h, w) < 1e-3


def test_crop_params_fallback_is_torchvision_central_crop():
    # aspect 10:1 with ratio (0.9, 1.1) and scale (0.75, 1): no attempt can fit -> fallback
    top, left, h, w = sample_crop_params(torch.tensor([20, 200]), torch.tensor([200, 20]), (0.75, 1.0), (0.9, 1.1))
    img_wide, img_tall = torch.empty(3, 20, 200), torch.empty(3, 200, 20)
    ref_wide = T.RandomResizedCrop.get_params(img_wide, (0.75, 1.0), (0.9, 1.1))
    ref_tall = T.RandomResizedCrop.get_params(img_tall, (0.75, 1.0), (0.9, 1.1))
    assert (int(top[0]), int(left[0]), int(h[0]), int(w[0])) == ref_wide
    assert (int(top[1]), int(left[1]), int(h[1]), int(w[1])) == ref_tall


def test_crop_params_use_the_global_rng():
    torch.manual_seed(3)
    a = sample_crop_params(torch.full((8,), 64), torch.full((8,), 80))
    torch.manual_seed(3)
    b = sample_crop_params(torch.full((8,), 64), torch.full((8,), 80))
    c = sample_crop_params(torch.full((8,), 64), torch.full((8,), 80))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(b, c, strict=True))


# ------------------------------------------------------------------------------------------
# BatchAugment


def test_batch_augment_geometry_is_the_sampled_crop():
    """Output == torchvision's tensor resized_crop (bilinear, no antialias) of the sampled box (+flip)."""
    cfg = DataConfig(input_size=(3, 24, 24), interpolation="bilinear")
    x = torch.from_numpy(np.asarray(_photo(40, 56), dtype=np.uint8).transpose(2, 0, 1).copy())
    batch = x[None].repeat(16, 1, 1, 1)
    aug = BatchAugment(cfg, "standard", impl="grid", generator=torch.Generator().manual_seed(5)).train()
    out = aug(batch)
    g = torch.Generator().manual_seed(5)
    top, left, h, w = sample_crop_params(torch.full((16,), 40), torch.full((16,), 56), *RANGES["standard"], generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    for k in range(16):
        ref = TF.resized_crop(
            x.float(),
            int(top[k]),
            int(left[k]),
            int(h[k]),
            int(w[k]),
            [24, 24],
            interpolation=T.InterpolationMode.BILINEAR,
            antialias=False,
        )
        if flips[k]:
            ref = ref.flip(-1)
        ref = (ref / 255 - mean) / std
        # interior pixels (the edge row/column may differ by the padding rule when downscaling)
        assert torch.allclose(out[k, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-3), k
    assert 0 < int(flips.sum()) < 16


def test_loop_crops_match_pil_resized_crop():
    """impl="loop": for the drawn box, the output matches PIL's resized_crop (+flip) of the image."""
    cfg = DataConfig(input_size=(3, 32, 32))  # bicubic
    img = _photo(40, 56, seed=6)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())
    out = BatchAugment(cfg, "standard", impl="loop", generator=torch.Generator().manual_seed(9)).train()(
        x[None].repeat(16, 1, 1, 1)
    )
    g = torch.Generator().manual_seed(9)
    top, left, h, w = sample_crop_params(torch.full((16,), 40), torch.full((16,), 56), *RANGES["standard"], generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    for k in range(16):
        ref = TF.resized_crop(
            img, int(top[k]), int(left[k]), int(h[k]), int(w[k]), [32, 32], interpolation=T.InterpolationMode.BICUBIC
        )
        if flips[k]:
            ref = TF.hflip(ref)
        ref = TF.normalize(TF.to_tensor(ref), cfg.mean, cfg.std)
        diff = (out[k] - ref).abs()
        # torch's and PIL's uint8 bicubic kernels agree to 1 level except at a few saturated edge pixels
        assert diff.mean() < 0.01 and torch.quantile(diff.flatten(), 0.99) < 0.02 and diff.max() < 0.3, k


def test_loop_crops_split_over_threads_are_the_one_thread_bytes():
    """With several intra-op threads the CPU crop loop splits its rows over threads: same draws, same bytes,
    and the intra-op thread count is restored after the forward."""
    cfg = DataConfig(input_size=(3, 24, 24))
    x = torch.from_numpy(np.stack([np.asarray(_photo(40, 56, seed=s)).transpose(2, 0, 1) for s in range(32)]))
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            aug = BatchAugment(cfg, "standard", impl="loop", generator=torch.Generator().manual_seed(4)).train()
            outs.append(aug(x))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_crop_loop_threads_use_one_openmp_thread_and_leave_the_process_setting_alone():
    """The pool threads set their own OpenMP thread count (1); torch.set_num_threads would change every thread's,
    and toggling it around each forward slowed the model's steps."""
    from hf_transfer.data import augment

    runtime = augment._openmp_runtime()
    if runtime is None:
        pytest.skip("no OpenMP runtime found next to torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)

        def after_a_big_kernel(_):
            # a copy big enough for ATen's parallel_for: its per-thread lazy init must not reset the count
            x = torch.arange(1 << 17, dtype=torch.int32)
            torch.empty_like(x).copy_(x.flip(0))
            return runtime.omp_get_max_threads(), torch.get_num_threads()

        seen = list(augment._loop_pool(2).map(after_a_big_kernel, range(4)))
        assert seen == [(1, 1)] * 4
        assert torch.get_num_threads() == 2 and runtime.omp_get_max_threads() == 2  # this thread: unchanged
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("augment,expected", [("standard", 0.5), ("light", 0.0)])
def test_flip_rate(augment, expected):
    cfg = DataConfig(input_size=(3, 16, 16), interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    ramp = torch.linspace(0, 255, 48).round().to(torch.uint8).expand(3, 48, 48)  # brighter to the right
    aug = BatchAugment(cfg, augment).train()
    torch.manual_seed(0)
    out = aug(ramp[None].repeat(2000, 1, 1, 1))
    slope = (out[:, 0, :, -1] - out[:, 0, :, 0]).mean(1)
    flipped = (slope < 0).double().mean().item()
    assert (slope != 0).all()
    assert abs(flipped - expected) < 0.04


def _pixel_stats_stock(img: Image.Image, cfg: DataConfig, augment: str, n: int):
    tf = train_transform(cfg, augment)
    torch.manual_seed(0)
    stack = torch.stack([tf(img) for _ in range(n)])
    return stack.mean(0), stack.std(0)


def _pixel_stats_fast(img: Image.Image, cfg: DataConfig, augment: str, n: int, **kw):
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())
    aug = BatchAugment(cfg, augment, **kw).train()
    torch.manual_seed(1)
    stack = aug(x[None].repeat(n, 1, 1, 1))
    return stack.mean(0), stack.std(0)


WRONG_RANGES = {"standard": ((0.2, 1.0), (3 / 4, 4 / 3)), "light": ((0.5, 1.0), (0.9, 1.1))}


def _close(m, s, m_ref, s_ref) -> bool:
    return bool(
        (m - m_ref).abs().mean() < 0.035
        and (m - m_ref).abs().max() < 0.2
        and (s - s_ref).abs().mean() < 0.035
        and (s - s_ref).abs().max() < 0.2
    )


@pytest.mark.parametrize(
    "augment,impl,mode",
    [
        ("standard", "loop", "bicubic"),
        ("light", "loop", "bicubic"),
        ("standard", "grid", "bilinear"),
        ("light", "grid", "bicubic"),
    ],
)
def test_augmented_pixel_statistics_match_stock(augment, impl, mode, monkeypatch):
    """Per-pixel mean/std over many draws of a fixed image match the stock PIL transforms.

    At 48 px from a 40x52 image crops are (mostly) upscaled, where grid_sample and PIL's filters
    agree; the tolerances are about the draw-to-draw noise of 2000 stock draws (two seeds of the
    stock transform differ by ~0.02 mean / ~0.1 max).
    """
    cfg = DataConfig(input_size=(3, 48, 48))  # bicubic, the backbones' usual setting
    img = _photo(40, 52, seed=2)
    m_ref, s_ref = _pixel_stats_stock(img, cfg, augment, 2000)
    kw = {"interpolation": mode, "impl": impl}
    assert _close(*_pixel_stats_fast(img, cfg, augment, 2000, **kw), m_ref, s_ref)
    # a slightly wrong scale range, and the other recipe, are rejected by the same tolerances
    other = "light" if augment == "standard" else "standard"
    assert not _close(*_pixel_stats_fast(img, cfg, other, 2000, **kw), m_ref, s_ref)
    monkeypatch.setitem(augment_module.CROP_RANGES, augment, WRONG_RANGES[augment])
    assert not _close(*_pixel_stats_fast(img, cfg, augment, 2000, **kw), m_ref, s_ref)


def test_batch_augment_options_and_modes():
    cfg = DataConfig(input_size=(3, 16, 16))
    aug = BatchAugment(cfg, "standard", out_dtype=torch.bfloat16, channels_last=True)
    assert list(aug.parameters()) == [] and aug.state_dict() == {}
    x = torch.randint(0, 256, (4, 3, 20, 24), dtype=torch.uint8)
    threads = torch.get_num_threads()
    y = aug.train()(x)
    assert torch.get_num_threads() == threads  # the single-thread section restores the setting
    assert y.shape == (4, 3, 16, 16) and y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    # reproducible from the global RNG (what the Trainer checkpoints)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    assert torch.equal(a, aug(x))
    assert not torch.equal(a, aug(x))
    # eval mode is deterministic; "none" never augments
    e = aug.eval()(x)
    assert e.shape == (4, 3, 16, 16) and torch.equal(e, aug(x))
    none = BatchAugment(cfg, "none").train()
    assert torch.equal(none(x), BatchAugment(cfg, "none").eval()(x))
    with pytest.raises(TypeError):
        aug(x.float())
    # bicubic overshoot is clamped to the normalised image of [0, 255]
    extremes = torch.randint(0, 2, (8, 3, 20, 24), dtype=torch.uint8) * 255
    cub = BatchAugment(cfg, "standard", interpolation="bicubic", impl="grid").train()(extremes)
    assert (
        cub >= cub.new_tensor([-m / s for m, s in zip(cfg.mean, cfg.std, strict=True)]).view(1, 3, 1, 1) - 1e-6
    ).all()
    assert (
        cub <= cub.new_tensor([(1 - m) / s for m, s in zip(cfg.mean, cfg.std, strict=True)]).view(1, 3, 1, 1) + 1e-6
    ).all()
    with pytest.raises(TransferConfigError):
        BatchAugment(cfg, "heavy")


def test_image_size_drives_the_boxes():
    """Mixed-aspect data: boxes are drawn for the ORIGINAL (H, W), then mapped onto the storage."""
    cfg = DataConfig(input_size=(3, 16, 16), interpolation="bilinear")
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment(cfg, "standard").train()
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    assert torch.equal(a, aug(x, image_size=torch.tensor([[32, 32]] * 6)))
    torch.manual_seed(0)
    assert not torch.equal(a, aug(x, image_size=torch.tensor([[100, 400]] * 6)))


def test_eval_resizes_inputs_that_are_not_the_model_size():
    cfg = DataConfig(input_size=(3, 32, 32))
    img = _photo(48, 60, seed=4)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())[None]
    out = BatchAugment(cfg, "standard").eval()(x)[0]
    ref = eval_transform(cfg)(img)
    assert out.shape == ref.shape
    assert (out - ref).abs().mean() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cfg = DataConfig(input_size=(3, 64, 64), interpolation="bilinear")
    x = torch.randint(0, 256, (8, 3, 80, 96), dtype=torch.uint8)
    for impl, atol in (("grid", 1e-3), ("loop", 0.05)):  # loop: uint8 kernels on CPU, float on CUDA
        aug = BatchAugment(cfg, "standard", impl=impl, out_dtype=torch.bfloat16, channels_last=True).train()
        torch.manual_seed(0)
        cpu = aug(x)
        torch.manual_seed(0)
        gpu = aug.cuda()(x.cuda())
        assert gpu.device.type == "cuda" and gpu.dtype == torch.bfloat16
        assert torch.allclose(cpu.float(), gpu.float().cpu(), atol=atol + 0.05)  # + bf16 rounding
        aug.cpu()


# ------------------------------------------------------------------------------------------
# DecodedImages


@pytest.mark.parametrize(
    "cfg",
    [DataConfig(input_size=(3, 48, 48)), DataConfig(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=1.0)],
)
def test_eval_storage_equals_stock_eval_transform(tmp_path, cfg):
    images = [
        _photo(50, 70, 0),
        _photo(33, 31, 1, "L"),
        _photo(120, 80, 2, "RGBA"),
        _photo(64, 48, 3, "P"),
        _photo(20, 90, 4),
        _photo(48, 48, 5, "CMYK"),
    ]
    ds = _dataset(images)
    stock = ImageDomainDataset(ds, eval_transform(cfg))
    decoded = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path)
    assert decoded.storage_hw == (cfg.size, cfg.size)
    batch = torch.stack([decoded[i]["pixel_values"] for i in range(len(ds))])
    out = BatchAugment(cfg, "standard").eval()(batch)
    for i in range(len(ds)):
        ref = stock[i]["pixel_values"]
        assert out[i].shape == ref.shape
        assert (out[i] - ref).abs().max() < 1e-5, i
        assert decoded[i]["labels"] == stock[i]["labels"]


def test_train_storage_shapes(tmp_path):
    cfg = DataConfig(input_size=(3, 32, 32))  # storage short side floor(32 / 0.875) = 36
    big = _dataset([_photo(64, 80, k) for k in range(3)])
    d = DecodedImages(big, cfg, "train", cache_dir=tmp_path)
    assert d.storage_hw == (36, 45) and d.same_size and "image_size" not in d[0]
    assert d.image_sizes.tolist() == [[64, 80]] * 3
    small = _dataset([_photo(20, 24, k) for k in range(3)])
    assert DecodedImages(small, cfg, "train", cache_dir=tmp_path).storage_hw == (20, 24)  # native, no upscale
    mixed = _dataset([_photo(64, 80, 0), _photo(90, 30, 1)])  # no majority size: the square storage
    dm = DecodedImages(mixed, cfg, "train", cache_dir=tmp_path, with_labels=False)
    assert dm.storage_hw == (36, 36) and not dm.same_size and dm.return_image_size
    item = dm[1]
    assert set(item) == {"pixel_values", "image_size"} and item["image_size"].tolist() == [90, 30]
    # the storage is the whole image resized with the stock resampler
    ref = np.asarray(TF.resize(_photo(64, 80, 0), [36, 45], interpolation=T.InterpolationMode.BICUBIC))
    assert np.array_equal(d.images[0].transpose(1, 2, 0), ref)


def test_items_and_loader(tmp_path):
    cfg = DataConfig(input_size=(3, 16, 16))
    ds = _dataset([_photo(16 + k, 20, k) for k in range(10)], labels=[k % 3 for k in range(10)])
    d = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path)
    assert len(d) == 10
    item = d[3]
    assert item["pixel_values"].dtype == torch.uint8 and item["pixel_values"].shape == (3, 16, 16)
    assert item["labels"] == 0 and torch.equal(d[-1]["pixel_values"], d[9]["pixel_values"])
    loader = torch.utils.data.DataLoader(d, batch_size=4, shuffle=False, collate_fn=collate_images)
    first = next(iter(loader))
    assert torch.equal(first["pixel_values"], torch.stack([d[i]["pixel_values"] for i in range(4)]))
    assert first["labels"].tolist() == [0, 1, 2, 0]
    # no labels for unlabelled domains; PairedDataset + collate_images take decoded domains
    tgt = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path, with_labels=False)
    assert "labels" not in tgt[0]
    pair = collate_images([PairedDataset(d, tgt)[i] for i in range(3)])
    assert pair["target_pixel_values"].dtype == torch.uint8 and pair["labels"].tolist() == [0, 1, 2]
    # collate_decoded keeps the extra keys
    sized = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path, return_image_size=True)
    b = collate_decoded([sized[i] for i in range(2)])
    assert b["image_size"].tolist() == [[16, 20], [17, 20]] and b["labels"].dtype == torch.long
    # worker processes reopen the memmap rather than receiving its bytes
    state = pickle.dumps(d)
    assert len(state) < 10_000 and pickle.loads(state)[3]["labels"] == 0


def test_cache_hit_memmap_and_keys(tmp_path, monkeypatch):
    cfg = DataConfig(input_size=(3, 16, 16))
    ds = _dataset([_photo(30, 40, k) for k in range(5)])
    first = DecodedImages(ds, cfg, "train", cache_dir=tmp_path)
    assert first.decoded and isinstance(first.images, np.memmap)

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode_module, "_decode_chunk", boom)
    monkeypatch.setattr(decode_module, "_to_rgb", boom)
    again = DecodedImages(ds, cfg, "train", cache_dir=tmp_path)
    assert not again.decoded and again.path == first.path
    assert isinstance(again.images, np.memmap) and not again.images.flags.writeable
    assert np.array_equal(np.asarray(again.images), np.asarray(first.images))
    # anything that changes the stored bytes is a different key (so it would decode: boom)
    for other in (
        {"split_kind": "eval"},
        {"storage_size": 20},
        {"cfg": DataConfig(input_size=(3, 16, 16), interpolation="bilinear")},
    ):
        kwargs = {"cfg": cfg, "split_kind": "train", **other}
        with pytest.raises(AssertionError, match="decoded again"):
            DecodedImages(
                ds, kwargs["cfg"], kwargs["split_kind"], cache_dir=tmp_path, storage_size=kwargs.get("storage_size")
            )
    with pytest.raises(AssertionError, match="decoded again"):
        DecodedImages(ds.select([0, 1, 2]), cfg, "train", cache_dir=tmp_path)


def test_failed_decode_leaves_no_cache(tmp_path, monkeypatch):
    cfg = DataConfig(input_size=(3, 16, 16))
    ds = _dataset([_photo(30, 40, k) for k in range(6)])
    real = decode_module._decode_chunk
    calls = []

    def fail_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(decode_module, "_decode_chunk", fail_on_second)
    with pytest.raises(RuntimeError, match="disk full"):
        DecodedImages(ds, cfg, "eval", cache_dir=tmp_path, chunk_size=2)
    # decode threads may have started a few chunks past the failing one; none of it is left behind
    assert len(calls) >= 2 and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(decode_module, "_decode_chunk", real)
    ok = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path, chunk_size=2)
    assert ok.decoded and [p.name for p in tmp_path.iterdir()] == [ok.path.name]


def test_decode_with_workers_equals_in_process(tmp_path):
    cfg = DataConfig(input_size=(3, 16, 16))
    ds = _dataset([_photo(24, 30, k) for k in range(7)])
    a = DecodedImages(ds, cfg, "train", cache_dir=tmp_path / "a", chunk_size=3)
    b = DecodedImages(ds, cfg, "train", cache_dir=tmp_path / "b", chunk_size=3, num_workers=1)
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    assert np.array_equal(a.image_sizes, b.image_sizes)


def test_config_errors(tmp_path):
    cfg = DataConfig(input_size=(3, 16, 16))
    ds = _dataset([_photo(20, 20)])
    with pytest.raises(TransferConfigError, match="split_kind"):
        DecodedImages(ds, cfg, "test", cache_dir=tmp_path)
    with pytest.raises(TransferConfigError, match="image column"):
        DecodedImages(ds, cfg, cache_dir=tmp_path, image_column="img")
    with pytest.raises(TransferConfigError, match="with_labels=False"):
        DecodedImages(ds.remove_columns("label"), cfg, cache_dir=tmp_path)
    assert split_kind_for("standard", True) == "train" and split_kind_for("none", True) == "eval"
    assert split_kind_for("light", False) == "eval"
    assert decoded_module.decoded_cache_dir(tmp_path) == tmp_path
    assert math.floor(16 / cfg.crop_pct) == DecodedImages(ds, cfg, cache_dir=tmp_path).storage_size


def test_jpeg_storage_is_compact_deterministic_and_close_to_raw(tmp_path):
    """decode_cache_format=jpeg: a fraction of the raw bytes, the same pixels on every read (exact resume), within
    JPEG rounding of the raw pixels; workers decode the same bytes as the main process."""
    ds = _dataset([_photo(256, 320, seed=s) for s in range(12)])
    cfg = DataConfig(input_size=(3, 224, 224), crop_pct=0.875)
    raw = DecodedImages(ds, cfg, "train", cache_dir=tmp_path, progress=False)
    jpeg = DecodedImages(ds, cfg, "train", cache_dir=tmp_path, progress=False, storage_format="jpeg")
    assert jpeg.path != raw.path and jpeg.storage_hw == raw.storage_hw == (256, 320)
    assert sorted(os.listdir(jpeg.path)) == ["jpeg.bin", "meta.json", "offsets.npy", "sizes.npy"]
    assert jpeg.stored_bytes * 4 <= raw.stored_bytes
    rows = list(range(len(ds)))
    first = collate_decoded(jpeg.__getitems__(rows))
    assert torch.equal(first["pixel_values"], collate_decoded(jpeg.__getitems__(rows))["pixel_values"])
    assert torch.equal(first["pixel_values"][3], jpeg[3]["pixel_values"]) and first["labels"].tolist() == ds["label"]
    diff = (first["pixel_values"].float() - collate_decoded(raw.__getitems__(rows))["pixel_values"].float()).abs()
    assert diff.mean() < 8.0  # under the sigma of the noise _photo adds (the part JPEG drops first)
    loader = torch.utils.data.DataLoader(jpeg, batch_size=5, num_workers=1, collate_fn=collate_decoded)
    assert torch.equal(torch.cat([b["pixel_values"] for b in loader]), first["pixel_values"])
    # a hit reopens the entry; another quality is another entry
    again = DecodedImages(ds, cfg, "train", cache_dir=tmp_path, progress=False, storage_format="jpeg")
    assert not again.decoded and again.path == jpeg.path
    lower = DecodedImages(ds, cfg, "train", cache_dir=tmp_path, progress=False, storage_format="jpeg", jpeg_quality=50)
    assert lower.path != jpeg.path and lower.stored_bytes < jpeg.stored_bytes


@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_paired_batch_gathers_each_domain_once(tmp_path, monkeypatch, ratio):
    """PairedDataset over decoded JPEG domains: a batch is one decode per domain (one nvjpeg call each on CUDA), and
    its items are exactly the per-item ones."""
    cfg = DataConfig(input_size=(3, 16, 16))
    kwargs = {"cache_dir": tmp_path, "progress": False, "storage_format": "jpeg"}
    src = DecodedImages(_dataset([_photo(20, 24, k) for k in range(5)]), cfg, "train", **kwargs)
    tgt = DecodedImages(_dataset([_photo(20, 24, 10 + k) for k in range(7)]), cfg, "train", with_labels=False, **kwargs)
    pairs = PairedDataset(src, tgt, target_ratio=ratio)
    calls = []
    real = decoded_module.decode_jpeg_rows
    monkeypatch.setattr(decoded_module, "decode_jpeg_rows", lambda files, *a: calls.append(len(files)) or real(files))
    rows = [6, 0, 3, 6]
    batch = pairs.__getitems__(rows)
    k = int(ratio)
    assert calls == [len(rows), k * len(rows)]
    for item, i in zip(batch, rows, strict=True):
        one = pairs[i]
        assert item.keys() == one.keys() and item["labels"] == one["labels"]
        assert all(torch.equal(item[key], one[key]) for key in ("pixel_values", "target_pixel_values"))
    one_image = (3, *tgt.storage_hw)
    assert batch[0]["target_pixel_values"].shape == (one_image if k == 1 else (k, *one_image))


def test_jpeg_decoder_choice():
    """nvjpeg only when the main process gathers the batches of a CUDA run; the CPU everywhere else."""
    from hf_transfer.training.run_arguments import run_jpeg_decoder

    cpu = torch.device("cpu")
    assert decoded_module.jpeg_decode_device("cpu", 0) == cpu
    assert decoded_module.jpeg_decode_device(torch.device("cuda", 1), 0) == torch.device("cuda", 1)
    assert decoded_module.jpeg_decode_device("cuda", 2) == cpu  # forked workers never touch CUDA
    assert decoded_module.jpeg_decoder("jpeg", "cuda", 0) == "nvjpeg"
    assert decoded_module.jpeg_decoder("auto", "cuda", 0) == "nvjpeg"  # for the entries auto stores as JPEG
    assert decoded_module.jpeg_decoder("jpeg", "cuda", 4) == "cpu"
    assert decoded_module.jpeg_decoder("jpeg", "cpu", 0) == "cpu"
    assert decoded_module.jpeg_decoder("raw", "cuda", 0) is None
    for input_path, fmt, device, workers, expected in (
        ("fast", "jpeg", "cuda", 0, "nvjpeg"),
        ("fast", "jpeg", "cuda", 2, "cpu"),
        ("fast", "jpeg", "cpu", 0, "cpu"),
        ("fast", "raw", "cuda", 0, None),
        ("stock", "jpeg", "cuda", 0, None),
    ):
        args = SimpleNamespace(input_path=input_path, decode_cache_format=fmt)
        training_args = SimpleNamespace(device=torch.device(device), dataloader_num_workers=workers)
        assert run_jpeg_decoder(args, training_args) == expected


def test_jpeg_entry_for_cuda_decodes_on_the_cpu_in_workers(tmp_path):
    """An entry built for nvjpeg (decode_device cuda) says so, and its worker processes still decode on the CPU:
    the same pixels as a CPU entry (this runs without a GPU: the main process would be the one to use it)."""
    ds = _dataset([_photo(40, 48, seed=s) for s in range(6)])
    cfg = DataConfig(input_size=(3, 32, 32))
    on_cpu = DecodedImages(ds, cfg, "train", cache_dir=tmp_path, progress=False, storage_format="jpeg")
    for_cuda = DecodedImages(
        ds, cfg, "train", cache_dir=tmp_path, progress=False, storage_format="jpeg", decode_device="cuda"
    )
    assert on_cpu.jpeg_decoder == "cpu" and for_cuda.jpeg_decoder == "nvjpeg" and for_cuda.path == on_cpu.path
    raw = DecodedImages(ds, cfg, "train", cache_dir=tmp_path, progress=False, decode_device="cuda")
    assert raw.jpeg_decoder is None
    loader = torch.utils.data.DataLoader(for_cuda, batch_size=4, num_workers=1, collate_fn=collate_decoded)
    pixels = torch.cat([b["pixel_values"] for b in loader])
    assert pixels.device.type == "cpu"
    assert torch.equal(pixels, collate_decoded(on_cpu.__getitems__(list(range(len(ds)))))["pixel_values"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_batch_matches_the_cpu_decode(tmp_path):
    """decode_device cuda: a batch lands on the GPU, decoded by nvjpeg, within a few levels of libjpeg-turbo's
    pixels, and the same pixels on every read (exact resume on the same device)."""
    ds = _dataset([_photo(256, 320, seed=s) for s in range(8)])
    cfg = DataConfig(input_size=(3, 224, 224), crop_pct=0.875)
    kwargs = {"cache_dir": tmp_path, "progress": False, "storage_format": "jpeg"}
    cpu = DecodedImages(ds, cfg, "train", **kwargs)
    gpu = DecodedImages(ds, cfg, "train", decode_device="cuda", **kwargs)
    rows = list(range(len(ds)))
    on_gpu = collate_decoded(gpu.__getitems__(rows))["pixel_values"]
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8 and on_gpu.shape == (8, 3, 256, 320)
    assert torch.equal(on_gpu, collate_decoded(gpu.__getitems__(rows))["pixel_values"])
    assert torch.equal(gpu[2]["pixel_values"], on_gpu[2])
    diff = (on_gpu.cpu().float() - collate_decoded(cpu.__getitems__(rows))["pixel_values"].float()).abs()
    assert diff.mean() < 1.5 and (diff > 8).float().mean() < 0.01
    loader = torch.utils.data.DataLoader(gpu, batch_size=4, collate_fn=collate_decoded)  # the main process gathers
    batch = next(iter(loader))
    assert batch["pixel_values"].device.type == "cuda" and torch.equal(batch["pixel_values"], on_gpu[:4])


def test_auto_storage_rule_and_bad_values(tmp_path):
    assert resolve_storage_format("auto", raw_bytes=25, memory_bytes=100) == "raw"
    assert resolve_storage_format("auto", raw_bytes=26, memory_bytes=100) == "jpeg"
    assert resolve_storage_format("raw", raw_bytes=10**15) == "raw"
    ds, cfg = _dataset([_photo(40, 40)]), DataConfig(input_size=(3, 32, 32))
    with pytest.raises(TransferConfigError, match="decode_cache_format"):
        DecodedImages(ds, cfg, "eval", cache_dir=tmp_path, storage_format="png")
    with pytest.raises(TransferConfigError, match="decode_cache_quality"):
        DecodedImages(ds, cfg, "eval", cache_dir=tmp_path, storage_format="jpeg", jpeg_quality=0)
