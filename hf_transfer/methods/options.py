"""Where each shared option acts, declared by the modes and the method properties it needs
(:func:`hf_transfer.methods.registry.declare_option`).

The set of methods an option applies to is derived from these declarations and the methods' own
(:class:`~hf_transfer.methods.registry.Needs`, ``adapters``): a new method gets the options its properties
call for, without a list to update. :mod:`hf_transfer.config` refuses an option set away from its default
where its scope excludes the run's method. Conditions on other arguments (``trade_off_warmup`` only with
the linear schedule, ...) are checked there too.
"""

from hf_transfer.methods.registry import declare_option

_DOMAIN = ("domain",)
_TASK = ("task",)
_ALIGNS = ("source_data", "target_images")  # a transfer loss between source and target features

# --- domain adaptation: a labelled source, the target's images ------------------------------------
for _name in ("trade_off", "trade_off_schedule", "trade_off_warmup", "target_batch_ratio"):
    declare_option(_name, modes=_DOMAIN, requires=_ALIGNS, why="it weights or feeds the transfer loss on target images")
declare_option("bottleneck_dim", modes=_DOMAIN, requires=("source_data",))
declare_option("partial_weighting", modes=_DOMAIN, requires=("source_data",))
declare_option(
    "partial_weighting=pada",
    modes=_DOMAIN,
    requires=_ALIGNS,
    why="PADA estimates class weights from target predictions",
)
declare_option("pada_every", modes=_DOMAIN, requires=_ALIGNS)
declare_option(
    "adabn",
    modes=_DOMAIN,
    requires=("source_data",),
    backbone=("batchnorm",),
    why="AdaBN re-estimates BatchNorm statistics on the target images",
)
declare_option(
    "checkpoint_selection",
    modes=_DOMAIN,
    why="the validators score predictions on the unlabelled target training images, which only domain mode holds",
)

# --- what trains, at which rate: a backbone whose weights train -----------------------------------
declare_option("backbone_lr_scale", modes=("domain", "task"), requires=("trainable_backbone",))
for _name in ("layer_decay", "freeze"):
    declare_option(_name, modes=_TASK, requires=("trainable_backbone",))
for _name in ("unfreeze_every", "unfreeze_unit"):
    declare_option(
        _name,
        modes=_TASK,
        requires=("trainable_backbone",),
        excludes=("schedules_unfreezing",),
        why="a method that schedules its own unfreezing (lp_ft) would be overridden",
    )
# L2-SP: alpha pulls the backbone towards its pretrained weights, beta is an L2 on the new head (it still
# acts when the backbone is frozen: it replaces weight decay on the head); BSS shrinks the features'
# small singular values, which only a backbone that trains can change
declare_option("regularizer", modes=_TASK, excludes=("adapters",), why="the adapters are not regularised")
declare_option("regularizer=bss", modes=_TASK, requires=("trainable_backbone",), why="frozen features cannot change")
declare_option("l2sp_alpha", modes=_TASK, requires=("trainable_backbone",), why="it pulls backbone weights")
declare_option("l2sp_beta", modes=_TASK, excludes=("adapters",))
for _name in ("bss_eta", "bss_k"):
    declare_option(_name, modes=_TASK, requires=("trainable_backbone",), why="frozen features cannot change")
declare_option("k_shot", modes=_TASK, requires=("target_labels",))
declare_option(
    "streaming",
    modes=("task", "domain"),
    excludes=("target_pass",),
    why="a stream is read batch by batch, never whole: feature mode extracts and re-reads the whole training split, "
    "and a method with target_pass (source-free SHOT, NRC, AaD) refills per-image pseudo-labels or memory banks "
    "from passes over the whole target training split",
)

# --- adapters --------------------------------------------------------------------------------------
for _name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "publish"):
    declare_option(_name, modes=_TASK, requires=("adapters",))

# --- options of one mode's input pipeline ----------------------------------------------------------
declare_option("augment", modes=("domain", "task"), why="feature mode trains on cached features of un-augmented images")
# timm's recipe: images are augmented (source and target), the labelled rows mixed; soft targets need a method
# whose losses reach the labels through a cross-entropy only
_IMAGES_WHY = "feature mode trains on cached features of un-augmented images"
for _name in ("aa", "reprob", "remode", "drop_path"):
    declare_option(_name, modes=("domain", "task"), why=_IMAGES_WHY)
for _name in ("mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "mixup_mode"):
    declare_option(
        _name,
        modes=("domain", "task"),
        requires=("soft_targets",),
        why="it mixes labelled images into probability (soft) targets",
    )
for _name in ("feature_cache_dir", "features_on_device", "head_solver", "feature_dtype"):
    declare_option(_name, modes=("feature",))
declare_option("feature_batch_size", modes=("feature", "domain"), why="feature extraction, or the domain-gap features")

# --- robust fine-tuning: weight averaging (every mode that trains weights on labels through the Trainer) and
# interpolation towards the starting weights (a backbone that trains, without adapters) -----------------------
for _name in ("model_ema", "model_ema_decay", "model_ema_warmup"):
    declare_option(
        _name, modes=("domain", "task"), why="feature mode fits a head on cached features, with no weights to average"
    )
declare_option(
    "validation_fraction", modes=("domain", "task"), why="the validation split chooses EMA or raw weights, or alpha"
)
declare_option(
    "wise_ft_alpha",
    modes=_TASK,
    requires=("trainable_backbone",),
    excludes=("adapters",),
    why="it interpolates fine-tuned backbone weights with the starting ones (LoRA: the exported adapter would need "
    "its scale rewritten; a frozen backbone has nothing to interpolate)",
)
