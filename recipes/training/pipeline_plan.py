"""The arithmetic of a pipeline plan: tokens from bytes, steps from examples, disk from parameters, time from a
measured step, and utilisation from a GPU's peak. Pure functions of numbers, so the tests pin each one.

    sample = TokenSample(records=1000, bytes=2_400_000, tokens=600_000)
    estimate_tokens(1.6e9, sample)                 # 4e8: the file's bytes at the sample's tokens per byte
    planned_steps(0, 1.0, examples=781_250, global_batch=1024)          # 763
    disk_bytes(64e6, save_total_limit=3, data_tokens=4e8)               # final model + 3 checkpoints + token cache
"""

import math
from dataclasses import dataclass
from pathlib import Path

# Dense bf16 tensor-core TFLOPS (fp16 where the GPU has no bf16) by a name fragment of torch.cuda.get_device_name;
# the first fragment found wins, so the more specific names come first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),
    ("T4", 65.0),
)
# What a checkpoint holds per parameter: fp32 weights (4 bytes) and AdamW's two fp32 moments (8); the final model
# folder holds the fp32 weights alone. Tokenized datasets keep int32 ids: 4 bytes a token.
CHECKPOINT_BYTES_PER_PARAMETER = 12
MODEL_BYTES_PER_PARAMETER = 4
CACHE_BYTES_PER_TOKEN = 4
# Training FLOPs per parameter per token (forward 2, backward 4).
TRAIN_FLOPS_PER_PARAMETER_TOKEN = 6


def peak_tflops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak from its name, None for a name the table does not know (pass --peak_tflops)."""
    for fragment, tflops in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops
    return None


@dataclass(frozen=True)
class TokenSample:
    """The first records of a file through the tokenizer: its bytes on disk (JSON and all), characters of text and
    tokens of text."""

    records: int
    bytes: int
    tokens: int
    chars: int = 0

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(self.tokens, 1)

    @property
    def tokens_per_record(self) -> float:
        return self.tokens / max(self.records, 1)


def estimate_tokens(file_bytes: int, sample: TokenSample) -> int:
    """Tokens in a whole file: its bytes at the sample's tokens per byte (the JSON overhead is in both)."""
    return round(file_bytes * sample.tokens / max(sample.bytes, 1))


def estimate_records(file_bytes: int, sample: TokenSample) -> int:
    return round(file_bytes * sample.records / max(sample.bytes, 1))


def planned_steps(max_steps: int, epochs: float, examples: int, global_batch: int) -> int:
    """Optimizer steps of a stage: `max_steps` when set (> 0), else the epochs over `examples` in batches of
    `global_batch`, as the Trainer counts them."""
    if max_steps > 0:
        return max_steps
    return math.ceil(epochs * math.ceil(examples / global_batch))


def disk_bytes(parameters: float, save_total_limit: int | None, models: int = 1, data_tokens: int = 0) -> int:
    """Disk a stage fills at its peak: the final folder and `save_total_limit` checkpoints of each model it trains
    (PPO trains two), and its tokenized data cache."""
    checkpoints = save_total_limit or 1
    per_model = parameters * (MODEL_BYTES_PER_PARAMETER + checkpoints * CHECKPOINT_BYTES_PER_PARAMETER)
    return round(models * per_model + data_tokens * CACHE_BYTES_PER_TOKEN)


def step_seconds(passes) -> float:
    """Seconds of one optimizer step: `(count, seconds)` of each kind of model pass it repeats."""
    return sum(count * seconds for count, seconds in passes)


def mfu(parameters: float, tokens_per_second: float, peak: float | None, processes: int = 1) -> float | None:
    """Model FLOPs utilisation: 6 x parameters x tokens/s over the peak of every GPU (None without a peak)."""
    if not peak or not tokens_per_second:
        return None
    return TRAIN_FLOPS_PER_PARAMETER_TOKEN * parameters * tokens_per_second / (peak * 1e12 * processes)


@dataclass
class StagePlan:
    """One row of the plan. `seconds` is None for a stage the warm-up does not time (corpus, tokenizer, eval)."""

    stage: str
    file: Path | None = None
    file_bytes: int = 0
    data_tokens: int = 0
    steps: int = 0
    tokens: int = 0
    disk: int = 0
    seconds: float | None = None
    step_seconds: float | None = None
    mfu: float | None = None
    note: str = ""


def size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1000:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} TB"


def count(number: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if number >= scale:
            return f"{number / scale:.1f}{unit}"
    return f"{number:.0f}"


def clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def seconds_text(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return f"{seconds:.3g}" if seconds < 100 else clock(seconds)


def format_plan(plans: list[StagePlan], device: str, peak: float | None) -> str:
    """The plan as a table: each stage's file, tokens, steps, disk and ETA, then the totals."""
    rows = [
        "| stage | file | size | tokens (file) | steps | tokens (trained) | disk | s/step | ETA | MFU | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for plan in plans:
        cells = [
            plan.stage,
            plan.file.name if plan.file else "-",
            size(plan.file_bytes) if plan.file else "-",
            count(plan.data_tokens) if plan.data_tokens else "-",
            str(plan.steps) if plan.steps else "-",
            count(plan.tokens) if plan.tokens else "-",
            size(plan.disk) if plan.disk else "-",
            seconds_text(plan.step_seconds),
            clock(plan.seconds) if plan.seconds is not None else "-",
            f"{plan.mfu:.0%}" if plan.mfu is not None else "-",
            plan.note or "",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    timed = sum(plan.seconds for plan in plans if plan.seconds is not None)
    peak_text = f"peak {peak:g} TFLOPS" if peak else "peak unknown (--peak_tflops)"
    rows += [
        "",
        f"Device: {device}, {peak_text}. Disk needed: {size(sum(plan.disk for plan in plans))}. "
        f"Training ETA: {clock(timed)} (from timed warm-up steps; corpus, tokenizer and eval not included).",
    ]
    return "\n".join(rows)
