"""PPO's math (recipes/training/ppo_math.py; PPO is written here because TRL removed its trainer) against values
computed by hand in the comments: GAE, whitening, the clipped policy and value losses, the KL estimators and the
per-token rewards, the explained variance, and the mask of sampled reply tokens."""

import math

import pytest
import torch

from modeling_miniminds.inference import FINISH_LENGTH, FINISH_STOP, Completion
from recipes.training.ppo_math import (
    compute_gae,
    explained_variance,
    kl_per_token,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from recipes.training.ppo_rollout import reply_tensors


def test_gae_matches_hand_computation():
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    rewards = torch.tensor([[0.0, 0, 1], [0, 1, 0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.2, 0.1, 9.0]])  # 9.0 sits past the reply: ignored
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: deltas 0.4-0.5, 0.3-0.4, 1-0.3 -> A2 = 0.7, A1 = -0.1 + 0.5 * 0.7, A0 = -0.1 + 0.5 * 0.25
    # row 1: the value after the last reply token is 0 -> A1 = 1 - 0.1, A0 = 0.1 - 0.2 + 0.5 * 0.9
    torch.testing.assert_close(advantages, torch.tensor([[0.025, 0.25, 0.7], [0.35, 0.9, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.525, 0.65, 1.0], [0.55, 1.0, 0.0]]))
    discounted, _ = compute_gae(torch.tensor([[0.0, 0, 1]]), torch.zeros(1, 3), torch.ones(1, 3), gamma=0.5, lam=1.0)
    torch.testing.assert_close(discounted, torch.tensor([[0.25, 0.5, 1.0]]))  # Monte Carlo returns, discounted


def test_whitening_uses_only_reply_tokens():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    whitened = masked_whiten(values, torch.tensor([[1.0, 1, 1, 0]]))
    # mean 2, unbiased variance (1 + 0 + 1) / 2 = 1; the padded 100 is neither counted nor kept
    torch.testing.assert_close(whitened, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_clipped_policy_loss_matches_hand_computation():
    new, old = torch.log(torch.tensor([[0.5, 0.9]])), torch.log(torch.tensor([[0.4, 0.4]]))
    loss, clipfrac, approx_kl = policy_loss(new, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), cliprange=0.2)
    # ratios 1.25 and 2.25: A=+1 takes the clipped -1.2, A=-1 the unclipped 2.25 (clipping never helps a bad move)
    assert loss.item() == pytest.approx((-1.2 + 2.25) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(0.25 * (math.log(1.25) ** 2 + math.log(2.25) ** 2))


def test_clipped_value_loss_matches_hand_computation():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.0]])
    loss, clipfrac = value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # clipped values 0.7 and 0.3: max((1-2)^2, (0.7-2)^2) = 1.69 and max(0, 0.3^2) = 0.09
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09) / 2)
    assert clipfrac.item() == 1.0


def test_kl_estimators_and_per_token_rewards():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert kl_per_token(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))  # (q/p - 1) - log(q/p)
    rewards = token_rewards(torch.tensor([2.0]), torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[1.0, 1, 0]]), 0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 1.9, 0.0]]))  # the score lands on the last token


def test_sampled_replies_keep_their_eos_and_mask_only_reply_tokens():
    completions = [Completion("", [5], FINISH_STOP, 3), Completion("", [5, 6, 7, 8], FINISH_LENGTH, 3)]
    responses, mask, ended = reply_tensors(completions, eos_token_id=2, pad_token_id=0)
    assert responses.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8]]  # the eos that ended a turn is a trained token
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]] and ended.tolist() == [True, False]


def test_explained_variance_matches_hand_computation():
    returns, values = torch.tensor([[1.0, 2.0, 3.0, 50.0]]), torch.tensor([[1.0, 2.0, 2.0, -7.0]])
    # over the 3 reply tokens: Var(returns) = 2/3; residuals 0, 0, 1 have variance 2/9 -> 1 - (2/9) / (2/3)
    assert explained_variance(values, returns, torch.tensor([[1.0, 1, 1, 0]])) == pytest.approx(2 / 3)
    assert math.isnan(explained_variance(values, torch.ones(1, 4), torch.ones(1, 4)))  # constant returns: undefined
