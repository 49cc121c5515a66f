"""Trainer callbacks every recipe gets: metrics.jsonl with a plot of its curves, tokens/s, and Ctrl-C that checkpoints."""

import json
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a `metrics.jsonl` file, oldest first."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def curve(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every record that logged `key`."""
    return [(r["step"], r[key]) for r in records if key in r]


def reward_curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """An RL stage's logged training reward, summed (`reward`) and per source, against the step: GRPO logs a source
    as `rewards/<name>/mean`, PPO as `rewards/<name>`. Empty for stages that log no reward."""
    total = curve(records, "reward")
    if not total:
        return {}
    sources = dict.fromkeys(
        key
        for r in records
        for key in r
        if key.startswith("rewards/") and (key.count("/") == 1 or key.endswith("/mean"))
    )
    return {"reward": total} | {key[len("rewards/") :].removesuffix("/mean"): curve(records, key) for key in sources}


def plot_metrics(records: list[dict], png_path: str | Path) -> None:
    """Loss (train and eval) and learning rate against the optimizer step, as one PNG; for an RL stage also its
    training reward (summed and per source, over the replies it sampled) and its KL to the reference, since there
    the loss says little about learning."""
    from matplotlib.figure import Figure

    rewards = reward_curves(records)
    rows = 2 if rewards else 1
    fig = Figure(figsize=(10, 4 * rows), layout="tight")
    loss_ax, lr_ax, *rl_axes = fig.subplots(rows, 2).flat
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = curve(records, key)
        if points:
            loss_ax.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    if loss_ax.get_lines():
        loss_ax.legend()
    lr_points = curve(records, "learning_rate")
    if lr_points:
        lr_ax.plot(*zip(*lr_points))
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    if rewards:
        reward_ax, kl_ax = rl_axes
        for label, points in rewards.items():
            reward_ax.plot(*zip(*points), label=label, linewidth=2 if label == "reward" else 1)
        reward_ax.set(xlabel="step", ylabel="mean reward", title="training reward (sampled replies)")
        reward_ax.legend()
        kl_points = curve(records, "kl")
        if kl_points:
            kl_ax.plot(*zip(*kl_points))
        kl_ax.set(xlabel="step", ylabel="KL", title="KL to the reference")
    fig.savefig(png_path, dpi=100)


class MetricsCallback(TrainerCallback):
    """Append every log to `output_dir/metrics.jsonl` and redraw its curves at each save and at the end.

    Works with or without `--report_to`. A fresh run starts a new file; on resume, records past the checkpoint's step
    are dropped, so the file matches the training that actually continued.
    """

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / METRICS_FILE
        self.png = Path(output_dir) / PLOT_FILE

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.exists():
            resumed = state.global_step > 0
            kept = [r for r in read_metrics(self.path) if resumed and r.get("step", 0) <= state.global_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "time": round(time.time(), 3), **logs}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_metrics(read_metrics(self.path), self.png)

    def on_train_end(self, args, state, control, **kwargs):
        self.on_save(args, state, control)


class ThroughputCallback(TrainerCallback):
    """Training tokens per second, not counting time spent evaluating or saving checkpoints.

    Eval and save run after `on_step_end` and end with `on_evaluate` / `on_save`, so the time from the last step end
    (or the last of those events) to such an event is what gets excluded.
    """

    def __init__(self):
        self.start = self.mark = self.window_start = time.perf_counter()
        self.start_tokens = self.window_tokens = 0
        self.excluded = self.window_excluded = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.mark = self.window_start = time.perf_counter()
        self.start_tokens = self.window_tokens = state.num_input_tokens_seen
        self.excluded = self.window_excluded = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self.mark = time.perf_counter()

    def _exclude(self):
        now = time.perf_counter()
        self.excluded += now - self.mark
        self.mark = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._exclude()

    def on_save(self, args, state, control, **kwargs):
        self._exclude()

    def rate(self, num_tokens: int) -> float:
        """Tokens/s since training (re)started."""
        seconds = time.perf_counter() - self.start - self.excluded
        return (num_tokens - self.start_tokens) / seconds if seconds > 0 else 0.0

    def window_rate(self, num_tokens: int) -> float:
        """Tokens/s since the previous call: what a log line reports."""
        now = time.perf_counter()
        seconds = now - self.window_start - (self.excluded - self.window_excluded)
        rate = (num_tokens - self.window_tokens) / seconds if seconds > 0 else 0.0
        self.window_start, self.window_tokens, self.window_excluded = now, num_tokens, self.excluded
        return rate


class TokenProgressCallback(ProgressCallback):
    """The Trainer's progress bar (steps, ETA) with training tokens/s as its postfix."""

    def __init__(self, throughput: ThroughputCallback):
        super().__init__()
        self.throughput = throughput

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if state.is_world_process_zero and self.training_bar is not None and state.num_input_tokens_seen:
            tokens_per_second = self.throughput.rate(state.num_input_tokens_seen)
            self.training_bar.set_postfix_str(f"{tokens_per_second:,.0f} tok/s", refresh=False)


class InterruptCallback(TrainerCallback):
    """Ctrl-C (SIGINT) or SIGTERM ends training after the current optimizer step with a checkpoint, so the run
    resumes with `--resume_from_checkpoint auto`; a second Ctrl-C stops at once.

    Under several processes the request is agreed on with an all-reduce at each step, so every rank stops at the
    same step and takes part in the same checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.stopped_at_step = None
        self._previous = {}

    def _request(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_begin(self, args, state, control, **kwargs):
        self.requested, self.stopped_at_step = False, None
        try:
            self._previous = {sig: signal.signal(sig, self._request) for sig in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.requested
        if args.world_size > 1:
            flag = torch.tensor([float(requested)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            self.stopped_at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
