"""``hf-transfer app MODEL [MODEL_B]``: its options; the page is :mod:`hf_transfer.app`'s."""

from __future__ import annotations

import argparse
import importlib.util
import time

from hf_transfer.runtime.logs import setup_logging


def main(argv: list[str]) -> int:
    """Serve ``hf-transfer app MODEL [MODEL_B] [--single] [--host H] [--port P] [--top_k K]`` until interrupted."""
    start = time.perf_counter()
    parser = argparse.ArgumentParser(
        prog="hf-transfer app",
        description="Try a model in the browser: a Gradio page on this machine (CPU) where a dropped or pasted image "
        "gets the model's top-k classes through pipeline('image-classification'), the run's example images, and "
        "the card's transfer story. With MODEL_B both models predict side by side; a domain-adaptation run is "
        "compared with its source-only baseline by default (the source-only run beside it).",
    )
    parser.add_argument("model", help="a run folder, a downloaded repo, or a Hub id (at HF_ENDPOINT)")
    parser.add_argument("model_b", nargs="?", default=None, help="a second model, shown beside MODEL")
    parser.add_argument("--single", action="store_true", help="show MODEL alone (no baseline beside it)")
    parser.add_argument("--host", default=None, help="default 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=None, help="default: the first free port from 7860")
    parser.add_argument("--top_k", type=int, default=5, help="classes shown per model (changeable on the page)")
    parser.add_argument("--title", default=None, help="the page's title (default: the models' names)")
    args = parser.parse_args(argv)
    setup_logging()

    from hf_transfer.app.models import load, page_models
    from hf_transfer.app.serve import DEFAULT_HOST, offline_gradio, serve, warm_up
    from hf_transfer.errors import TransferConfigError

    if args.top_k < 1:
        raise TransferConfigError(f"--top_k {args.top_k}: give 1 or more.")
    if importlib.util.find_spec("gradio") is None:  # before any model loads
        raise TransferConfigError(
            "hf-transfer app needs gradio: pip install 'hf-transfer-learning[app]' (or pip install 'gradio>=6,<7')."
        )
    offline_gradio()
    models = page_models(args.model, args.model_b, single=args.single)
    warm_up(models)
    title = args.title or " vs ".join(m.name.split(":")[0] for m in models)
    page, url = serve(
        models, title=title, host=args.host or DEFAULT_HOST, port=args.port, top_k=args.top_k, loader=load
    )
    print(
        f"Serving {title} at {url} (ready {time.perf_counter() - start:.1f} s after the command started); "
        "Ctrl-C stops it.",
        flush=True,
    )
    try:
        page.block_thread()
    finally:
        page.close()
    return 0
