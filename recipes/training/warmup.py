"""Timing a stage's step before it runs: each kind of model pass the step repeats (a training micro-batch, a
forward, a reply sampled token by token) is run a few times on the detected device at the stage's shape, and the
step's seconds are the sum of what it repeats.

    timer = PassTimer(device)
    seconds = step_seconds((p.count, timer.seconds(configs[p.model], p)) for p in stage_passes("sft", ...))

On a CPU a pass too big to time in about a second (a GPU profile's micro-batch would take minutes) is timed on fewer
rows and scaled by the rows.
"""

import time
from dataclasses import dataclass

import torch

from modeling_miniminds import MiniMindForCausalLM

TIMED_REPEATS = 3
TIMED_SECONDS = 2.0  # fewer repeats once they take this long
DECODE_TIMED_TOKENS = 8
# Training FLOPs a CPU pass may take before it is timed on fewer rows (about a second on a laptop core).
CPU_PASS_FLOPS = 5e10


@dataclass(frozen=True)
class Pass:
    """A model pass a stage's optimizer step repeats `count` times: `train` (forward, backward and AdamW on `rows`
    sequences of `seq` tokens), `forward` (no gradient) or `decode` (`seq` new tokens after a `prompt`-token prompt).
    `model` names whose shape it is: the policy, or distillation's student."""

    kind: str
    rows: int
    seq: int
    count: float
    prompt: int = 0
    model: str = "policy"


def stage_passes(stage: str, args, script_args, record_tokens: float) -> list[Pass]:
    """What one optimizer step of `stage` runs, from its parsed arguments; `record_tokens` is the mean tokens of a
    record of its file (a pair, a prompt)."""
    rows, accumulate = args.per_device_train_batch_size, args.gradient_accumulation_steps
    if stage == "pretrain":
        return [Pass("train", rows, script_args.block_size, accumulate)]
    if stage == "distill":
        return [
            Pass("train", rows, script_args.block_size, accumulate, model="student"),
            Pass("forward", rows, script_args.block_size, accumulate),
        ]
    if stage == "sft":
        return [Pass("train", rows, args.max_length, accumulate)]
    if stage in ("reward", "dpo"):  # chosen and rejected, each about half a record
        pair = max(1, min(args.max_length or 10**9, round(record_tokens / 2)))
        train = [Pass("train", 2 * rows, pair, accumulate)]
        if stage == "reward" or args.precompute_ref_log_probs:
            return train
        return train + [Pass("forward", 2 * rows, pair, accumulate)]  # the reference
    prompt, reply = max(1, round(record_tokens)), args.max_completion_length
    if stage == "grpo":  # a tool loop adds turns the timing leaves out
        return [
            Pass("decode", rows * accumulate, reply, 1, prompt=prompt),
            Pass("forward", rows, prompt + reply, accumulate),
            Pass("train", rows, prompt + reply, accumulate),
        ]
    if stage == "ppo":
        updates = args.num_ppo_epochs * -(-args.rollout_batch_size // rows)
        return [
            Pass("decode", args.rollout_batch_size, reply, 1, prompt=prompt),
            Pass("forward", args.rollout_batch_size, prompt + reply, 3),  # reference, reward model, critic
            Pass("train", rows, prompt + reply, 2 * updates),  # actor and critic
        ]
    raise ValueError(f"no step shape for stage {stage!r}")


class PassTimer:
    """Times passes of models built from configs on `device`, in bf16 autocast where the GPU has it (as the
    trainers run), keeping each model for the passes after it."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.models = {}
        on_gpu = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else None

    def model(self, config):
        """The model of `config` on the device with its optimizer (learning rate 0: timing changes no weight)."""
        key = config.to_json_string()
        if key not in self.models:
            model = MiniMindForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
            model = model.to(self.device)
            self.models[key] = model, torch.optim.AdamW(model.parameters(), lr=0.0)
        return self.models[key]

    def seconds(self, config, step: Pass) -> float:
        """Seconds of one such pass: the mean of up to `TIMED_REPEATS` timed repeats after one untimed."""
        model, optimizer = self.model(config)
        rows = self.timed_rows(model, step)
        run = {"train": self._train, "forward": self._forward, "decode": self._decode}[step.kind]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(0)
            run(model, optimizer, rows, step)
            self._sync()
            start, repeats = time.perf_counter(), 0
            while repeats < TIMED_REPEATS and (repeats == 0 or time.perf_counter() - start < TIMED_SECONDS):
                run(model, optimizer, rows, step)
                self._sync()
                repeats += 1
        scale = step.rows / rows * (step.seq / min(step.seq, DECODE_TIMED_TOKENS) if step.kind == "decode" else 1)
        return (time.perf_counter() - start) / repeats * scale

    def timed_rows(self, model, step: Pass) -> int:
        if self.device.type == "cuda":
            return step.rows
        row_flops = 6 * model.num_parameters() * (step.prompt + step.seq)
        return max(1, min(step.rows, int(CPU_PASS_FLOPS // row_flops)))

    def _ids(self, model, rows: int, seq: int) -> torch.Tensor:
        return torch.randint(3, model.config.vocab_size, (rows, seq), device=self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def _train(self, model, optimizer, rows: int, step: Pass):
        model.train()
        ids = self._ids(model, rows, step.seq)
        with self._autocast():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _forward(self, model, optimizer, rows: int, step: Pass):
        model.eval()
        with self._autocast():
            model(input_ids=self._ids(model, rows, step.seq))

    @torch.no_grad()
    def _decode(self, model, optimizer, rows: int, step: Pass):
        """A short reply; `seconds` scales it to `step.seq` tokens."""
        model.eval()
        tokens = min(step.seq, DECODE_TIMED_TOKENS)
        ids = self._ids(model, rows, step.prompt)
        with self._autocast():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=True,
                pad_token_id=0,
            )

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
