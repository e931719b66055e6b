"""``hf-transfer push OUTPUT_DIR REPO_ID [--space USER/NAME]``: its options; the check and the one-commit push are
:func:`hf_transfer.hub.push.push_run`'s, the Space's :func:`hf_transfer.app.space.push_space`'s."""

from __future__ import annotations

import argparse

from hf_transfer.runtime.logs import setup_logging


def main(argv: list[str]) -> int:
    """``hf-transfer push OUTPUT_DIR REPO_ID [--private] [--revision BRANCH] [--create_pr] [--space USER/NAME] ...``"""
    parser = argparse.ArgumentParser(
        prog="hf-transfer push",
        description="Check a finished run folder (round trip through pipeline()), write its model card and push "
        "it to the Hub in one commit. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("output_dir", help="the run's output folder (with results.json)")
    parser.add_argument("repo_id", help="Hub repo id (namespace/name, or name for your own namespace)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created when new)")
    parser.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit_message", default=None, help="default: a summary of the run")
    parser.add_argument(
        "--baseline", default=None, help="results.json (or run folder) of the source-only baseline, shown in the card"
    )
    parser.add_argument(
        "--upper_bound", default=None, help="results.json (or run folder) of a model trained on the target labels"
    )
    parser.add_argument("--license", default=None, help="default: the base model's license when known")
    parser.add_argument("--skip_round_trip_check", action="store_true", help="push without the pipeline() check")
    parser.add_argument(
        "--allow_local_base",
        action="store_true",
        help="push a LoRA adapter whose base is a local folder (it then loads only where that folder exists)",
    )
    parser.add_argument(
        "--space",
        default=None,
        metavar="USER/NAME",
        help="also create or update a Gradio Space that demos the model (app.py, pinned requirements.txt, README), "
        "with the same --private and --create_pr; the model card links to it",
    )
    args = parser.parse_args(argv)
    setup_logging()

    from hf_transfer.hub.push import push_run

    if args.space is not None:  # before the model's push: a bad Space id costs nothing
        from hf_transfer.app.space import check_space_id

        check_space_id(args.space)

    # PushError, RoundTripError and the rest end in main(): one line, or the traceback with --debug
    result = push_run(
        args.output_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        baseline_results=args.baseline,
        upper_bound_results=args.upper_bound,
        license=args.license,
        check=not args.skip_round_trip_check,
        allow_local_base=args.allow_local_base,
        space_id=args.space,
    )
    if result is None:
        return 0
    print(
        f"Pushed {len(result.files)} files to {result.repo_id}@{result.revision}: {result.pr_url or result.commit_url}"
    )
    if args.space is not None:
        from hf_transfer.app.space import push_space

        space = push_space(
            args.space,
            result.repo_id,
            args.output_dir,
            revision=None if result.revision == "main" else result.revision,
            private=args.private,
            create_pr=args.create_pr,
        )
        print(f"Pushed the Space {space.space_id} ({', '.join(space.files)}): {space.pr_url or space.url}")
    return 0
