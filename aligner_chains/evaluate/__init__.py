"""Evaluation: judge an Aligner's corrections against the original answers.

```python
from aligner_chains.evaluate import LLMJudge, evaluate

report = evaluate("items.jsonl", LLMJudge.for_dimensions(chat_model), log="report/judgments.jsonl")
report.save("report/")          # report.json, report.md, win_rate.png
```

Win rate as in the Aligner paper: ``(wins - losses) / judged``, with a bootstrap interval, per dimension
and per upstream model; plus edit statistics (share changed, copied fraction, length ratio).

The paper's whole protocol (its evaluation sets, 3H judge presets, Beaver reward and cost models):
`evaluate_paper` (CLI: ``aligner-chains eval --preset aligner-paper --dataset NAME``); AlpacaEval files:
`write_model_outputs` and `read_annotations`.
"""

from aligner_chains.evaluate.alpaca_eval import alpaca_eval_win_rate, read_annotations, write_model_outputs
from aligner_chains.evaluate.datasets import EVAL_SETS, EvalSet, load_eval_questions
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
from aligner_chains.evaluate.presets import JUDGE_PRESETS
from aligner_chains.evaluate.protocol import aevaluate_paper, evaluate_paper
from aligner_chains.evaluate.report import EvalReport, ItemResult, ScoreDelta
from aligner_chains.evaluate.runner import FIELD_ALIASES, EvalItem, aevaluate, evaluate, load_items
from aligner_chains.evaluate.scores import ScoreModelJudge
from aligner_chains.evaluate.stats import WinRate, bootstrap_interval, win_rate

__all__ = [
    "EVAL_SETS",
    "FIELD_ALIASES",
    "JUDGE_PRESETS",
    "RUBRICS",
    "CallableJudge",
    "EditStats",
    "EditSummary",
    "EvalItem",
    "EvalReport",
    "EvalSet",
    "ItemResult",
    "Judge",
    "Judgment",
    "LLMJudge",
    "RewardModelJudge",
    "ScoreDelta",
    "ScoreModelJudge",
    "WinRate",
    "aevaluate",
    "aevaluate_paper",
    "alpaca_eval_win_rate",
    "as_judge",
    "bootstrap_interval",
    "edit_stats",
    "evaluate",
    "evaluate_paper",
    "load_eval_questions",
    "load_items",
    "parse_verdict",
    "read_annotations",
    "summarize_edits",
    "win_rate",
    "write_model_outputs",
]
