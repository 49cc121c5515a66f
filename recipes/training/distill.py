"""Knowledge distillation: a smaller student learns the packed pretraining text from the labels and from a frozen
teacher's next-token distribution, as upstream MiniMind's `train_distillation.py` does. `recipes/distill.py` is the
script.

Written here rather than on TRL: in TRL 1.16 `DistillationTrainer` is on-policy only (the student generates
completions to `prompt` rows and matches the teacher on them), and the experimental `GKDTrainer` is an SFT trainer
whose loss is the divergence alone. Neither trains offline on packed text with a CE term next to the KL.
"""

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from trl.models import prepare_deepspeed

from modeling_miniminds.tokenizer import load_tokenizer
from recipes.training.cli import RecipeParser
from recipes.training.lifecycle import Probe, start_run, turn_off_eval_without_data
from recipes.training.models import count_parameters, load_causal_lm
from recipes.training.packed_text import (
    LORA_FLAGS,
    PretrainConfig,
    PretrainModelArguments,
    PretrainScriptArguments,
    PretrainTrainer,
    build_model,
    load_datasets,
    train_on_blocks,
)

logger = logging.getLogger(__name__)


@dataclass
class DistillScriptArguments(PretrainScriptArguments):
    """Data options: the packed text of pretraining, so the same files, folders and Hub ids work."""


@dataclass
class DistillModelArguments(PretrainModelArguments):
    """The student (a preset or config to build, or a saved model) and the teacher it learns from."""

    teacher_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Saved teacher model (folder or Hub id); it must use the student's tokenizer."},
    )
    model_config: str = field(
        default="minimind-26m",
        metadata={
            "help": "Student to build from scratch: a preset (minimind-tiny, minimind-26m, ...) or a config.json / "
            "folder. vocab_size and special token ids come from the tokenizer."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start the student from this saved model instead of building a new one."}
    )


@dataclass
class DistillConfig(PretrainConfig):
    """TrainingArguments with pretraining defaults plus the two distillation knobs."""

    output_dir: str | None = field(default="runs/distill", metadata={"help": "Checkpoints and the final student."})
    temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of both models in the KL term (> 0; 1 = plain)."}
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the CE on the labels; the KL to the teacher gets 1 - alpha. 1 = no teacher."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1], got {self.alpha}")


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) per position, in float32. The T^2 keeps the gradient's size
    independent of T (Hinton et al., 2015), so alpha means the same at every temperature."""
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none").sum(-1)
    return temperature**2 * kl


def check_same_vocabulary(student, teacher, tokenizer, teacher_name: str) -> None:
    """The KL compares the two distributions id by id, so both models must index the same vocabulary."""
    student_size, teacher_size = student.config.vocab_size, teacher.config.vocab_size
    if student_size != teacher_size:
        raise ValueError(
            f"the student has vocab_size={student_size} but the teacher {teacher_name} has vocab_size={teacher_size}: "
            "distillation compares next-token distributions id by id, so both must use the same tokenizer."
        )
    teacher_folder = Path(teacher_name)
    has_tokenizer = (teacher_folder / "tokenizer.json").is_file()
    if has_tokenizer and load_tokenizer(teacher_folder).get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"the teacher {teacher_name} was saved with a different tokenizer than the student's: the same ids "
            "would mean different tokens. Pass the teacher's tokenizer with --tokenizer_name_or_path."
        )


class DistillTrainer(PretrainTrainer):
    """The pretraining trainer (MiniMinds additions, MoE aux loss) whose training loss mixes the CE on the labels
    with the KL to a frozen teacher: `alpha * CE + (1 - alpha) * T^2 * KL`, both over the target tokens. Evaluation
    reports the student's plain CE, so eval loss and perplexity compare with pretraining runs."""

    def __init__(self, *args, teacher, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = self._place_teacher(teacher)
        self._terms_sum, self._terms_count = None, 0

    def _place_teacher(self, teacher):
        """Frozen, in eval mode, with the student's weight dtype, on its device and under its mixed precision:
        DeepSpeed wraps it as an inference engine (sharded under ZeRO-3, as the student), otherwise accelerate
        places it without a DDP wrapper."""
        student = self.accelerator.unwrap_model(self.model)
        teacher = teacher.to(dtype=student.dtype).eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(teacher, self.accelerator)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The parent's loss (CE, plus the weighted aux loss of a MoE student) with `1 - alpha` of its CE swapped
        for the KL; both terms are normalised like the CE, by the token count of the whole accumulated batch."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self.args.alpha < 1:
            ce, kl = self._ce_and_kl(outputs.logits, inputs, num_items_in_batch)
            loss = loss + (1 - self.args.alpha) * (kl - ce)
        return (loss, outputs) if return_outputs else loss

    def _ce_and_kl(self, logits, inputs, num_items_in_batch):
        labels = inputs["labels"][:, 1:]
        targets = labels != -100
        with torch.no_grad():
            teacher_inputs = {key: value for key, value in inputs.items() if key != "labels"}
            teacher_logits = self.teacher(**teacher_inputs, use_cache=False).logits
        student = logits[:, :-1][targets]  # (target tokens, vocab)
        ce_sum = F.cross_entropy(student.float(), labels[targets], reduction="sum")
        kl_sum = kl_to_teacher(student, teacher_logits[:, :-1][targets], self.args.temperature).sum()
        local_count = targets.sum().clamp(min=1)
        self._record(ce_sum.detach() / local_count, kl_sum.detach() / local_count)
        if num_items_in_batch is None:
            return ce_sum / local_count, kl_sum / local_count
        scale = 1
        if self.args.average_tokens_across_devices:
            scale = self.accelerator.num_processes // self.get_tp_size()
        denominator = num_items_in_batch / scale
        return ce_sum / denominator, kl_sum / denominator

    def _record(self, ce, kl):
        terms = torch.stack([ce, kl]).float()
        self._terms_sum = terms if self._terms_sum is None else self._terms_sum + terms
        self._terms_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean per-token CE and T^2 * KL of the logged steps, to see which term is moving."""
        if "loss" in logs and self._terms_count:
            ce, kl = self.accelerator.reduce(self._terms_sum / self._terms_count, reduction="mean").tolist()
            logs["ce_loss"], logs["kl_loss"] = round(ce, 6), round(kl, 6)
            self._terms_sum, self._terms_count = None, 0
        super().log(logs, start_time)


def shared_tokenizer(model_args: DistillModelArguments):
    """--tokenizer_name_or_path, else the saved student's tokenizer, else the teacher's."""
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path or model_args.teacher_name_or_path
    if name is None:
        raise ValueError("pass --teacher_name_or_path (its tokenizer is used) or --tokenizer_name_or_path")
    return load_tokenizer(name)


def load_teacher(model_args: DistillModelArguments, student, tokenizer, trust_remote_code: bool = False):
    """The saved teacher, loaded like a student would be and checked against the student's vocabulary."""
    if not model_args.teacher_name_or_path:
        raise ValueError("pass --teacher_name_or_path: the saved model the student learns from")
    teacher_args = replace(model_args, model_name_or_path=model_args.teacher_name_or_path)
    teacher = load_causal_lm(teacher_args, tokenizer, trust_remote_code)
    check_same_vocabulary(student, teacher, tokenizer, model_args.teacher_name_or_path)
    return teacher


def distill(
    script_args: DistillScriptArguments,
    training_args: DistillConfig,
    model_args: DistillModelArguments,
    callbacks: list | None = None,
    probes: list[Probe] | None = None,
) -> dict:
    """Distil the teacher into the student on packed text and save a complete student folder; return the run's
    result (see `lifecycle`), with the student's held-out CE and perplexity before and after training."""
    if model_args.use_peft:
        raise ValueError("--use_peft: distillation trains every weight of the student; LoRA is not supported here")
    resume = start_run(training_args)
    tokenizer = shared_tokenizer(model_args)
    student = build_model(model_args, tokenizer, script_args.block_size, training_args.trust_remote_code)
    teacher = load_teacher(model_args, student, tokenizer, training_args.trust_remote_code)
    train_dataset, eval_dataset, mixture = load_datasets(
        script_args, training_args, tokenizer, student.config.vocab_size
    )
    turn_off_eval_without_data(training_args, eval_dataset)
    logger.info(
        f"student {count_parameters(student) / 1e6:.2f}M parameters, teacher {count_parameters(teacher) / 1e6:.2f}M; "
        f"alpha={training_args.alpha} temperature={training_args.temperature}; {len(train_dataset)} training blocks "
        f"of {script_args.block_size} tokens; {len(eval_dataset) if eval_dataset is not None else 0} eval blocks"
    )

    return train_on_blocks(
        "distill",
        DistillTrainer,
        student,
        tokenizer,
        script_args,
        training_args,
        (train_dataset, eval_dataset),
        resume,
        callbacks,
        probes,
        mixture=mixture,
        teacher=teacher,
    )


def make_parser(description: str | None = None) -> RecipeParser:
    """The stage's command line: its script and the demo parse through this one parser."""
    return RecipeParser(
        (DistillScriptArguments, DistillConfig, DistillModelArguments), description=description, hidden_flags=LORA_FLAGS
    )
