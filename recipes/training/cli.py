"""The command line of every stage script: TRL's parser with short grouped help, misspellings answered with the
nearest valid name, and user mistakes reported as one `error:` line instead of a traceback."""

import dataclasses
import functools
import importlib.util
import logging
import shlex
import sys
from pathlib import Path

import trl
import yaml

from modeling_miniminds.cli import USER_ERRORS, HelpFormatter, command_main, did_you_mean, nearest, setup_logging
from recipes.training.trainer import TrainingInterrupted

logger = logging.getLogger(__name__)

# TrainingArguments flags worth seeing first; `--help_all` lists every one.
COMMON_TRAINING_FLAGS = (
    "output_dir",
    "resume_from_checkpoint",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "activation_checkpointing",
    "torch_compile",
    "use_cpu",
    "deepspeed",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "seed",
    "report_to",
    "push_to_hub",
)
# TRL argument fields that rarely matter for MiniMinds models, left to `--help_all`.
RARE_FLAGS = {
    "model_revision",
    "lora_target_parameters",
    "lora_modules_to_save",
    "lora_task_type",
    "use_rslora",
    "use_dora",
    "load_in_8bit",
    "load_in_4bit",
    "bnb_4bit_quant_type",
    "use_bnb_nested_quant",
    "bnb_4bit_quant_storage",
    "dataset_config",
    "dataset_test_split",
    "dataset_streaming",
    "ignore_bias_buffers",
}


def _own_fields(cls) -> list[str]:
    """Fields declared by MiniMinds classes in `cls`'s hierarchy (not those it inherits from libraries)."""
    names = []
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith(("recipes", "__main__")):
            names += [name for name in vars(klass).get("__annotations__", {}) if name not in names]
    return names


class CompactHelpFormatter(HelpFormatter):
    """One spelling per flag (underscores; dashes work too) and its type, so each flag takes a line or two."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return action.option_strings[0]
        return f"{action.option_strings[0]} {self._get_default_metavar_for_optional(action).lower()}"

    def _get_default_metavar_for_optional(self, action):
        name = getattr(action.type, "__name__", "value") if action.type is not None else "value"
        return "bool" if name == "string_to_bool" else name


class RecipeParser(trl.TrlParser):
    """`TrlParser` (dataclasses, `--config` YAML, flags override it) that a person can read and mistype.

    The first dataclass holds the stage's data arguments, the second its trainer config, the third its model
    arguments. `--help` shows those groups and the common training flags; `--help_all` every flag.
    """

    def __init__(self, dataclass_types, hidden_flags=(), **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(dataclass_types, **kwargs)
        self.hidden_flags = set(hidden_flags)
        self.script_cls, self.config_cls, self.model_cls = dataclass_types
        self.valid_flags = sorted(action.dest for action in self._actions if action.dest != "help")

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)

    def _suggest(self, flag: str) -> str:
        close = nearest(flag.lstrip("-").replace("-", "_"), self.valid_flags)
        return f"; did you mean --{close}?" if close else "; --help lists the flags"

    def _help_groups(self) -> list[tuple[str, list[str]]]:
        recipe = [f.name for cls in (self.script_cls, self.model_cls) for f in dataclasses.fields(cls)]
        recipe = [name for name in recipe if name not in RARE_FLAGS | self.hidden_flags]
        training = _own_fields(self.config_cls) + list(COMMON_TRAINING_FLAGS)
        training = [name for name in dict.fromkeys(training) if name not in recipe]
        return [("recipe flags", recipe), ("training flags", training)]

    def format_help(self) -> str:
        formatter = CompactHelpFormatter(prog=self.prog, max_help_position=36, width=118)
        formatter.add_usage(f"{self.prog} [--config FILE.yaml] [--flag value ...]", None, [])
        formatter.add_text(self.description)
        by_dest = {}
        for action in self._actions:  # the first action of a dest: `--flag bool`, not HF's `--no_flag`
            by_dest.setdefault(action.dest, action)
        formatter.start_section("options")
        formatter.add_text(
            "--config FILE.yaml  defaults from a recipe file (keys are flag names); flags on the command line win\n"
            "--help_all          every flag, all TrainingArguments included"
        )
        formatter.end_section()
        for title, names in self._help_groups():
            formatter.start_section(title)
            formatter.add_arguments([by_dest[name] for name in names if name in by_dest])
            formatter.end_section()
        formatter.add_text(
            "Flags accept --name value, --name=value and --name-with-dashes; booleans take true or false."
        )
        return formatter.format_help()

    def _check_config_file(self, path: str) -> dict:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"--config {path}: expected a mapping of flag names to values")
        for key in values:
            if key != "env" and key not in self.valid_flags:
                raise ValueError(f"{path}: unknown key '{key}'{did_you_mean(key, self.valid_flags)}")
        return values

    def parse_args_and_config(self, args=None, **kwargs):
        """The stage's dataclasses; a mistake on the command line or in the YAML file exits with one `error:`
        line (status 2), as argparse does for a bad value."""
        try:
            return self._parse(list(sys.argv[1:] if args is None else args))
        except USER_ERRORS as err:
            self.error(str(err))

    def _parse(self, args: list[str]) -> tuple:
        if "--help_all" in args:
            print(super().format_help())
            raise SystemExit(0)
        if args.count("--config") > 1:
            raise ValueError("--config given more than once; put every default in one recipe file")
        recipe = {}
        if "--config" in args:
            index = args.index("--config")
            if index + 1 >= len(args):
                raise ValueError("--config needs a YAML file")
            recipe = self._check_config_file(args[index + 1])
        check_deepspeed_installed(recipe.get("deepspeed") or any(a.split("=")[0] == "--deepspeed" for a in args))
        *parsed, remaining = super().parse_args_and_config(args, return_remaining_strings=True)
        unknown = [arg for arg in remaining if arg.startswith("-")]
        if unknown:
            raise ValueError(f"unknown flag {unknown[0]}{self._suggest(unknown[0].split('=')[0])}")
        if remaining:
            raise ValueError(f"unexpected value {remaining[0]!r}: every value follows a --flag")
        return tuple(parsed)


def check_deepspeed_installed(asked: bool) -> None:
    """`make install` leaves DeepSpeed out; without this, transformers reports it missing with a traceback."""
    if asked and importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            '--deepspeed needs DeepSpeed, which is not installed: pip install -e ".[deepspeed]" (or make install-dev)'
        )


def resume_command() -> str:
    """The command line that started this run, set to continue from its latest checkpoint."""
    argv = list(sys.argv)
    if "--resume_from_checkpoint" in argv:
        index = argv.index("--resume_from_checkpoint")
        del argv[index : index + 2]
    return shlex.join(["python", *argv, "--resume_from_checkpoint", "auto"])


def recipe_main(main):
    """Run a stage's `main` for the command line through `command_main`: a user's mistake (bad path, bad data line,
    unknown flag or YAML key) prints one `error:` line and exits 1 (`MINIMINDS_DEBUG=1` shows the traceback);
    Ctrl-C prints where the checkpoint is and how to resume (exit 130). Ranks other than the first log warnings only."""

    @command_main(exit=True)
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        quiet = any(getattr(arg, "should_log", True) is False for arg in args)
        setup_logging(logging.WARNING if quiet else logging.INFO)
        try:
            return main(*args, **kwargs)
        except TrainingInterrupted as err:
            print(f"{err}\nresume with: {resume_command()}", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
