"""Corrections on Ray: `correct_dataset` (Ray Data), `correct_chunks` (ordered, for resumable files) and
`RayAligner` (an actor pool behind the ``correct_batch`` interface).

Each actor builds its Aligner once (`CorrectionWorker`), so a job pays one model load per actor, not
one per batch; rows travel as Arrow tables of their text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from aligner_chains.bulk.spec import AlignerSpec
from aligner_chains.bulk.worker import CorrectionWorker, check_columns, corrections_of
from aligner_chains.core.aligner import OnError, Overflow
from aligner_chains.core.errors import ConfigError, MissingDependencyError
from aligner_chains.core.result import Correction

__all__ = ["RayAligner", "correct_chunks", "correct_dataset", "require_ray", "start_ray"]

INSTALL_HINT = "pip install -e '.[ray]' (from a clone) or pip install 'ray[data]'"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or `MissingDependencyError` saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependencyError(
            f"Corrections on Ray need Ray Data, which is not installed ({exc}): {INSTALL_HINT}. "
            "Without Ray, leave --engine at 'local'."
        ) from exc
    return ray


def start_ray(*, quiet: bool = True) -> bool:
    """Connect to Ray (``$RAY_ADDRESS``, else a local instance started here); True when this call started it.

    ``quiet``: only Ray's errors logged, its workers' output not echoed here, and no Ray Data progress
    bars (the caller shows its own).
    """
    ray = require_ray()
    if quiet:
        from ray.data import DataContext

        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
    if ray.is_initialized():
        return False
    ray.init(
        include_dashboard=False,
        logging_level=logging.ERROR if quiet else logging.INFO,
        log_to_driver=not quiet,
    )
    return True


def _check_actors(concurrency: Any, num_gpus: Any, num_cpus: Any) -> None:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"concurrency={concurrency!r}: give the number of actors, a whole number >= 1.")
    for name, value in (("num_gpus", num_gpus), ("num_cpus", num_cpus)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            raise ConfigError(f"{name}={value!r}: give a number >= 0 per actor (fractions share a device), or None.")


def _map(
    dataset: Any,
    spec: AlignerSpec,
    *,
    concurrency: int,
    batch_size: int,
    rows_per_call: int | None,
    num_gpus: float | None,
    num_cpus: float | None,
    on_error: OnError,
) -> Any:
    """``dataset.map_batches`` with a pool of ``concurrency`` `CorrectionWorker` actors."""
    from ray.data import ActorPoolStrategy

    resources = {k: v for k, v in (("num_gpus", num_gpus), ("num_cpus", num_cpus)) if v is not None}
    return dataset.map_batches(
        CorrectionWorker,
        fn_constructor_args=(spec,),
        fn_constructor_kwargs={"batch_size": batch_size, "on_error": on_error},
        batch_size=rows_per_call,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ActorPoolStrategy(size=concurrency),
        **resources,
    )


def correct_dataset(
    dataset: Any,
    model: str | None = None,
    *,
    servers: str | Sequence[str] | None = None,
    template: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int | None = None,
    overflow: Overflow = "raise",
    concurrency: int = 1,
    batch_size: int = 16,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    on_error: OnError = "passthrough",
    id_column: str = "id",
    aligner_options: dict[str, Any] | None = None,
) -> Any:
    """Correct every row of a Ray Dataset of ``question``/``answer`` rows; lazy, like any Ray Data transform.

    The result has each row's other columns, then the fields of its `Correction` as columns (the layout of
    ``aligner-chains correct``'s output: ``answer`` becomes ``original``, a column named like a correction
    field is replaced; ``stats`` is JSON text). Rows come back in any order: an ``id_column`` is added when
    absent (`with_row_ids`: unique, increasing in dataset order); give rows an id of your own to join the
    results back to data you keep elsewhere.

    ``concurrency`` actors each build the Aligner once: ``model`` (None: the default model) with
    ``device``/``dtype`` and ``num_gpus`` GPUs per actor (a fraction shares one), or, with ``servers``
    (a URL or a list of URLs, passed to `Aligner.from_server` as given), the model on those servers.
    ``batch_size`` rows go to each ``correct_batch`` call. ``on_error="passthrough"`` marks a failing row
    (``finish_reason="error"``, the reason in ``error``) and goes on; ``"raise"`` fails the job.
    ``aligner_options`` are further keyword arguments of `Aligner.from_pretrained` (or ``from_server``).
    Each actor takes ``num_cpus`` CPUs (None: Ray Data's default, 1): leave some free for the tasks that
    read the data, or reading waits for CPUs the actors hold (on 2 CPUs, two actors want ``num_cpus=0.5``).

    Example::

        import ray
        from aligner_chains.bulk import correct_dataset

        rows = ray.data.read_parquet("pairs.parquet")  # question, answer, ...
        corrected = correct_dataset(rows, "aligner/aligner-7b-v1.0", concurrency=4, num_gpus=1)
        corrected.write_parquet("corrected/")
    """
    require_ray()
    _check_actors(concurrency, num_gpus, num_cpus)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: use a positive whole number.")
    spec = AlignerSpec(
        model=model,
        servers=servers,
        template=template,
        device=device,
        dtype=dtype,
        max_new_tokens=max_new_tokens,
        overflow=overflow,
        options=dict(aligner_options or {}),
    )
    columns = dataset.columns()
    check_columns(columns)  # here, not in every actor
    if id_column not in columns:
        dataset = with_row_ids(dataset, id_column)
    return _map(
        dataset,
        spec,
        concurrency=concurrency,
        batch_size=batch_size,
        rows_per_call=batch_size,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        on_error=on_error,
    )


def with_row_ids(dataset: Any, column: str = "id") -> Any:
    """``dataset`` with a unique integer per row in ``column``, increasing in dataset order.

    Ray's ``monotonically_increasing_id`` where this Ray has it (consecutive within each read task, with a
    gap between tasks); on older Ray, the row's position (``zip`` with a range).
    """
    try:
        from ray.data.expressions import monotonically_increasing_id
    except ImportError:
        import ray.data

        return dataset.zip(ray.data.range(dataset.count()).rename_columns({"id": column}))
    return dataset.with_column(column, monotonically_increasing_id())


def correct_chunks(
    chunks: Iterable[Sequence[tuple[str, str]]],
    spec: AlignerSpec,
    *,
    concurrency: int = 1,
    batch_size: int = 16,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
) -> Iterator[list[Correction]]:
    """The corrections of each chunk of pairs, chunk after chunk in input order, as the actors finish them.

    Each chunk is one Ray Data block, corrected by one ``correct_batch(chunk, batch_size)`` call of an
    actor: exactly the calls a single process makes going through the same chunks, so the corrections are
    the same (greedy decoding). Chunks that finish early wait here for the ones before them, which lets a
    caller append results to a file in input order (and resume from its line count). A failing row is
    marked (``on_error="passthrough"``). Stopping the iteration leaves the rest of the job to be cancelled
    with the Ray session.
    """
    ray = require_ray()
    import pyarrow as pa

    _check_actors(concurrency, num_gpus, num_cpus)
    sizes: list[int] = []
    tables = []
    for chunk in chunks:
        sizes.append(len(chunk))
        if chunk:
            index = len(sizes) - 1
            questions, answers = zip(*chunk, strict=True)
            tables.append(
                pa.table(
                    {
                        "id": pa.array([index] * len(chunk), pa.int64()),
                        "question": pa.array(questions, pa.string()),
                        "answer": pa.array(answers, pa.string()),
                    }
                )
            )
    if not tables:
        yield from ([] for _ in sizes)
        return
    mapped = _map(
        ray.data.from_arrow(tables),  # one block per chunk; batch_size=None maps each block whole
        spec,
        concurrency=min(concurrency, len(tables)),  # an actor without a chunk would load the model for nothing
        batch_size=batch_size,
        rows_per_call=None,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        on_error="passthrough",
    )
    finished: dict[int, list[Correction]] = {}
    following = 0
    for table in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
        for index, correction in zip(table.column("id").to_pylist(), corrections_of(table), strict=True):
            finished.setdefault(index, []).append(correction)
        while following < len(sizes) and len(finished.get(following, ())) == sizes[following]:
            yield finished.pop(following, [])
            following += 1
    if following < len(sizes):
        raise RuntimeError(f"Ray returned {following} of {len(sizes)} chunks of corrections; rerun to resume.")


class RayAligner:
    """An Aligner-like object whose ``correct_batch`` calls run on a pool of Ray actors, each holding the
    Aligner `AlignerSpec` describes (loaded once per actor).

    It has what bulk callers use: `model_name`, `correct_batch`, `acorrect_batch` and
    ``concurrent_batches`` (how many batches may run at once: one per actor), so ``evaluate(...,
    aligner=RayAligner(spec, actors=4))`` spreads its correction batches over four actors. A batch runs
    whole on one actor, so its corrections are those one process gives. `close` ends the actors.
    """

    def __init__(
        self,
        spec: AlignerSpec,
        *,
        actors: int = 1,
        batch_size: int = 16,
        num_gpus: float | None = None,
        num_cpus: float | None = None,
    ) -> None:
        ray = require_ray()
        _check_actors(actors, num_gpus, num_cpus)
        resources = {k: v for k, v in (("num_gpus", num_gpus), ("num_cpus", num_cpus)) if v is not None}
        actor_class = ray.remote(CorrectionWorker).options(**resources)
        self.spec = spec
        self.concurrent_batches = actors
        self._actors = [actor_class.remote(spec, batch_size=batch_size) for _ in range(actors)]
        self._busy = [0] * actors
        names = ray.get([actor.model_name.remote() for actor in self._actors])  # waits for every model load
        self._model_name: str = names[0]

    @property
    def model_name(self) -> str:
        """The model name the actors' Aligner reports."""
        return self._model_name

    def _pick(self) -> int:
        if not self._actors:
            raise RuntimeError("This RayAligner is closed.")
        return min(range(len(self._actors)), key=self._busy.__getitem__)

    def correct_batch(
        self, pairs: Iterable[tuple[str, str]], batch_size: int = 16, *, on_error: OnError | None = None
    ) -> list[Correction]:
        """``Aligner.correct_batch`` on the least busy actor."""
        import ray

        index = self._pick()
        self._busy[index] += 1
        try:
            return ray.get(self._actors[index].correct.remote(list(pairs), batch_size, on_error))
        finally:
            self._busy[index] -= 1

    async def acorrect_batch(
        self, pairs: Iterable[tuple[str, str]], batch_size: int = 16, *, on_error: OnError | None = None
    ) -> list[Correction]:
        """Async `correct_batch`: the event loop stays free while an actor works."""
        index = self._pick()
        self._busy[index] += 1
        try:
            return await asyncio.wrap_future(
                self._actors[index].correct.remote(list(pairs), batch_size, on_error).future()
            )
        finally:
            self._busy[index] -= 1

    def close(self) -> None:
        """End the actors (their models go with them)."""
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def __enter__(self) -> RayAligner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RayAligner(model={self._model_name!r}, actors={self.concurrent_batches})"
