"""Held-out probes: does a model finish a statement it never saw with the right answer, and does a chat model answer
a held-out question correctly and end its turn?

A probe is `{"family", "lang", "prompt", "answer"}` (see `data_process.synth`: `eval/completion.jsonl` holds
held-out arithmetic, comparisons, counting, units and dates; `eval/trained_facts.jsonl` holds facts the model was
trained on, so its score is recall, never "held-out"). The greedy completion must start with the whole answer, not
followed by another digit or letter ("18" does not match "180").

Chat probes are records in the project's `rl` format (`{"prompt": messages, "answer", "family"}`, e.g.
`eval/rl.jsonl`): the greedy reply is scored by `data_process.rewards.accuracy_reward`. Held-out fact rows (animals,
countries, ... that no training file names) cannot be known, so `task_accuracy` is reported over the families a
model can generalise to (arithmetic, comparison, counting, units, dates) and `accuracy` over all.

This module imports only torch and transformers (and the project's data_process for chat scoring), so it can score a
saved folder in a Python where MiniMinds' model package is not importable, loaded through `trust_remote_code` alone;
chat probes, which run during training only, decode through `modeling_miniminds.inference`.
"""

import json
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recipes.training.intervals import ITEMS

# The families of data_process.synth whose held-out items a model can get right without having seen them.
GENERALISABLE_FAMILIES = ("add", "sub", "mul", "compare", "count", "unit", "next_day")


@contextmanager
def eval_mode(model):
    """The model in eval mode (no dropout) inside the block, then back in the mode it was in, even after an error:
    probes run in the middle of training."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def read_probes(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@dataclass
class ChatEvalArguments:
    """Held-out questions a stage answers greedily before and after training (SFT, DPO, ...)."""

    chat_eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Held-out questions with answers (`rl` records: prompt, answer, family; e.g. eval/rl.jsonl) "
            "answered greedily before and after training: accuracy, task_accuracy, eot_rate."
        },
    )
    chat_eval_samples: int = field(
        default=400,
        metadata={
            "help": "Questions of --chat_eval_dataset to ask (400 keep a 95%% interval near +-0.05 or narrower)."
        },
    )
    chat_eval_max_new_tokens: int = field(default=96, metadata={"help": "Longest greedy reply, in tokens."})


def read_chat_probes(args: ChatEvalArguments) -> list[dict]:
    """The first --chat_eval_samples held-out questions, or none when no --chat_eval_dataset is given."""
    if not args.chat_eval_dataset:
        return []
    probes = read_probes(args.chat_eval_dataset)[: args.chat_eval_samples]
    missing = [i + 1 for i, probe in enumerate(probes) if "prompt" not in probe or "answer" not in probe]
    if missing:
        raise ValueError(f"{args.chat_eval_dataset}:{missing[0]}: chat probes need `prompt` and `answer`")
    if not probes:
        raise ValueError(f"--chat_eval_dataset {args.chat_eval_dataset}: no questions")
    return probes


def answer_matches(completion: str, answer: str) -> bool:
    """The completion starts with the whole answer and the answer is not the prefix of a longer word or number."""
    text = completion.lstrip()
    if not text.startswith(answer):
        return False
    rest = text[len(answer) :]
    return not rest or not rest[0].isalnum()


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy continuations of plain-text prompts, batched with left padding (generation is per row exact)."""
    # Not modeling_miniminds.inference.generate_completions: score_folder runs this where MiniMinds cannot be imported.
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    completions = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
            batch = batch.to(model.device)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
    return completions


def chat_completions(
    model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 32, **template_kwargs
) -> list:
    """Greedy assistant replies to chat prompts as `Completion`s: text, token ids (up to the eos token) and whether
    each ended its turn in time."""
    from modeling_miniminds.inference import chat_prompt_ids, generate_completions  # training only: see the docstring

    prompts = chat_prompt_ids(tokenizer, conversations, **template_kwargs)
    return generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size)


def chat_replies(
    model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 32, **template_kwargs
) -> list[tuple[str, bool]]:
    """Greedy assistant replies to chat prompts and whether each ended its turn (emitted the eos token) in time."""
    return texts_and_ends(
        chat_completions(model, tokenizer, conversations, max_new_tokens, batch_size, **template_kwargs)
    )


def texts_and_ends(completions) -> list[tuple[str, bool]]:
    """Each completion's text and whether it ended its turn in time: what the accuracy scorers read."""
    return [(completion.text, completion.finish_reason == "stop") for completion in completions]


def chat_accuracy(
    model,
    tokenizer,
    records: list[dict],
    max_new_tokens: int = 64,
    num_samples: int = 4,
    generalisable=GENERALISABLE_FAMILIES,
    **template_kwargs,
) -> dict:
    """Exact-answer accuracy of greedy chat replies (overall, on generalisable families, per family), the share
    of replies that end with the end-of-turn token, and the first few replies to questions of generalisable families
    (the held-out fact rows no model can know are not shown)."""
    if not records:
        raise ValueError("no chat probes to score")
    with eval_mode(model):
        replies = chat_replies(model, tokenizer, [r["prompt"] for r in records], max_new_tokens, **template_kwargs)
    answerable = [(r, text) for r, (text, _) in zip(records, replies) if r.get("family", "") in generalisable]
    shown = answerable or [(r, text) for r, (text, _) in zip(records, replies)]
    return {
        **reply_accuracy(records, replies, generalisable),
        "samples": [sample(r, t) for r, t in shown[:num_samples]],
    }


def sample(record: dict, reply: str) -> dict:
    """A question, its system prompt (so a chat can ask it the same way), the true answer and the reply."""
    system = next((m["content"] for m in record["prompt"] if m["role"] == "system"), None)
    return {"question": record["prompt"][-1]["content"], "answer": record["answer"], "reply": reply} | (
        {"system": system} if system else {}
    )


def grouped(labels, values) -> dict[str, list]:
    """The values under each label (task family, kind of pair), labels in the order they first come."""
    groups = defaultdict(list)
    for label, value in zip(labels, values, strict=True):
        groups[label].append(value)
    return groups


def group_means(groups: dict[str, list]) -> dict[str, float]:
    return {name: round(sum(values) / len(values), 4) for name, values in sorted(groups.items())}


def group_sizes(groups: dict[str, list]) -> dict[str, int]:
    return {name: len(values) for name, values in sorted(groups.items())}


def reply_accuracy(records: list[dict], replies: list[tuple[str, bool]], generalisable=GENERALISABLE_FAMILIES) -> dict:
    """Exact-answer accuracy of (reply, ended) pairs to `records` (overall, on generalisable families, per family)
    and the share that ended their turn."""
    from data_process.rewards import accuracy_reward

    scores = accuracy_reward(completions=[text for text, _ in replies], answer=[r["answer"] for r in records])
    per_family = grouped([record.get("family", "all") for record in records], scores)
    task = [s for name, values in per_family.items() if name in generalisable for s in values]
    return {
        "accuracy": round(sum(scores) / len(scores), 4),
        "task_accuracy": round(sum(task) / len(task), 4) if task else None,
        "eot_rate": round(sum(ended for _, ended in replies) / len(replies), 4),
        "probes": len(records),
        "per_family": group_means(per_family),
        "per_family_n": group_sizes(per_family),
        ITEMS: {
            "accuracy": [int(score) for score in scores],
            "task_accuracy": [int(score) for score in task],
            "eot_rate": [int(ended) for _, ended in replies],
        },
    }


def completion_accuracy(model, tokenizer, probes: list[dict], num_samples: int = 4) -> dict:
    """Accuracy over all probes and per family, with a few samples for a report."""
    if not probes:
        raise ValueError("no probes to score")
    longest = max(len(tokenizer(p["answer"], add_special_tokens=False).input_ids) for p in probes)
    with eval_mode(model):
        completions = greedy_completions(model, tokenizer, [p["prompt"] for p in probes], max_new_tokens=longest + 2)
    hits = [int(answer_matches(completion, probe["answer"])) for probe, completion in zip(probes, completions)]
    per_family = grouped([probe["family"] for probe in probes], hits)
    return {
        "accuracy": round(sum(hits) / len(hits), 4),
        "probes": len(hits),
        "per_family": group_means(per_family),
        ITEMS: {"accuracy": hits},
        "samples": [
            {"prompt": p["prompt"], "answer": p["answer"], "completion": c}
            for p, c in list(zip(probes, completions))[:num_samples]
        ],
    }


def score_folder(model_dir, probe_files: dict[str, str | Path]) -> dict:
    """Load a saved folder through its own modeling code (`trust_remote_code`) and score each probe file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    result = {"model_class": f"{type(model).__module__}.{type(model).__name__}"}
    for name, path in probe_files.items():
        result[name] = completion_accuracy(model, tokenizer, read_probes(path))
    return result
