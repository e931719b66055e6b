"""timm's training recipe pieces that act on one image or one normalised batch: the augmentation policy
(``--aa``) and random erasing (``--reprob``, ``--remode``).

Both input paths use timm's own implementations, so a timm user's flags mean here what they mean in timm's
``train.py``:

* the stock path builds its transform with ``timm.data.create_transform(is_training=True, ...)``
  (:func:`stock_train_transform`);
* the fast path (:class:`~hf_transfer.data.augment.BatchAugment`) applies the same policy object to each uint8
  crop of the batch (:func:`policy_transform`, per image, in the training step's process so the draws come from
  the RNG that the Trainer's checkpoints save) and timm's ``RandomErasing`` to the normalised batch on its device.

Policies: every ``auto_augment`` string timm parses (``rand-m9-mstd0.5-inc1``, ``original``, ``v0``, ``3a``,
``augmix-m5-w3``, ...), plus ``trivial``: torchvision's ``TrivialAugmentWide`` (timm has no string for it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hf_transfer.data.augment import CROP_RANGES, FLIP
from hf_transfer.data.transforms import _INTERPOLATION, AUGMENTATIONS, DataConfig, eval_transform
from hf_transfer.errors import TransferConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torchvision import transforms as T

__all__ = ["ERASE_MODES", "check_policy", "policy_transform", "random_erasing", "stock_train_transform"]

#: timm's ``RandomErasing`` fill modes
ERASE_MODES = ("const", "rand", "pixel")
_TRIVIAL = "trivial"


def _timm_policy_params(cfg: DataConfig) -> dict[str, Any]:
    """The hyper-parameters ``create_transform`` gives a policy: translation and fill from the data config."""
    from timm.data.transforms import str_to_pil_interp

    params: dict[str, Any] = {
        "translate_const": int(cfg.size * 0.45),
        "img_mean": tuple(min(255, round(255 * x)) for x in cfg.mean),
    }
    if cfg.interpolation in _INTERPOLATION:
        params["interpolation"] = str_to_pil_interp(cfg.interpolation)
    return params


def policy_transform(aa: str, cfg: DataConfig) -> Callable[[Image.Image], Image.Image]:
    """PIL -> PIL: the augmentation policy ``aa`` as timm's ``create_transform`` builds it for ``cfg``."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    if aa == _TRIVIAL:
        from torchvision import transforms as T

        fill: list[float] = [min(255, round(255 * x)) for x in cfg.mean]  # the mean colour, as timm's policies fill
        interpolation = _INTERPOLATION.get(cfg.interpolation, T.InterpolationMode.BILINEAR)
        return T.TrivialAugmentWide(interpolation=interpolation, fill=fill)
    params = _timm_policy_params(cfg)
    try:
        if aa.startswith("rand"):
            return rand_augment_transform(aa, params)
        if aa.startswith("augmix"):
            return augment_and_mix_transform(aa, {**params, "translate_pct": 0.3})
        return auto_augment_transform(aa, params)
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        raise TransferConfigError(
            f"aa={aa!r} is not an augmentation policy timm can parse ({type(err).__name__}: {err}). Use timm's "
            "strings, e.g. rand-m9-mstd0.5-inc1 (RandAugment), original or v0 (AutoAugment), 3a, augmix-m5-w3, or "
            "trivial (TrivialAugmentWide)."
        ) from err


def check_policy(aa: str) -> None:
    """Refuse an ``aa`` string timm cannot parse, before anything loads (the policy is built once, cheaply)."""
    policy_transform(aa, DataConfig())


def random_erasing(reprob: float, remode: str, device: str | torch.device = "cpu") -> Callable[[Any], Any]:
    """Random erasing by timm's ``RandomErasing`` on normalised tensors (an image, or a batch drawn per image)."""
    from timm.data.random_erasing import RandomErasing

    if remode not in ERASE_MODES:
        raise TransferConfigError(f"remode={remode!r}: choose one of {ERASE_MODES} (timm's random-erasing fills).")
    return RandomErasing(reprob, mode=remode, max_count=1, num_splits=0, device=str(device))


def stock_train_transform(
    cfg: DataConfig, augment: str = "standard", aa: str | None = None, reprob: float = 0.0, remode: str = "pixel"
) -> T.Compose:
    """The stock path's PIL training transform: timm's ``create_transform(is_training=True)`` for the recipe.

    ``augment`` sets the crop range and flip (``standard``: timm's defaults; ``light``: small shifts, no flip);
    colour jitter stays off, as timm turns it off under a policy. ``none``: the eval transform."""
    from timm.data import create_transform
    from torchvision import transforms as T

    if augment not in AUGMENTATIONS:
        raise TransferConfigError(f"Unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}.")
    if augment == "none":
        return eval_transform(cfg)
    scale, ratio = CROP_RANGES[augment]  # the fast path's ranges and flip, so both paths draw alike
    hflip = 0.5 if FLIP[augment] else 0.0
    primary, secondary, final = create_transform(
        cfg.size,
        is_training=True,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        color_jitter=None,  # type: ignore[arg-type]  # timm annotates a number, but None is its documented "off"
        auto_augment=None if aa == _TRIVIAL else aa,
        interpolation=cfg.interpolation if cfg.interpolation in _INTERPOLATION else "bilinear",
        mean=cfg.mean,
        std=cfg.std,
        re_prob=reprob,
        re_mode=remode,
        separate=True,
    )
    policy = [policy_transform(aa, cfg)] if aa == _TRIVIAL else list(secondary.transforms)
    return T.Compose([*primary.transforms, *policy, *final.transforms])
