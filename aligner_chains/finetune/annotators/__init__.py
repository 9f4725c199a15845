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

from aligner_chains.finetune.annotators.base import (
    Annotator,
    AnnotatorStats,
    CallableAnnotator,
    Item,
    Judgement,
    Label,
    LengthAnnotator,
    Status,
    judgement_rates,
    judgement_rates_from_counts,
)
from aligner_chains.finetune.annotators.factory import annotator_from_settings, as_annotator
from aligner_chains.finetune.annotators.llm import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_JUDGE_TEMPLATE,
    LLMAnnotator,
    parse_verdict,
)
from aligner_chains.finetune.annotators.models import AlignerAnnotator, RewardModelAnnotator, change_amount

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_JUDGE_TEMPLATE",
    "AlignerAnnotator",
    "Annotator",
    "AnnotatorStats",
    "CallableAnnotator",
    "Item",
    "Judgement",
    "LLMAnnotator",
    "Label",
    "LengthAnnotator",
    "RewardModelAnnotator",
    "Status",
    "annotator_from_settings",
    "as_annotator",
    "change_amount",
    "judgement_rates",
    "judgement_rates_from_counts",
    "parse_verdict",
]
