"""What one PPO rollout is made of: the actor and critic as one module, the sampled batch, its sampling settings, the
sampled replies as tensors, and the log-probs of sampled tokens."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig
from trl.trainer.utils import selective_log_softmax

from modeling_miniminds.inference import FINISH_STOP, Completion, pad_batch


class PolicyAndValue(nn.Module):
    """The actor and the critic as one module, so accelerate wraps and all-reduces both in one engine. The critic is
    a sequence classifier whose score head is applied at every position: a per-token value."""

    def __init__(self, policy, critic):
        super().__init__()
        self.policy, self.critic = policy, critic
        self.config = policy.config  # DeepSpeed fills its `auto` bucket sizes from config.hidden_size

    # Activation checkpointing is the actor's: the Trainer turns it on, TRL's generation unwrapping off and on again.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.policy.is_activation_checkpointing

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.policy.activation_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.policy.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.policy.activation_checkpointing_disable()

    def forward(self, input_ids, attention_mask, position_ids):
        logits = self.policy(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits
        backbone = getattr(self.critic, self.critic.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return logits, self.critic.score(hidden).squeeze(-1)


@dataclass
class Rollout:
    """One rollout on one process; per-token tensors cover the reply tokens only ([batch, reply_length])."""

    query: torch.Tensor  # [batch, prompt + reply] left-padded prompts followed by the replies
    attention_mask: torch.Tensor
    prompt_width: int
    mask: torch.Tensor  # reply tokens up to and including the first eos
    ended: torch.Tensor
    texts: list[str]
    records: list[dict]
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def rows(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`input_ids`, `attention_mask` and `position_ids` (counted from each row's first real token) of some rows."""
        input_ids, attention_mask = self.query[rows], self.attention_mask[rows]
        return input_ids, attention_mask, (attention_mask.cumsum(1) - 1).clamp(min=0)

    def reply_logprobs(self, logits: torch.Tensor, rows, temperature: float) -> torch.Tensor:
        """Log-probs of the sampled reply tokens under `logits` of those rows, at the sampling temperature."""
        start = self.prompt_width - 1
        logits = logits[:, start:-1].float() / temperature
        return selective_log_softmax(logits, self.query[rows][:, start + 1 :])


def sampling_config(args, tokenizer) -> GenerationConfig:
    """Pure sampling at `--temperature` (no top-k/top-p unless `--generation_kwargs` asks), so the log-probs PPO
    computes are those of the distribution that sampled."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    options = {"do_sample": True, "temperature": args.temperature, "top_k": 0, "top_p": 1.0}
    return GenerationConfig(
        max_new_tokens=args.max_completion_length,
        eos_token_id=eos,
        pad_token_id=pad,
        cache_implementation=args.cache_implementation,
        **{**options, **(args.generation_kwargs or {})},
    )


def reply_tensors(completions: list[Completion], eos_token_id: int, pad_token_id: int):
    """Sampled replies as right-padded `[batch, longest reply]` ids with their eos when they ended their turn, the
    mask of those tokens, and whether each reply ended."""
    ended = [c.finish_reason == FINISH_STOP for c in completions]
    replies = [c.token_ids + [eos_token_id] if stop else c.token_ids for c, stop in zip(completions, ended)]
    responses, mask = pad_batch(replies, pad_token_id, padding_side="right")
    return responses, mask, torch.tensor(ended)
