"""Data synthesis: build correction datasets (question, answer, correction) for training Aligners.

```python
from aligner_chains.synthesize import synthesize

stats = synthesize("questions.jsonl", upstream=weak_llm, teacher=strong_llm, output="data/qac.jsonl")
print(stats.summary())          # then: aligner-chains train sft --train_file data/qac.jsonl ...
```

As in the Aligner paper: an upstream model answers, a strong teacher corrects the answer following
helpful/harmless/honest instructions, and the (question, answer, correction) triples train an Aligner.
"""

from aligner_chains.synthesize.filters import DEFAULT_REFUSAL_PATTERNS, SynthesisFilters, classify, clean_correction
from aligner_chains.synthesize.prompts import DEFAULT_SYSTEM_PROMPT, DEFAULT_USER_PROMPT, CorrectionPrompt
from aligner_chains.synthesize.runner import (
    QUESTION_FIELDS,
    Question,
    SynthesisStats,
    asynthesize,
    load_questions,
    sidecar,
    synthesize,
)

__all__ = [
    "DEFAULT_REFUSAL_PATTERNS",
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_USER_PROMPT",
    "QUESTION_FIELDS",
    "CorrectionPrompt",
    "Question",
    "SynthesisFilters",
    "SynthesisStats",
    "asynthesize",
    "classify",
    "clean_correction",
    "load_questions",
    "sidecar",
    "synthesize",
]
