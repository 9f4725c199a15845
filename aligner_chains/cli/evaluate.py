"""``aligner-chains eval``: judge corrections, write report.json, report.md and win_rate.png (resumable).

``--preset aligner-paper --dataset NAME`` runs the Aligner paper's protocol instead of reading ``--input``:
load the evaluation sets, answer (``--upstream``/``--answers``), correct (``--aligner``), judge on the paper's
dimensions (``--judge``), score (``--reward-model``, ``--cost-model``), one report per run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from aligner_chains.cli.engine import add_engine_options, check_engine_options, eval_aligner
from aligner_chains.cli.options import (
    add_server_options,
    job_chunk_size,
    open_aligner,
    positive_int,
    print_summary,
    server_aligner,
)
from aligner_chains.core.errors import ConfigError

LOG_NAME = "judgments.jsonl"


def add_cli(subparsers: Any) -> None:
    """Add the ``eval`` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="judge corrected vs original answers: win rates with intervals, edit statistics, a report",
        description=(
            "Judge corrected answers against their originals. Re-running the same command resumes: judged "
            f"items are read back from OUT/{LOG_NAME} and skipped. Exit status 1 when some judgments failed "
            "after retries (re-run to retry them). With --preset aligner-paper, evaluation sets replace --input."
        ),
    )
    parser.add_argument(
        "--input",
        help="JSONL or JSON list of items: question, original (or answer), corrected (or correction); "
        "also AlpacaEval outputs (instruction, original_output, output, generator)",
    )
    parser.add_argument(
        "--judge",
        action="append",
        metavar="SPEC",
        help="'module:factory' or 'path/file.py:factory' (returns a chat model, a judge or a list of them; "
        "a function (question, original, corrected) is a judge itself), or 'provider:model' through "
        "langchain's init_chat_model; repeatable",
    )
    parser.add_argument(
        "--dimension",
        action="append",
        help="dimension for chat-model judges: helpfulness, harmlessness, honesty, or a name given with "
        "--rubric; repeatable (default: helpfulness)",
    )
    parser.add_argument(
        "--rubric",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="a dimension of your own and its rubric (TEXT or @file); repeatable",
    )
    parser.add_argument("--single-order", action="store_true", help="ask chat-model judges in one order only")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument(
        "--aligner",
        help="correct the answers with this Aligner first (path, hub id or 'demo'; with --server: the served "
        "model's name, default the servers' only model)",
    )
    parser.add_argument("--template", help="the Aligner's template (default: from the checkpoint)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-new-tokens", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int, default=16, help="Aligner batch size")
    parser.add_argument(
        "--group-by", help="item field for the breakdown (default: upstream_model; with --preset: dataset)"
    )
    parser.add_argument("--max-concurrency", type=positive_int, default=8, help="judge calls in flight at once")
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    add_server_options(parser)
    add_engine_options(parser)
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true", help="skip win_rate.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    paper = parser.add_argument_group("the Aligner paper's protocol (--preset aligner-paper)")
    paper.add_argument("--preset", choices=["aligner-paper"], help="run a named evaluation protocol")
    paper.add_argument(
        "--dataset",
        action="append",
        metavar="NAME",
        help="evaluation set: beavertails, beavertails-30k, harmfulqa, empathetic_dialogues, dialogsum, truthfulqa "
        "(read from the Hugging Face cache; an uncached one names its download command); repeatable",
    )
    paper.add_argument(
        "--dataset-path", action="append", default=[], metavar="NAME=PATH", help="a local copy of a set's files"
    )
    paper.add_argument("--n", type=int, help="questions per set (default: the paper's subset, e.g. 700; 0: all)")
    paper.add_argument("--upstream", metavar="SPEC", help="chat model that answers the questions (as --judge)")
    paper.add_argument("--upstream-name", help="label of the upstream model in the report")
    paper.add_argument("--answers", help="file of question/answer(/upstream_model) rows instead of --upstream")
    paper.add_argument("--reward-model", metavar="PATH", help="safe-rlhf reward model (higher is better)")
    paper.add_argument("--cost-model", metavar="PATH", help="safe-rlhf cost model (lower is better)")
    paper.add_argument("--allow-pickle", action="store_true", help="let score models load pickle weights")
    paper.add_argument("--alpaca-eval", action="store_true", help="also write OUT/alpaca_eval/model_outputs.json")
    parser.set_defaults(func=cmd_eval)


def _rubrics(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise ConfigError(f"--rubric {pair!r}: use NAME=TEXT or NAME=@file.txt.")
        if text.startswith("@"):
            path = Path(text[1:])
            if not path.is_file():
                raise ConfigError(f"--rubric {pair!r}: no file {str(path)!r}.")
            text = path.read_text(encoding="utf-8")
        out[name.strip()] = text.strip()
    return out


def build_judges(
    specs: list[str], dimensions: list[str] | None, rubrics: dict[str, str], *, both_orders: bool = True
) -> list[Any]:
    """Judges from command-line specs: a chat model gives one `LLMJudge` per dimension."""
    from aligner_chains.evaluate.judges import Judge, LLMJudge, as_judge
    from aligner_chains.evaluate.specs import load_object

    dims = list(dimensions or [])
    dims += [name for name in rubrics if name not in dims]
    judges: list[Any] = []
    used_dims = False
    for spec in specs:
        found = load_object(spec, what="judge")
        for obj in found if isinstance(found, (list, tuple)) else [found]:
            if hasattr(obj, "ainvoke") and not isinstance(obj, Judge):
                used_dims = True
                judges += [
                    LLMJudge(obj, d, rubric=rubrics.get(d), both_orders=both_orders) for d in dims or ["helpfulness"]
                ]
            else:
                judges.append(as_judge(obj))
    if dims and not used_dims:
        raise ConfigError(
            f"--dimension/--rubric ({dims}) apply to chat-model judges, and {specs} gave none; "
            "a judge object or function carries its own dimension."
        )
    return judges


_PAPER_ONLY = (
    "dataset",
    "dataset_path",
    "upstream",
    "upstream_name",
    "answers",
    "reward_model",
    "cost_model",
    "allow_pickle",
    "n",
)


def _dataset_paths(args: argparse.Namespace) -> dict[str, str]:
    """Check the ``--preset`` options before any model loads; ``--dataset-path`` pairs as ``{name: path}``."""
    if args.input:
        raise ConfigError("--input and --preset exclude each other: the preset reads its evaluation sets (--dataset).")
    if not args.dataset:
        raise ConfigError("--preset aligner-paper needs at least one --dataset NAME, e.g. --dataset beavertails.")
    if not args.aligner:
        raise ConfigError("--preset aligner-paper corrects the upstream answers: pass --aligner MODEL.")
    if args.dimension or args.rubric:
        raise ConfigError("--dimension/--rubric do not apply to --preset: each set has the paper's dimensions.")
    if len(args.judge or []) > 1:
        raise ConfigError(f"--preset takes one --judge (a chat model or a function), got {args.judge}.")
    from aligner_chains.evaluate.datasets import eval_set

    for name in args.dataset:
        eval_set(name)  # an unknown name fails here, listing the known ones
    paths = {}
    for pair in args.dataset_path:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--dataset-path {pair!r}: use NAME=PATH.")
        if name not in args.dataset:
            raise ConfigError(f"--dataset-path {pair!r} names {name!r}, which no --dataset names ({args.dataset}).")
        paths[name] = path
    return paths


def _paper_report(args: argparse.Namespace, aligner: Any, paths: dict[str, str]) -> Any:
    """Run ``--preset aligner-paper``: the paper's protocol over the ``--dataset`` sets, one report."""
    from aligner_chains.evaluate.protocol import evaluate_paper
    from aligner_chains.evaluate.specs import load_object

    return evaluate_paper(
        args.dataset,
        aligner=aligner,
        judge=load_object(args.judge[0], what="judge") if args.judge else None,
        reward_model=args.reward_model,
        cost_model=args.cost_model,
        score_options={"device": args.device, "dtype": args.dtype, "allow_pickle": args.allow_pickle},
        upstream=load_object(args.upstream, what="upstream model") if args.upstream else None,
        upstream_name=args.upstream_name,
        answers=args.answers,
        paths=paths,
        n=args.n,
        seed=args.seed,
        log_dir=args.out,
        group_by=args.group_by or "dataset",
        max_concurrency=args.max_concurrency,
        retries=args.retries,
        backoff=args.backoff,
        batch_size=args.batch_size,
        n_resamples=args.bootstrap,
        confidence=args.confidence,
        progress=not args.quiet,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from aligner_chains.evaluate.runner import evaluate

    started = time.perf_counter()
    judges = dataset_paths = None
    if args.preset:
        dataset_paths = _dataset_paths(args)
    else:
        given = [f"--{name.replace('_', '-')}" for name in _PAPER_ONLY if getattr(args, name)]
        if given:
            raise ConfigError(f"{', '.join(given)} belong to --preset aligner-paper; add it, or use --input.")
        if not args.input or not args.judge:
            raise ConfigError("eval needs --input FILE and --judge SPEC (or --preset aligner-paper --dataset NAME).")
        judges = build_judges(args.judge, args.dimension, _rubrics(args.rubric), both_orders=not args.single_order)
    aligner = None
    args.batch_size = job_chunk_size(args, args.batch_size)
    check_engine_options(args)
    if args.engine == "ray":
        aligner = eval_aligner(args)
    elif args.server:
        aligner = server_aligner(args, args.aligner)
    elif args.aligner:
        aligner = open_aligner(
            args.aligner,
            template=args.template,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
        )
    out = Path(args.out)
    if dataset_paths is not None:
        report = _paper_report(args, aligner, dataset_paths)
    else:
        report = evaluate(
            args.input,
            judges,
            aligner=aligner,
            group_by=args.group_by or "upstream_model",
            log=out / LOG_NAME,
            max_concurrency=args.max_concurrency,
            retries=args.retries,
            backoff=args.backoff,
            batch_size=args.batch_size,
            n_resamples=args.bootstrap,
            confidence=args.confidence,
            seed=args.seed,
            progress=not args.quiet,
        )
    paths = report.save(out, plot=False if args.no_plot else None)
    if args.alpaca_eval:
        from aligner_chains.evaluate.alpaca_eval import write_model_outputs

        named = args.upstream_name and args.aligner  # the Aligner-2B submissions' naming: <aligner>_<upstream>
        generator = f"{Path(args.aligner.rstrip('/')).name}_{args.upstream_name}" if named else None
        paths.update(write_model_outputs(report, out / "alpaca_eval", generator=generator))
    print(report.to_markdown())
    print("Wrote " + ", ".join(str(p) for p in paths.values()) + f" (per-item log: {out / LOG_NAME})", file=sys.stderr)
    if report.errors:
        print(
            f"{report.errors} judgment(s) failed after retries; re-run the same command to retry them "
            f"(errors are in {out / LOG_NAME}).",
            file=sys.stderr,
        )
    print_summary("eval", time.perf_counter() - started, **judgment_counts(report))
    return 1 if report.errors else 0


def judgment_counts(report: Any) -> dict[str, Any]:
    """The counts of the summary line: judgments with a verdict, without one (unparseable), failed; a
    report without judges (scores only) counts its items."""
    overall = [row for row in report.win_rates if row.group is None]
    if not overall:
        return {"done": report.n_items, "unit": "items"}
    return {
        "done": sum(row.judged for row in overall),
        "unit": "judgments",
        "skipped": sum(row.unparseable for row in overall),
        "skipped_why": "no verdict in the reply",
        "failed": sum(row.errors for row in overall),
    }
