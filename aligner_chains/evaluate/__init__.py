"""Evaluation: judge an Aligner's corrections against the original answers.

```python
from aligner_chains.evaluate import LLMJudge, evaluate

report = evaluate("items.jsonl", LLMJudge.for_dimensions(chat_model), log="report/judgments.jsonl")
report.save("report/")          # report.json, report.md, win_rate.png
```

Win rate as in the Aligner paper: ``(wins - losses) / judged``, with a bootstrap interval, per dimension
and per upstream model; plus edit statistics (share changed, copied fraction, length ratio).
"""

from aligner_chains.evaluate.edits import EditStats, EditSummary, edit_stats, summarize_edits
from aligner_chains.evaluate.judges import (
    RUBRICS,
    CallableJudge,
    Judge,
    Judgment,
    LLMJudge,
    RewardModelJudge,
    as_judge,
    parse_verdict,
)
from aligner_chains.evaluate.report import EvalReport, ItemResult
from aligner_chains.evaluate.runner import FIELD_ALIASES, EvalItem, aevaluate, evaluate, load_items
from aligner_chains.evaluate.stats import WinRate, bootstrap_interval, win_rate

__all__ = [
    "FIELD_ALIASES",
    "RUBRICS",
    "CallableJudge",
    "EditStats",
    "EditSummary",
    "EvalItem",
    "EvalReport",
    "ItemResult",
    "Judge",
    "Judgment",
    "LLMJudge",
    "RewardModelJudge",
    "WinRate",
    "aevaluate",
    "as_judge",
    "bootstrap_interval",
    "edit_stats",
    "evaluate",
    "load_items",
    "parse_verdict",
    "summarize_edits",
    "win_rate",
]
