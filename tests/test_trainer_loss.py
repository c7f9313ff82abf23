"""The pair selection and DPO loss of AudioOnlineDPOTrainer, on hand-picked numbers (no model)."""

import math

import pytest
import torch

from trl_audio.trainer import dpo_losses, mean_over_preferred, select_pairs


# 3 prompts x 3 samples, in TRL's layout: rewards[k * 3 + b] is sample k of prompt b.
REWARDS = torch.tensor([1.0, 5.0, 2.0, 3.0, 5.0, 0.0, 2.0, 5.0, 1.0])
POLICY_LOGPS = torch.tensor([-4.0, -1.0, -3.0, -2.0, -1.0, -5.0, -6.0, -1.0, -7.0])
REF_LOGPS = torch.tensor([-3.0, -1.0, -4.0, -3.0, -1.0, -3.0, -6.0, -1.0, -7.0])


def test_select_pairs_takes_best_and_worst_and_flags_ties():
    chosen, rejected, tied = select_pairs(REWARDS, num_generations=3)
    # prompt 0: rewards (1, 3, 2) -> best sample 1 (index 3), worst sample 0 (index 0)
    # prompt 1: rewards (5, 5, 5) -> tie
    # prompt 2: rewards (2, 0, 1) -> best sample 0 (index 2), worst sample 1 (index 5)
    assert chosen[[0, 2]].tolist() == [3, 2]
    assert rejected[[0, 2]].tolist() == [0, 5]
    assert tied.tolist() == [False, True, False]


def test_select_pairs_matches_trl_order_for_two_samples():
    # TRL: chosen = first sample when first >= second
    chosen, rejected, tied = select_pairs(torch.tensor([2.0, 1.0, 1.0, 3.0]), num_generations=2)
    assert chosen.tolist() == [0, 3] and rejected.tolist() == [2, 1] and not tied.any()


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        # h = (pi_c - pi_r) - (ref_c - ref_r), beta = 0.5
        # prompt 0: (-2 - -4) - (-3 - -3) = 2 ; prompt 2: (-3 - -5) - (-4 - -3) = 3 ; prompt 1 tied, left out
        # sigmoid: mean(log(1 + e^-1), log(1 + e^-1.5)) = mean(0.3132617, 0.2014133) = 0.2573375
        ("sigmoid", (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-1.5))) / 2),
        # ipo: mean((2 - 1/(2*0.5))^2, (3 - 1)^2) = mean(1, 4) = 2.5
        ("ipo", 2.5),
    ],
)
def test_dpo_loss_on_hand_picked_logps_excludes_ties(loss_type, expected):
    chosen, rejected, tied = select_pairs(REWARDS, num_generations=3)
    losses = dpo_losses(
        POLICY_LOGPS[chosen] - POLICY_LOGPS[rejected], REF_LOGPS[chosen] - REF_LOGPS[rejected], 0.5, loss_type
    )
    loss = mean_over_preferred(losses, tied)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx({"sigmoid": 0.2573375, "ipo": 2.5}[loss_type], abs=1e-6)


def test_all_tied_gives_zero_loss_that_still_backpropagates():
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    losses = dpo_losses(logps[:1] - logps[1:], torch.zeros(1), 0.1, "sigmoid")
    loss = mean_over_preferred(losses, torch.tensor([True]))
    loss.backward()
    assert loss.item() == 0.0 and logps.grad.abs().sum().item() == 0.0


def test_unknown_loss_type_is_an_error():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_losses(torch.zeros(1), torch.zeros(1), 0.1, "hinge")
