"""`EvalReport`: per-item verdicts, win rates with intervals per dimension and group, edit statistics;
written as JSON, a Markdown table and a PNG plot."""

from __future__ import annotations

import json
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from aligner_chains.core.errors import ConfigError, MissingDependencyError
from aligner_chains.evaluate.edits import EditSummary, summarize_edits
from aligner_chains.evaluate.stats import WinRate, mean_interval
from aligner_chains.jobs import write_atomic

__all__ = ["EvalReport", "ItemResult", "ScoreDelta", "build_report"]

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "win_rate.png"


class ItemResult(BaseModel):
    """One item judged on one dimension (``index`` is the item's position in the input)."""

    index: int
    key: str
    id: str | None = None
    dimension: str
    group: str | None = None
    question: str
    original: str
    corrected: str | None = None
    verdict: str | None = None
    status: str
    consistent: bool | None = None
    scores: dict[str, float] | None = None
    replies: list[str] = Field(default_factory=list)
    error: str | None = None
    attempts: int = 0


class ScoreDelta(BaseModel):
    """Mean scores of a scoring judge (reward or cost model) on one dimension, over all items or one group.

    ``delta_mean`` is the mean of corrected − original over the items scored, with a bootstrap interval;
    ``higher_is_better`` says which way is an improvement (False for a cost model).
    """

    dimension: str
    group: str | None = None
    n: int
    original_mean: float
    corrected_mean: float
    delta_mean: float
    ci_low: float | None = None
    ci_high: float | None = None
    higher_is_better: bool = True


class EvalReport(BaseModel):
    """The outcome of `evaluate`: what was judged, by whom, and how the corrections fared.

    ``win_rates`` holds one row per dimension over all items (``group=None``) and one per dimension and
    group (the ``group_by`` field of the items, by default ``upstream_model``), when items have groups.
    ``score_deltas`` does the same for the scores of scoring judges (reward and cost models).
    """

    dimensions: list[str]
    judges: dict[str, str]
    group_by: str
    aligner: str | None = None
    n_items: int
    confidence: float
    n_resamples: int
    win_rates: list[WinRate]
    edits: EditSummary
    edits_by_group: dict[str, EditSummary] = Field(default_factory=dict)
    score_deltas: list[ScoreDelta] = Field(default_factory=list)
    results: list[ItemResult] = Field(default_factory=list)

    # -------------------------------------------------------------------------------- queries

    def win_rate(self, dimension: str | None = None, group: str | None = None) -> WinRate:
        """The row of ``dimension`` (default: the only one) over all items or one ``group``."""
        if dimension is None:
            if len(self.dimensions) != 1:
                raise ConfigError(f"This report has dimensions {self.dimensions}: pass dimension=one of them.")
            dimension = self.dimensions[0]
        for row in self.win_rates:
            if row.dimension == dimension and row.group == group:
                return row
        raise ConfigError(
            f"No win rate for dimension={dimension!r}, group={group!r}; dimensions: {self.dimensions}, "
            f"groups: {self.groups}."
        )

    @property
    def groups(self) -> list[str]:
        return sorted({row.group for row in self.win_rates if row.group is not None})

    @property
    def failures(self) -> int:
        """Judgments without a verdict: unparseable replies plus errors, over all dimensions."""
        return sum(row.unparseable + row.errors for row in self.win_rates if row.group is None)

    @property
    def errors(self) -> int:
        """Judgments that failed after retries (or items whose correction failed); a re-run retries them."""
        return sum(row.errors for row in self.win_rates if row.group is None)

    # -------------------------------------------------------------------------------- output

    def to_dict(self, *, texts: bool = False) -> dict[str, Any]:
        """JSON-able report; per-item results without the question/answer texts unless ``texts=True``."""
        data = self.model_dump(mode="json")
        if not texts:
            for row in data["results"]:
                for field in ("question", "original", "corrected", "replies"):
                    row.pop(field, None)
        return data

    def to_json(self, *, texts: bool = False, indent: int = 2) -> str:
        return json.dumps(self.to_dict(texts=texts), indent=indent, ensure_ascii=False)

    def to_markdown(self) -> str:
        """A Markdown summary: the win-rate table and the edit statistics."""
        level = f"{self.confidence:.0%}"
        lines = [
            "# Evaluation report",
            "",
            f"Items: {self.n_items}" + (f" · Aligner: `{self.aligner}`" if self.aligner else ""),
            "",
            "Judges: " + ", ".join(f"{d} (`{name}`)" for d, name in self.judges.items()),
            "",
            "## Win rate of the corrected answer over the original",
            "",
            f"Win rate = (wins − losses) / judged, from −100% to +100%; {level} bootstrap interval "
            f"({self.n_resamples} resamples). Unparseable replies and errors are not verdicts and are left "
            "out of the rate; *inconsistent* counts ties from a judge that changed its mind when the order "
            "of the answers was swapped.",
            "",
            f"| dimension | {self.group_by} | judged | wins | ties | losses | win rate | {level} interval "
            "| inconsistent | unparseable | errors |",
            "|---|---|--:|--:|--:|--:|--:|---|--:|--:|--:|",
        ]
        show_groups = len(self.groups) > 1
        for row in self.win_rates:
            if row.group is not None and not show_groups:
                continue
            interval = "–" if row.ci_low is None else f"[{_pct(row.ci_low)}, {_pct(row.ci_high)}]"
            lines.append(
                f"| {row.dimension} | {row.group or 'all'} | {row.judged} | {row.wins} | {row.ties} | "
                f"{row.losses} | {_pct(row.win_rate)} | {interval} | {row.inconsistent} | {row.unparseable} | "
                f"{row.errors} |"
            )
        lines += [
            "",
            "## Edits",
            "",
            "*changed*: share of answers the correction changed; *copied*: mean share of the correction's "
            "characters copied verbatim from the answer; *length ratio*: correction / answer length "
            "(characters).",
            "",
            f"| {self.group_by} | items | changed | copied (mean) | copied (median) | length ratio (mean) "
            "| length ratio (median) | edits per answer |",
            "|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        rows = [("all", self.edits)] + (sorted(self.edits_by_group.items()) if len(self.edits_by_group) > 1 else [])
        for name, e in rows:
            lines.append(
                f"| {name} | {e.n} | {_share(e.changed_share)} | {_share(e.copied_fraction_mean)} | "
                f"{_share(e.copied_fraction_median)} | {_num(e.length_ratio_mean)} | {_num(e.length_ratio_median)} | "
                f"{_num(e.edits_mean, 1)} |"
            )
        if self.score_deltas:
            lines += [
                "",
                "## Scores",
                "",
                "Mean score of the original and the corrected answers from each scoring judge; *delta* = corrected − "
                f"original, with its {level} bootstrap interval. *better*: which way is an improvement.",
                "",
                f"| dimension | {self.group_by} | scored | better | original | corrected | delta | {level} interval |",
                "|---|---|--:|---|--:|--:|--:|---|",
            ]
            for d in self.score_deltas:
                if d.group is not None and not show_groups:
                    continue
                interval = "–" if d.ci_low is None else f"[{d.ci_low:+.3f}, {d.ci_high:+.3f}]"
                lines.append(
                    f"| {d.dimension} | {d.group or 'all'} | {d.n} | {'higher' if d.higher_is_better else 'lower'} | "
                    f"{d.original_mean:.3f} | {d.corrected_mean:.3f} | {d.delta_mean:+.3f} | {interval} |"
                )
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """A PNG of the win rate per dimension with its interval (and per group, for 2 to 8 groups)."""
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise MissingDependencyError(
                "The win-rate plot needs matplotlib: pip install -e '.[eval]' (or matplotlib)."
            ) from exc
        path = Path(path)
        groups: list[str | None] = [None] + (self.groups if 1 < len(self.groups) <= 8 else [])
        fig = Figure(figsize=(max(4.0, 1.6 * len(self.dimensions) + 2), 3.6), layout="constrained")
        ax = fig.add_subplot()
        width = 0.7 / len(groups)
        for g, group in enumerate(groups):
            xs, ys, low, high = [], [], [], []
            for d, dimension in enumerate(self.dimensions):
                row = next((r for r in self.win_rates if r.dimension == dimension and r.group == group), None)
                if row is None or row.win_rate is None:
                    continue
                xs.append(d + (g - (len(groups) - 1) / 2) * width)
                ys.append(100 * row.win_rate)
                low.append(100 * (row.win_rate - (row.ci_low if row.ci_low is not None else row.win_rate)))
                high.append(100 * ((row.ci_high if row.ci_high is not None else row.win_rate) - row.win_rate))
            ax.errorbar(xs, ys, yerr=[low, high], fmt="o" if group is None else "s", capsize=4, label=group or "all")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(self.dimensions)), self.dimensions)
        ax.set_xlim(-0.6, len(self.dimensions) - 0.4)
        ax.set_ylim(-105, 105)
        ax.set_ylabel("win rate (%)")
        ax.set_title(f"Corrected vs original: win rate, {self.confidence:.0%} interval", fontsize=10)
        if len(groups) > 1:
            ax.legend(fontsize=8, title=self.group_by, title_fontsize=8)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        return path

    def save(self, out_dir: str | Path, *, plot: bool | None = None) -> dict[str, Path]:
        """Write ``report.json`` (verdicts without texts), ``report.md`` and ``win_rate.png`` into ``out_dir``.

        ``plot=None`` draws the PNG when matplotlib is installed and warns otherwise; ``True`` requires it.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / REPORT_JSON, "markdown": out / REPORT_MD}
        write_atomic(paths["json"], self.to_json() + "\n")  # a kill mid-save keeps the previous report
        write_atomic(paths["markdown"], self.to_markdown())
        if plot is not False:
            try:
                paths["plot"] = self.plot(out / REPORT_PNG)
            except MissingDependencyError as exc:
                if plot:
                    raise
                warnings.warn(f"{exc} The report was written without {REPORT_PNG}.", stacklevel=2)
        return paths


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}%"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def build_report(
    results: Sequence[ItemResult],
    *,
    n_items: int,
    dimensions: Sequence[str],
    judges: dict[str, str],
    group_by: str,
    aligner: str | None,
    edit_pairs: Sequence[tuple[str | None, str, str]],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    higher_is_better: dict[str, bool] | None = None,
) -> EvalReport:
    """Count verdicts per dimension (and group) into `WinRate` rows; ``edit_pairs``: (group, original, corrected).

    Results with scores also give `ScoreDelta` rows; ``higher_is_better`` names the dimensions whose scores
    improve downwards (``{"cost": False}``; default: higher is better).
    """
    counts: dict[tuple[str, str | None], Counter[str]] = defaultdict(Counter)
    for r in results:
        outcome = r.verdict if r.status == "ok" else r.status
        inconsistent = r.status == "ok" and r.consistent is False
        for key in ((r.dimension, None), *([(r.dimension, r.group)] if r.group is not None else [])):
            counts[key][outcome] += 1
            counts[key]["inconsistent"] += inconsistent
    rows = []
    groups = sorted({r.group for r in results if r.group is not None})
    for dimension in dimensions:
        for group in [None, *groups]:
            if (dimension, group) not in counts and group is not None:
                continue
            c = counts[(dimension, group)]
            rows.append(
                WinRate.from_counts(
                    dimension,
                    group,
                    wins=c["win"],
                    ties=c["tie"],
                    losses=c["loss"],
                    unparseable=c["unparseable"],
                    errors=c["error"],
                    inconsistent=c["inconsistent"],
                    n_resamples=n_resamples,
                    confidence=confidence,
                    seed=seed,
                )
            )
    by_group: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for group, original, corrected in edit_pairs:
        if group is not None:
            by_group[group].append((original, corrected))
    return EvalReport(
        dimensions=list(dimensions),
        judges=judges,
        group_by=group_by,
        aligner=aligner,
        n_items=n_items,
        confidence=confidence,
        n_resamples=n_resamples,
        win_rates=rows,
        edits=summarize_edits((o, c) for _, o, c in edit_pairs),
        edits_by_group={g: summarize_edits(pairs) for g, pairs in by_group.items()},
        score_deltas=_score_deltas(results, dimensions, groups, higher_is_better or {}, n_resamples, confidence, seed),
        results=list(results),
    )


def _score_deltas(
    results: Sequence[ItemResult],
    dimensions: Sequence[str],
    groups: Sequence[str],
    higher_is_better: dict[str, bool],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> list[ScoreDelta]:
    """One `ScoreDelta` per dimension (and group) whose judged results carry original and corrected scores."""
    pairs: dict[tuple[str, str | None], list[tuple[float, float]]] = defaultdict(list)
    for r in results:
        if r.status == "ok" and r.scores and {"original", "corrected"} <= set(r.scores):
            pair = (r.scores["original"], r.scores["corrected"])
            pairs[(r.dimension, None)].append(pair)
            if r.group is not None:
                pairs[(r.dimension, r.group)].append(pair)
    rows = []
    for dimension in dimensions:
        for group in [None, *groups]:
            scored = pairs.get((dimension, group))
            if not scored:
                continue
            deltas = [c - o for o, c in scored]
            low, high = mean_interval(deltas, n_resamples=n_resamples, confidence=confidence, seed=seed) or (None, None)
            rows.append(
                ScoreDelta(
                    dimension=dimension,
                    group=group,
                    n=len(scored),
                    original_mean=statistics.fmean(o for o, _ in scored),
                    corrected_mean=statistics.fmean(c for _, c in scored),
                    delta_mean=statistics.fmean(deltas),
                    ci_low=low,
                    ci_high=high,
                    higher_is_better=higher_is_better.get(dimension, True),
                )
            )
    return rows
