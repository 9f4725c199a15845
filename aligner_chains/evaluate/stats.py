"""Win rate as in the Aligner paper, ``(wins - losses) / judged``, with a bootstrap confidence interval."""

from __future__ import annotations

from pydantic import BaseModel, computed_field

from aligner_chains.core.errors import ConfigError

__all__ = ["WinRate", "bootstrap_interval", "mean_interval", "win_rate"]


def win_rate(wins: int, ties: int, losses: int) -> float | None:
    """``(wins - losses) / (wins + ties + losses)``, in [-1, 1]; None when nothing was judged."""
    total = wins + ties + losses
    return (wins - losses) / total if total else None


def bootstrap_interval(
    wins: int,
    ties: int,
    losses: int,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `win_rate` over the judged items; None when nothing was judged.

    Resampling n items with replacement from verdicts with counts (w, t, l) draws the resampled counts
    from a multinomial (n; w/n, t/n, l/n), so this is exact item resampling at a cost independent of n.
    Deterministic for a given ``seed``.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence!r}: use a level between 0 and 1, e.g. 0.95.")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigError(f"n_resamples={n_resamples!r}: use a positive whole number, e.g. 2000.")
    total = wins + ties + losses
    if total == 0:
        return None
    import numpy as np

    rng = np.random.default_rng(seed)
    counts = rng.multinomial(total, [wins / total, ties / total, losses / total], size=n_resamples)
    rates = (counts[:, 0] - counts[:, 2]) / total
    tail = (1 - confidence) / 2
    low, high = np.quantile(rates, [tail, 1 - tail])
    return float(low), float(high)


def mean_interval(
    values: list[float], *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (items resampled with replacement); None if empty."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence!r}: use a level between 0 and 1, e.g. 0.95.")
    if not values:
        return None
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(n_resamples, len(data)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


class WinRate(BaseModel):
    """Verdict counts and win rate of one dimension, over all items (``group=None``) or one group.

    ``n`` items were asked; ``judged = wins + ties + losses`` of them got a verdict. ``unparseable``
    (the judge's reply held no verdict) and ``errors`` (failed after retries) are not verdicts and are
    left out of the rate. ``inconsistent`` counts the ties that come from a judge preferring different
    answers in the two orders (position bias).
    """

    dimension: str
    group: str | None = None
    n: int
    wins: int
    ties: int
    losses: int
    unparseable: int = 0
    errors: int = 0
    inconsistent: int = 0
    win_rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def judged(self) -> int:
        return self.wins + self.ties + self.losses

    @classmethod
    def from_counts(
        cls,
        dimension: str,
        group: str | None,
        *,
        wins: int,
        ties: int,
        losses: int,
        unparseable: int = 0,
        errors: int = 0,
        inconsistent: int = 0,
        n_resamples: int = 2000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> WinRate:
        interval = bootstrap_interval(
            wins, ties, losses, n_resamples=n_resamples, confidence=confidence, seed=seed
        ) or (None, None)
        return cls(
            dimension=dimension,
            group=group,
            n=wins + ties + losses + unparseable + errors,
            wins=wins,
            ties=ties,
            losses=losses,
            unparseable=unparseable,
            errors=errors,
            inconsistent=inconsistent,
            win_rate=win_rate(wins, ties, losses),
            ci_low=interval[0],
            ci_high=interval[1],
        )
