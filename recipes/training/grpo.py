"""Group relative policy optimisation with TRL's GRPOTrainer: the arguments, the calculator tool wiring and `grpo()`,
which `recipes/grpo.py` and the demo call.

The policy starts from an SFT folder. Each prompt is answered `num_generations` times; each reply is scored by the
reward sources of `recipes.training.rl` (named functions from `data_process.rewards` and/or a trained reward model,
each guarded so a failing one is reported by name instead of ending the run), and a reply's advantage is its reward
against its group's mean. With `beta > 0` (the default here; TRL's is 0) the frozen starting folder is the reference
and the KL to it is both penalised and logged. With `--use_tools true` the policy may call the calculator while it
answers, through TRL's tool loop (see `recipes.training.tool_use`); records in upstream MiniMind's agent layout
offer their own tools and carry `gt` (agentic RL, `recipes.training.agent`). With `--difficulty_samples` it trains
only on the prompts the starting policy answers sometimes right and sometimes wrong (`recipes.training.difficulty`).

Held-out numbers, before and after: greedy replies to `--chat_eval_dataset` scored by the same reward sources
(`reward`, `reward/<name>`, `accuracy`, `task_accuracy`, `eot_rate`), the tool loop's `tool_call_rate` and
`tool_accuracy` on the calculator questions of `--tool_eval_dataset` and the agent numbers (`agent_call_rate`,
`agent_valid_call_rate`, `agent_gt_hit_rate`, `agent_turns`) on its agent records, and after training the last
logged `kl`.
"""

import functools
import importlib.util
import logging
from dataclasses import dataclass, field

import datasets
from transformers import TrainerCallback

from data_process.rewards import REWARD_FUNCTIONS
from recipes.training.agent import agent_dataset, heldout_agent_metrics, is_agent, split_tool_probes
from recipes.training.args import GRPOStageConfig
from recipes.training.cli import RecipeParser
from recipes.training.difficulty import prompts_to_train
from recipes.training.intervals import merge_metrics
from recipes.training.lifecycle import (
    HeldOutProbes,
    Logged,
    Probe,
    RunCard,
    finish_run,
    start_run,
    turn_off_eval_without_data,
)
from recipes.training.lora import lora_config
from recipes.training.models import count_parameters, load_causal_lm, resolve_tokenizer
from recipes.training.rl import (
    GuardedReward,
    RLModelArguments,
    RLScriptArguments,
    as_messages,
    build_reward_functions,
    heldout_rl_metrics,
    read_heldout_records,
    read_located_rl_records,
)
from recipes.training.tool_registry import build_registry
from recipes.training.tool_use import TOOLS, heldout_tool_metrics
from recipes.training.trainer import GRPOStageTrainer

logger = logging.getLogger(__name__)

# The KL to the frozen reference: 0 before training, since the policy starts as the reference.
KL = Logged("kl", "kl", at_start=0.0, digits=6)
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


@dataclass
class GRPOScriptArguments(RLScriptArguments):
    """Data, reward and tool options of the GRPO stage."""

    use_tools: bool = field(
        default=False,
        metadata={
            "help": f"Let the policy call tools while it answers, through TRL's tool loop: {', '.join(TOOLS)} for "
            "`rl` records (e.g. rl_tools.jsonl); agent records (e.g. agent.jsonl) offer the tools they declare."
        },
    )
    tools_module: str | None = field(
        default=None,
        metadata={
            "help": "A module (pkg.mod) whose public functions with type hints and a docstring join the tool "
            "registry (built in: calculator and stand-ins of upstream's demo tools); its names win."
        },
    )
    tool_timeout: float = field(
        default=3.0, metadata={"help": "Seconds a tool call may run before it answers an error message."}
    )
    skip_unknown_tools: bool = field(
        default=False,
        metadata={
            "help": "Leave out (and count) records that declare a tool the registry lacks, instead of stopping at "
            "the first one."
        },
    )
    tool_eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Held-out tool questions answered greedily with the tool loop before and after training: "
            "calculator `rl` records (e.g. eval/rl_tools.jsonl: tool_call_rate, tool_accuracy) and/or agent records "
            "(e.g. eval/agent.jsonl: agent_call_rate, agent_valid_call_rate, agent_gt_hit_rate, agent_turns)."
        },
    )
    tool_eval_samples: int = field(default=100, metadata={"help": "Questions of --tool_eval_dataset to ask."})
    tool_eval_max_new_tokens: int = field(
        default=64, metadata={"help": "Longest greedy assistant turn in the tool evaluation, in tokens."}
    )


@dataclass
class GRPOTrainingConfig(GRPOStageConfig):
    """TRL's GRPOConfig with GRPO defaults; every TrainingArguments and GRPOConfig flag stays available."""

    output_dir: str | None = field(default="runs/grpo", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate; RL wants a small one."})
    num_generations: int | None = field(
        default=8, metadata={"help": "Replies sampled per prompt (the group); the batch must hold whole groups."}
    )
    max_completion_length: int | None = field(
        default=256,
        metadata={
            "help": "Longest reply, in tokens. With --use_tools it holds the calls, the tool messages and the answer: "
            "TRL drops a tool result that would not fit, and the reply ends at its call."
        },
    )
    beta: float = field(
        default=0.04,
        metadata={
            "help": "KL coefficient to the frozen starting model. > 0 keeps the reference and logs `kl`; 0 (TRL's "
            "default) drops both."
        },
    )
    epsilon: float = field(default=0.2, metadata={"help": "Clipping range of the policy ratio (lower bound)."})
    loss_type: str = field(
        default="dapo",
        metadata={
            "help": f"{', '.join(LOSS_TYPES)}: TRL's GRPO losses. dapo (default) normalises by the tokens of the "
            "whole batch, so long and short replies weigh the same per token; upstream MiniMind uses cispo "
            "(clips the importance weights instead of the update)."
        },
    )
    scale_rewards: str = field(
        default="group",
        metadata={"help": "group (divide advantages by the group's reward std), batch, or none (Dr. GRPO)."},
    )
    max_tool_calling_iterations: int | None = field(
        default=2, metadata={"help": "--use_tools: rounds of tool calls per reply before the reply must answer."}
    )
    use_vllm: bool = field(
        default=False,
        metadata={"help": "Generate with vLLM (GPUs, `pip install vllm`); default: transformers generate."},
    )
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Replies per device per micro-batch (prompts x num_generations)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    max_kl: float | None = field(
        default=None,
        metadata={
            "help": "Stop training (saving the model) once the logged KL to the reference exceeds this: the policy "
            "is drifting from what it knew. Unset: never."
        },
    )


class GRPORecipeTrainer(GRPOStageTrainer):
    """GRPOStageTrainer that logs, per reward source, how many samples it failed to score since the last log, and
    counts its tokens as TRL logs them (prompts plus replies: GRPO batches hold no `input_ids`)."""

    def trained_tokens(self) -> int:
        return int(next((h["num_tokens"] for h in reversed(self.state.log_history) if "num_tokens" in h), 0))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            for func in self.reward_funcs:
                if isinstance(func, GuardedReward):
                    logs[f"rewards/{func.__name__}/failures"] = func.take_failures()
        super().log(logs, start_time)


class KLLimitCallback(TrainerCallback):
    """Stops training once the logged KL to the reference exceeds `max_kl`, and says so."""

    def __init__(self, max_kl: float):
        self.max_kl, self.warning = max_kl, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        kl = (logs or {}).get("kl")
        if self.warning is None and kl is not None and kl > self.max_kl:
            self.warning = (
                f"KL to the reference reached {kl:.4f} at step {state.global_step}, above --max_kl "
                f"{self.max_kl}: training stopped there. Raise --beta or lower --learning_rate."
            )
            logger.warning(self.warning)
            control.should_training_stop = True


def check_config(script_args: GRPOScriptArguments, training_args: GRPOTrainingConfig) -> None:
    """Mistakes TRL would only report after the models load, or not at all."""
    if not script_args.dataset_name:
        raise ValueError("pass --dataset_name: the prompts to train on (`rl` records, e.g. data/synth/rl.jsonl)")
    if training_args.loss_type not in LOSS_TYPES:
        raise ValueError(f"--loss_type: expected one of {', '.join(LOSS_TYPES)}, got {training_args.loss_type!r}")
    if training_args.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "--use_vllm true needs vLLM (`pip install vllm`, GPUs only); leave it false to generate with transformers"
        )
    if training_args.beta == 0 and training_args.max_kl is not None:
        raise ValueError("--max_kl needs --beta > 0: with beta 0 TRL keeps no reference and logs no KL")
    if script_args.reward_funcs and any(name not in REWARD_FUNCTIONS for name in script_args.reward_funcs):
        unknown = [name for name in script_args.reward_funcs if name not in REWARD_FUNCTIONS]
        raise ValueError(f"--reward_funcs: unknown {', '.join(unknown)}; expected from {', '.join(REWARD_FUNCTIONS)}")


def load_prompts(script_args: GRPOScriptArguments, registry: dict) -> tuple[datasets.Dataset, dict | None, dict]:
    """The training prompts as chat messages, with their other columns (answer, gt, family, ...) for the rewards;
    TRL's environments when agent records offer their own tools (`recipes.training.agent`), else None; and what the
    result reports about them. Without agent records the tool list a record carries is dropped: which tools the
    policy has is --use_tools' choice."""
    located = read_located_rl_records(script_args.dataset_name, script_args.dataset_train_split)
    records = [record for _, record in located]
    agents = sum(1 for r in records if is_agent(r))
    with_tools = sum(1 for r in records if r.get("tools"))
    if with_tools and not script_args.use_tools:
        logger.warning(
            f"{with_tools} of {len(records)} prompts list tools, but --use_tools is false: they are asked without tools"
        )
    if not (agents and script_args.use_tools):
        rows = [{**{k: v for k, v in r.items() if k != "tools"}, "prompt": as_messages(r["prompt"])} for r in records]
        return datasets.Dataset.from_list(rows), None, {"agent_records": agents}
    rows, environments, info = agent_dataset(
        located, registry, script_args.tool_timeout, script_args.skip_unknown_tools, script_args.reward_funcs
    )
    rows = [{**row, "prompt": as_messages(row["prompt"])} for row in rows]
    return datasets.Dataset.from_list(rows), environments, info


def read_tool_probes(script_args: GRPOScriptArguments, registry: dict) -> tuple[list[dict], list[dict]]:
    """The first --tool_eval_samples held-out tool questions: calculator questions and agent records."""
    if not script_args.tool_eval_dataset:
        return [], []
    located = read_located_rl_records(script_args.tool_eval_dataset)[: script_args.tool_eval_samples]
    return split_tool_probes(located, registry, script_args.skip_unknown_tools)


def heldout_metrics(
    model,
    tokenizer,
    script_args,
    reward_funcs,
    weights,
    chat_probes,
    tool_probes,
    agent_probes,
    registry,
    max_tool_calling_iterations,
) -> dict:
    """What the stage reports before and after: reward-scored greedy replies and the tool loop's numbers, for the
    calculator questions and for the agent records."""
    metrics = {}
    iterations = max_tool_calling_iterations or 2
    if chat_probes:
        metrics = merge_metrics(
            metrics,
            heldout_rl_metrics(
                model,
                tokenizer,
                chat_probes,
                reward_funcs,
                weights,
                max_new_tokens=script_args.chat_eval_max_new_tokens,
            ),
        )
    if tool_probes:
        metrics = merge_metrics(
            metrics,
            heldout_tool_metrics(
                model, tokenizer, tool_probes, script_args.tool_eval_max_new_tokens, max_iterations=iterations
            ),
        )
    if agent_probes:
        metrics = merge_metrics(
            metrics,
            heldout_agent_metrics(
                model,
                tokenizer,
                agent_probes,
                registry,
                script_args.tool_timeout,
                script_args.tool_eval_max_new_tokens,
                max_iterations=iterations,
            ),
        )
    return metrics


def build_trainer(script_args, training_args, model_args, callbacks=None, probes=None):
    """The trainer (prompts read and checked, policy and reward sources loaded), its held-out probes (the `rl`
    probe with --chat_eval_dataset or --tool_eval_dataset), the difficulty filter's counts and what the agent
    records brought (see `load_prompts`)."""
    check_config(script_args, training_args)
    tokenizer = resolve_tokenizer(model_args)
    registry = build_registry(script_args.tools_module)
    train_dataset, environments, agent = load_prompts(script_args, registry)
    chat_probes = read_heldout_records(script_args)
    tool_probes, agent_probes = read_tool_probes(script_args, registry)
    turn_off_eval_without_data(training_args, None)  # held-out numbers come from the probe below
    model = load_causal_lm(model_args, tokenizer, training_args.trust_remote_code)
    kept, difficulty = prompts_to_train(
        model,
        tokenizer,
        train_dataset,
        script_args.difficulty_samples,
        script_args.difficulty_prompts,
        training_args.max_completion_length,
        training_args.seed,
        **sampling_options(training_args),
    )
    if difficulty is not None:
        train_dataset = train_dataset.select(kept)
    reward_funcs = build_reward_functions(
        script_args, model_args, tokenizer, training_args.device, training_args.trust_remote_code
    )
    tools = agent.get("toolsets") or (list(TOOLS) if script_args.use_tools else [])
    logger.info(
        f"{count_parameters(model) / 1e6:.2f}M parameters; {len(train_dataset)} prompts; rewards "
        f"{[f.__name__ for f in reward_funcs]}; num_generations={training_args.num_generations}, "
        f"beta={training_args.beta}, loss_type={training_args.loss_type}, tools={tools}"
    )
    held_out = HeldOutProbes(probes or [], training_args.output_dir)
    if chat_probes or tool_probes or agent_probes:
        measure = functools.partial(
            heldout_metrics,
            tokenizer=tokenizer,
            script_args=script_args,
            reward_funcs=reward_funcs,
            weights=training_args.reward_weights,
            chat_probes=chat_probes,
            tool_probes=tool_probes,
            agent_probes=agent_probes,
            registry=registry,
            max_tool_calling_iterations=training_args.max_tool_calling_iterations,
        )
        held_out.probes.insert(0, Probe("rl", measure))
    trainer = GRPORecipeTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, "CAUSAL_LM"),
        callbacks=[*(callbacks or []), held_out],
        tools=list(TOOLS.values()) if script_args.use_tools and environments is None else None,
        environment_factory=environments,
    )
    if training_args.max_kl is not None:
        trainer.add_callback(KLLimitCallback(training_args.max_kl))
    return trainer, held_out, difficulty, agent


def sampling_options(training_args: GRPOTrainingConfig) -> dict:
    """How TRL samples the group's replies, for scoring the prompts' difficulty the same way."""
    return {
        "temperature": training_args.temperature,
        "top_p": training_args.top_p,
        "top_k": training_args.top_k or 0,
        "min_p": training_args.min_p,
        "repetition_penalty": training_args.repetition_penalty,
    }


def grpo(
    script_args: GRPOScriptArguments,
    training_args: GRPOTrainingConfig,
    model_args: RLModelArguments,
    callbacks: list | None = None,
    probes: list[Probe] | None = None,
) -> dict:
    """Train the policy with GRPO and save a complete folder; return the run's result (see `lifecycle`) with
    held-out reward, per-source rewards, accuracy, eot_rate, tool_call_rate, tool_accuracy, the agent numbers and
    `kl` before and after; `agent` says how many agent records were read, left out and which tool sets they
    offer."""
    resume = start_run(training_args)
    trainer, held_out, difficulty, agent = build_trainer(script_args, training_args, model_args, callbacks, probes)
    train_output = trainer.train(resume_from_checkpoint=resume)
    result = finish_run(trainer, train_output, held_out, (KL,), merge_lora=True, card=RunCard.of("grpo", script_args))
    history = trainer.state.log_history
    kls = [h["kl"] for h in history if h.get("kl") is not None]
    failures = {
        key.split("/")[1]: sum(h[key] for h in history if h.get(key) is not None)
        for key in {k for h in history for k in h}
        if key.startswith("rewards/") and key.endswith("/failures")
    }
    kl_stop = next((c for c in trainer.callback_handler.callbacks if isinstance(c, KLLimitCallback)), None)
    result.update(
        kl_max=round(max(kls), 6) if kls else None,
        reward_failures=failures,
        kl_limit_warning=kl_stop.warning if kl_stop else None,
        train_prompts=len(trainer.train_dataset),
        difficulty=difficulty,
        agent=agent,
    )
    logger.info(
        f"Saved the GRPO model to {training_args.output_dir}: "
        f"{ {k: v for k, v in result.items() if k not in ('before', 'after')} }"
    )
    trainer.end()
    return result


def make_parser(description: str | None = None) -> RecipeParser:
    """The stage's command line: its script and the demo parse through this one parser."""
    return RecipeParser((GRPOScriptArguments, GRPOTrainingConfig, RLModelArguments), description=description)
