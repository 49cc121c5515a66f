"""Argument classes every stage builds on: TRL's `ScriptArguments` and `ModelConfig`, and one set of training
defaults put in front of a stage's trainer config (`TrainingArguments`, `SFTConfig`, `DPOConfig`, ...).

A stage then differs only by a small dataclass:

    @dataclass
    class SFTStageConfig(MiniMindsDefaults, SFTConfig):
        learning_rate: float = 1e-4
"""

import os
from dataclasses import dataclass, field

import torch
import trl

from data_process.mixture import MixtureSource, read_mixture


def resolve_precision(bf16: bool | None, fp16: bool | None, use_cpu: bool = False) -> tuple[bool, bool]:
    """Pick (bf16, fp16) for flags left unset (None): bf16 on GPUs that have it, fp16 with loss scaling on older
    GPUs, fp32 on CPU. Flags given explicitly win."""
    on_gpu = torch.cuda.is_available() and not use_cpu
    if bf16 is None:
        bf16 = bool(on_gpu and torch.cuda.is_bf16_supported() and not fp16)
    if fp16 is None:
        fp16 = bool(on_gpu and not bf16)
    return bf16, fp16


# Where launchers put the world size: torchrun, accelerate and deepspeed, then the MPI launchers.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launcher_world_size() -> int:
    """Processes started by torchrun, accelerate or deepspeed (1 when run as a plain script)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_one_process_launch() -> None:
    """Refuse a launch that asked for several processes and got one.

    `accelerate launch --cpu --num_processes 2` (and a `MULTI_CPU` config without `--mpirun_hostfile`) goes through
    accelerate's single-process launcher: it starts this process alone, yet sets MASTER_ADDR/MASTER_PORT, which it
    does only for a process count above 1, and ACCELERATE_USE_CPU, which only that launcher sets. No launcher set a
    world size. The run would train alone and exit 0 as if two processes had."""
    env = os.environ
    launched_alone = not any(name in env for name in WORLD_SIZE_VARIABLES)
    if launched_alone and "ACCELERATE_USE_CPU" in env and "MASTER_PORT" in env:
        raise ValueError(
            "accelerate launch was asked for several processes but started one: --cpu (or distributed_type "
            "MULTI_CPU without mpirun) runs a single process. For several CPU processes use "
            "`accelerate launch --config_file ds_configs/multi_cpu.yaml` (or torchrun --nproc_per_node N)"
        )


def accumulation_steps(global_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Micro-batches each process accumulates so that a step holds `global_batch_size` rows on any number of
    processes: a recipe keeps its optimisation when GPUs are added."""
    rows_per_micro_step = per_device_batch_size * world_size
    if global_batch_size % rows_per_micro_step:
        raise ValueError(
            f"--global_batch_size {global_batch_size} is not a multiple of per_device_train_batch_size "
            f"{per_device_batch_size} x {world_size} processes = {rows_per_micro_step}"
        )
    return global_batch_size // rows_per_micro_step


@dataclass
class MiniMindsDefaults:
    """Defaults shared by every MiniMinds stage; put in front of the stage's trainer config class.

    `min_lr_rate` is the final learning rate as a fraction of `learning_rate` (for `cosine_with_min_lr` and
    `warmup_stable_decay`), `decay_ratio` the share of steps spent decaying in `warmup_stable_decay`.
    `bf16`/`fp16` left unset pick bf16 on GPUs that support it, fp16 on other GPUs and fp32 on CPU. Started by a
    launcher with several processes on a machine without a GPU, training runs distributed on the CPU.
    """

    lr_scheduler_type: str = field(
        default="cosine_with_min_lr",
        metadata={"help": "cosine_with_min_lr, warmup_stable_decay, or any transformers scheduler name."},
    )
    min_lr_rate: float = field(default=0.1, metadata={"help": "Final learning rate as a fraction of --learning_rate."})
    decay_ratio: float = field(
        default=0.2, metadata={"help": "warmup_stable_decay: fraction of the training steps spent decaying."}
    )
    warmup_steps: float = field(
        default=0.02, metadata={"help": "Warmup steps: a count, or a fraction (< 1) of the training steps."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint folder, or `auto`: the latest complete checkpoint in output_dir if there is one."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start from scratch in an output_dir that holds checkpoints, deleting them."},
    )
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; unset: automatic."})
    fp16: bool | None = field(default=None, metadata={"help": "fp16 mixed precision; unset: automatic."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Alias of --activation_checkpointing (off unless asked: small models)."}
    )
    include_num_input_tokens_seen: str = field(
        default="all", metadata={"help": "Count input tokens (all, non_padding or no): tokens/s is reported."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run modeling code shipped in a model folder (not needed for MiniMinds folders)."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every parameter takes part in every step (MoE experts included)."}
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows per optimizer step over all processes; sets gradient_accumulation_steps from the number "
            "of processes, so a recipe trains the same on 1 or 8 GPUs. Unset: gradient_accumulation_steps as given."
        },
    )

    def __post_init__(self):
        if launcher_world_size() > 1 and not torch.cuda.is_available():
            self.use_cpu = True
        if self.global_batch_size is not None:
            steps = accumulation_steps(self.global_batch_size, self.per_device_train_batch_size, launcher_world_size())
            if self.gradient_accumulation_steps not in (1, steps):
                raise ValueError(
                    f"--gradient_accumulation_steps {self.gradient_accumulation_steps} disagrees with "
                    f"--global_batch_size {self.global_batch_size} (which gives {steps}); pass one of the two"
                )
            self.gradient_accumulation_steps = steps
        self.bf16, self.fp16 = resolve_precision(self.bf16, self.fp16, self.use_cpu)
        if self.use_cpu or not torch.cuda.is_available():
            self.dataloader_pin_memory = False
        super().__post_init__()
        if self.lr_scheduler_type in ("cosine_with_min_lr", "warmup_stable_decay"):
            key = "min_lr_rate" if self.lr_scheduler_type == "cosine_with_min_lr" else "min_lr_ratio"
            kwargs = dict(self.lr_scheduler_kwargs or {})
            if "min_lr" not in kwargs:
                kwargs.setdefault(key, self.min_lr_rate)
            self.lr_scheduler_kwargs = kwargs


@dataclass
class ScriptArguments(trl.ScriptArguments):
    """TRL's data arguments plus a held-out evaluation file, which every stage reports on."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Training data: a JSONL/parquet file, a folder or glob of them, or a Hub dataset id."},
    )
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Held-out data for evaluation, in any --dataset_name form."}
    )


@dataclass
class MixtureScriptArguments(ScriptArguments):
    """Data arguments of the stages that train on a weighted mixture of sources instead of one --dataset_name
    (pretraining, distillation, SFT). The mixture is read as the arguments are parsed, so a mistake in it stops the
    command before any model loads; the field then holds its `MixtureSource` entries, as TRL's mixture config holds
    its `DatasetConfig`s."""

    dataset_mixture: str | None = field(
        default=None,
        metadata={
            "help": "Training data as a weighted mixture instead of --dataset_name: a YAML file listing {path, weight, "
            "split} entries (a recipe file may hold the list itself). Weights are shares of the tokens (pretraining) "
            "or conversations (SFT); see data_process.mixture."
        },
    )

    def __post_init__(self):
        self.dataset_mixture = training_mixture(self)


def training_mixture(args: MixtureScriptArguments) -> tuple[MixtureSource, ...] | None:
    """The entries of --dataset_mixture, None without one; refused beside --dataset_name."""
    if args.dataset_mixture is None:
        return None
    if args.dataset_name:
        raise ValueError("--dataset_name and --dataset_mixture both given: pass one (a mixture lists every source)")
    return read_mixture(args.dataset_mixture)


@dataclass
class ModelArguments(trl.ModelConfig):
    """TRL's model arguments (LoRA included) plus a separate tokenizer."""

    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub id; defaults to --model_name_or_path."}
    )
    attn_implementation: str | None = field(
        default="sdpa", metadata={"help": "eager, sdpa, flash_attention_2 or flex_attention."}
    )


def setup_distributed(args) -> None:
    """Set up the process group before the model is built, DeepSpeed's communicator included, and refuse a launch
    whose processes would each train alone.

    ZeRO-3 shards the model while it is being constructed and reads the world size from DeepSpeed's communicator.
    On GPUs accelerate initialises it; on CPU (`--use_cpu`) it only sets up torch.distributed, so the model would be
    sharded as if each process were alone.
    """
    check_one_process_launch()
    _ = args.device
    if launcher_world_size() > 1 and args.world_size == 1:
        raise ValueError(
            f"the launcher started {launcher_world_size()} processes but the Trainer sees one: each would train "
            "alone into the same folder. On a machine without GPUs pass --use_cpu true."
        )
    if args.deepspeed and args.world_size > 1:
        import deepspeed

        if not deepspeed.comm.is_initialized():
            deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


@dataclass
class SFTStageConfig(MiniMindsDefaults, trl.SFTConfig):
    """SFTConfig with the MiniMinds defaults."""


@dataclass
class RewardStageConfig(MiniMindsDefaults, trl.RewardConfig):
    """RewardConfig with the MiniMinds defaults."""


@dataclass
class DPOStageConfig(MiniMindsDefaults, trl.DPOConfig):
    """DPOConfig with the MiniMinds defaults."""


@dataclass
class GRPOStageConfig(MiniMindsDefaults, trl.GRPOConfig):
    """GRPOConfig with the MiniMinds defaults. GRPO batches hold prompts, not `input_ids`, so the Trainer cannot
    count input tokens; GRPO logs its own `num_tokens`."""

    include_num_input_tokens_seen: str = field(default="no", metadata={"help": "GRPO counts its own tokens."})
