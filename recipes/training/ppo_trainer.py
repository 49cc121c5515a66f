"""PPOTrainer: a `transformers.Trainer` whose training loop is PPO's, as TRL's PPOTrainer was before TRL removed it
(gone from trl 1.13 on). Everything around the loop is the Trainer's and the project's mixin: the accelerator and
DeepSpeed engine, optimizer and schedule, callbacks (metrics.jsonl, tokens/s, Ctrl-C), atomic checkpoints, resume
and the final save. A training step is one rollout and its update (see `recipes/training/ppo.py`).

The actor and the critic are one module (`PolicyAndValue`) to the Trainer, so every gradient is all-reduced (DDP) or
sharded (ZeRO-2/3) by one engine; the reference and the reward model are frozen copies (sharded inference engines
under ZeRO-3). With LoRA the reference is the policy with its adapter disabled. Prompts are dealt to processes by
index and each rollout is sampled from a seed fixed by (seed, step, process), so a resumed run repeats the
uninterrupted one exactly. A checkpoint holds the actor as a loadable folder and the critic in `critic.safetensors`.
"""

import contextlib
import hashlib
import math
import time
from pathlib import Path

import torch
from accelerate.utils import DistributedType, gather_object
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.trainer_utils import TrainOutput
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model, entropy_from_logits

from modeling_miniminds.inference import chat_prompt_ids, generate_completions, pad_batch
from recipes.training.evaluation import eval_mode
from recipes.training.intervals import ITEMS
from recipes.training.lifecycle import HeldOutProbes, Probe
from recipes.training.ppo_math import (
    compute_gae,
    explained_variance,
    kl_per_token,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from recipes.training.ppo_rollout import PolicyAndValue, Rollout, reply_tensors, sampling_config
from recipes.training.rl import as_messages, heldout_rl_metrics, mean, score_replies
from recipes.training.trainer import MiniMindsTrainerMixin

CRITIC_FILE = "critic.safetensors"
UPDATE_STATS = ("loss", "policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl", "entropy")


class PPOTrainer(MiniMindsTrainerMixin, Trainer):
    """PPO over prompt records; `train()` runs `max_steps` rollouts (or `num_train_epochs` passes over the prompts).
    With held-out records the reward-scored held-out numbers are measured as training starts and ends (`probe`)."""

    def __init__(
        self,
        args,
        policy,
        critic,
        reward_funcs,
        tokenizer,
        train_records: list[dict],
        ref_model=None,
        eval_records: list[dict] | None = None,
        eval_max_new_tokens: int = 96,
    ):
        for model in (policy, critic):
            disable_dropout_in_model(model)
        super().__init__(model=PolicyAndValue(policy, critic), args=args, processing_class=tokenizer)
        self.reward_funcs, self.eval_records = reward_funcs, eval_records or []
        self.eval_max_new_tokens = eval_max_new_tokens
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        self.records = train_records[rank::world]
        if len(self.records) < args.rollout_batch_size:
            raise ValueError(
                f"{len(train_records)} prompts over {world} processes leave {len(self.records)} per "
                f"process, fewer than --rollout_batch_size {args.rollout_batch_size}"
            )
        self.steps_per_epoch = len(self.records) // args.rollout_batch_size
        self.num_rollouts = (
            args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * self.steps_per_epoch)
        )
        minibatch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.total_updates = self.num_rollouts * args.num_ppo_epochs * (args.rollout_batch_size // minibatch)
        self.is_peft = ref_model is None
        self.ref_model = self._prepare_frozen(ref_model) if ref_model is not None else None
        self.generation_config = sampling_config(args, tokenizer)
        self.probe = None
        if self.eval_records:
            self.probe = HeldOutProbes([Probe("chat", lambda model: self.heldout_metrics())], args.output_dir)
            self.add_callback(self.probe)

    def _prepare_frozen(self, model):
        model.eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(model, self.accelerator)
        return model.to(self.accelerator.device)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the critic's parameters in groups of their own at `critic_learning_rate`:
        a critic that learns at the actor's small rate stays useless for the whole of a short run."""
        optimizer = super().create_optimizer(model)
        if self.args.critic_learning_rate is None:
            return optimizer
        critic = {id(p) for p in self.accelerator.unwrap_model(self.model).critic.parameters()}
        for group in list(optimizer.param_groups):
            own = [p for p in group["params"] if id(p) in critic]
            group["params"] = [p for p in group["params"] if id(p) not in critic]
            if own:
                optimizer.add_param_group({**group, "params": own, "lr": self.args.critic_learning_rate})
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model).policy

    # The loop

    def _inner_training_loop(
        self, batch_size=None, args=None, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None
    ) -> TrainOutput:
        """Trainer's own start (state, engine, optimizer, schedule, loaded checkpoint) and end; PPO steps between."""
        epochs = math.ceil(self.num_rollouts / self.steps_per_epoch)
        self._init_training_state(self.num_rollouts, self.steps_per_epoch, epochs, resume_from_checkpoint, trial)
        model, _ = self._prepare_for_training(self.total_updates, None, resume_from_checkpoint)
        if resume_from_checkpoint is not None:
            self._load_rng_state(resume_from_checkpoint)
        start_time = time.time()
        self._initial_num_input_tokens_seen = self.state.num_input_tokens_seen
        self._initial_global_step = self.state.global_step
        self._tr_loss, self._total_loss_scalar = torch.tensor(0.0, device=args.device), 0.0
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        while self.state.global_step < self.state.max_steps and not self.control.should_training_stop:
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            logs = self.ppo_step()
            self.state.global_step += 1
            self.state.epoch = self.state.global_step / self.steps_per_epoch
            self.state.num_input_tokens_seen += logs.pop("tokens")
            self._total_loss_scalar += logs["loss"]
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_log:
                self.log(logs)
            if self.control.should_save:
                self._save_checkpoint(model, trial)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
        samples = self.num_rollouts * args.rollout_batch_size * self.accelerator.num_processes
        return self._finalize_training(trial, samples, start_time)

    def ppo_step(self) -> dict:
        """One rollout and its update; returns the step's logs, averaged over processes (`tokens` summed)."""
        started = time.perf_counter()
        step = self.state.global_step
        seed = self.args.seed + 1_000_003 * (step + 1) + self.accelerator.process_index
        rollout = self.rollout(self.batch_records(step), seed)
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
                "learning_rate": self.lr_scheduler.get_last_lr()[0],
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
        """Mean over processes, failure counts summed; None and NaN values left out."""
        keys = [k for k, v in logs.items() if v is not None and not (isinstance(v, float) and math.isnan(v))]
        values = torch.tensor([float(logs[k]) for k in keys], device=self.accelerator.device)
        values = self.accelerator.reduce(values, "mean")
        summed = {k for k in keys if k.endswith("/failures")}
        reduced = {k: (v * self.accelerator.num_processes if k in summed else v) for k, v in zip(keys, values.tolist())}
        return {k: round(v, 6) for k, v in reduced.items()}

    # Rollout and scoring

    def batch_records(self, step: int) -> list[dict]:
        """The prompts of a step on this process: a fixed permutation per epoch, so a resumed run sees the same."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.records), generator=torch.Generator().manual_seed(self.args.seed + epoch))
        size = self.args.rollout_batch_size
        return [self.records[i] for i in order[index * size : (index + 1) * size].tolist()]

    def prompt_ids(self, records: list[dict]) -> list[list[int]]:
        return chat_prompt_ids(self.processing_class, [as_messages(r["prompt"]) for r in records])

    @torch.no_grad()
    def rollout(self, records: list[dict], seed: int) -> Rollout:
        """Sample one reply per prompt from the current policy, left-padded prompts in one `generate` call."""
        config, prompts = self.generation_config, self.prompt_ids(records)
        torch.manual_seed(seed)
        started = time.perf_counter()
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped, eval_mode(unwrapped):
            completions = generate_completions(
                unwrapped.policy, self.processing_class, prompts, config.max_new_tokens, generation_config=config
            )
        self.generate_seconds = time.perf_counter() - started
        input_ids, attention_mask = pad_batch(prompts, config.pad_token_id, padding_side="left")
        responses, mask, ended = reply_tensors(completions, config.eos_token_id, config.pad_token_id)
        device = self.accelerator.device
        return Rollout(
            query=torch.cat([input_ids, responses], 1).to(device),
            attention_mask=torch.cat([attention_mask, mask], 1).to(device),
            prompt_width=input_ids.shape[1],
            mask=mask.float().to(device),
            ended=ended.to(device),
            texts=[c.text for c in completions],
            records=records,
        )

    def forward(self, rollout: Rollout, rows):
        """Log-probs of the sampled reply tokens and the critic's values before each, for rows of a rollout."""
        input_ids, attention_mask, position_ids = rollout.rows(rows)
        logits, values = self.model_wrapped(input_ids, attention_mask, position_ids)
        start = rollout.prompt_width - 1
        logprobs = rollout.reply_logprobs(logits, rows, self.args.temperature)
        return logprobs, values[:, start:-1].float(), logits[:, start:-1].float() / self.args.temperature

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout, rows) -> torch.Tensor:
        input_ids, attention_mask, position_ids = rollout.rows(rows)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if self.ref_model is None:
            with self.policy.disable_adapter():
                logits = self.policy(**inputs, use_cache=False).logits
        else:
            logits = self.ref_model(**inputs, use_cache=False).logits
        return rollout.reply_logprobs(logits, rows, self.args.temperature)

    @torch.no_grad()
    def fill_log_probs(self, rollout: Rollout) -> None:
        """The policy's and the reference's log-probs of the sampled tokens and the critic's values, in micro-batches."""
        size = self.args.per_device_train_batch_size
        chunks = [slice(i, i + size) for i in range(0, len(rollout.texts), size)]
        self.model.eval()
        outputs = [self.forward(rollout, rows)[:2] for rows in chunks]
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
        """`num_ppo_epochs` passes over the rollout in minibatches, one optimizer step each; an epoch whose mean
        approximate KL to the rollout policy passes `target_kl` ends the update."""
        args = self.args
        micro, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
        stats = {key: [] for key in (*UPDATE_STATS, "grad_norm")}
        epochs_done = 0
        generator = torch.Generator().manual_seed(args.seed + self.state.global_step)
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(len(rollout.texts), generator=generator).to(rollout.mask.device)
            epoch_kl = []
            for start in range(0, len(order), micro * accumulation):
                minibatch = [order[i : i + micro] for i in range(start, start + micro * accumulation, micro)]
                for key, value in self.optimizer_step(rollout, minibatch).items():
                    stats[key] += value if isinstance(value, list) else [value]
                epoch_kl += stats["approx_kl"][-accumulation:]
            epochs_done += 1
            epoch_kl = torch.tensor(sum(epoch_kl) / len(epoch_kl), device=self.accelerator.device)
            if args.target_kl is not None and self.accelerator.reduce(epoch_kl, "mean").item() > args.target_kl:
                break
        logs = {key: sum(values) / len(values) for key, values in stats.items() if values}
        logs["ppo_epochs"] = epochs_done
        return logs

    def optimizer_step(self, rollout: Rollout, minibatch: list[torch.Tensor]) -> dict:
        """Accumulate the micro-batches' gradients (synced on the last only, as the Trainer's loop does), clip, step."""
        stats = {key: [] for key in UPDATE_STATS}
        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        for index, rows in enumerate(minibatch):
            last = index == len(minibatch) - 1
            self.accelerator.gradient_state._set_sync_gradients(last)
            no_sync = not (deepspeed or last)
            context = self.accelerator.no_sync(self.model_wrapped) if no_sync else contextlib.nullcontext()
            with context:
                for key, value in self.micro_step(rollout, rows, len(minibatch), deepspeed).items():
                    stats[key].append(value)
        grad_norm = self._clip_grad_norm(self.model_wrapped) if self.args.max_grad_norm > 0 else None
        grad_norm = self._get_grad_norm(self.model_wrapped, grad_norm=grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.model_wrapped.zero_grad()
        return {**stats, **({"grad_norm": float(grad_norm)} if grad_norm is not None else {})}

    def micro_step(self, rollout: Rollout, rows: torch.Tensor, accumulation: int, deepspeed: bool) -> dict:
        args = self.args
        logprobs, values, logits = self.forward(rollout, rows)
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
        self.accelerator.backward(loss / accumulation, **({"scale_wrt_gas": False} if deepspeed else {}))
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

    # Checkpoints: the actor as a model folder, the critic beside it

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A checkpoint (the Trainer's model is actor plus critic) holds the actor as a loadable folder and the critic
        in `critic.safetensors`; the final save (the Trainer's model is then the actor alone) holds the actor."""
        output_dir = output_dir or self.args.output_dir
        critic_state = None
        if state_dict is not None:  # gathered from the DeepSpeed engine of actor plus critic
            critic_state = {k.removeprefix("critic."): v for k, v in state_dict.items() if k.startswith("critic.")}
            state_dict = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        model = self.model
        if not isinstance(model, PolicyAndValue):
            zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
            return super()._save(output_dir, state_dict if zero3 else None)
        self.model = model.policy
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.model = model
        if self.args.should_save:
            critic_state = critic_state or model.critic.state_dict()
            save_file({k: v.contiguous() for k, v in critic_state.items()}, Path(output_dir) / CRITIC_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        folder, model = Path(resume_from_checkpoint), self.model
        if self.is_peft:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model.policy, load_file(folder / "adapter_model.safetensors"))
        else:
            load_weights(model.policy, load_file(folder / "model.safetensors"))
        load_weights(model.critic, load_file(folder / CRITIC_FILE))

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

    # Held-out numbers

    @torch.no_grad()
    def heldout_metrics(self) -> dict:
        """Greedy held-out replies scored by the reward sources, and the KL of sampled held-out replies to the
        reference (summed over tokens, mean over replies)."""
        if not self.eval_records:
            return {}
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            metrics = heldout_rl_metrics(
                unwrapped.policy,
                self.processing_class,
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
        metrics.setdefault(ITEMS, {})["kl"] = kls
        return metrics


def load_weights(module, state_dict: dict) -> None:
    """Load a saved state dict; only weights tied to another (the LM head to the embeddings) may be absent."""
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    tied = set(getattr(module, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise ValueError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    module.tie_weights()
