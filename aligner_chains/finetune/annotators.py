"""Annotators: which of two responses to a prompt is better. One small interface, several judges.

``annotate(prompt, response_a, response_b)`` returns 0 (A is better), 1 (B is better) or None (a tie,
or no usable verdict: such pairs are skipped, never guessed). ``judge_batch`` gives the full
`Judgement` of each pair (status, per-order votes) for statistics; both have async forms.

- `LLMAnnotator`: any LangChain chat model, asked in both orders to cancel position bias.
- `RewardModelAnnotator`: a sequence-classification reward model.
- `AlignerAnnotator`: prefers the response an Aligner changes less.
- `LengthAnnotator`: prefers the shorter (or longer) response, a rule.
- `CallableAnnotator`: any ``fn(prompt, a, b) -> 0 | 1 | None``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aligner_chains.core.errors import ConfigError

logger = logging.getLogger(__name__)

Label = int | None
Item = tuple[str, str, str]
Status = Literal["labelled", "tie", "failed"]


@dataclass(frozen=True)
class Judgement:
    """An annotator's verdict on one pair.

    ``votes`` are the labels of each query (already mapped back to the original order; None where a
    reply failed or could not be parsed); ``consistent`` says whether both orders agreed (None when
    the pair was not asked in both orders or a reply failed).
    """

    label: Label
    status: Status
    votes: tuple[Label, ...] = ()
    consistent: bool | None = None
    reason: str | None = None

    @classmethod
    def of(cls, label: Label, reason: str | None = None) -> Judgement:
        return cls(label, "labelled" if label is not None else "tie", (label,), None, reason)

    @classmethod
    def failed(cls, reason: str, votes: tuple[Label, ...] = ()) -> Judgement:
        return cls(None, "failed", votes, None, reason)


@dataclass
class AnnotatorStats:
    """Running counts over an annotator's life (thread-safe updates)."""

    pairs: int = 0
    labelled: int = 0
    ties: int = 0
    failures: int = 0
    consistent: int = 0
    inconsistent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, judgements: Sequence[Judgement]) -> None:
        with self._lock:
            for j in judgements:
                self.pairs += 1
                self.labelled += j.status == "labelled"
                self.ties += j.status == "tie"
                self.failures += j.status == "failed"
                self.consistent += j.consistent is True
                self.inconsistent += j.consistent is False

    def as_dict(self) -> dict[str, Any]:
        names = ("pairs", "labelled", "ties", "failures", "consistent", "inconsistent")
        counts = {k: getattr(self, k) for k in names}
        return {**counts, **judgement_rates_from_counts(**counts)}


def judgement_rates_from_counts(
    pairs: int, labelled: int, ties: int, failures: int, consistent: int, inconsistent: int
) -> dict[str, float | None]:
    both = consistent + inconsistent
    return {
        "labelled_rate": labelled / pairs if pairs else None,
        "tie_rate": ties / pairs if pairs else None,
        "failure_rate": failures / pairs if pairs else None,
        "position_consistency": consistent / both if both else None,
    }


def judgement_rates(judgements: Sequence[Judgement]) -> dict[str, float | None]:
    """Labelled, tie and failure rates, and position consistency (share of both-order queries that agreed)."""
    stats = AnnotatorStats()
    stats.add(judgements)
    return {k: v for k, v in stats.as_dict().items() if k.endswith(("_rate", "consistency"))}


class Annotator(ABC):
    """Judges pairs of responses; subclasses implement `judge_batch` (and `ajudge_batch` when natively async)."""

    def __init__(self) -> None:
        self.stats = AnnotatorStats()

    @abstractmethod
    def _judge(self, items: Sequence[Item]) -> list[Judgement]:
        """Judge every ``(prompt, response_a, response_b)``."""

    async def _ajudge(self, items: Sequence[Item]) -> list[Judgement]:
        return await asyncio.to_thread(self._judge, items)

    def judge_batch(self, items: Sequence[Item]) -> list[Judgement]:
        """The `Judgement` of every ``(prompt, response_a, response_b)``, in order."""
        items = _check_items(items)
        judgements = self._judge(items) if items else []
        self.stats.add(judgements)
        return judgements

    async def ajudge_batch(self, items: Sequence[Item]) -> list[Judgement]:
        items = _check_items(items)
        judgements = await self._ajudge(items) if items else []
        self.stats.add(judgements)
        return judgements

    def annotate(self, prompt: str, response_a: str, response_b: str) -> Label:
        """0 if ``response_a`` is better, 1 if ``response_b`` is, None for a tie or no usable verdict."""
        return self.judge_batch([(prompt, response_a, response_b)])[0].label

    def annotate_batch(self, items: Sequence[Item]) -> list[Label]:
        return [j.label for j in self.judge_batch(items)]

    async def aannotate(self, prompt: str, response_a: str, response_b: str) -> Label:
        return (await self.ajudge_batch([(prompt, response_a, response_b)]))[0].label

    async def aannotate_batch(self, items: Sequence[Item]) -> list[Label]:
        return [j.label for j in await self.ajudge_batch(items)]

    def __call__(self, prompt: str, response_a: str, response_b: str) -> Label:
        return self.annotate(prompt, response_a, response_b)


def _check_items(items: Sequence[Item]) -> list[Item]:
    checked = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 3 and all(isinstance(x, str) for x in item)):
            raise TypeError(f"Item {i} must be a (prompt, response_a, response_b) tuple of str, got {item!r:.120}")
        checked.append((item[0], item[1], item[2]))
    return checked


# --------------------------------------------------------------------------- rules and callables


class LengthAnnotator(Annotator):
    """Prefers the ``shorter`` (or ``longer``) response, in characters or words; equal lengths tie."""

    def __init__(self, prefer: Literal["shorter", "longer"] = "shorter", unit: Literal["chars", "words"] = "chars"):
        super().__init__()
        if prefer not in ("shorter", "longer") or unit not in ("chars", "words"):
            raise ConfigError(
                f"LengthAnnotator(prefer={prefer!r}, unit={unit!r}): prefer is shorter|longer, unit chars|words."
            )
        self.prefer, self.unit = prefer, unit

    def _size(self, text: str) -> int:
        return len(text) if self.unit == "chars" else len(text.split())

    def _judge(self, items: Sequence[Item]) -> list[Judgement]:
        out = []
        for _, a, b in items:
            la, lb = self._size(a), self._size(b)
            if la == lb:
                out.append(Judgement.of(None, "same length"))
            else:
                a_wins = la < lb if self.prefer == "shorter" else la > lb
                out.append(Judgement.of(0 if a_wins else 1))
        return out


class CallableAnnotator(Annotator):
    """Wraps ``fn(prompt, response_a, response_b) -> 0 | 1 | None`` (sync or async).

    Anything else returned, or an exception, is a failure (counted and logged), never a label.
    """

    def __init__(self, fn: Callable[[str, str, str], Any], max_concurrency: int = 8) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"CallableAnnotator needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.max_concurrency = max_concurrency
        self.is_async = inspect.iscoroutinefunction(fn)

    @staticmethod
    def _judgement(value: Any) -> Judgement:
        if isinstance(value, BaseException):
            logger.warning("annotator callable failed: %s: %s", type(value).__name__, value)
            return Judgement.failed(f"{type(value).__name__}: {value}")
        if value is None:
            return Judgement.of(None)
        if isinstance(value, bool) or value not in (0, 1):
            logger.warning("annotator callable returned %r; expected 0, 1 or None", value)
            return Judgement.failed(f"returned {value!r}; expected 0, 1 or None")
        return Judgement.of(int(value))

    def _judge(self, items: Sequence[Item]) -> list[Judgement]:
        if self.is_async:
            return asyncio.run(self._ajudge(items))
        out = []
        for item in items:
            try:
                value = self.fn(*item)
            except Exception as exc:
                value = exc
            out.append(self._judgement(value))
        return out

    async def _ajudge(self, items: Sequence[Item]) -> list[Judgement]:
        if not self.is_async:
            return await super()._ajudge(items)
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(item: Item) -> Any:
            async with gate:
                return await self.fn(*item)

        values = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
        return [self._judgement(v) for v in values]


# --------------------------------------------------------------------------- LLM judge

DEFAULT_INSTRUCTIONS = (
    "You are a careful and impartial judge. Read the prompt and the two responses below and decide which "
    "response is better: more helpful, more honest and more harmless. Do not let the order of the responses "
    "or their length sway you unless the instructions ask for it."
)

DEFAULT_JUDGE_TEMPLATE = """{instructions}

[The Start of the Prompt]
{prompt}
[The End of the Prompt]

[The Start of Response A]
{response_a}
[The End of Response A]

[The Start of Response B]
{response_b}
[The End of Response B]

Which response is better? Reply with a single letter: A or B."""

_JUDGE_FIELDS = re.compile(r"\{(instructions|prompt|response_a|response_b)\}")
_WHOLE = re.compile(r"^[\W_]*(?:(?:response|output|answer|option|assistant)\s*)?\(?\s*([ABab])\s*\)?[\W_]*$", re.I)
_STATED = re.compile(
    r"(?i:\b(?:better|preferred|verdict|answer|choice|winner|choose|pick))"
    r"(?i:\s+(?:response|output|one))?\s*(?i:is|:|-|=)?\s*[\*\[\(\"'`]*\s*(?i:response\s+|output\s+)?([AB])\b"
)


def parse_verdict(text: str) -> Literal["A", "B"] | None:
    """``"A"``/``"B"`` from a judge's reply, or None when it does not state one clearly.

    Accepted: a bare letter (``"A"``, ``"b."``, ``"[[B]]"``, ``"Response A"``), or a stated verdict
    (``"... Verdict: B"``, ``"The better response is **A**"``; the last one counts). Anything else,
    including a reply naming neither or hedging, is unparseable.
    """
    stripped = text.strip()
    whole = _WHOLE.match(stripped)
    if whole:
        return whole.group(1).upper()  # type: ignore[return-value]
    stated = _STATED.findall(stripped)
    return stated[-1] if stated else None  # type: ignore[return-value]


def _reply_text(reply: Any) -> str:
    if isinstance(reply, str):
        return reply
    text = getattr(reply, "text", None)
    if isinstance(text, str):  # langchain-core >= 1.0: a property (a str that is also callable)
        return str(text)
    if callable(text):  # langchain-core < 1.0: a method
        text = text()
    if isinstance(text, str):
        return text
    content = getattr(reply, "content", "")
    return content if isinstance(content, str) else str(content)


class LLMAnnotator(Annotator):
    """A LangChain chat model as the judge (the OAIF annotator).

    Each pair is asked in both orders (A/B, then B/A); the verdict counts only when the two agree,
    so position bias cancels: disagreement is a tie (the pair is skipped). A reply that fails or
    cannot be parsed is never turned into a label: the pair is marked failed, counted, and logged.
    Calls run concurrently through the model's ``batch``/``abatch``, at most ``max_concurrency`` at
    a time. ``instructions`` steer the judge (e.g. "Prefer the shorter response.").
    """

    def __init__(
        self,
        chat_model: Any,
        instructions: str = DEFAULT_INSTRUCTIONS,
        *,
        both_orders: bool = True,
        max_concurrency: int = 8,
        template: str = DEFAULT_JUDGE_TEMPLATE,
    ) -> None:
        super().__init__()
        if not hasattr(chat_model, "batch") or not hasattr(chat_model, "abatch"):
            raise TypeError(f"LLMAnnotator needs a LangChain chat model (a Runnable), got {type(chat_model).__name__}")
        missing = {"prompt", "response_a", "response_b"} - set(_JUDGE_FIELDS.findall(template))
        if missing:
            raise ConfigError(
                f"The judge template lacks {sorted(missing)}; it needs {{prompt}}, {{response_a}} and {{response_b}}."
            )
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}.")
        self.chat_model = chat_model
        self.instructions = instructions
        self.both_orders = both_orders
        self.max_concurrency = max_concurrency
        self.template = template

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        """The judge's message (one pass, so braces inside the texts are kept verbatim)."""
        values = {
            "instructions": self.instructions,
            "prompt": prompt,
            "response_a": response_a,
            "response_b": response_b,
        }
        return _JUDGE_FIELDS.sub(lambda m: values[m.group(1)], self.template)

    def _queries(self, items: Sequence[Item]) -> list[list[Any]]:
        from langchain_core.messages import HumanMessage

        queries = []
        for prompt, a, b in items:
            queries.append([HumanMessage(content=self.render(prompt, a, b))])
            if self.both_orders:
                queries.append([HumanMessage(content=self.render(prompt, b, a))])
        return queries

    def _combine(self, items: Sequence[Item], replies: Sequence[Any]) -> list[Judgement]:
        per_pair = 2 if self.both_orders else 1
        out = []
        for i, item in enumerate(items):
            votes: list[Label] = []
            problems: list[str] = []
            for k in range(per_pair):
                reply = replies[i * per_pair + k]
                if isinstance(reply, BaseException):
                    problems.append(f"call failed ({type(reply).__name__}: {reply})")
                    votes.append(None)
                    continue
                text = _reply_text(reply)
                verdict = parse_verdict(text)
                if verdict is None:
                    problems.append(f"unparseable reply {text[:200]!r}")
                    votes.append(None)
                    continue
                first = 0 if verdict == "A" else 1
                votes.append(first if k == 0 else 1 - first)  # the second query shows the pair swapped
            if problems:
                reason = "; ".join(problems)
                logger.warning("LLM annotator: no label for pair %d (prompt %r): %s", i, item[0][:60], reason)
                out.append(Judgement.failed(reason, tuple(votes)))
            elif per_pair == 1:
                out.append(Judgement(votes[0], "labelled", tuple(votes)))
            elif votes[0] == votes[1]:
                out.append(Judgement(votes[0], "labelled", tuple(votes), True))
            else:
                out.append(Judgement(None, "tie", tuple(votes), False, "the two orders disagree (position bias)"))
        return out

    def _config(self) -> dict[str, Any]:
        return {"max_concurrency": self.max_concurrency, "run_name": "oaif-annotator"}

    def _judge(self, items: Sequence[Item]) -> list[Judgement]:
        replies = self.chat_model.batch(self._queries(items), config=self._config(), return_exceptions=True)
        return self._combine(items, replies)

    async def _ajudge(self, items: Sequence[Item]) -> list[Judgement]:
        replies = await self.chat_model.abatch(self._queries(items), config=self._config(), return_exceptions=True)
        return self._combine(items, replies)


# --------------------------------------------------------------------------- model-based judges


class RewardModelAnnotator(Annotator):
    """A sequence-classification reward model: the response with the higher score wins.

    The scored text is the tokenizer's chat template (user = prompt, assistant = response) when it
    has one, else ``text_format`` (``"{prompt} {response}"``). Scores within ``tie_margin`` tie.
    """

    def __init__(
        self,
        path: str,
        *,
        text_format: str = "{prompt} {response}",
        batch_size: int = 8,
        device: str = "auto",
        tie_margin: float = 0.0,
        max_length: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from aligner_chains.core.loading import resolve_device, resolve_model_path

        resolved = resolve_model_path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(resolved), trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(resolved), trust_remote_code=trust_remote_code, use_safetensors=True
        )
        if self.model.config.num_labels != 1:
            raise ConfigError(
                f"{path}: a reward model has one output (num_labels=1), this one has {self.model.config.num_labels}."
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.text_format, self.batch_size = text_format, batch_size
        self.tie_margin, self.max_length = tie_margin, max_length
        self._lock = threading.Lock()

    def _text(self, prompt: str, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return self.text_format.replace("{prompt}", prompt).replace("{response}", response)

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Reward of each (prompt, response), in batches of ``batch_size``."""
        import torch

        texts = [self._text(p, r) for p, r in zip(prompts, responses, strict=True)]
        out: list[float] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                ).to(self.device)
                out.extend(self.model(**enc).logits[:, 0].float().tolist())
        return out

    def _judge(self, items: Sequence[Item]) -> list[Judgement]:
        prompts = [p for p, _, _ in items for _ in (0, 1)]
        responses = [r for _, a, b in items for r in (a, b)]
        values = self.scores(prompts, responses)
        out = []
        for i in range(len(items)):
            sa, sb = values[2 * i], values[2 * i + 1]
            if abs(sa - sb) <= self.tie_margin:
                out.append(Judgement.of(None, f"scores {sa:.4f} and {sb:.4f} within tie_margin"))
            else:
                out.append(Judgement.of(0 if sa > sb else 1, f"scores {sa:.4f} vs {sb:.4f}"))
        return out


def change_amount(original: str, corrected: str, measure: Literal["fraction", "chars"] = "fraction") -> float:
    """How much a correction changed a text: changed characters (word-level diff), or their share of
    the longer text. An empty original counts as wholly changed (1.0, or the correction's length)."""
    from aligner_chains.core.result import diff_spans

    if not original.strip():
        return 1.0 if measure == "fraction" else float(len(corrected))
    changed = sum(max(e.orig_end - e.orig_start, e.corr_end - e.corr_start) for e in diff_spans(original, corrected))
    return changed / max(len(original), len(corrected), 1) if measure == "fraction" else float(changed)


class AlignerAnnotator(Annotator):
    """An Aligner as the judge: it corrects both responses, and the one it changes less wins.

    ``measure="fraction"`` compares the changed share of each text, ``"chars"`` the changed
    characters; differences within ``tie_tolerance`` tie. A failed correction is a failure.
    """

    def __init__(
        self,
        aligner: Any = "demo",
        *,
        measure: Literal["fraction", "chars"] = "fraction",
        tie_tolerance: float = 0.0,
        batch_size: int = 16,
        **generation: Any,
    ) -> None:
        super().__init__()
        from aligner_chains.core.aligner import resolve_aligner

        if measure not in ("fraction", "chars"):
            raise ConfigError(f"measure={measure!r}: use 'fraction' or 'chars'.")
        self.aligner = resolve_aligner(aligner)
        self.measure, self.tie_tolerance = measure, tie_tolerance
        self.batch_size, self.generation = batch_size, generation

    def _judge(self, items: Sequence[Item]) -> list[Judgement]:
        pairs = [(p, r) for p, a, b in items for r in (a, b)]
        corrections = self.aligner.correct_batch(pairs, self.batch_size, on_error="passthrough", **self.generation)
        out = []
        for i in range(len(items)):
            ca, cb = corrections[2 * i], corrections[2 * i + 1]
            failed = [c.error for c in (ca, cb) if c.finish_reason == "error"]
            if failed:
                logger.warning("Aligner annotator: correction failed for pair %d: %s", i, "; ".join(map(str, failed)))
                out.append(Judgement.failed("; ".join(map(str, failed))))
                continue
            da = change_amount(ca.original, ca.corrected if ca.finish_reason != "skipped" else "", self.measure)
            db = change_amount(cb.original, cb.corrected if cb.finish_reason != "skipped" else "", self.measure)
            if abs(da - db) <= self.tie_tolerance:
                out.append(Judgement.of(None, f"changes {da:.3f} and {db:.3f} tie"))
            else:
                out.append(Judgement.of(0 if da < db else 1, f"changes {da:.3f} vs {db:.3f}"))
        return out


# --------------------------------------------------------------------------- construction


def as_annotator(obj: Any) -> Annotator:
    """An `Annotator` from an annotator, a LangChain chat model, an Aligner or a callable."""
    if isinstance(obj, Annotator):
        return obj
    try:
        from langchain_core.language_models import BaseChatModel
    except ImportError:  # pragma: no cover - langchain-core is a dependency
        BaseChatModel = ()  # type: ignore[assignment,misc]
    if isinstance(obj, BaseChatModel):
        return LLMAnnotator(obj)
    from aligner_chains.core.aligner import Aligner

    if isinstance(obj, Aligner):
        return AlignerAnnotator(obj)
    if callable(obj):
        return CallableAnnotator(obj)
    raise TypeError(
        f"Cannot use {type(obj).__name__} as an annotator: pass an Annotator, a LangChain chat model, "
        "an Aligner, or a callable (prompt, response_a, response_b) -> 0 | 1 | None."
    )


def _import_target(target: str) -> Any:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"target {target!r} must look like 'package.module:name'.")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"Cannot import {target!r}: {exc}") from exc


def annotator_from_settings(settings: Any) -> Annotator:
    """Build the annotator an `AnnotatorSettings` describes (the ``annotator`` block of an OAIF config)."""
    kind = settings.type
    if kind == "length":
        return LengthAnnotator(settings.prefer, settings.unit)
    if kind == "callable":
        if not settings.target:
            raise ConfigError("annotator type 'callable' needs target: 'module:function'.")
        return CallableAnnotator(_import_target(settings.target), settings.max_concurrency)
    if kind == "llm":
        if settings.target:
            chat_model = _import_target(settings.target)(**settings.kwargs)
        elif settings.model:
            try:
                from langchain.chat_models import init_chat_model
            except ImportError as exc:
                from aligner_chains.core.errors import MissingDependencyError

                raise MissingDependencyError(
                    "annotator model 'provider:name' needs langchain: pip install 'aligner-chains[langchain]', "
                    "or give target: 'module:factory' returning a chat model."
                ) from exc
            chat_model = init_chat_model(settings.model, **settings.kwargs)
        else:
            raise ConfigError("annotator type 'llm' needs model: 'provider:name' or target: 'module:factory'.")
        return LLMAnnotator(
            chat_model,
            settings.instructions or DEFAULT_INSTRUCTIONS,
            both_orders=settings.both_orders,
            max_concurrency=settings.max_concurrency,
        )
    if kind == "reward_model":
        if not settings.model:
            raise ConfigError("annotator type 'reward_model' needs model: PATH of a sequence-classification model.")
        return RewardModelAnnotator(settings.model, **settings.kwargs)
    if kind == "aligner":
        return AlignerAnnotator(settings.model or "demo", **settings.kwargs)
    raise ConfigError(f"Unknown annotator type {kind!r}.")
