"""PPO's arithmetic on per-token tensors of right-padded replies ([batch, reply_length], mask 1 on reply tokens):
the KL penalty, GAE, whitening and the clipped policy and value losses. PPO is written in this project because TRL
removed its PPO trainer (last in trl 1.12.0); these pieces follow the usual definitions (Schulman et al. 2017, GAE
2016) and are tested against hand-computed values in tests/test_ppo.py."""

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (unless `shift_mean` is False) and unit variance over the masked entries; the rest become 0."""
    mean_ = masked_mean(values, mask)
    variance = masked_mean((values - mean_) ** 2, mask)
    count = mask.sum()
    if count > 1:
        variance = variance * count / (count - 1)  # unbiased
    whitened = (values - mean_) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean_
    return whitened * mask


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """KL(policy || reference) estimated at each sampled token: k1 = log p - log q; k3 = (q/p - 1) - log(q/p)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """-kl_coef x KL at every reply token, plus the reply's score on its last token."""
    rewards = -kl_coef * kl * mask
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & mask.bool()
    return rewards + scores[:, None] * last


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimates and returns over right-padded replies: the value after the last token is 0.

    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1};  returns = A + V."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """PPO's clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1 -/+ eps)), r = exp(log p - log p_old).
    Also the fraction of tokens clipped and the approximate KL 0.5 E[(log r)^2] to the rollout policy."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """0.5 x mean over tokens of max((V - R)^2, (clip(V, V_old -/+ eps) - R)^2), and the fraction clipped."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask).detach()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over reply tokens: 1 is a perfect critic, <= 0 a useless one."""
    variance = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    residual_variance = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return (1 - residual_variance / variance).item() if variance > 0 else float("nan")
