"""The datasets of one run, loaded and aligned: load errors name the dataset, rows dropped by ``--skip_bad_images``
are counted per domain and split. Used by a training run and by ``hf-transfer rank`` (the same data, so the
feature cache a ranking fills is the one a feature run reads)."""

from __future__ import annotations

import datasets

from hf_transfer.config import TransferArguments
from hf_transfer.data.align import align_domains, align_to_classifier
from hf_transfer.data.classes import select_classes
from hf_transfer.data.load import check_images, load_domain
from hf_transfer.data.spec import DatasetSpec, parse_dataset_spec
from hf_transfer.data.stream import TARGET_HEAD_ROWS, TrainStream, load_train_stream, parse_class_names, stream_head
from hf_transfer.data.validation import hold_out_validation
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods import registry
from hf_transfer.models.backbones import checkpoint_label_names
from hf_transfer.training.modes import TransferData


def _load_checked(
    spec: DatasetSpec, args: TransferArguments, seed: int, role: str, skipped: dict[str, int]
) -> datasets.DatasetDict:
    """One domain, with load errors that name the dataset; ``skipped["<role>/<split>"]`` counts the
    rows dropped by ``--skip_bad_images``."""
    counts: dict[str, int] = {}
    try:
        domain = load_domain(
            spec,
            args.image_column,
            args.label_column,
            seed=seed,
            skip_bad_images=args.skip_bad_images,
            skipped=counts,
            label_names_column=args.label_names_column,
        )
    except TransferConfigError:
        raise
    except (ValueError, OSError, KeyError) as err:  # e.g. datasets' "Instruction 'test' corresponds to no data"
        raise TransferConfigError(
            f"{role} dataset {spec.display_name!r} could not be loaded: {type(err).__name__}: {err}"
        ) from err
    skipped.update({f"{role}/{split}": n for split, n in counts.items() if n})
    return domain


def needs_validation(args: TransferArguments) -> bool:
    """Whether the run chooses between weights it made (``model_ema``, ``wise_ft_alpha``) on a validation split."""
    return bool(getattr(args, "model_ema", False) or getattr(args, "wise_ft_alpha", None) is not None)


def with_validation(data: TransferData, args: TransferArguments, seed: int) -> TransferData:
    """The run's data with a validation split held out of the labelled training split.

    The source's in domain mode (the target's labels are never seen there), the target's otherwise."""
    if not needs_validation(args):
        return data
    role = "source" if args.mode == "domain" else "target"
    dsd = getattr(data, role)
    assert dsd is not None, "domain mode has a source (checked with the arguments)"
    setattr(data, role, hold_out_validation(dsd, args.validation_fraction, seed, role))
    return data


def _streaming_data(spec: DatasetSpec, args: TransferArguments) -> TransferData:
    """``--streaming``: the target's training split as a stream, its test split loaded (its head checked now, the
    rest at the first evaluation)."""
    stream = load_train_stream(spec, args.image_column, args.label_column, _class_names(args))
    _check_class_names_used(args, [stream])
    check_head(stream.test, f"Dataset {spec}", args.skip_bad_images)
    test = datasets.DatasetDict({"test": stream.test})
    return TransferData(target=test, label_names=stream.label_names, target_name=spec.display_name, train_stream=stream)


def _class_names(args: TransferArguments) -> list[str] | None:
    return parse_class_names(args.class_names) if args.class_names else None


def _check_class_names_used(args: TransferArguments, streams: list[TrainStream]) -> None:
    """``--class_names`` names the labels of a stream without ``ClassLabel`` names; refused where every stream has
    its own (it would change nothing)."""
    if args.class_names and all(s.info.get("class_names") == "features" for s in streams):
        raise TransferConfigError(
            f"class_names={args.class_names!r} has no effect: every streamed dataset of this run declares its own "
            "class names (a ClassLabel). Remove --class_names."
        )


#: test rows a streaming run decodes before training; all of them are checked at the first evaluation
#: (:func:`hf_transfer.training.modes.common.eval_dataset`), so the start does not wait for a pass over the split
STREAM_TEST_CHECK_ROWS = 256


def check_head(test: datasets.Dataset, where: str, skip: bool) -> None:
    """Decode the first rows of a streaming run's test split now; the rest are checked at the first evaluation.

    A split that cannot be read at all (a wrong column, another format) then stops the run before training."""
    head = test.select(range(min(STREAM_TEST_CHECK_ROWS, len(test))))
    check_images(datasets.DatasetDict({"test": head}), where, skip=skip)


def _streaming_domain_data(
    source_spec: DatasetSpec, target_spec: DatasetSpec, args: TransferArguments, seed: int
) -> TransferData:
    """``--streaming`` in domain mode: both training splits as streams, the label spaces matched by name from their
    ``ClassLabel`` names (no pass), the test splits loaded (checked in full at the first evaluation, their head
    now); ``target["train"]`` is a head of
    the target stream (``max_eval_samples`` rows, else ``TARGET_HEAD_ROWS``): the unlabelled target images the
    unsupervised validators score, never trained on."""
    source = load_train_stream(source_spec, args.image_column, args.label_column, _class_names(args))
    target = load_train_stream(target_spec, args.image_column, args.label_column, _class_names(args))
    _check_class_names_used(args, [source, target])
    head = stream_head(target, args.max_eval_samples or TARGET_HEAD_ROWS, seed)
    check_head(source.test, f"Dataset {source_spec}", args.skip_bad_images)
    check_head(target.test, f"Dataset {target_spec}", args.skip_bad_images)
    source_splits = datasets.DatasetDict({"test": source.test})
    target_splits = check_images(
        datasets.DatasetDict({"train": head}), f"Dataset {target_spec}", skip=args.skip_bad_images
    )
    target_splits["test"] = target.test
    aligned = align_domains(source_splits, target_splits, policy=args.label_policy)
    # rows of a class outside the label space are dropped from the head as from every split
    target.info["unlabelled_head"] = {"rows_read": len(head), "rows_kept": len(aligned.target["train"])}
    return TransferData(
        target=aligned.target,
        source=aligned.source,
        label_names=aligned.label_names,
        alignment=aligned.report,
        source_name=source_spec.display_name,
        target_name=target_spec.display_name,
        train_stream=target,
        source_stream=source,
    )


def load_transfer_data(args: TransferArguments, seed: int) -> TransferData:
    """The run's datasets: the target (its ``--target_classes``), and the source when ``--source`` is given.

    With a source, both domains have their labels aligned by name (``--label_policy``); a source-free method's
    target is aligned by name to the classifier's own classes (``id2label`` of ``--backbone``)."""
    target_spec = parse_dataset_spec(args.target)
    source_spec = parse_dataset_spec(args.source) if args.source else None
    if getattr(args, "streaming", False) and source_spec is not None and args.mode == "domain":
        return _streaming_domain_data(source_spec, target_spec, args, seed)
    if getattr(args, "streaming", False):
        return _streaming_data(target_spec, args)
    skipped: dict[str, int] = {}
    target = select_classes(_load_checked(target_spec, args, seed, "target", skipped), args.target_classes)
    if source_spec is None and not registry.get_method(str(args.method)).needs.source_data and args.mode == "domain":
        # source-free: the label space is the trained classifier's own, the target aligned to it by name
        names = checkpoint_label_names(args.backbone, args.backbone_revision, args.trust_remote_code)
        aligned = align_to_classifier(target, names)
        return TransferData(
            target=aligned.target,
            label_names=aligned.label_names,
            alignment=aligned.report,
            target_name=target_spec.display_name,
            skipped_images=skipped,
        )
    if source_spec is None:
        names = target["train"].features["label"].names
        data = TransferData(
            target=target, label_names=list(names), target_name=target_spec.display_name, skipped_images=skipped
        )
        return with_validation(data, args, seed)
    source = _load_checked(source_spec, args, seed, "source", skipped)
    aligned = align_domains(source, target, policy=args.label_policy)
    data = TransferData(
        target=aligned.target,
        source=aligned.source,
        label_names=aligned.label_names,
        alignment=aligned.report,
        source_name=source_spec.display_name,
        target_name=target_spec.display_name,
        skipped_images=skipped,
    )
    return with_validation(data, args, seed)
