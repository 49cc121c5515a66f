"""What PPO and GRPO share: the prompt data, the reward sources (named functions from `data_process.rewards` and
a trained reward model) behind one interface, and the held-out numbers both stages report.

Every reward source is a TRL-style reward function `f(prompts=..., completions=..., **columns) -> list[float|None]`
with a `__name__`, so the same list goes to TRL's GRPOTrainer as `reward_funcs` and to the PPO trainer here. A source
that raises, or returns None or a non-number for a sample, does not end the run: the sample gets None (GRPO ignores
it, PPO counts it as 0), the failure is counted under the source's name and the first one is logged with its cause.
"""

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from data_process.agent_records import LAYOUT, agent_prompt, is_agent_record
from data_process.jsonl import iter_records
from data_process.records import DataError, validate_prompt, validate_rl
from data_process.rewards import REWARD_FUNCTIONS, completion_text, get_reward_functions
from data_process.sources import resolve_source
from recipes.training.args import ModelArguments, ScriptArguments
from recipes.training.evaluation import (
    ChatEvalArguments,
    chat_completions,
    eval_mode,
    reply_accuracy,
    texts_and_ends,
)
from recipes.training.intervals import ITEMS
from recipes.training.reward_model import load_reward_model, score_conversations

logger = logging.getLogger(__name__)


@dataclass
class RLScriptArguments(ScriptArguments, ChatEvalArguments):
    """Data and reward options of the RL stages (PPO, GRPO)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Prompts to train on: `rl` records ({prompt: text or messages, answer, family}), chats whose "
            "last assistant turn is the reply to generate (upstream MiniMind's rlaif.jsonl), or upstream's agent "
            "records ({conversations: tools on the system turn, gt}), in a JSONL file, folder or glob, or a Hub "
            "dataset id. Without reward functions that need `answer` or `gt`, the prompt is enough."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": f"Reward functions by name, from {', '.join(REWARD_FUNCTIONS)}; `none` for none."},
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A trained reward-model folder (recipes/reward.py) scoring each reply."}
    )
    difficulty_samples: int = field(
        default=0,
        metadata={
            "help": "Before training, the starting policy answers each prompt this many times (sampled as in "
            "training) and only the prompts it gets sometimes right and sometimes wrong are trained on: the others "
            "give a GRPO group no advantage. Needs `answer` in every record. 0 (default): train on every prompt."
        },
    )
    difficulty_prompts: int | None = field(
        default=None,
        metadata={"help": "With --difficulty_samples: score the first N prompts only (costs N x samples replies)."},
    )

    def __post_init__(self):
        if [name.lower() for name in self.reward_funcs] == ["none"]:
            self.reward_funcs = []
        if self.difficulty_samples < 0 or self.difficulty_samples == 1:
            raise ValueError(
                f"--difficulty_samples: expected 0 (off) or at least 2 replies per prompt, got {self.difficulty_samples}"
            )


@dataclass
class RLModelArguments(ModelArguments):
    """The SFT folder RL starts from, which is also the frozen reference for the KL term."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "SFT model folder (or Hub id): the policy and, frozen, the reference."}
    )


def chat_as_prompt(record: dict) -> dict:
    """A chat record (`conversations` or `messages`) as a prompt record: its turns up to the last user or tool turn.
    A last assistant turn is the slot the policy fills, as in upstream MiniMind's rlaif.jsonl (empty, or a filler
    such as "无"); its text is not used. The record's other fields (answer, ...) stay as they are."""
    field = "messages" if "messages" in record else "conversations"
    turns = record[field]
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict) and turns[-1].get("role") == "assistant":
        turns = turns[:-1]
    prompt = [{"role": t.get("role"), "content": t.get("content")} if isinstance(t, dict) else t for t in turns]
    return {"prompt": prompt, **{key: value for key, value in record.items() if key != field}}


def rl_record(record: dict) -> dict:
    """A checked record in the one form the RL stages read: agent records become prompt records with `tools` and
    `gt`, other chats prompt records through `chat_as_prompt`, prompt records stay as they are. An answer is checked
    when present (reward functions read it); prompt-only records are fine otherwise."""
    if is_agent_record(record):
        return agent_prompt(record)
    if "prompt" not in record and ("conversations" in record or "messages" in record):
        record = chat_as_prompt(record)
    elif "prompt" not in record:
        raise ValueError(
            f"field 'prompt': missing (keys: {', '.join(record) or 'none'}); expected `prompt` (text or messages; "
            "with `answer` for the accuracy reward), a chat whose last assistant turn is the reply to generate "
            f"(upstream's rlaif.jsonl), or {LAYOUT}"
        )
    (validate_rl if "answer" in record else validate_prompt)(record)
    return record


def read_located_rl_records(name: str, split: str = "train") -> list[tuple[str, dict]]:
    """(`file:line`, record) of every prompt record of `split` of local JSONL or parquet files (a file, folder or
    glob), a saved dataset or a Hub dataset (see data_process.sources; `name[split]:row` for a table), read by
    `rl_record`: a bad record raises DataError naming where it is and the field."""
    source = resolve_source(name, split)
    located = []
    for path in source.files:
        for line, _, _, record in iter_records(path):
            located.append((f"{path}:{line}", record))
    located += [(f"{source.name}[{split}]:{row}", record) for row, record in enumerate(source.table or ())]
    checked = []
    for where, record in located:
        try:
            checked.append((where, rl_record(record)))
        except ValueError as err:
            raise DataError(f"{where}: {err}") from None
    if not checked:
        raise ValueError(f"dataset {source.name}: no prompts")
    return checked


def read_rl_records(name: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """The records of `read_located_rl_records`, the first `limit` of them."""
    return [record for _, record in read_located_rl_records(name, split)][:limit]


def read_heldout_records(script_args: RLScriptArguments) -> list[dict]:
    """The first --chat_eval_samples records of --chat_eval_dataset (else --eval_dataset_name); none without either."""
    name = script_args.chat_eval_dataset or script_args.eval_dataset_name
    return read_rl_records(name, script_args.dataset_test_split, script_args.chat_eval_samples) if name else []


def as_messages(prompt) -> list[dict]:
    """A prompt as chat messages: text becomes one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class GuardedReward:
    """A reward source that never ends a run: per-sample failures become None, counted under the source's name.

    The whole batch is scored in one call; if that call raises, each sample is scored alone so only the bad ones are
    lost. `failures` counts samples since the last `take_failures()`."""

    def __init__(self, func, name: str | None = None):
        self.func = func
        self.__name__ = name or getattr(func, "__name__", type(func).__name__)
        self.failures = 0
        self._warned = False

    def __call__(self, prompts=None, completions=None, **columns) -> list[float | None]:
        try:
            scores = self._checked(self.func(prompts=prompts, completions=completions, **columns), len(completions))
        except Exception as err:
            self._warn(f"raised {type(err).__name__}: {err}")
            scores = [self._one(prompts, completions, columns, i) for i in range(len(completions))]
        bad = [i for i, score in enumerate(scores) if score is None]
        if bad:
            self.failures += len(bad)
            self._warn(f"gave no score for {len(bad)} of {len(scores)} samples (first: sample {bad[0]})")
        return scores

    def _one(self, prompts, completions, columns, i) -> float | None:
        pick = {key: [value[i]] if isinstance(value, list) else value for key, value in columns.items()}
        try:
            return self._checked(
                self.func(prompts=[prompts[i]] if prompts else prompts, completions=[completions[i]], **pick), 1
            )[0]
        except Exception:
            return None

    def _checked(self, scores, count: int) -> list[float | None]:
        scores = list(scores)
        if len(scores) != count:
            raise ValueError(f"returned {len(scores)} scores for {count} completions")
        return [float(s) if isinstance(s, (int, float)) and math.isfinite(s) else None for s in scores]

    def _warn(self, message: str) -> None:
        if not self._warned:
            logger.warning(
                f"reward function {self.__name__!r} {message}; such samples get no score from it "
                "(counted in the logs as rewards/<name>/failures)"
            )
            self._warned = True

    def take_failures(self) -> int:
        count, self.failures = self.failures, 0
        return count


class RewardModelReward:
    """A trained reward model as a reward function: each prompt plus reply is rendered with the chat template, as
    the reward model was trained, and scored at its last token."""

    __name__ = "reward_model"

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def __call__(self, prompts=None, completions=None, **columns) -> list[float]:
        conversations = [
            as_messages(p) + [{"role": "assistant", "content": completion_text(c)}]
            for p, c in zip(prompts, completions)
        ]
        return score_conversations(self.model, self.tokenizer, conversations, self.batch_size)


def build_reward_functions(
    script_args: RLScriptArguments, model_args, tokenizer, device=None, trust_remote_code: bool = False
) -> list[GuardedReward]:
    """The named reward functions, then the reward model when one is given, each guarded."""
    names = script_args.reward_funcs
    funcs = [GuardedReward(f, name) for f, name in zip(get_reward_functions(names), names)]
    if script_args.reward_model_name_or_path:
        args = RLModelArguments(
            model_name_or_path=script_args.reward_model_name_or_path,
            attn_implementation=model_args.attn_implementation,
            dtype=model_args.dtype,
        )
        model = load_reward_model(args, tokenizer, trust_remote_code).eval().requires_grad_(False)
        if device is not None:
            model.to(device)
        funcs.append(GuardedReward(RewardModelReward(model, tokenizer)))
    if not funcs:
        raise ValueError("no reward source: pass --reward_funcs and/or --reward_model_name_or_path")
    return funcs


def combine_rewards(per_function: dict[str, list[float | None]], weights: list[float] | None) -> list[float]:
    """The weighted sum over reward sources per sample, a missing score counting as 0."""
    names = list(per_function)
    weights = weights or [1.0] * len(names)
    if len(weights) != len(names):
        raise ValueError(f"--reward_weights has {len(weights)} values for {len(names)} reward sources ({names})")
    count = len(next(iter(per_function.values())))
    return [sum(w * (per_function[n][i] or 0.0) for n, w in zip(names, weights)) for i in range(count)]


def score_replies(reward_funcs, records: list[dict], replies: list[str], weights=None) -> dict[str, list]:
    """Every reward source's scores of `replies` to `records`, plus their weighted sum under `reward`."""
    columns = {key: [r.get(key) for r in records] for key in records[0] if key != "prompt"}
    prompts = [as_messages(r["prompt"]) for r in records]
    per_function = {f.__name__: f(prompts=prompts, completions=replies, **columns) for f in reward_funcs}
    return {**per_function, "reward": combine_rewards(per_function, weights)}


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def heldout_rl_metrics(
    model, tokenizer, records: list[dict], reward_funcs, weights=None, max_new_tokens: int = 96, num_samples: int = 3
) -> dict:
    """Greedy replies to held-out prompts, scored by the stage's reward sources: mean `reward` (their weighted sum),
    each source's mean, exact-answer `accuracy` / `task_accuracy` when records carry answers, `eot_rate`, and
    `reply_tokens` (the mean reply length: a policy that wins its reward by writing more shows there)."""
    with eval_mode(model):
        completions = chat_completions(model, tokenizer, [as_messages(r["prompt"]) for r in records], max_new_tokens)
    replies = texts_and_ends(completions)
    texts = [text for text, _ in replies]
    scores = score_replies(reward_funcs, records, texts, weights)
    rewards = scores.pop("reward")
    metrics = {"reward": mean(rewards)}
    metrics.update({f"reward/{name}": mean(values) for name, values in scores.items()})
    lengths = [len(completion.token_ids) for completion in completions]
    items = {"reward": rewards, "eot_rate": [int(ended) for _, ended in replies], "reply_tokens": lengths}
    if all("answer" in r for r in records):
        accuracy = reply_accuracy(records, replies)
        metrics.update({key: accuracy[key] for key in ("accuracy", "task_accuracy")})
        items.update({key: accuracy[ITEMS][key] for key in ("accuracy", "task_accuracy")})
    metrics["eot_rate"] = mean([float(ended) for _, ended in replies])
    metrics["reply_tokens"] = mean([float(length) for length in lengths])
    metrics[ITEMS] = items
    metrics["samples"] = [
        {"question": as_messages(r["prompt"])[-1]["content"], "reply": text}
        | ({"answer": r["answer"]} if "answer" in r else {})
        for r, text in list(zip(records, texts))[:num_samples]
    ]
    return metrics


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
