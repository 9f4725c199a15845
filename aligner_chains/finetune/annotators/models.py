"""Model-based annotators: a reward model scores each response; an Aligner prefers the response it changes less."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Literal

from aligner_chains.core.errors import ConfigError
from aligner_chains.finetune.annotators.base import (
    Annotator,
    Item,
    Judgement,
)

logger = logging.getLogger(__name__)


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

        from aligner_chains.backends.local.loading import resolve_device
        from aligner_chains.core.model_files import resolve_model_path

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
        aligner: Any = None,
        *,
        measure: Literal["fraction", "chars"] = "fraction",
        tie_tolerance: float = 0.0,
        batch_size: int = 16,
        **generation: Any,
    ) -> None:
        super().__init__()
        from aligner_chains.core import resolve_aligner

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
