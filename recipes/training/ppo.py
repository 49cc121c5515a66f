"""PPO for a chat model: the stage function `ppo()`, which `recipes/ppo.py` and the demo call. PPO is written in
this project because TRL removed its PPOTrainer (gone from trl 1.13 on, nothing in `trl.experimental`); GRPO, which
TRL keeps, is in `grpo.py`. The trainer is `ppo_trainer.py`, its arguments `ppo_config.py`, its math `ppo_math.py`.

One PPO step:
1. rollout: a batch of prompts per process through HF `generate` (sampling, left padding, stop at <|im_end|>);
2. score: the policy's and the frozen reference's log-probs of the sampled tokens, the critic's per-token values,
   and a scalar score per reply from the reward sources (`rl.py`), minus a penalty for a reply that never ended;
3. rewards: the score on the last reply token and, per token, -kl_coef x KL(policy || reference) (or the KL as a
   loss term instead); advantages by GAE, whitened; returns = advantages + values;
4. update: `num_ppo_epochs` passes over the rollout in minibatches of `per_device_train_batch_size x
   gradient_accumulation_steps` replies, each an optimizer step on the clipped policy loss plus `vf_coef` x the
   clipped value loss; an epoch whose mean approximate KL to the rollout policy passes `target_kl` ends the update.
"""

import json
import logging
from dataclasses import dataclass

from modeling_miniminds.inference import chat_prompt_ids
from recipes.training.cli import RecipeParser
from recipes.training.difficulty import prompts_to_train
from recipes.training.lifecycle import RunCard, finish_run, start_run
from recipes.training.lora import lora_config
from recipes.training.models import count_parameters, load_causal_lm, resolve_tokenizer
from recipes.training.ppo_config import PPOConfig
from recipes.training.ppo_rollout import sampling_config
from recipes.training.ppo_trainer import PPOTrainer
from recipes.training.reward_model import load_reward_model
from recipes.training.rl import (
    RLModelArguments,
    RLScriptArguments,
    as_messages,
    build_reward_functions,
    read_heldout_records,
    read_rl_records,
)

logger = logging.getLogger(__name__)


@dataclass
class PPOModelArguments(RLModelArguments):
    """The SFT folder PPO starts from: the actor and, frozen, the reference."""


def fit_prompts(records: list[dict], tokenizer, max_prompt_length: int, name: str) -> list[dict]:
    """Drop prompts longer than `max_prompt_length` tokens, saying how many."""
    prompts = chat_prompt_ids(tokenizer, [as_messages(r["prompt"]) for r in records])
    kept = [r for r, ids in zip(records, prompts) if len(ids) <= max_prompt_length]
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


def build_trainer(script_args: RLScriptArguments, training_args: PPOConfig, model_args: PPOModelArguments):
    """The trainer (prompts read and checked, and with --difficulty_samples those of middling difficulty kept;
    actor, reference, critic and reward sources loaded) and what the difficulty filter did (None without it)."""
    if script_args.dataset_name is None:
        raise ValueError("pass --dataset_name: the prompts to train on")
    if model_args.use_peft and training_args.deepspeed_plugin is not None:
        raise ValueError("--use_peft under DeepSpeed: the adapter is merged before the final save, which needs DDP")
    if training_args.critic_learning_rate is not None and "optimizer" in getattr(
        training_args.deepspeed_plugin, "deepspeed_config", {}
    ):
        raise ValueError(
            "--critic_learning_rate needs the Trainer's optimizer: drop `optimizer` from the DeepSpeed config"
        )
    tokenizer = resolve_tokenizer(model_args)
    train_records = fit_prompts(
        read_rl_records(script_args.dataset_name, script_args.dataset_train_split),
        tokenizer,
        training_args.max_prompt_length,
        script_args.dataset_name,
    )
    policy, ref_model, critic, reward_funcs = load_models(script_args, training_args, model_args, tokenizer)
    kept, difficulty = prompts_to_train(
        policy,
        tokenizer,
        train_records,
        script_args.difficulty_samples,
        script_args.difficulty_prompts,
        training_args.max_completion_length,
        training_args.seed,
        generation_config=sampling_config(training_args, tokenizer),
    )
    trainer = PPOTrainer(
        training_args,
        policy,
        critic,
        reward_funcs,
        tokenizer,
        [train_records[i] for i in kept],
        ref_model=ref_model,
        eval_records=read_heldout_records(script_args),
        eval_max_new_tokens=script_args.chat_eval_max_new_tokens,
    )
    return trainer, difficulty


def ppo(
    script_args: RLScriptArguments,
    training_args: PPOConfig,
    model_args: PPOModelArguments,
    callbacks: list | None = None,
) -> dict:
    """Train the SFT policy with PPO and save a complete folder; return held-out `before`/`after` numbers (reward,
    accuracy, eot rate; `kl` to the reference) and the run's summary. `callbacks` join the Trainer's."""
    resume = start_run(training_args)
    trainer, difficulty = build_trainer(script_args, training_args, model_args)
    for callback in callbacks or []:
        trainer.add_callback(callback)
    train_output = trainer.train(resume_from_checkpoint=resume)
    trainer.raise_if_interrupted()
    fingerprints = trainer.weight_fingerprints()
    trainer.model = trainer.policy  # the final model: the actor alone, without the critic
    result = finish_run(trainer, train_output, trainer.probe, merge_lora=True, card=RunCard.of("ppo", script_args))
    trainer.save_metrics("train", {**train_output.metrics, "train_weights_sha256_per_process": fingerprints})
    result.update(prompts=len(trainer.records) * trainer.accelerator.num_processes, difficulty=difficulty)
    logger.info(f"Saved the PPO model to {training_args.output_dir}: {json.dumps(result['after'], ensure_ascii=False)}")
    trainer.end()
    return result


def make_parser(description: str | None = None) -> RecipeParser:
    """The stage's command line: its script and the demo parse through this one parser."""
    return RecipeParser((RLScriptArguments, PPOConfig, PPOModelArguments), description=description)
