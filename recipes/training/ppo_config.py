"""PPO's arguments: TrainingArguments (optimizer, schedule, precision, logging, checkpoints, DeepSpeed) plus the
rollout, reward, KL and update knobs of `PPOTrainer` (`ppo_trainer.py`)."""

import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

from recipes.training.args import MiniMindsDefaults


@dataclass
class PPOConfig(MiniMindsDefaults, TrainingArguments):
    """TrainingArguments (optimizer, schedule, precision, logging, checkpoints, DeepSpeed) plus PPO's own knobs.

    A training step is one rollout and its update: `max_steps` counts rollouts, `logging_steps` and `save_steps`
    too. `per_device_train_batch_size` is the micro-batch of the update's forward/backward passes.
    """

    output_dir: str | None = field(default="runs/ppo", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate of the actor (and critic)."})
    critic_learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate of the critic; default --learning_rate."}
    )
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
