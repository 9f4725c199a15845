"""``aligner-chains synthesize``: questions -> upstream answers -> teacher corrections -> Q-A-C JSONL (resumable)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from aligner_chains.cli.engine import add_engine_options, check_engine_options, eval_aligner
from aligner_chains.cli.options import (
    MODEL_HELP,
    add_server_options,
    open_aligner,
    positive_int,
    print_summary,
    server_aligner,
)


def add_cli(subparsers: Any) -> None:
    """Add the ``synthesize`` subcommand."""
    parser = subparsers.add_parser(
        "synthesize",
        help="build a correction dataset: upstream answers corrected by a teacher model (train sft format)",
        description=(
            "Questions -> answers from an upstream model -> corrections from a teacher model -> JSONL of "
            "question/answer/correction. Finished questions go to OUT's .raw.jsonl log at once; re-running the "
            "same command resumes, and filter options apply when the output is written. A model SPEC is "
            "'module:factory', 'path/file.py:factory', or 'provider:model' through langchain's init_chat_model. "
            "Exit status 1 when some questions failed after retries (re-run to retry them)."
        ),
    )
    parser.add_argument(
        "--questions",
        required=True,
        help="JSONL or JSON list: strings, or objects with 'question' (or 'instruction'/'prompt') and optionally "
        "an 'answer' (then no upstream call is made for that row)",
    )
    parser.add_argument("--out", required=True, help="output JSONL (question, answer, correction)")
    parser.add_argument("--upstream", metavar="SPEC", help="the model (or chain) that answers the questions")
    parser.add_argument("--input-key", help="call the upstream with {KEY: question} instead of the question string")
    teacher = parser.add_argument_group("the teacher that writes corrections: --teacher, --aligner or --server")
    teacher.add_argument("--teacher", metavar="SPEC", help="a chat model that writes corrections from --prompt")
    teacher.add_argument(
        "--aligner",
        metavar="MODEL",
        help=f"an Aligner whose corrections are the data (the paper's multi-round pipeline); {MODEL_HELP}. "
        "With --server: the served model's name (default: the servers' only model)",
    )
    teacher.add_argument("--template", help="the Aligner's template (default: from the checkpoint)")
    teacher.add_argument("--device", default="auto", help="where a local --aligner runs: auto, cpu, cuda, ...")
    teacher.add_argument("--dtype", default="auto", help="a local --aligner's dtype: auto, float32, bfloat16, ...")
    teacher.add_argument("--max-new-tokens", type=positive_int, help="the Aligner's limit per correction")
    parser.add_argument(
        "--prompt", help="correction prompt: JSON/YAML with 'system' and/or 'user', or a text file (user template)"
    )
    parser.add_argument("--identity", type=float, default=0.0, help="fraction of rows also written as Q-A-A rows")
    parser.add_argument("--identical", choices=["keep", "drop"], default="keep", help="corrections equal to the answer")
    parser.add_argument("--refusal-pattern", action="append", help="regex of a teacher refusal (replaces defaults)")
    parser.add_argument("--keep-refusals", action="store_true", help="no refusal filter")
    parser.add_argument("--max-length-ratio", type=float, default=4.0, help="runaway: longer than RATIO x answer")
    parser.add_argument("--length-slack", type=int, default=400, help="characters allowed beyond the ratio")
    parser.add_argument("--max-chars", type=int, default=20000, help="runaway: longer than this many characters")
    parser.add_argument("--no-dedupe", action="store_true", help="keep repeated questions")
    parser.add_argument("--max-concurrency", type=positive_int, default=8)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_server_options(parser)
    add_engine_options(parser)
    parser.set_defaults(func=cmd_synthesize)


def _teacher(args: argparse.Namespace) -> Any:
    """The teacher the options name: a chat model (--teacher), a local Aligner (--aligner), or servers."""
    from aligner_chains.evaluate.specs import load_object

    if args.teacher and (args.server or args.aligner):
        raise SystemExit("synthesize: give one teacher: --teacher SPEC, or an Aligner (--aligner MODEL, --server URL).")
    check_engine_options(args)
    if args.teacher:
        if args.engine == "ray":
            raise SystemExit("synthesize: --engine ray runs an Aligner teacher (--aligner or --server), not --teacher.")
        return load_object(args.teacher, what="teacher")
    if args.engine == "ray":
        return eval_aligner(args)
    if args.server:
        return server_aligner(args, args.aligner)
    if args.aligner:
        options = {"template": args.template, "device": args.device, "dtype": args.dtype}
        return open_aligner(args.aligner, max_new_tokens=args.max_new_tokens, **options)
    raise SystemExit("synthesize: name the teacher: --teacher SPEC (a chat model), --aligner MODEL or --server URL.")


def cmd_synthesize(args: argparse.Namespace) -> int:
    from aligner_chains.evaluate.specs import load_object
    from aligner_chains.synthesize import CorrectionPrompt, SynthesisFilters, synthesize

    started = time.perf_counter()
    filters = SynthesisFilters(
        identical=args.identical,
        max_length_ratio=args.max_length_ratio if args.max_length_ratio > 0 else None,
        length_slack=args.length_slack,
        max_chars=args.max_chars if args.max_chars > 0 else None,
        dedupe=not args.no_dedupe,
        **({"refusal_patterns": []} if args.keep_refusals else {}),
        **({"refusal_patterns": args.refusal_pattern} if args.refusal_pattern and not args.keep_refusals else {}),
    )
    stats = synthesize(
        args.questions,
        teacher=_teacher(args),
        upstream=load_object(args.upstream, what="upstream") if args.upstream else None,
        output=args.out,
        prompt=CorrectionPrompt.from_file(args.prompt) if args.prompt else None,
        filters=filters,
        identity=args.identity,
        input_key=args.input_key,
        max_concurrency=max(args.max_concurrency, args.concurrency) if args.server else args.max_concurrency,
        retries=args.retries,
        backoff=args.backoff,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(stats.summary())
    if stats.errors:
        print(
            f"{stats.errors} question(s) failed after retries; re-run the same command to retry them.", file=sys.stderr
        )
    dropped = stats.duplicates + sum(stats.dropped.values())
    print_summary(
        "synthesize",
        time.perf_counter() - started,
        done=stats.written,
        skipped=dropped,
        skipped_why="duplicates and filtered corrections" if dropped else "",
        failed=stats.errors,
    )
    return 1 if stats.errors else 0
