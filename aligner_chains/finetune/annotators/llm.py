"""`LLMAnnotator`: a LangChain chat model picks the better response, asked in both orders to cancel position bias."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Literal

from aligner_chains.core.errors import ConfigError
from aligner_chains.finetune.annotators.base import (
    Annotator,
    Item,
    Judgement,
    Label,
)

logger = logging.getLogger(__name__)


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
