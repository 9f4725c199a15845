"""Direct-alignment (DAP) preference losses as pure functions of summed completion log-probs.

With ``h = (logp_w - ref_w) - (logp_l - ref_l)`` (chosen ``w``, rejected ``l``; policy and frozen
reference log-probs summed over each completion's tokens):

- DPO (sigmoid): ``-logsigmoid(beta * h)``
- IPO:           ``(h - 1 / (2 * beta)) ** 2``
- SLiC (hinge):  ``relu(1 - beta * h)``

A pair whose two responses are identical carries no signal (its ``h`` is 0 whatever the weights),
but its loss is not 0 (DPO ``log 2``, IPO ``1/(4 beta^2)``): such pairs are masked out of the loss,
the mean and the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from aligner_chains.core.errors import ConfigError

LossType = Literal["dpo", "ipo", "slic"]
LOSS_TYPES: tuple[str, ...] = ("dpo", "ipo", "slic")


def preference_logits(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> torch.Tensor:
    """``h = (logp_w - ref_w) - (logp_l - ref_l)`` per pair."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ConfigError(f"beta must be > 0, got {beta!r}.")


def dpo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair DPO (sigmoid) loss ``-logsigmoid(beta * h)``."""
    _check_beta(beta)
    return -F.logsigmoid(beta * h)


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair IPO loss ``(h - 1/(2 beta))**2`` (``beta`` plays the role of the paper's 1/tau)."""
    _check_beta(beta)
    return (h - 1.0 / (2.0 * beta)) ** 2


def slic_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair SLiC hinge loss ``relu(1 - beta * h)``."""
    _check_beta(beta)
    return F.relu(1.0 - beta * h)


LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss, "slic": slic_loss}


@dataclass
class PreferenceLoss:
    """Per-pair losses (0 where masked) and the statistics trainers log.

    ``loss_sum`` / ``n_valid`` is the mean over unmasked pairs; trainers divide ``loss_sum`` by the
    number of valid pairs of the whole update (all micro-batches, all processes) instead.
    """

    losses: torch.Tensor
    mask: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def n_valid(self) -> int:
        return int(self.mask.sum())

    @property
    def loss_sum(self) -> torch.Tensor:
        return self.losses.sum()

    @property
    def loss(self) -> torch.Tensor:
        """Mean over unmasked pairs (0 when every pair is masked)."""
        return self.loss_sum / max(1, self.n_valid)

    @property
    def margins(self) -> torch.Tensor:
        """``beta * h`` per pair (the implicit reward margin)."""
        return self.chosen_rewards - self.rejected_rewards


def preference_loss(
    loss_type: str,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    mask: torch.Tensor | None = None,
) -> PreferenceLoss:
    """The ``loss_type`` loss of each pair, masked where ``mask`` is False (identical responses).

    Implicit rewards are ``beta * (logp - ref)`` (detached). Inputs are 1-D tensors of summed
    completion log-probs, one entry per pair.
    """
    if loss_type not in LOSSES:
        raise ConfigError(f"loss_type={loss_type!r}: use one of {', '.join(LOSS_TYPES)}.")
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1:
        raise ValueError(f"log-prob tensors must have one shape, got {sorted(map(tuple, shapes))}.")
    if mask is None:
        mask = torch.ones_like(policy_chosen, dtype=torch.bool)
    mask = mask.to(device=policy_chosen.device, dtype=torch.bool)
    h = preference_logits(policy_chosen.float(), policy_rejected.float(), ref_chosen.float(), ref_rejected.float())
    per_pair = LOSSES[loss_type](h, beta)
    losses = torch.where(mask, per_pair, torch.zeros_like(per_pair))
    chosen_rewards = beta * (policy_chosen.float() - ref_chosen.float()).detach()
    rejected_rewards = beta * (policy_rejected.float() - ref_rejected.float()).detach()
    return PreferenceLoss(losses=losses, mask=mask, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
