"""PPO for a chat model, on accelerate: rollouts, rewards, GAE and clipped updates, written here because TRL removed
its PPOTrainer (gone from trl 1.13 on, nothing in `trl.experimental`). GRPO, which TRL keeps, is in `grpo.py`.

One PPO step:
1. rollout: a batch of prompts per process through HF `generate` (sampling, left padding, stop at <|im_end|>);
2. score: the policy's and the frozen reference's log-probs of the sampled tokens, the critic's per-token values,
   and a scalar score per reply from the reward sources (`rl.py`), minus a penalty for a reply that never ended;
3. rewards: the score on the last reply token and, per token, -kl_coef x KL(policy || reference) (or the KL as a
   loss term instead); advantages by GAE, whitened; returns = advantages + values;
4. update: `num_ppo_epochs` passes over the rollout in minibatches of `per_device_train_batch_size x
   gradient_accumulation_steps` replies, each an optimizer step on the clipped policy loss plus `vf_coef` x the
   clipped value loss; an epoch whose mean approximate KL to the rollout policy passes `target_kl` ends the update.

The actor and the critic are one module to accelerate (one optimizer, one DDP or DeepSpeed engine), so every
gradient is all-reduced; the reference and the reward model are frozen copies (under ZeRO-3, sharded inference
engines). With LoRA the reference is the policy with its adapter disabled. Prompts are dealt to processes by index
and every rollout is sampled from a seed fixed by (seed, step, process), so a resumed run repeats the uninterrupted
one exactly.
"""

import hashlib
import json
import logging
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, TrainingArguments, get_scheduler
from transformers.integrations.deepspeed import propagate_args_to_deepspeed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import (
    disable_dropout_in_model,
    entropy_from_logits,
    selective_log_softmax,
)

from recipes.training.args import MiniMindsDefaults
from recipes.training.callbacks import (
    METRICS_FILE,
    PLOT_FILE,
    plot_metrics,
    read_metrics,
)
from recipes.training.checkpoints import (
    STAGING_PREFIX,
    TRAINER_STATE_FILE,
    publish_checkpoint,
)
from recipes.training.models import (
    align_special_tokens,
    check_model_folder,
    count_parameters,
    load_causal_lm,
    resolve_tokenizer,
)
from recipes.training.preference import lora_config
from recipes.training.reward import load_reward_model, pad_batch
from recipes.training.rl import (
    RLModelArguments,
    RLScriptArguments,
    as_messages,
    build_reward_functions,
    heldout_rl_metrics,
    mean,
    read_heldout_records,
    read_rl_records,
    score_replies,
    write_json,
)
from recipes.training.runs import start_run
from recipes.training.trainer import TrainingInterrupted

logger = logging.getLogger(__name__)

ACCELERATE_STATE = "accelerate_state"


@dataclass
class PPOConfig(MiniMindsDefaults, TrainingArguments):
    """TrainingArguments (optimizer, schedule, precision, logging, checkpoints, DeepSpeed) plus PPO's own knobs.

    A training step is one rollout and its update: `max_steps` counts rollouts, `logging_steps` and `save_steps`
    too. `per_device_train_batch_size` is the micro-batch of the update's forward/backward passes.
    """

    output_dir: str | None = field(default="runs/ppo", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate of actor and critic."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the prompts (without max_steps)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Replies per update micro-batch."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N rollouts."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N rollouts."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    # Rollouts
    rollout_batch_size: int = field(default=16, metadata={"help": "Prompts per process per rollout."})
    max_prompt_length: int = field(default=256, metadata={"help": "Longer prompts are skipped (counted) at load."})
    max_completion_length: int = field(default=64, metadata={"help": "Longest sampled reply, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; log-probs use the same."})
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "More sampling options for `generate` (top_p, top_k, repetition_penalty, ...), as a dict."},
    )
    cache_implementation: str = field(
        default="dynamic", metadata={"help": "KV cache of rollouts: dynamic, or static (fixed shapes, for compile)."}
    )
    missing_eos_penalty: float = field(
        default=1.0, metadata={"help": "Subtracted from the score of a reply that did not end its turn in time."}
    )
    # Rewards and KL
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "Weight per reward source (functions, then the reward model); default 1s."}
    )
    kl_coef: float = field(default=0.05, metadata={"help": "Weight of the KL to the reference."})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 (log ratio) or k3 (unbiased, non-negative)."})
    kl_in_reward: bool = field(
        default=True, metadata={"help": "KL as a per-token reward penalty (true) or as a loss term (false)."}
    )
    # Advantages and update
    gamma: float = field(default=1.0, metadata={"help": "Discount of GAE."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Zero mean, unit variance advantages."})
    num_ppo_epochs: int = field(default=2, metadata={"help": "Passes over each rollout."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip around the rollout's values."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    target_kl: float | None = field(
        default=0.5, metadata={"help": "End a rollout's update when an epoch's approximate KL to it passes this."}
    )
    critic_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Critic start: default the reward model when given, else the SFT model."}
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.generation_kwargs, str):
            self.generation_kwargs = json.loads(self.generation_kwargs)
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"--kl_estimator: expected k1 or k3, got {self.kl_estimator!r}")
        if self.cache_implementation not in ("dynamic", "static"):
            raise ValueError(f"--cache_implementation: expected dynamic or static, got {self.cache_implementation!r}")
        minibatch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.rollout_batch_size % minibatch:
            raise ValueError(
                f"--rollout_batch_size {self.rollout_batch_size} is not a multiple of the minibatch "
                f"per_device_train_batch_size x gradient_accumulation_steps = {minibatch}"
            )


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


def reply_mask(responses: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For sampled replies: 1 up to and including the first eos, 0 after; and whether each reply has an eos."""
    is_eos = responses == eos_token_id
    ended = is_eos.any(1)
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    return (~after_eos).long(), ended


class PolicyAndValue(nn.Module):
    """The actor and the critic as one module, so accelerate wraps and all-reduces both in one engine. The critic is
    a sequence classifier whose score head is applied at every position: a per-token value."""

    def __init__(self, policy, critic):
        super().__init__()
        self.policy, self.critic = policy, critic

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.policy.is_activation_checkpointing

    def gradient_checkpointing_disable(self) -> None:
        self.policy.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

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


class PPOTrainer:
    """Runs PPO steps over prompt records; see the module docstring. `train()` returns the run's summary."""

    def __init__(
        self,
        args: PPOConfig,
        policy,
        critic,
        reward_funcs,
        tokenizer,
        train_records: list[dict],
        ref_model=None,
        eval_records: list[dict] | None = None,
        eval_max_new_tokens: int = 96,
    ):
        self.args, self.tokenizer, self.reward_funcs = args, tokenizer, reward_funcs
        self.eval_records, self.eval_max_new_tokens = eval_records or [], eval_max_new_tokens
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            deepspeed_plugin=args.deepspeed_plugin,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        self.records = train_records[rank::world]
        if len(self.records) < args.rollout_batch_size:
            raise ValueError(
                f"{len(train_records)} prompts over {world} processes leave {len(self.records)} per "
                f"process, fewer than --rollout_batch_size {args.rollout_batch_size}"
            )
        self.steps_per_epoch = len(self.records) // args.rollout_batch_size
        self.max_steps = (
            args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * self.steps_per_epoch)
        )
        updates_per_step = (
            args.num_ppo_epochs
            * args.rollout_batch_size
            // (args.per_device_train_batch_size * args.gradient_accumulation_steps)
        )
        self.total_updates = self.max_steps * updates_per_step
        for model in (policy, critic):
            disable_dropout_in_model(model)
        self.is_peft = ref_model is None
        self.model = PolicyAndValue(policy, critic)
        if args.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
        )
        if self.accelerator.state.deepspeed_plugin is not None:
            if getattr(args, "hf_deepspeed_config", None) is None:  # `accelerate launch` with a DeepSpeed config
                propagate_args_to_deepspeed(self.accelerator, args)
            self.accelerator.state.deepspeed_plugin.hf_ds_config.trainer_config_finalize(
                args, policy, self.total_updates
            )
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.scheduler = get_scheduler(
            args.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=args.get_warmup_steps(self.total_updates),
            num_training_steps=self.total_updates,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
        self.ref_model = self._prepare_frozen(ref_model) if ref_model is not None else None
        self.global_step, self.log_history = 0, []
        self.generation_config = self._generation_config()
        self._interrupted = False

    def _prepare_frozen(self, model):
        model.eval().requires_grad_(False)
        if self.accelerator.state.deepspeed_plugin is not None:
            return prepare_deepspeed(model, self.accelerator)
        return model.to(self.accelerator.device)

    def _generation_config(self) -> GenerationConfig:
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        options = {
            "do_sample": True,
            "temperature": self.args.temperature,
            "top_k": 0,
            "top_p": 1.0,
            **(self.args.generation_kwargs or {}),
        }
        return GenerationConfig(
            max_new_tokens=self.args.max_completion_length,
            eos_token_id=eos,
            pad_token_id=pad,
            cache_implementation=self.args.cache_implementation,
            **options,
        )

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model).policy

    # Rollout and scoring

    def batch_records(self, step: int) -> list[dict]:
        """The prompts of a step on this process: a fixed permutation per epoch, so a resumed run sees the same."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.records), generator=torch.Generator().manual_seed(self.args.seed + epoch))
        size = self.args.rollout_batch_size
        return [self.records[i] for i in order[index * size : (index + 1) * size].tolist()]

    def prompt_ids(self, records: list[dict]) -> list[list[int]]:
        return [
            self.tokenizer.apply_chat_template(
                as_messages(r["prompt"]), add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            for r in records
        ]

    @torch.no_grad()
    def rollout(self, records: list[dict], seed: int) -> Rollout:
        """Sample one reply per prompt from the current policy, left-padded prompts in one `generate` call."""
        pad = self.generation_config.pad_token_id
        input_ids, attention_mask = pad_batch(self.prompt_ids(records), pad, padding_side="left")
        input_ids, attention_mask = input_ids.to(self.accelerator.device), attention_mask.to(self.accelerator.device)
        torch.manual_seed(seed)
        started = time.perf_counter()
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            was_training = unwrapped.training
            unwrapped.eval()
            output = unwrapped.policy.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=self.generation_config
            )
            unwrapped.train(was_training)
        self.generate_seconds = time.perf_counter() - started
        prompt_width = input_ids.shape[1]
        responses = output[:, prompt_width:]
        mask, ended = reply_mask(responses, self.generation_config.eos_token_id)
        responses = responses.masked_fill(mask == 0, pad)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return Rollout(
            query=torch.cat([input_ids, responses], 1),
            attention_mask=torch.cat([attention_mask, mask], 1),
            prompt_width=prompt_width,
            mask=mask.float(),
            ended=ended,
            texts=texts,
            records=records,
        )

    def forward(self, model, rollout: Rollout, rows: slice):
        """Log-probs of the sampled reply tokens and the critic's values before each, for rows of a rollout."""
        input_ids, attention_mask = rollout.query[rows], rollout.attention_mask[rows]
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        logits, values = model(input_ids, attention_mask, position_ids)
        start = rollout.prompt_width - 1
        logits = logits[:, start:-1].float() / self.args.temperature
        logprobs = selective_log_softmax(logits, input_ids[:, start + 1 :])
        return logprobs, values[:, start:-1].float(), logits

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout, rows: slice) -> torch.Tensor:
        input_ids, attention_mask = rollout.query[rows], rollout.attention_mask[rows]
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        if self.ref_model is None:
            with self.accelerator.unwrap_model(self.model).policy.disable_adapter():
                logits = self.policy(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
                ).logits
        else:
            logits = self.ref_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits
        start = rollout.prompt_width - 1
        return selective_log_softmax(logits[:, start:-1].float() / self.args.temperature, input_ids[:, start + 1 :])

    @torch.no_grad()
    def fill_log_probs(self, rollout: Rollout) -> None:
        """The policy's and the reference's log-probs of the sampled tokens and the critic's values, in micro-batches."""
        size = self.args.per_device_train_batch_size
        chunks = [slice(i, i + size) for i in range(0, len(rollout.texts), size)]
        self.model.eval()
        outputs = [self.forward(self.model, rollout, rows)[:2] for rows in chunks]
        self.model.train()
        rollout.logprobs = torch.cat([lp for lp, _ in outputs])
        rollout.values = torch.cat([v for _, v in outputs])
        rollout.ref_logprobs = torch.cat([self.reference_logprobs(rollout, rows) for rows in chunks])

    def score(self, rollout: Rollout) -> dict:
        """Fill log-probs, reference log-probs, values and scores; return the reward numbers to log."""
        self.fill_log_probs(rollout)
        per_source = score_replies(self.reward_funcs, rollout.records, rollout.texts, self.args.reward_weights)
        combined = per_source.pop("reward")
        scores = torch.tensor(combined, dtype=torch.float32, device=rollout.mask.device)
        rollout.scores = scores - self.args.missing_eos_penalty * (~rollout.ended).float()
        logs = {"reward": mean(combined)}
        for func in self.reward_funcs:
            logs[f"rewards/{func.__name__}"] = mean(per_source[func.__name__])
            logs[f"rewards/{func.__name__}/failures"] = func.take_failures()
        return logs

    def advantages(self, rollout: Rollout) -> torch.Tensor:
        """Per-token rewards (score and, if asked, the KL penalty), then GAE; returns the per-token KL."""
        kl = kl_per_token(rollout.logprobs, rollout.ref_logprobs, self.args.kl_estimator)
        kl_coef = self.args.kl_coef if self.args.kl_in_reward else 0.0
        rewards = token_rewards(rollout.scores, kl, rollout.mask, kl_coef)
        advantages, rollout.returns = compute_gae(rewards, rollout.values, rollout.mask, self.args.gamma, self.args.lam)
        if self.args.whiten_advantages:
            advantages = masked_whiten(advantages, rollout.mask)
        rollout.advantages = advantages
        return kl

    # Update

    def update(self, rollout: Rollout) -> dict:
        """`num_ppo_epochs` passes over the rollout in minibatches, one optimizer step each."""
        args = self.args
        micro = args.per_device_train_batch_size
        minibatch = micro * args.gradient_accumulation_steps
        stats = {
            key: []
            for key in (
                "loss",
                "policy_loss",
                "value_loss",
                "clipfrac",
                "value_clipfrac",
                "approx_kl",
                "entropy",
                "grad_norm",
            )
        }
        epochs_done = 0
        generator = torch.Generator().manual_seed(args.seed + self.global_step)
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(len(rollout.texts), generator=generator)
            epoch_kl = []
            for start in range(0, len(order), minibatch):
                for micro_start in range(start, start + minibatch, micro):
                    rows = order[micro_start : micro_start + micro].to(rollout.mask.device)
                    with self.accelerator.accumulate(self.model):
                        step_stats = self.micro_step(rollout, rows)
                        if self.accelerator.sync_gradients:
                            grad_norm = self.clip_gradients()
                            stats["grad_norm"].append(grad_norm)
                        self.optimizer.step()
                        if self.accelerator.sync_gradients:
                            self.scheduler.step()
                        self.optimizer.zero_grad()
                    for key, value in step_stats.items():
                        stats[key].append(value)
                    epoch_kl.append(step_stats["approx_kl"])
            epochs_done += 1
            epoch_kl = self.accelerator.reduce(
                torch.tensor(sum(epoch_kl) / len(epoch_kl), device=self.accelerator.device), "mean"
            ).item()
            if args.target_kl is not None and epoch_kl > args.target_kl:
                break
        logs = {key: sum(values) / len(values) for key, values in stats.items() if values}
        logs["ppo_epochs"] = epochs_done
        return logs

    def clip_gradients(self) -> float:
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
            return float(norm) if norm is not None else float("nan")
        return float("nan")

    def micro_step(self, rollout: Rollout, rows: torch.Tensor) -> dict:
        args = self.args
        logprobs, values, logits = self.forward(self.model, rollout, rows)
        mask = rollout.mask[rows]
        pg_loss, clipfrac, approx_kl = policy_loss(
            logprobs, rollout.logprobs[rows], rollout.advantages[rows], mask, args.cliprange
        )
        vf_loss, vf_clipfrac = value_loss(
            values, rollout.values[rows], rollout.returns[rows], mask, args.cliprange_value
        )
        loss = pg_loss + args.vf_coef * vf_loss
        if not args.kl_in_reward:
            kl = kl_per_token(logprobs, rollout.ref_logprobs[rows], args.kl_estimator)
            loss = loss + args.kl_coef * masked_mean(kl, mask)
        self.accelerator.backward(loss)
        with torch.no_grad():
            entropy = masked_mean(entropy_from_logits(logits), mask)
        return {
            "loss": loss.item(),
            "policy_loss": pg_loss.item(),
            "value_loss": vf_loss.item(),
            "clipfrac": clipfrac.item(),
            "value_clipfrac": vf_clipfrac.item(),
            "approx_kl": approx_kl.item(),
            "entropy": entropy.item(),
        }

    # The loop

    def step(self) -> dict:
        """One rollout and its update; returns the step's logs, averaged over processes."""
        started = time.perf_counter()
        seed = self.args.seed + 1_000_003 * (self.global_step + 1) + self.accelerator.process_index
        rollout = self.rollout(self.batch_records(self.global_step), seed)
        logs = self.score(rollout)
        kl = self.advantages(rollout)
        rollout_seconds = time.perf_counter() - started
        logs.update(self.update(rollout))
        mask = rollout.mask
        logs.update(
            {
                "kl": (kl * mask).sum(1).mean().item(),
                "explained_variance": explained_variance(rollout.values, rollout.returns, mask),
                "response_length": mask.sum(1).mean().item(),
                "eos_rate": rollout.ended.float().mean().item(),
                "score": rollout.scores.mean().item(),
                "learning_rate": self.scheduler.get_last_lr()[0],
            }
        )
        logs = self.reduce_logs(logs)
        total = time.perf_counter() - started
        logs["generate_seconds"] = round(self.generate_seconds, 3)
        logs["rollout_seconds"] = round(rollout_seconds, 3)
        logs["update_seconds"] = round(total - rollout_seconds, 3)
        logs["generate_share"] = round(self.generate_seconds / total, 3)
        logs["tokens"] = int(self.accelerator.reduce(rollout.attention_mask.sum(), "sum").item())
        return logs

    def reduce_logs(self, logs: dict) -> dict:
        keys = [k for k, v in logs.items() if v is not None and not (isinstance(v, float) and math.isnan(v))]
        values = torch.tensor([float(logs[k]) for k in keys], device=self.accelerator.device)
        values = self.accelerator.reduce(values, "mean")
        summed = {k for k in keys if k.endswith("/failures")}
        reduced = {k: (v * self.accelerator.num_processes if k in summed else v) for k, v in zip(keys, values.tolist())}
        return {k: round(v, 6) for k, v in reduced.items()}

    def train(self, resume_from_checkpoint: str | None = None) -> dict:
        """Run to `max_steps` rollouts, logging, checkpointing atomically and stopping cleanly on Ctrl-C."""
        start_step = self.load_checkpoint(resume_from_checkpoint) if resume_from_checkpoint else 0
        self.restart_metrics()
        tokens, started = 0, time.perf_counter()
        bar = tqdm(
            total=self.max_steps,
            initial=start_step,
            desc="PPO",
            disable=self.args.disable_tqdm or not self.accelerator.is_main_process,
        )
        with self.catch_interrupts():
            while self.global_step < self.max_steps:
                logs = self.step()
                self.global_step += 1
                tokens += logs.pop("tokens")
                logs["tokens_per_second"] = round(tokens / (time.perf_counter() - started), 1)
                self.log_history.append({"step": self.global_step, **logs})
                if self.global_step % max(int(self.args.logging_steps), 1) == 0 or self.global_step == self.max_steps:
                    self.write_metrics(self.log_history[-1])
                bar.update(1)
                bar.set_postfix(reward=logs.get("reward"), kl=round(logs["kl"], 3))
                interrupted = self.interrupt_requested()
                if interrupted or self.global_step % max(int(self.args.save_steps), 1) == 0:
                    self.save_checkpoint()
                if interrupted:
                    bar.close()
                    name = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.global_step}"
                    raise TrainingInterrupted(self.global_step, str(name))
        bar.close()
        seconds = time.perf_counter() - started
        losses = [h["loss"] for h in self.log_history if "loss" in h]
        return {
            "steps": self.global_step,
            "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1),
            "train_loss": losses[-1] if losses else None,
            "train_runtime": round(seconds, 2),
            "weights_sha256_per_process": self.weight_fingerprints(),
        }

    def weight_fingerprints(self) -> list[str] | None:
        """SHA-256 of every process's actor and critic weights: data parallelism must leave them identical (a
        gradient that is not all-reduced shows up here). None under ZeRO-3, where no process holds all weights."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.zero_stage == 3:
            return None
        digest = hashlib.sha256()
        for _, param in sorted(self.accelerator.unwrap_model(self.model).named_parameters()):
            digest.update(param.detach().float().cpu().numpy().tobytes())
        fingerprints = gather_object([digest.hexdigest()])
        if len(set(fingerprints)) > 1:
            raise RuntimeError(
                f"the processes ended PPO with different weights ({fingerprints}): a gradient was not all-reduced"
            )
        return fingerprints

    # Logs, interrupts, checkpoints

    def write_metrics(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            path = Path(self.args.output_dir) / METRICS_FILE
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")

    def restart_metrics(self) -> None:
        """A fresh run starts a new metrics file; a resumed one rewrites it from the checkpoint's log history, so it
        matches the training that actually continued."""
        if self.accelerator.is_main_process:
            path = Path(self.args.output_dir) / METRICS_FILE
            path.write_text("".join(json.dumps(r) + "\n" for r in self.log_history), encoding="utf-8")

    @contextmanager
    def catch_interrupts(self):
        """Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and stops; a second Ctrl-C stops now."""

        def request(signum, frame):
            self._interrupted = True
            signal.signal(signal.SIGINT, signal.default_int_handler)

        try:
            previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread
            previous = {}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def interrupt_requested(self) -> bool:
        flag = torch.tensor(float(self._interrupted), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item())

    def save_checkpoint(self) -> None:
        """Write `checkpoint-N` (the policy as a loadable folder, optimizer/critic state, the step and logs) into a
        staging folder, then publish it with one rename and rotate old ones."""
        run_dir = Path(self.args.output_dir)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.global_step}"
        staging = run_dir / f"{STAGING_PREFIX}{self.global_step}" / name
        (staging / ACCELERATE_STATE).mkdir(parents=True, exist_ok=True)  # every process writes its RNG state there
        self.accelerator.wait_for_everyone()
        self.save_policy(staging)
        self.accelerator.save_state(str(staging / ACCELERATE_STATE))
        self.accelerator.wait_for_everyone()  # every process has written its part before the folder is renamed
        if self.accelerator.is_main_process:
            state = {
                "global_step": self.global_step,
                "max_steps": self.max_steps,
                "log_history": self.log_history,
                "scheduler": self.scheduler.state_dict(),
            }
            (staging / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
            publish_checkpoint(staging, run_dir / name)
            staging.parent.rmdir()
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit, use_mtime=False)
            plot_metrics(read_metrics(run_dir / METRICS_FILE), run_dir / PLOT_FILE)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, checkpoint: str) -> int:
        self.accelerator.load_state(str(Path(checkpoint) / ACCELERATE_STATE))
        state = json.loads((Path(checkpoint) / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step, self.log_history = state["global_step"], state["log_history"]
        logger.info(f"Resumed PPO from {checkpoint} at step {self.global_step}")
        return self.global_step

    def save_policy(self, folder: Path, merge_adapter: bool = False) -> None:
        """The policy as a complete model folder (weights gathered under ZeRO-3, tokenizer, generation config)."""
        policy = self.policy
        state_dict = self.accelerator.get_state_dict(self.model)  # gathered on the first process under ZeRO-3
        if state_dict is not None:
            state_dict = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        if merge_adapter and self.is_peft:
            policy = policy.merge_and_unload()
            state_dict = None
        if self.accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            align_special_tokens(policy, self.tokenizer)
            policy.config.use_cache = True
            policy.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
            self.tokenizer.save_pretrained(folder)
            if not self.is_peft or merge_adapter:
                check_model_folder(folder)
        self.accelerator.wait_for_everyone()

    # Held-out numbers

    @torch.no_grad()
    def heldout_metrics(self) -> dict:
        """Greedy held-out replies scored by the reward sources, and the KL of sampled held-out replies to the
        reference (summed over tokens, mean over replies)."""
        if not self.eval_records:
            return {}
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            metrics = heldout_rl_metrics(
                unwrapped.policy,
                self.tokenizer,
                self.eval_records,
                self.reward_funcs,
                self.args.reward_weights,
                self.eval_max_new_tokens,
            )
        for func in self.reward_funcs:
            func.take_failures()
        kls = []
        for start in range(0, len(self.eval_records), self.args.rollout_batch_size):
            rollout = self.rollout(
                self.eval_records[start : start + self.args.rollout_batch_size], seed=self.args.seed + start
            )
            self.fill_log_probs(rollout)
            kls += (kl_per_token(rollout.logprobs, rollout.ref_logprobs, "k1") * rollout.mask).sum(1).tolist()
        metrics["kl"] = mean(kls)
        return metrics


@dataclass
class PPOModelArguments(RLModelArguments):
    """The SFT folder PPO starts from: the actor and, frozen, the reference."""


def fit_prompts(records: list[dict], tokenizer, max_prompt_length: int, name: str) -> list[dict]:
    """Drop prompts longer than `max_prompt_length` tokens, saying how many."""
    kept = [
        r
        for r in records
        if len(
            tokenizer.apply_chat_template(
                as_messages(r["prompt"]), add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        <= max_prompt_length
    ]
    if len(kept) < len(records):
        logger.warning(
            f"{name}: skipped {len(records) - len(kept)} of {len(records)} prompts longer than "
            f"--max_prompt_length {max_prompt_length}"
        )
    if not kept:
        raise ValueError(f"{name}: every prompt is longer than --max_prompt_length {max_prompt_length}")
    return kept


def load_models(script_args: RLScriptArguments, training_args: PPOConfig, model_args: PPOModelArguments, tokenizer):
    """Actor, reference (None with LoRA: the actor with its adapter disabled), critic and reward sources."""
    trust = training_args.trust_remote_code
    policy = load_causal_lm(model_args, tokenizer, trust)
    peft_config = lora_config(model_args, "CAUSAL_LM")
    if peft_config is not None:
        from peft import get_peft_model

        policy, ref_model = get_peft_model(policy, peft_config), None
    else:
        ref_model = load_causal_lm(model_args, tokenizer, trust)
    critic_name = (
        training_args.critic_model_name_or_path
        or script_args.reward_model_name_or_path
        or model_args.model_name_or_path
    )
    critic_args = RLModelArguments(
        model_name_or_path=critic_name, attn_implementation=model_args.attn_implementation, dtype=model_args.dtype
    )
    critic = load_reward_model(critic_args, tokenizer, trust)
    reward_funcs = build_reward_functions(script_args, model_args, tokenizer, training_args.device, trust)
    logger.info(
        f"actor {count_parameters(policy) / 1e6:.2f}M parameters ({'LoRA' if ref_model is None else 'full'}); "
        f"critic from {critic_name}; rewards: {', '.join(f.__name__ for f in reward_funcs)}"
    )
    return policy, ref_model, critic, reward_funcs


def heldout_before(trainer: PPOTrainer, resuming: bool) -> dict:
    """The held-out numbers of the starting model, kept in the output folder so a resumed run reports them too."""
    path = Path(trainer.args.output_dir) / "heldout_before.json"
    if resuming and path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    before = trainer.heldout_metrics()
    if trainer.accelerator.is_main_process:
        write_json(path, before)
    return before


def save_results(trainer: PPOTrainer, summary: dict, after: dict) -> None:
    """`train_results.json`, `eval_results.json` and `all_results.json`, as the Trainer-based stages write them."""
    if not trainer.accelerator.is_main_process:
        return
    out = Path(trainer.args.output_dir)
    train = {f"train_{k}" if not k.startswith("train_") else k: v for k, v in summary.items()}
    evaluation = {f"eval_{k}": v for k, v in after.items() if not isinstance(v, (list, dict))}
    write_json(out / "train_results.json", train)
    write_json(out / "eval_results.json", evaluation)
    write_json(out / "all_results.json", {**train, **evaluation})
    plot_metrics(read_metrics(out / METRICS_FILE), out / PLOT_FILE)


def ppo(
    script_args: RLScriptArguments,
    training_args: PPOConfig,
    model_args: PPOModelArguments,
    callbacks: list | None = None,
) -> dict:
    """Train the SFT policy with PPO and save a complete folder; return held-out `before`/`after` numbers (reward,
    accuracy, eot rate; `kl` to the reference after) and the run's summary. `callbacks` is accepted for the common
    stage signature; PPO has its own loop and takes none."""
    if callbacks:
        raise ValueError("the PPO loop takes no Trainer callbacks")
    resume = start_run(training_args)
    tokenizer = resolve_tokenizer(model_args)
    if script_args.dataset_name is None:
        raise ValueError("pass --dataset_name: the prompts to train on")
    train_records = fit_prompts(
        read_rl_records(script_args.dataset_name, script_args.dataset_train_split),
        tokenizer,
        training_args.max_prompt_length,
        script_args.dataset_name,
    )
    eval_records = read_heldout_records(script_args)
    policy, ref_model, critic, reward_funcs = load_models(script_args, training_args, model_args, tokenizer)
    trainer = PPOTrainer(
        training_args,
        policy,
        critic,
        reward_funcs,
        tokenizer,
        train_records,
        ref_model=ref_model,
        eval_records=eval_records,
        eval_max_new_tokens=script_args.chat_eval_max_new_tokens,
    )
    before = heldout_before(trainer, resume is not None)
    summary = trainer.train(resume)
    after = trainer.heldout_metrics()
    trainer.save_policy(Path(training_args.output_dir), merge_adapter=True)
    save_results(trainer, summary, after)
    result = {
        "before": before,
        "after": after,
        **summary,
        "prompts": len(train_records),
        "output_dir": training_args.output_dir,
    }
    logger.info(f"Saved the PPO model to {training_args.output_dir}: {json.dumps(after, ensure_ascii=False)}")
    trainer.accelerator.end_training()
    return result
