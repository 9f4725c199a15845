"""``--engine local|ray`` of ``correct`` and ``eval``: where the Aligner runs in a bulk job.

``local`` (the default) loads the Aligner in this process (or talks to ``--server`` URLs from it); ``ray``
runs ``--actors`` Ray actors that each build the same Aligner once and correct whole chunks, which come
back to this process in input order. Either way a chunk of rows is one ``correct_batch`` call, so the
corrections, the output and resuming are the same.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aligner_chains.cli.options import load_aligner, model_name, positive_int
from aligner_chains.core.errors import ConfigError

#: An engine: chunks of input rows (a row is a dict, or a `DataError` for an unreadable line) and the
#: batch size -> per chunk, the corrections of its readable rows, in order.
Engine = Callable[[Sequence[Sequence[Any]], int], Iterator[list[Any]]]


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--engine``, ``--actors`` and ``--num-gpus-per-actor``."""
    group = parser.add_argument_group("engine: where the Aligner runs")
    group.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="'local' (default): in this process; 'ray': on Ray actors ($RAY_ADDRESS's cluster, else a local one "
        "started for the job; needs pip install 'aligner-chains[ray]'), each loading the Aligner once. Same "
        "corrections, output and resuming either way",
    )
    group.add_argument(
        "--actors",
        type=positive_int,
        default=None,
        help="with --engine ray: actors, each with its own Aligner (default 1)",
    )
    group.add_argument(
        "--num-gpus-per-actor",
        type=_gpus,
        default=None,
        metavar="F",
        help="with --engine ray: GPUs each actor reserves (a fraction shares one; default none: CPU actors)",
    )


def _gpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a number of GPUs >= 0")
    return value


def check_engine_options(args: argparse.Namespace) -> None:
    """Refuse Ray settings without ``--engine ray``."""
    if args.engine != "ray":
        given = [f"--{n.replace('_', '-')}" for n in ("actors", "num_gpus_per_actor") if getattr(args, n) is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} apply to --engine ray; add it, or leave them out.")


def aligner_spec(args: argparse.Namespace, model: str | None) -> Any:
    """The `AlignerSpec` each actor builds: the ``--server`` URLs (as given: one URL or a list) serving
    ``model``, or ``model`` loaded locally with ``--device``, ``--dtype`` and the other model options."""
    from aligner_chains.bulk.spec import AlignerSpec

    common = {
        "template": args.template,
        "max_new_tokens": args.max_new_tokens,
        "overflow": getattr(args, "overflow", "raise"),
    }
    servers = getattr(args, "server", None)
    if servers:
        per_actor = -(-args.concurrency // (args.actors or 1))  # --concurrency counts over all actors
        return AlignerSpec(
            model=model,
            servers=servers if len(servers) > 1 else servers[0],
            options={"max_concurrency": per_actor},
            **common,
        )
    return AlignerSpec(model=model, device=args.device, dtype=args.dtype, **common)


def open_engine(args: argparse.Namespace) -> Engine:
    """The engine ``--engine`` names, ready: the Aligner loaded here (local), or Ray connected (ray; the
    actors load the Aligner as the job starts)."""
    check_engine_options(args)
    if args.engine == "ray":
        from aligner_chains.bulk.ray_data import correct_chunks, start_ray

        spec = aligner_spec(args, args.model if getattr(args, "server", None) else model_name(args))
        started = start_ray()

        def on_ray(chunks: Sequence[Sequence[Any]], batch_size: int) -> Iterator[list[Any]]:
            try:
                yield from correct_chunks(
                    [_pairs(chunk) for chunk in chunks],
                    spec,
                    concurrency=args.actors or 1,
                    batch_size=batch_size,
                    num_gpus=args.num_gpus_per_actor,
                )
            finally:  # also when the caller stops early (--on-error stop): the actors go with the session
                if started:
                    import ray

                    ray.shutdown()

        return on_ray
    aligner = load_aligner(args)

    def here(chunks: Sequence[Sequence[Any]], batch_size: int) -> Iterator[list[Any]]:
        for chunk in chunks:
            yield aligner.correct_batch(_pairs(chunk), batch_size=batch_size, on_error="passthrough")

    return here


def _pairs(chunk: Sequence[Any]) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a chunk's readable rows."""
    return [(row["question"], row["answer"]) for row in chunk if isinstance(row, dict)]


def eval_aligner(args: argparse.Namespace) -> Any:
    """``eval`` / ``synthesize --engine ray``: a `RayAligner` whose actors each hold the ``--aligner`` (or the
    ``--server`` one)."""
    from aligner_chains.bulk.ray_data import RayAligner, start_ray

    check_engine_options(args)
    if not (args.aligner or getattr(args, "server", None)):
        raise ConfigError("--engine ray runs the Aligner on Ray actors: pass --aligner MODEL (or --server URL).")
    start_ray()
    return RayAligner(
        aligner_spec(args, args.aligner),
        actors=args.actors or 1,
        batch_size=getattr(args, "batch_size", 1),  # synthesize sends one pair per call
        num_gpus=args.num_gpus_per_actor,
    )
