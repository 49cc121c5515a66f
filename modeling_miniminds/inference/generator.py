"""The Generator: batched decoding with streaming text, stop tokens and strings, speculative drafts, and the
per-row state of a decoding batch."""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from .batched import chat_prompt_ids, pad_batch
from .drafting import DraftModel, PromptLookup, check_speculation
from .sampling import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    Delta,
    SamplingParams,
    apply_repetition_penalty,
    sample_tokens,
)
from .text import StopStrings, TextStream

STATIC_CACHE_BUCKET = 256  # static cache lengths are rounded up to this, so a compiled step is reused across prompts


@dataclass
class _Row:
    """Decoding state of one request."""

    index: int
    params: SamplingParams
    text: TextStream
    stops: StopStrings
    generator: torch.Generator | None
    finish_reason: str | None = None


def stop_token_ids(model, tokenizer) -> set[int]:
    """End-of-turn ids: the tokenizer's eos plus any in the generation config (a list in chat exports)."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


class _Batch:
    """Per-row tensors of a decoding batch. With a dynamic cache, finished rows leave the batch; a static cache keeps
    its shapes (a compiled step is specialised to them) and finished rows decode on unseen."""

    def __init__(self, cache, attention_mask, params: list[SamplingParams], static_length: int | None, vocab: int):
        self.cache, self.static = cache, static_length is not None
        self.length = attention_mask.shape[1]  # tokens per row so far, padding included
        self.padded = not bool(attention_mask.all())
        self.position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        if self.static:
            attention_mask = torch.nn.functional.pad(attention_mask, (0, static_length - self.length))
        self.attention_mask = attention_mask
        self.active = list(range(len(params)))  # batch row -> request index
        self.penalty = self.seen = None
        if any(p.repetition_penalty != 1 for p in params):
            self.penalty = torch.tensor([p.repetition_penalty for p in params], device=attention_mask.device)[:, None]
            self.seen = torch.zeros((len(params), vocab), dtype=torch.bool, device=attention_mask.device)

    def prefill_inputs(self, input_ids) -> dict:
        if self.seen is not None:
            rows, columns = self.attention_mask[:, : self.length].nonzero(as_tuple=True)  # prompt tokens, not padding
            self.seen[rows, input_ids[rows, columns]] = True
        return {**self.step_inputs(), "position_ids": self.position_ids}

    def step_inputs(self) -> dict:
        """Model inputs besides the token ids; no mask at all when no row is padded (the fastest attention path)."""
        mask = self.attention_mask if self.padded or self.static else None
        return {
            "attention_mask": mask,
            "position_ids": self.position_ids[:, -1:],
            "cache": self.cache,
            "use_cache": True,
            "logits_to_keep": 1,
        }

    def draft_inputs(self, count: int) -> dict:
        """Model inputs for the last token plus `count` draft tokens after it (dynamic cache)."""
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones((1, count))], 1)
        positions = self.position_ids[:, -1:] + torch.arange(count + 1, device=self.position_ids.device)
        self.position_ids, self.length = positions[:, -1:], self.length + count
        return {**self.step_inputs(), "position_ids": positions, "logits_to_keep": count + 1}

    def rewind(self, count: int):
        """Forget the last `count` tokens: rejected drafts."""
        if count:
            self.cache.crop(-count)
            self.attention_mask, self.position_ids = self.attention_mask[:, :-count], self.position_ids - count
            self.length -= count

    def mark_seen(self, tokens: torch.Tensor):
        if self.seen is not None:
            self.seen[torch.arange(len(tokens)), tokens] = True

    def penalise(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.seen is None else apply_repetition_penalty(logits, self.seen, self.penalty)

    def advance(self, next_tokens: torch.Tensor, keep: list[int]) -> torch.Tensor:
        """Drop the rows not in `keep` (dynamic cache only), make room for the next token; the next input ids."""
        if not self.static and len(keep) < len(self.active):
            index = torch.tensor(keep, device=next_tokens.device)
            self.cache.batch_select_indices(index)
            next_tokens, self.position_ids, self.attention_mask = (
                next_tokens[index],
                self.position_ids[index],
                self.attention_mask[index],
            )
            if self.seen is not None:
                self.seen, self.penalty = self.seen[index], self.penalty[index]
            self.active = [self.active[b] for b in keep]
            self.padded = not bool(self.attention_mask.all())
        self.mark_seen(next_tokens)
        if self.static:
            self.attention_mask[:, self.length] = 1
        else:
            self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones((len(keep), 1))], 1)
        self.position_ids = self.position_ids[:, -1:] + 1
        self.length += 1
        return next_tokens


class Generator:
    """Decodes a batch of token prompts with per-request sampling settings and streams text per step.

    Not thread-safe: one thread owns a Generator (the server runs it on a single worker and batches requests there).
    `cache_implementation="static"` preallocates the KV cache; `compile=True` also compiles the one-token step.
    Speculative decoding runs whenever one request is decoding (dynamic cache only): `draft_model` drafts
    `draft_tokens` at a time, or `prompt_lookup=N` up to N; `drafted` and `accepted` count the draft tokens.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        cache_implementation: str = "dynamic",
        compile: bool = False,
        prompt_lookup: int = 0,
        draft_model=None,
        draft_tokens: int = 4,
    ):
        if cache_implementation not in ("dynamic", "static"):
            raise ValueError(f"cache_implementation must be 'dynamic' or 'static', got {cache_implementation!r}")
        self.model, self.tokenizer = model, tokenizer
        self.static = compile or cache_implementation == "static"
        cache = "static with compile" if compile else cache_implementation
        check_speculation(model, prompt_lookup, draft_model, draft_tokens, cache)
        self.prompt_lookup, self.draft_model, self.draft_tokens = prompt_lookup, draft_model, draft_tokens
        self.speculative = bool(prompt_lookup) or draft_model is not None
        self.drafted = self.accepted = 0
        self.step = torch.compile(model.forward, dynamic=False, fullgraph=True) if compile else model.forward
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.max_length = getattr(model.config, "max_position_embeddings", None)

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None, **template_kwargs) -> list[int]:
        """Token ids of a conversation rendered by the chat template, ending with the assistant header;
        `enable_thinking` and other template variables pass through."""
        return chat_prompt_ids(self.tokenizer, [messages], tools or None, **template_kwargs)[0]

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None, batch_size: int = 8
    ) -> list[Completion]:
        """Whole completions, decoded `batch_size` prompts at a time."""
        params = self._per_prompt(prompts, params)
        completions = []
        for start in range(0, len(prompts), batch_size):
            batch, batch_params = prompts[start : start + batch_size], params[start : start + batch_size]
            texts = [[] for _ in batch]
            finish = [None] * len(batch)
            tokens = [[] for _ in batch]
            for deltas in self._decode(batch, batch_params, None, tokens):
                for delta in deltas:
                    texts[delta.index].append(delta.text)
                    finish[delta.index] = delta.finish_reason or finish[delta.index]
            for i, prompt in enumerate(batch):
                completions.append(Completion("".join(texts[i]), tokens[i], finish[i], len(prompt)))
        return completions

    def stream(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[list[Delta]]:
        """Deltas after each decoding step, for the prompts whose text grew or which finished. All prompts decode as
        one batch; `cancelled(index)` is asked every step and drops a request (finish reason "cancelled")."""
        yield from self._decode(prompts, self._per_prompt(prompts, params), cancelled, [[] for _ in prompts])

    @staticmethod
    def _per_prompt(prompts, params) -> list[SamplingParams]:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if params is None or isinstance(params, SamplingParams):
            return [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        return list(params)

    def _check_length(self, prompts, params):
        if self.max_length is None:
            return
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            if len(prompt) + p.max_new_tokens > self.max_length:
                raise ValueError(
                    f"prompt {i}: {len(prompt)} prompt tokens + max_new_tokens {p.max_new_tokens} exceed the model's "
                    f"max_position_embeddings {self.max_length}"
                )

    def _new_cache(self, total_length: int):
        """A cache for `total_length` tokens per row, and the length of a static one (None for dynamic)."""
        if not self.static:
            return DynamicCache(config=self.model.config), None
        length = math.ceil(total_length / STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET
        if self.max_length:
            length = min(length, self.max_length)
        return StaticCache(config=self.model.config, max_cache_len=length), length

    @torch.inference_mode()
    def _decode(self, prompts, params, cancelled, tokens) -> Iterator[list[Delta]]:
        """The decoding loop; appends each request's new token ids to `tokens[index]`."""
        self._check_length(prompts, params)
        device = self.model.device
        rows = [
            _Row(
                i,
                p,
                TextStream(self.tokenizer),
                StopStrings(p.stop),
                torch.Generator(device).manual_seed(p.seed) if p.seed is not None else None,
            )
            for i, p in enumerate(params)
        ]
        input_ids, attention_mask = (t.to(device) for t in pad_batch(prompts, self.pad_id, padding_side="left"))
        max_new = max(p.max_new_tokens for p in params)
        cache, static_length = self._new_cache(input_ids.shape[1] + max_new)
        batch = _Batch(cache, attention_mask, params, static_length, self.model.config.vocab_size)
        logits = self.model(input_ids=input_ids, **batch.prefill_inputs(input_ids)).logits[:, -1].float()
        drawn, drafter, step = None, None, 0  # drawn: a token already sampled from `logits` (a rejected draft's slot)
        while True:
            active = [rows[i] for i in batch.active]
            next_tokens = drawn if drawn is not None else sample_tokens(batch.penalise(logits), active)
            deltas = self._advance(rows, batch.active, next_tokens.tolist(), step, cancelled, tokens)
            if deltas:
                yield deltas
            step += 1
            keep = [b for b, i in enumerate(batch.active) if rows[i].finish_reason is None]
            if not keep:
                return
            next_tokens = batch.advance(next_tokens, keep)
            if self.speculative and len(keep) == 1:
                row = rows[batch.active[0]]
                drafter = drafter or self._drafter(prompts[row.index])
                drafts = drafter.draft(tokens[row.index], row.params.max_new_tokens - step)
                if drafts:
                    logits, drawn, kept = yield from self._verify(
                        rows, batch, next_tokens, drafts, step, cancelled, tokens
                    )
                    if row.finish_reason is not None:
                        return
                    step += kept
                    continue
            drawn = None
            logits = self.step(input_ids=next_tokens[:, None], **batch.step_inputs()).logits[:, -1].float()

    def _drafter(self, prompt: list[int]) -> PromptLookup | DraftModel:
        if self.draft_model is not None:
            return DraftModel(self.draft_model, prompt, self.draft_tokens)
        return PromptLookup(prompt, self.prompt_lookup)

    def _verify(self, rows, batch, next_token, drafts, step, cancelled, tokens):
        """Check the drafts after the single row's `next_token` in one forward pass and keep each that the sampler
        also picks (it samples every position in order, as plain decoding would). Yields their deltas; returns the
        logits for the position after the last kept token, the token drawn in place of a rejected draft (or None), and
        how many drafts were kept."""
        row = rows[batch.active[0]]
        chunk = torch.tensor([[next_token.item(), *drafts]], device=next_token.device)
        all_logits = self.model(input_ids=chunk, **batch.draft_inputs(len(drafts))).logits[0].float()
        self.drafted += len(drafts)
        drawn, kept = None, 0
        for draft in drafts:
            token = sample_tokens(batch.penalise(all_logits[kept : kept + 1]), [row])
            if token.item() != draft:
                drawn = token
                break
            deltas = self._advance(rows, batch.active, [draft], step + kept, cancelled, tokens)
            kept += 1
            if deltas:
                yield deltas
            if row.finish_reason is not None:
                break
            batch.mark_seen(token)
        self.accepted += kept
        batch.rewind(len(drafts) - kept)
        return all_logits[kept : kept + 1], drawn, kept

    @staticmethod
    def _last_text(row) -> str:
        """A finishing row's held-back text: the bytes of a character its tokens ended inside, then what the stop
        strings were holding."""
        text, stopped = row.stops.feed(row.text.flush())
        return text if stopped else text + row.stops.flush()

    def _advance(self, rows, active, next_tokens, step, cancelled, tokens) -> list[Delta]:
        """Feed each active row its new token; finished rows get their finish reason and their last text."""
        deltas = []
        for batch_row, token in zip(active, next_tokens):
            row = rows[batch_row]
            if row.finish_reason is not None:  # static cache rows keep decoding after they finish
                continue
            if cancelled is not None and cancelled(row.index):
                row.finish_reason = FINISH_CANCELLED
                deltas.append(Delta(row.index, "", FINISH_CANCELLED, len(tokens[row.index])))
                continue
            if token in self.stop_ids:
                text, row.finish_reason = self._last_text(row), FINISH_STOP
            else:
                tokens[row.index].append(token)
                text, stopped = row.stops.feed(row.text.push(token))
                if stopped:
                    row.finish_reason = FINISH_STOP
                elif step + 1 >= row.params.max_new_tokens:
                    text, row.finish_reason = text + self._last_text(row), FINISH_LENGTH
            if text or row.finish_reason:
                deltas.append(Delta(row.index, text, row.finish_reason, len(tokens[row.index])))
        return deltas
