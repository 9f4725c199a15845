"""Question recovery: find the user's question for an answer from the chain the Aligner runs in.

In ``llm | AlignerRunnable()`` the Aligner only receives the model's answer. The question is the
input of the chain around it, and langchain-core reports every run's input to callback handlers
before the run starts. So importing this module registers one lightweight callback handler,
`RunInputRecorder`, through langchain-core's ``register_configure_hook`` (the mechanism that adds
tracers to every run). For each run still in progress it keeps:

- its parent run id and its input (streamed runs report a placeholder ``{"input": ""}`` at start;
  for them the first real input seen among their descendants stands in, which is what the chain's
  first step received),
- the input of the latest chat model / LLM run started directly under it.

An entry is dropped when its run ends, so nothing outlives the runs (and at most ``max_runs``
entries are kept in any case). When an `AlignerRunnable` runs, it walks up from its parent run and
takes, at each level, a question from the run's input, then from the latest model input under it:

- a message list or prompt value: the text of the last human message;
- a string: the string itself (an LLM's string prompt counts too);
- a dict: its question key (``question`` by default), else ``input``, else ``messages``, each read
  recursively by these same rules.

A candidate equal to the answer being corrected is skipped (that input is the answer itself, e.g.
``llm | StrOutputParser() | RunnableParallel(fixed=AlignerRunnable())``), and the walk goes on to
the grandparent. Sequences, nested sequences, ``RunnableParallel`` branches, ``batch`` (each input
has its own parent run), ``stream`` and async all report runs through the same callbacks, so the
same rule serves them all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.tracers.context import register_configure_hook

from aligner_chains.langchain.messages import last_human_text

__all__ = [
    "QUESTION_METADATA_KEY",
    "RunInputRecorder",
    "extract_question",
    "recorder",
]

QUESTION_METADATA_KEY = "aligner_question"
"""Run metadata key that states the question explicitly (``config={"metadata": {"aligner_question": q}}``)."""

DEFAULT_QUESTION_KEYS: tuple[str, ...] = ("question", "input", "messages")

_MISSING: Any = object()


def _is_placeholder(inputs: Any) -> bool:
    """Streamed runs start with ``{"input": ""}`` because their input is not known yet."""
    return isinstance(inputs, dict) and len(inputs) == 1 and inputs.get("input") == ""


def extract_question(value: Any, keys: Sequence[str] = DEFAULT_QUESTION_KEYS) -> str | None:
    """A question from a chain input (messages, prompt value, string or dict), or None when there is none."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, PromptValue):
        return extract_question(value.to_messages(), keys)
    if isinstance(value, BaseMessage):
        return extract_question([value], keys)
    if isinstance(value, dict):
        for key in dict.fromkeys(keys):
            if key in value:
                found = extract_question(value[key], keys)
                if found is not None:
                    return found
        return None
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(item, str) for item in value):  # an LLM run's prompts
            return extract_question(value[0], keys)
        try:
            messages = convert_to_messages(value)
        except Exception:
            return None
        text = last_human_text(messages)
        return text if text and text.strip() else None
    return None


@dataclass
class _Run:
    parent: UUID | None
    inputs: Any
    first_input: Any = _MISSING
    model_input: Any = _MISSING

    def effective_input(self) -> Any:
        return self.inputs if self.inputs is not _MISSING else self.first_input


class RunInputRecorder(BaseCallbackHandler):
    """Keeps the input of every run in progress (and the latest model input under it), for question recovery."""

    run_inline = True  # record before the next step starts, in the caller's thread or event loop
    raise_error = False

    def __init__(self, max_runs: int = 10_000) -> None:
        self.max_runs = max_runs
        self._runs: OrderedDict[UUID, _Run] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def active_runs(self) -> int:
        """How many runs in progress are recorded (0 when nothing runs)."""
        return len(self._runs)

    # ------------------------------------------------------------ recording

    def _start(self, run_id: UUID, parent_run_id: UUID | None, inputs: Any, *, model: bool) -> None:
        real = not _is_placeholder(inputs)
        with self._lock:
            self._runs[run_id] = _Run(parent_run_id, inputs if real else _MISSING)
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
            parent = self._runs.get(parent_run_id) if parent_run_id is not None else None
            if parent is not None and model:
                parent.model_input = inputs
            if not real:
                return
            # streamed ancestors learn their input from the first real input below them
            pid = parent_run_id
            while pid is not None and (run := self._runs.get(pid)) is not None:
                if run.inputs is not _MISSING or run.first_input is not _MISSING:
                    break
                run.first_input = inputs
                pid = run.parent

    def _end(self, run_id: UUID) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def on_chain_start(
        self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._start(run_id, parent_run_id, inputs, model=False)

    def on_chat_model_start(
        self,
        serialized: Any,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, parent_run_id, messages[0] if messages else [], model=True)

    def on_llm_start(
        self, serialized: Any, prompts: list[str], *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._start(run_id, parent_run_id, prompts[0] if prompts else "", model=True)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    # ------------------------------------------------------------ lookup

    def _ancestry(self, run_id: UUID | None) -> list[tuple[Any, Any]]:
        """(effective input, latest model input) for ``run_id`` and its ancestors, nearest first."""
        out: list[tuple[Any, Any]] = []
        seen: set[UUID] = set()
        with self._lock:
            while run_id is not None and run_id not in seen and (run := self._runs.get(run_id)) is not None:
                seen.add(run_id)
                out.append((run.effective_input(), run.model_input))
                run_id = run.parent
        return out

    def find_question(
        self, parent_run_id: UUID | None, answer: str, keys: Iterable[str] = DEFAULT_QUESTION_KEYS
    ) -> str | None:
        """The question for ``answer`` from the inputs of the runs above ``parent_run_id`` (inclusive)."""
        keys = tuple(keys)
        skip = answer.strip()
        for effective, model_input in self._ancestry(parent_run_id):
            for candidate in (effective, model_input):
                if candidate is _MISSING:
                    continue
                question = extract_question(candidate, keys)
                if question is not None and question.strip() != skip:
                    return question
        return None


recorder = RunInputRecorder()
"""The process-wide recorder; added to every LangChain run from the moment this module is imported."""

_recorder_var: ContextVar[RunInputRecorder | None] = ContextVar("aligner_chains_run_inputs", default=recorder)
register_configure_hook(_recorder_var, inheritable=True)
