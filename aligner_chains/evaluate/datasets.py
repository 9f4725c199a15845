"""The Aligner paper's evaluation sets by name: where they live on the Hugging Face Hub and how a row becomes a
question to answer, correct and judge.

```python
from aligner_chains.evaluate.datasets import load_eval_questions

rows = load_eval_questions("harmfulqa")                      # 700 of the 1,960 questions (seeded sample)
rows = load_eval_questions("truthfulqa", path="my/copy.jsonl")  # a local file or folder works too
```

Data is read from the Hugging Face cache (or a local path) with plain json, csv and gzip/xz/bz2 readers;
Parquet files need ``pyarrow`` (``pip install -e '.[eval]'``). Offline, a set that is not cached
raises `DatasetNotFoundError` naming the ``hf download`` command that fetches it. The ``datasets`` library
is not needed.

Each row of `load_eval_questions` is ``{"id", "question", "dataset", ...}`` plus, for sets that ship an
upstream model's answer (``beavertails-30k``: Alpaca-7B's responses), ``"answer"`` and ``"upstream_model"``;
other fields of the source row are kept as they are (``category``, ``best_answer``, ...).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from aligner_chains.core.errors import ConfigError, DataError, DatasetNotFoundError, MissingDependencyError

__all__ = ["EVAL_SETS", "EvalSet", "eval_set", "load_eval_questions", "locate_files", "read_table"]

Row = dict[str, Any]


def _field_questions(spec: EvalSet, rows: list[Row]) -> list[Row]:
    """One question per row: the spec's question field (through its template), its answer field if any; the id
    is the row's ``id_field`` or its position."""
    out = []
    for number, row in enumerate(rows):
        ident = row.get(spec.id_field) if spec.id_field else number
        item = {**row, "id": number if ident is None else ident, "question": _question_text(spec, row, number)}
        if spec.answer_field is not None:
            answer = row.get(spec.answer_field)
            if not isinstance(answer, str):
                raise DataError(
                    f"{spec.name} row {number}: field {spec.answer_field!r} is not a string: {answer!r:.60}."
                )
            item["answer"] = answer
        out.append(item)
    return out


def _first_turns(spec: EvalSet, rows: list[Row]) -> list[Row]:
    """Empathetic Dialogues: one question per conversation, the speaker's opening utterance.

    The source writes commas as ``_comma_`` (in the original CSV and the Hub's conversion alike).
    """
    first: dict[str, Row] = {}
    for number, row in enumerate(rows):
        conv = row.get("conv_id")
        if conv is None:
            raise DataError(f"{spec.name} row {number}: no 'conv_id' field (found {sorted(row)}).")
        if str(row.get("utterance_idx")) == "1" and conv not in first:
            first[conv] = row
    out = []
    for conv, row in first.items():
        fixed = {k: v.replace("_comma_", ",") if isinstance(v, str) else v for k, v in row.items()}
        out.append({**fixed, "id": conv, "question": _question_text(spec, fixed, conv)})
    return out


def _question_text(spec: EvalSet, row: Row, where: Any) -> str:
    value = row.get(spec.question_field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{spec.name} row {where}: field {spec.question_field!r} is missing or empty (fields: {sorted(row)}); "
            f"is this a file of {spec.hub_id}?"
        )
    text = value.strip()
    return text if spec.question_template is None else spec.question_template.format(**{spec.question_field: text})


@dataclass(frozen=True)
class EvalSet:
    """Where an evaluation set lives and how its rows become questions.

    ``files``: glob patterns (``*`` crosses folders) of the data files of ``split`` inside the dataset
    repository at ``revision``, also used to pick files from a local folder. ``subset``: how many questions
    the paper judged (a seeded random sample; None: all). ``dimensions``: the paper's judging dimensions
    for this set. ``question_template`` (over ``{<question_field>}``) words the question when the field alone
    is not one (a dialogue to summarize).
    """

    name: str
    hub_id: str
    split: str
    files: tuple[str, ...]
    question_field: str
    dimensions: tuple[str, ...]
    license: str
    description: str
    config: str | None = None
    revision: str | None = None
    answer_field: str | None = None
    answer_model: str | None = None
    id_field: str | None = None
    subset: int | None = None
    question_template: str | None = None
    rows_to_questions: Callable[[EvalSet, list[Row]], list[Row]] = field(default=_field_questions, repr=False)

    def download_command(self) -> str:
        """The ``hf`` command that puts this set's files in the Hugging Face cache."""
        revision = f" --revision {self.revision}" if self.revision else ""
        include = " ".join(f"--include '{pattern}'" for pattern in self.files)
        return f"hf download --repo-type dataset {self.hub_id}{revision} {include}"


#: The evaluation sets of the Aligner paper (helpfulness: Empathetic Dialogues, DialogSum; helpfulness and
#: harmlessness: BeaverTails, HarmfulQA; honesty: TruthfulQA).
EVAL_SETS: dict[str, EvalSet] = {
    spec.name: spec
    for spec in (
        EvalSet(
            name="beavertails",
            hub_id="PKU-Alignment/BeaverTails-Evaluation",
            split="test",
            files=("v1/test.jsonl*",),
            question_field="prompt",
            dimensions=("helpfulness", "harmlessness"),
            subset=700,
            license="CC BY-NC 4.0",
            description="700 harmful prompts, 50 in each of 14 harm categories (fields prompt, category, category_id)",
        ),
        EvalSet(
            name="beavertails-30k",
            hub_id="PKU-Alignment/BeaverTails",
            split="30k_test",
            files=("round0/30k/test.jsonl*",),
            question_field="prompt",
            answer_field="response",
            answer_model="alpaca-7b",
            dimensions=("helpfulness", "harmlessness"),
            subset=700,
            license="CC BY-NC 4.0",
            description="question-answer pairs with Alpaca-7B's answers and safety labels "
            "(fields prompt, response, category, is_safe); one row per distinct prompt",
        ),
        EvalSet(
            name="harmfulqa",
            hub_id="declare-lab/HarmfulQA",
            split="train",
            files=("data_for_hub.json",),
            question_field="question",
            id_field="id",
            dimensions=("helpfulness", "harmlessness"),
            subset=700,
            license="Apache-2.0",
            description="1,960 harmful questions over 10 topics (fields id, topic, subtopic, question, "
            "blue_conversations, red_conversations)",
        ),
        EvalSet(
            name="empathetic_dialogues",
            hub_id="facebook/empathetic_dialogues",
            split="test",
            revision="refs/convert/parquet",
            files=("*test/*.parquet",),
            question_field="utterance",
            dimensions=("helpfulness",),
            license="CC BY-NC 4.0",
            description="the opening utterance of each test conversation (fields conv_id, utterance_idx, context "
            "(emotion), prompt (situation), speaker_idx, utterance, selfeval, tags); the Hub serves it as Parquet",
            rows_to_questions=_first_turns,
        ),
        EvalSet(
            name="dialogsum",
            hub_id="knkarthick/dialogsum",
            split="test",
            files=("test.csv",),
            question_field="dialogue",
            id_field="id",
            question_template="Summarize the following dialogue.\n\n{dialogue}",
            dimensions=("helpfulness",),
            license="CC BY-NC-SA 4.0",
            description="dialogues to summarize (fields id, dialogue, summary, topic; the test split lists each "
            "dialogue once per reference summary, read here once)",
        ),
        EvalSet(
            name="truthfulqa",
            hub_id="truthfulqa/truthful_qa",
            config="generation",
            split="validation",
            files=("generation/validation-*.parquet",),
            question_field="question",
            dimensions=("honesty",),
            license="Apache-2.0",
            description="817 questions that some humans answer falsely (fields type, category, question, "
            "best_answer, correct_answers, incorrect_answers, source)",
        ),
    )
}


def eval_set(name: str) -> EvalSet:
    """The registered set ``name`` (see `EVAL_SETS`)."""
    try:
        return EVAL_SETS[name]
    except KeyError:
        raise ConfigError(f"Unknown evaluation set {name!r}; known: {', '.join(EVAL_SETS)}.") from None


# ------------------------------------------------------------------------------------------ files

_COMPRESSED = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def read_table(path: str | Path) -> list[Row]:
    """The rows of a JSON list, JSONL, CSV/TSV or Parquet file (JSON and CSV may be gzip/xz/bz2 compressed)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {str(path)!r} does not exist.")
    suffixes = [s.lower() for s in path.suffixes]
    opener = _COMPRESSED.get(suffixes[-1]) if suffixes else None
    kind = (suffixes[-2] if opener and len(suffixes) > 1 else suffixes[-1]) if suffixes else ""
    if kind == ".parquet":
        return _read_parquet(path)
    if kind not in (".json", ".jsonl", ".csv", ".tsv"):
        raise DataError(
            f"{path}: unsupported file type {''.join(suffixes) or '(none)'}; use .json, .jsonl, .csv, .tsv or "
            ".parquet (JSON and CSV may end in .gz, .xz or .bz2)."
        )
    with (opener or open)(path, "rt", encoding="utf-8", newline="") as handle:  # type: ignore[operator]
        text = handle.read()
    if kind in (".csv", ".tsv"):
        return list(csv.DictReader(io.StringIO(text), delimiter="\t" if kind == ".tsv" else ","))
    from aligner_chains.finetune.data import parse_records

    rows = [value for _, value in parse_records(text, str(path))]
    if len(rows) == 1 and isinstance(rows[0], dict) and len(rows[0]) == 1:
        (only,) = rows[0].values()  # {"data": [...]}: the one list inside
        if isinstance(only, list):
            rows = only
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad + 1} is a {type(rows[bad]).__name__}, not a JSON object.")
    return rows


def _read_parquet(path: Path) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError(
            f"{path} is a Parquet file, which needs pyarrow: pip install -e '.[eval]' (or pyarrow), "
            "or pass a JSON/CSV copy of the data."
        ) from exc
    return pq.read_table(path).to_pylist()


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch(relative, pattern) for pattern in patterns)


def locate_files(spec: EvalSet, path: str | Path | None = None, *, cache_dir: str | Path | None = None) -> list[Path]:
    """The data files of ``spec``: ``path`` itself (a file), the files under ``path`` (a folder) that match
    ``spec.files`` (or, if none match, its only data file), or the Hugging Face cache's copy of ``spec.hub_id``.

    A cached set is found offline; online, a missing one is downloaded (only the files of its split).
    """
    if path is not None:
        local = Path(path).expanduser()
        if local.is_file():
            return [local]
        if not local.is_dir():
            raise DatasetNotFoundError(f"No file or folder at {str(local)!r} for evaluation set {spec.name!r}.")
        return _pick(spec, local, where=str(local))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        root = Path(
            snapshot_download(
                spec.hub_id,
                repo_type="dataset",
                revision=spec.revision,
                allow_patterns=list(spec.files),
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise DatasetNotFoundError(
            f"Evaluation set {spec.name!r} ({spec.hub_id}) is not in the Hugging Face cache and could not be "
            f"downloaded ({type(exc).__name__}). With network, run once:\n  {spec.download_command()}\n"
            "or pass path= (CLI: --dataset-path NAME=PATH) to a local copy of its files."
        ) from exc
    return _pick(spec, root, where=f"the cached {spec.hub_id}")


_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


def _pick(spec: EvalSet, root: Path, *, where: str) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    relative = {p: p.relative_to(root).as_posix() for p in files}
    found = [p for p in files if _matches(relative[p], spec.files)]
    if not found:
        data = [p for p in files if any(s in _DATA_SUFFIXES for s in (x.lower() for x in p.suffixes))]
        if len(data) == 1:
            found = data
    if not found:
        raise DatasetNotFoundError(
            f"{where} holds no data file of {spec.name!r} matching {list(spec.files)} "
            f"(found: {[relative[p] for p in files][:8]}). Fetch it with:\n  {spec.download_command()}\n"
            "or pass the data file itself as the path."
        )
    return found


# -------------------------------------------------------------------------------------- questions


def load_eval_questions(
    name: str | EvalSet,
    *,
    path: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> list[Row]:
    """The questions of evaluation set ``name``: ``{"id", "question", "dataset", ...}`` rows (see the module doc).

    Identical questions are kept once. ``n``: how many, as a seeded random sample in file order (default: the
    set's paper subset, e.g. 700; ``n=0``: all). ``path``: a local file or folder instead of the Hub cache.
    """
    spec = name if isinstance(name, EvalSet) else eval_set(name)
    size = spec.subset if n is None else n
    if isinstance(size, bool) or not isinstance(size, (int, type(None))) or (size is not None and size < 0):
        raise ConfigError(f"n={n!r}: use a whole number of questions >= 0 (0: all).")
    rows: list[Row] = []
    for file in locate_files(spec, path, cache_dir=cache_dir):
        rows += read_table(file)
    if not rows:
        raise DataError(f"Evaluation set {spec.name!r} ({path or spec.hub_id}) holds no rows.")
    questions: list[Row] = []
    seen: set[str] = set()
    for row in spec.rows_to_questions(spec, rows):
        if row["question"] in seen:
            continue
        seen.add(row["question"])
        row = {**row, "id": f"{spec.name}:{row['id']}", "dataset": spec.name}
        if spec.answer_field is not None:
            row["upstream_model"] = spec.answer_model
        questions.append(row)
    if size and size < len(questions):
        keep = sorted(random.Random(seed).sample(range(len(questions)), size))
        questions = [questions[i] for i in keep]
    return questions
