"""The Inference Endpoints serving contract, stand-alone: serve a Hub repo the way the Endpoints toolkit's
default container does and print what it answers, as JSON on the last line of stdout.

What the toolkit does (huggingface-inference-toolkit: webservice_starlette.py, handler.py, utils.py), and so
what this script does, with stdlib + stock libraries only (no hf_transfer: the container does not have it):

1. download the repo into a directory (``snapshot_download(repo, local_dir=dir)``);
2. if the repo has ``handler.py``: import it and build ``EndpointHandler(dir)``; else
   ``pipeline("image-classification", model=dir, feature_extractor=dir, device=-1)``;
3. per request: ``handler({"inputs": PIL.Image, "parameters": {...}})``, or for the default handler
   ``pipeline(inputs, **parameters)``, which answers ``[{"label", "score"}, ...]``.

Run it in a venv with the toolkit's pins (scripts/setup_endpoints.sh: transformers 4.51.3,
huggingface_hub 0.30.2, peft 0.15.1) and HF_ENDPOINT/HF_HOME pointing at the Hub and a fresh cache::

    .venv-endpoints/bin/python tests/endpoint_contract.py user/repo --examples

``--toolkit`` uses the REAL toolkit instead (its ``_load_repository_from_hf`` download filter and
``get_inference_handler_either_custom_or_default_handler``; its ``src`` on PYTHONPATH, under its pins).
``--no-handler`` ignores ``handler.py`` (what ``pipeline(model=repo)`` with no arguments does);
``--peft-subfolder adapter`` instead loads the adapter in that subfolder the way the model card says
(``PeftModel.from_pretrained(base, repo, subfolder=...)``), to check that the pinned peft supports it.
Exit status 0 when served (``"served": true``), 3 when loading failed (``"served": false, "error": ...``).
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import traceback


def _default_pipeline(model_dir):
    from transformers import pipeline

    clf = pipeline("image-classification", model=model_dir, feature_extractor=model_dir, device=-1)
    return lambda data: clf(data["inputs"], **data.get("parameters", {}))


def _custom_handler(model_dir):
    spec = importlib.util.spec_from_file_location("handler.EndpointHandler", os.path.join(model_dir, "handler.py"))
    sys.path.insert(0, model_dir)
    module = importlib.util.module_from_spec(spec)
    sys.modules["handler.EndpointHandler"] = module
    spec.loader.exec_module(module)
    return module.EndpointHandler(model_dir)


def _peft_subfolder(repo, revision, model_dir, subfolder):
    """The model card's code for the adapter in ``subfolder`` (labels from its hf_transfer_adapter.json)."""
    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    info = json.load(open(os.path.join(model_dir, subfolder, "hf_transfer_adapter.json")))
    labels = info["label_names"]
    kwargs = {}
    if info["stock_loading"]["needs_label_kwargs"]:
        kwargs = dict(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    proc = info["stock_loading"]["processor"]
    processor = getattr(transformers, proc["class"]).from_pretrained(
        repo, subfolder=subfolder, revision=revision, **proc["kwargs"]
    )
    base = AutoModelForImageClassification.from_pretrained(
        info["base_model_name_or_path"], revision=info.get("base_revision"), **kwargs
    )
    model = PeftModel.from_pretrained(base, repo, subfolder=subfolder, revision=revision).eval()

    def serve(data):
        with torch.no_grad():
            probs = model(**processor(data["inputs"].convert("RGB"), return_tensors="pt")).logits.softmax(-1)[0]
        k = data.get("parameters", {}).get("top_k", 5)
        order = probs.argsort(descending=True)[:k].tolist()
        return [{"label": model.config.id2label[i], "score": float(probs[i])} for i in order]

    return serve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--images", nargs="*", default=[], help="image files to send (besides --examples)")
    parser.add_argument("--examples", action="store_true", help="send the repo's reference_predictions.json images")
    parser.add_argument("--top_k", type=int, default=None, help="default: every class")
    parser.add_argument("--no-handler", action="store_true", help="ignore handler.py: the default pipeline only")
    parser.add_argument("--peft-subfolder", default=None, help="load the adapter in this subfolder as the card does")
    parser.add_argument("--toolkit", action="store_true", help="serve with huggingface_inference_toolkit itself")
    args = parser.parse_args(argv)

    import huggingface_hub
    import transformers
    from huggingface_hub import snapshot_download
    from PIL import Image

    out = {"repo": args.repo, "transformers": transformers.__version__, "huggingface_hub": huggingface_hub.__version__}
    model_dir = tempfile.mkdtemp(prefix="endpoint_repo_")
    if args.toolkit:
        from huggingface_inference_toolkit.utils import _load_repository_from_hf

        _load_repository_from_hf(args.repo, model_dir, framework="pytorch", revision=args.revision)
    else:
        snapshot_download(args.repo, revision=args.revision, local_dir=model_dir)
    files = list(args.images)
    if args.examples:
        refs = json.load(open(os.path.join(model_dir, "reference_predictions.json")))
        files += [os.path.join(model_dir, r["file"]) for r in refs]
    try:
        if args.toolkit:
            from pathlib import Path

            from huggingface_inference_toolkit.handler import get_inference_handler_either_custom_or_default_handler

            out["how"] = "huggingface_inference_toolkit get_inference_handler_either_custom_or_default_handler"
            serve = get_inference_handler_either_custom_or_default_handler(Path(model_dir), task="image-classification")
        elif args.peft_subfolder:
            out["how"] = f"PeftModel.from_pretrained(base, repo, subfolder={args.peft_subfolder!r})"
            serve = _peft_subfolder(args.repo, args.revision, model_dir, args.peft_subfolder)
        elif os.path.isfile(os.path.join(model_dir, "handler.py")) and not args.no_handler:
            out["how"] = "handler.py EndpointHandler(dir)"
            serve = _custom_handler(model_dir)
        else:
            out["how"] = "pipeline('image-classification', model=dir, feature_extractor=dir, device=-1)"
            serve = _default_pipeline(model_dir)
    except Exception as err:
        traceback.print_exc()
        print(json.dumps({**out, "served": False, "error": f"{type(err).__name__}: {err}"[:2000]}))
        return 3
    predictions = []
    for path in files:
        data = {"inputs": Image.open(path)}
        if args.top_k:
            data["parameters"] = {"top_k": args.top_k}
        else:
            data["parameters"] = {"top_k": 10**6}
        predictions.append(serve(data))
    out.update(served=True, files=[os.path.relpath(f, model_dir) if f.startswith(model_dir) else f for f in files])
    out["predictions"] = predictions
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
