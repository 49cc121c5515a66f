"""Speculative drafters for the Generator: prompt lookup and a small draft model, and the checks that refuse
settings that cannot work."""

import torch
from transformers import DynamicCache


class PromptLookup:
    """Draft tokens for one row, copied from earlier in its own sequence (prompt lookup decoding).

    The longest suffix of prompt + reply, from `max_ngram` tokens down to `min_ngram`, is looked up among the n-grams
    seen before; the tokens that followed its first occurrence are the draft. Each n-gram is indexed once, when the
    token after it arrives, so a lookup costs a few dict probes however long the sequence.
    """

    def __init__(self, prompt: list[int], num_tokens: int, max_ngram: int = 3, min_ngram: int = 2):
        self.num_tokens, self.sizes = num_tokens, range(max_ngram, min_ngram - 1, -1)
        self.sequence: list[int] = []
        self.follower: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after its first occurrence
        self.reply_seen = 0
        self._extend(prompt)

    def _extend(self, tokens: list[int]):
        for token in tokens:
            end = len(self.sequence)
            for n in self.sizes:
                if end >= n:
                    self.follower.setdefault(tuple(self.sequence[end - n :]), end)
            self.sequence.append(token)

    def draft(self, reply: list[int], limit: int) -> list[int]:
        """At most `min(num_tokens, limit)` tokens likely to follow prompt + `reply` (the row's tokens so far)."""
        self._extend(reply[self.reply_seen :])
        self.reply_seen = len(reply)
        limit = min(limit, self.num_tokens)
        for n in self.sizes if limit > 0 else ():
            start = self.follower.get(tuple(self.sequence[-n:]))
            if start is not None:
                return self.sequence[start : start + limit]
        return []


class DraftModel:
    """Draft tokens for one row from a small model with the same tokenizer: it decodes greedily ahead of the main
    model, and before each draft its KV cache is cut back to the tokens the main model kept."""

    def __init__(self, model, prompt: list[int], num_tokens: int):
        self.model, self.prompt, self.num_tokens = model, prompt, num_tokens
        self.cache = DynamicCache(config=model.config)
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds

    def draft(self, reply: list[int], limit: int) -> list[int]:
        sequence = self.prompt + reply
        agreed = next((i for i, (a, b) in enumerate(zip(self.cached, sequence)) if a != b), len(self.cached))
        agreed = min(agreed, len(sequence) - 1)  # the last token is fed again: its logits give the first draft
        if agreed < len(self.cached):
            self.cache.crop(agreed - len(self.cached))
            del self.cached[agreed:]
        feed, drafts = sequence[agreed:], []
        while len(drafts) < min(limit, self.num_tokens):
            ids = torch.tensor([feed], device=self.model.device)
            logits = self.model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=1).logits
            self.cached += feed
            feed = [int(logits[0, -1].argmax())]
            drafts += feed
        return drafts


def check_speculation(model, prompt_lookup: int, draft_model, draft_tokens: int, cache: str):
    """ValueError naming the setting when speculative decoding is asked for in a way that cannot work."""
    if prompt_lookup < 0:
        raise ValueError(f"prompt_lookup must be >= 0, got {prompt_lookup}")
    if draft_tokens < 1:
        raise ValueError(f"draft_tokens must be >= 1, got {draft_tokens}")
    if prompt_lookup and draft_model is not None:
        raise ValueError("prompt_lookup and draft_model: choose one way of drafting")
    if (prompt_lookup or draft_model is not None) and cache != "dynamic":
        raise ValueError(f"speculative decoding (prompt_lookup, draft_model) needs the dynamic cache, got {cache}")
    if draft_model is not None and draft_model.config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"draft_model: vocabulary of {draft_model.config.vocab_size} tokens, but the model has "
            f"{model.config.vocab_size}; the draft must share the model's tokenizer"
        )
