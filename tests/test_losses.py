"""Preference losses against hand-computed values (DESIGN.md formulas), masking and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from aligner_chains import ConfigError
from aligner_chains.finetune.losses import (
    dpo_loss,
    ipo_loss,
    preference_logits,
    preference_loss,
    slic_loss,
)

# Two pairs. Pair 0: h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2.  Pair 1: h = (-4 - -3) - (-2 - -3) = -1 - 1 = -2.
POLICY_W = torch.tensor([-1.0, -4.0])
POLICY_L = torch.tensor([-3.0, -2.0])
REF_W = torch.tensor([-2.0, -3.0])
REF_L = torch.tensor([-2.0, -3.0])


def test_h_is_the_difference_of_log_ratio_differences() -> None:
    assert preference_logits(POLICY_W, POLICY_L, REF_W, REF_L).tolist() == [2.0, -2.0]


@pytest.mark.parametrize(
    ("name", "beta", "expected"),
    [
        # DPO: -logsigmoid(beta h) = log(1 + exp(-beta h)); beta h = +1 and -1
        ("dpo", 0.5, [math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0))]),  # 0.3132617, 1.3132617
        ("dpo", 0.1, [math.log1p(math.exp(-0.2)), math.log1p(math.exp(0.2))]),  # 0.5981389, 0.7981389
        # IPO: (h - 1/(2 beta))^2; 1/(2*0.5) = 1 -> (2-1)^2 = 1, (-2-1)^2 = 9; 1/(2*0.25) = 2 -> 0, 16
        ("ipo", 0.5, [1.0, 9.0]),
        ("ipo", 0.25, [0.0, 16.0]),
        # SLiC: relu(1 - beta h); beta 0.5 -> relu(0) = 0, relu(2) = 2; beta 0.1 -> 0.8, 1.2
        ("slic", 0.5, [0.0, 2.0]),
        ("slic", 0.1, [0.8, 1.2]),
    ],
)
def test_losses_match_hand_computed_values(name: str, beta: float, expected: list[float]) -> None:
    out = preference_loss(name, POLICY_W, POLICY_L, REF_W, REF_L, beta)
    torch.testing.assert_close(out.losses, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.loss, torch.tensor(sum(expected) / 2), rtol=1e-6, atol=1e-6)
    assert out.n_valid == 2


def test_pure_functions_on_h() -> None:
    h = torch.tensor([0.0, 2.0])
    torch.testing.assert_close(dpo_loss(h, 1.0), torch.tensor([math.log(2.0), math.log1p(math.exp(-2.0))]))
    torch.testing.assert_close(ipo_loss(h, 1.0), torch.tensor([0.25, 2.25]))  # (0-0.5)^2, (2-0.5)^2
    torch.testing.assert_close(slic_loss(h, 1.0), torch.tensor([1.0, 0.0]))


def test_rewards_and_margins_are_beta_scaled_log_ratios() -> None:
    out = preference_loss("dpo", POLICY_W, POLICY_L, REF_W, REF_L, beta=0.5)
    assert out.chosen_rewards.tolist() == [0.5, -0.5]  # 0.5 * (-1 - -2), 0.5 * (-4 - -3)
    assert out.rejected_rewards.tolist() == [-0.5, 0.5]
    assert out.margins.tolist() == [1.0, -1.0]  # beta * h


def test_identical_pairs_are_masked_out_of_loss_and_mean() -> None:
    # Pair 1 has identical responses: its h is 0 and its unmasked DPO loss would be log 2.
    pw, pl = torch.tensor([-1.0, -5.0]), torch.tensor([-3.0, -5.0])
    rw, rl = torch.tensor([-2.0, -6.0]), torch.tensor([-2.0, -6.0])
    unmasked = preference_loss("dpo", pw, pl, rw, rl, 0.5)
    assert unmasked.losses[1].item() == pytest.approx(math.log(2.0))
    masked = preference_loss("dpo", pw, pl, rw, rl, 0.5, mask=torch.tensor([True, False]))
    assert masked.losses.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), 0.0])
    assert masked.n_valid == 1 and masked.loss.item() == pytest.approx(math.log1p(math.exp(-1.0)))
    ipo = preference_loss("ipo", pw, pl, rw, rl, 0.5, mask=torch.tensor([False, False]))
    assert ipo.loss.item() == 0.0 and ipo.n_valid == 0  # nothing valid: zero, not 1/(4 beta^2)


def test_gradients_match_the_derivative_and_skip_masked_pairs() -> None:
    pw = torch.tensor([-1.0, -4.0], requires_grad=True)
    out = preference_loss("dpo", pw, POLICY_L, REF_W, REF_L, 0.5, mask=torch.tensor([True, False]))
    out.loss_sum.backward()
    # d/dlogp_w of -logsigmoid(beta h) = -beta * sigmoid(-beta h) = -0.5 * sigmoid(-1) = -0.1344707
    assert pw.grad.tolist() == pytest.approx([-0.5 / (1.0 + math.e), 0.0])
    pw.grad = None
    preference_loss("slic", pw, POLICY_L, REF_W, REF_L, 0.5).loss_sum.backward()
    assert pw.grad.tolist() == pytest.approx([0.0, -0.5])  # hinge: zero once satisfied, -beta otherwise
    pw.grad = None
    preference_loss("ipo", pw, POLICY_L, REF_W, REF_L, 0.5).loss_sum.backward()
    assert pw.grad.tolist() == pytest.approx([2.0, -6.0])  # 2 (h - 1/(2 beta)) = 2*1, 2*(-3)


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="beta must be > 0"):
        preference_loss("dpo", POLICY_W, POLICY_L, REF_W, REF_L, 0.0)
    with pytest.raises(ConfigError, match="loss_type='kto'"):
        preference_loss("kto", POLICY_W, POLICY_L, REF_W, REF_L, 0.1)
    with pytest.raises(ValueError, match="one shape"):
        preference_loss("dpo", POLICY_W, POLICY_L[:1], REF_W, REF_L, 0.1)
