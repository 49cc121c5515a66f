"""Prompts of middling difficulty for RL: before training, the starting policy answers each prompt a few times and
only the prompts it gets sometimes right and sometimes wrong are kept.

A GRPO group whose replies all score the same has zero advantage, so a step spent on prompts the policy always or
never answers teaches nothing; with a weak policy most groups are all wrong. TRL's trainers keep every prompt (DAPO's
dynamic sampling, which re-samples inside training, is not in TRL), so this filter runs once, offline, on the
prompts' `answer` column, and the stage reports what it kept.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from data_process.rewards import accuracy_reward
from modeling_miniminds.inference import chat_prompt_ids, generate_completions
from recipes.training.evaluation import eval_mode
from recipes.training.rl import as_messages

logger = logging.getLogger(__name__)


@dataclass
class Difficulty:
    """How the scored prompts split: `kept` holds the indices of the middling ones, in their original order."""

    samples: int
    all_right: int
    all_wrong: int
    kept: list[int]

    def summary(self) -> dict:
        scored = self.all_right + self.all_wrong + len(self.kept)
        return {
            "samples": self.samples,
            "scored": scored,
            "all_right": self.all_right,
            "all_wrong": self.all_wrong,
            "kept": len(self.kept),
        }


def pass_rates(
    model,
    tokenizer,
    records: list[dict],
    samples: int,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 64,
    **sampling,
) -> list[float]:
    """Each record's share of `samples` sampled replies whose final answer equals its `answer`. `sampling` holds
    `generate`'s sampling options or a `generation_config` that samples."""
    missing = next((i for i, r in enumerate(records) if "answer" not in r), None)
    if missing is not None:
        raise ValueError(f"prompt {missing + 1}: scoring difficulty needs an `answer` in every prompt record")
    prompts = chat_prompt_ids(tokenizer, [as_messages(r["prompt"]) for r in records])
    repeated = [ids for ids in prompts for _ in range(samples)]
    torch.manual_seed(seed)
    if "generation_config" not in sampling:
        sampling["do_sample"] = True
    with eval_mode(model):
        completions = generate_completions(model, tokenizer, repeated, max_new_tokens, batch_size, **sampling)
    answers = [r["answer"] for r in records for _ in range(samples)]
    scores = accuracy_reward(completions=[c.text for c in completions], answer=answers)
    return [sum(scores[i * samples : (i + 1) * samples]) / samples for i in range(len(records))]


def middling(rates: list[float], samples: int) -> Difficulty:
    """Split pass rates into all right, all wrong and the rest (kept)."""
    kept = [i for i, rate in enumerate(rates) if 0.0 < rate < 1.0]
    return Difficulty(samples, sum(rate == 1.0 for rate in rates), sum(rate == 0.0 for rate in rates), kept)


def middling_prompts(
    model, tokenizer, records: list[dict], samples: int, max_new_tokens: int, seed: int = 0, **sampling
) -> Difficulty:
    """Score `records` with the policy and keep those of middling difficulty; says how many of each kind."""
    difficulty = middling(pass_rates(model, tokenizer, records, samples, max_new_tokens, seed, **sampling), samples)
    logger.info(
        f"Prompt difficulty over {len(records)} prompts x {samples} sampled replies: {difficulty.all_right} always "
        f"right, {difficulty.all_wrong} always wrong, {len(difficulty.kept)} kept"
    )
    if not difficulty.kept:
        raise ValueError(
            f"no prompt of middling difficulty among {len(records)} (each answered {samples} times): "
            "score more prompts, sample more replies, or train without the filter"
        )
    return difficulty


def prompts_to_train(
    model,
    tokenizer,
    records: Sequence[dict],
    samples: int,
    limit: int | None,
    max_new_tokens: int,
    seed: int = 0,
    **sampling,
) -> tuple[list[int], dict | None]:
    """Indices of the records (a list or a `datasets.Dataset` of rows) to train on, and what the filter did for the
    report: every index and None when `samples` is 0, without reading a row. With a `limit` only the first `limit`
    records are scored and the rest are left out."""
    if not samples:
        return list(range(len(records))), None
    scored = [records[i] for i in range(min(limit or len(records), len(records)))]
    difficulty = middling_prompts(model, tokenizer, scored, samples, max_new_tokens, seed, **sampling)
    return difficulty.kept, difficulty.summary()
