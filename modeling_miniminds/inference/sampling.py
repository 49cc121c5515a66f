"""Per-request sampling settings, the records a decode returns, and the sampler: repetition penalty, top-k,
nucleus, temperature, each row with its own seeded generator."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


@dataclass
class SamplingParams:
    """How one request is decoded. `temperature=0` is greedy; `top_k=0` and `top_p=1` switch those filters off;
    `repetition_penalty` > 1 divides positive (multiplies negative) logits of tokens already in prompt or reply, as
    in CTRL and transformers; `stop` strings end the reply and are not part of it; `seed` makes sampling repeatable
    whatever else is in the batch."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = (
            ("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", 0 <= self.temperature < math.inf, "a number >= 0"),
            ("top_p", 0 < self.top_p <= 1, "a number in (0, 1]"),
            ("top_k", self.top_k >= 0, "an integer >= 0"),
            ("repetition_penalty", 0 < self.repetition_penalty < math.inf, "a number > 0"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Delta:
    """New text of one request after a decoding step, and its token count so far; `finish_reason` is set on its
    last delta."""

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """(rows, vocab) logits; tokens marked in `seen` are made less likely by `penalty` (rows, 1)."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor):
    """Sorted logits with tokens outside each row's top-k and nucleus set to -inf, and the sort order."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    k = torch.where(top_k > 0, top_k, logits.shape[-1])[:, None]
    sorted_logits = sorted_logits.masked_fill(ranks >= k, -math.inf)
    probs = sorted_logits.softmax(dim=-1)
    outside_nucleus = probs.cumsum(dim=-1) - probs > top_p[:, None]  # the most likely token always stays
    return sorted_logits.masked_fill(outside_nucleus, -math.inf), order


def sample_tokens(logits: torch.Tensor, rows: list) -> torch.Tensor:
    """One token per row from (rows, vocab) fp32 logits whose repetition penalty is already applied; each row has
    `params` (SamplingParams) and `generator` (a seeded torch.Generator or None)."""
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
    if not sampled:
        return tokens
    params = [rows[i].params for i in sampled]
    picked = torch.tensor(sampled, device=logits.device)
    temperature = torch.tensor([p.temperature for p in params], device=logits.device)[:, None]
    top_k = torch.tensor([p.top_k for p in params], device=logits.device)
    top_p = torch.tensor([p.top_p for p in params], device=logits.device)
    filtered, order = filter_top_k_top_p(logits[picked] / temperature, top_k, top_p)
    probs = filtered.softmax(dim=-1)
    for j, i in enumerate(sampled):
        choice = torch.multinomial(probs[j], 1, generator=rows[i].generator)
        tokens[i] = order[j, choice[0]]
    return tokens
