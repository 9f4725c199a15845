"""Edit statistics of corrections: how often an answer is changed, how much of a correction is copied
from the answer, and how its length compares. Built on the core's word-level differ (`diff_spans`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from pydantic import BaseModel

from aligner_chains.core.result import diff_spans

__all__ = ["EditStats", "EditSummary", "edit_stats", "summarize_edits"]


class EditStats(BaseModel):
    """One correction compared with its answer.

    - ``changed``: the correction differs from the answer (surrounding whitespace ignored, as
      `Correction.changed`);
    - ``copied_fraction``: share of the correction's characters inside spans copied verbatim from the
      answer (1.0 for an unchanged answer; None for an empty correction);
    - ``length_ratio``: correction length / answer length in characters (None for an empty answer);
    - ``n_edits``: number of changed spans (word level).
    """

    changed: bool
    copied_fraction: float | None
    length_ratio: float | None
    n_edits: int


class EditSummary(BaseModel):
    """Edit statistics over many corrections (means and medians skip the None values)."""

    n: int = 0
    changed_share: float | None = None
    copied_fraction_mean: float | None = None
    copied_fraction_median: float | None = None
    length_ratio_mean: float | None = None
    length_ratio_median: float | None = None
    edits_mean: float | None = None


def edit_stats(original: str, corrected: str) -> EditStats:
    """Compare one correction with the answer it corrects."""
    edits = diff_spans(original, corrected)
    inserted = sum(edit.corr_end - edit.corr_start for edit in edits)
    return EditStats(
        changed=corrected.strip() != original.strip(),
        copied_fraction=(1.0 - inserted / len(corrected)) if corrected else None,
        length_ratio=(len(corrected) / len(original)) if original else None,
        n_edits=len(edits),
    )


def summarize_edits(pairs: Iterable[tuple[str, str]]) -> EditSummary:
    """`EditSummary` of ``(original, corrected)`` pairs."""
    stats = [edit_stats(original, corrected) for original, corrected in pairs]
    if not stats:
        return EditSummary()
    copied = [s.copied_fraction for s in stats if s.copied_fraction is not None]
    ratios = [s.length_ratio for s in stats if s.length_ratio is not None]
    return EditSummary(
        n=len(stats),
        changed_share=sum(s.changed for s in stats) / len(stats),
        copied_fraction_mean=statistics.fmean(copied) if copied else None,
        copied_fraction_median=statistics.median(copied) if copied else None,
        length_ratio_mean=statistics.fmean(ratios) if ratios else None,
        length_ratio_median=statistics.median(ratios) if ratios else None,
        edits_mean=statistics.fmean(s.n_edits for s in stats),
    )
