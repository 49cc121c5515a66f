"""Sampling outside the model: batched decoding with streaming text, stop tokens and strings, and per-request
sampling settings. Chat, the server, and later rollouts and evaluation decode through `Generator`; the model stays a
forward pass and its `generate()` is untouched.

    generator = Generator(model, tokenizer)
    prompt = generator.chat_prompt([{"role": "user", "content": "hi"}], enable_thinking=False)
    for deltas in generator.stream([prompt], SamplingParams(temperature=0.7, stop=["\\n\\n"])):
        print(deltas[0].text, end="")

Why it is faster than `model.generate` at batch 1 on CPU: a 26M model in fp32 reads ~100 MB of weights per token,
so decoding is bound by matrix-vector products and Python overhead. `prepare_for_decoding` stores Linear weights
input-major (same values, transposed memory), which BLAS multiplies by a single vector ~1.4x faster; the loop calls
the model directly, keeps one logit per row, prunes finished rows from the cache, and only sorts logits for rows that
sample. A static cache plus `torch.compile` of the one-token step is optional (`compile=True`): on CPU it removes most
of the remaining per-layer overhead but costs a minute of compilation per batch size.

Reading the weights once per token is the floor of plain decoding. Speculative decoding goes under it: draft tokens
are checked in one forward pass of the model, and each is kept only if it is the token the model would have chosen
(sampled in order, as plain decoding would), so the output is the same as without drafts. `draft_model=` drafts with
a small model of the same tokenizer (a distilled student, the demo's tiny model); `prompt_lookup=N` copies the
tokens that followed an earlier occurrence of the conversation's last few tokens, which pays where a reply repeats
it (quotes, code edits, tool-call arguments). Both are written here rather than taken from
`model.generate(assistant_model=...)` because they have to run inside this loop's batching, streaming and stops.
"""

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"
STATIC_CACHE_BUCKET = 256  # static cache lengths are rounded up to this, so a compiled step is reused across prompts


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


class TextStream:
    """Incremental detokenizer: text for each new token, held back while the tokens end inside a multi-byte
    character (byte-level BPE splits UTF-8 sequences across tokens, and decoding half of one yields U+FFFD)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.start = 0  # first token of the window that is decoded again, so merges at its edge stay right
        self.emitted = 0  # tokens already turned into text

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.token_ids.append(token_id)
        before = self._decode(self.token_ids[self.start : self.emitted])
        after = self._decode(self.token_ids[self.start :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.start, self.emitted = self.emitted, len(self.token_ids)
        return after[len(before) :]


class StopStrings:
    """Cuts a stream at the first stop string. Text that could still become a stop string is held back, so no part
    of a stop string is ever streamed."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [stop for stop in stops if stop]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that is safe to emit now, and whether a stop string was reached (then nothing follows)."""
        if not self.stops:
            return text, False
        buffer = self.pending + text
        hits = [i for i in (buffer.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buffer[: min(hits)], True
        held = max((n for stop in self.stops for n in range(1, len(stop)) if buffer.endswith(stop[:n])), default=0)
        self.pending = buffer[len(buffer) - held :]
        return buffer[: len(buffer) - held], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


@dataclass
class _Row:
    """Decoding state of one request."""

    index: int
    params: SamplingParams
    text: TextStream
    stops: StopStrings
    generator: torch.Generator | None
    finish_reason: str | None = None


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


def sample_tokens(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """One token per row from (rows, vocab) fp32 logits whose repetition penalty is already applied."""
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


PACKED_ROWS = 8  # the row count oneDNN's packed weights are laid out for: a batch, or a draft and its last token


class PackedLinear(torch.nn.Linear):
    """A Linear for decoding on CPU (see `prepare_for_decoding`): one row multiplies by the input-major weight, more
    rows by a copy laid out for oneDNN, made at the first such product and again whenever the weight has changed.
    A compiled step leaves the layout to `torch.compile`."""

    packed: tuple[tuple[int, int], torch.Tensor] | None = None  # (which weight and version it copies, the copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() == 1 or torch.compiler.is_compiling():
            return super().forward(x)
        source = (self.weight.data_ptr(), self.weight._version)
        if self.packed is None or self.packed[0] != source:
            self.packed = (source, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACKED_ROWS))
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed[1], self.bias, "none", [], "")
        return out.view(*x.shape[:-1], out.shape[-1])


def prepare_for_decoding(model):
    """Put a model in eval mode and, on CPU, lay out each Linear weight for decoding (values unchanged).

    Only for models used to decode; decoding on CPU is bound by reading the weights. Each weight is stored
    input-major, which BLAS multiplies by a single row ~1.4x faster. fp32 Linears also multiply several rows at once
    (a batch, or a speculative draft checked in one pass) by a oneDNN-packed copy, which BLAS would read at a fraction
    of the one-row speed: a 5-token pass of a 26M model then costs about one token's time instead of 1.5x. The copy
    is made on first use, so it doubles the memory of the Linear weights only where several rows are decoded;
    parameters and state dict are untouched. Greedy outputs stay the same up to float rounding of reordered sums.
    """
    model.eval()
    if model.device.type != "cpu":
        return model
    packable = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()
            if packable and module.weight.dtype == torch.float32 and type(module) is torch.nn.Linear:
                module.__class__ = PackedLinear
    return model


def load_for_decoding(
    model_dir, device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False, what: str = "model"
):
    """A saved causal LM (a MiniMinds folder or a Qwen3 export) and its tokenizer, ready for `Generator`.

    MiniMinds folders load through the installed package's classes unless `trust_remote_code` asks for the modeling
    files saved in the folder.
    """
    from transformers import AutoModelForCausalLM

    from .. import MiniMindConfig  # noqa: F401  (registers MiniMind with the Auto classes)
    from ..cli.paths import check_name_or_path, from_pretrained_or_explain
    from ..tokenizer import load_tokenizer

    name = check_name_or_path(model_dir, what)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model = from_pretrained_or_explain(
        AutoModelForCausalLM, name, what, dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
    return prepare_for_decoding(model.to(device)), load_tokenizer(name)


def stop_token_ids(model, tokenizer) -> set[int]:
    """End-of-turn ids: the tokenizer's eos plus any in the generation config (a list in chat exports)."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long, device=device)
    for i, prompt in enumerate(prompts):
        input_ids[i, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[i, length - len(prompt) :] = 1
    return input_ids, attention_mask


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
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            **template_kwargs,
        )

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
        input_ids, attention_mask = left_pad(prompts, self.pad_id, device)
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
                text, row.finish_reason = row.stops.flush(), FINISH_STOP
            else:
                tokens[row.index].append(token)
                text, stopped = row.stops.feed(row.text.push(token))
                if stopped:
                    row.finish_reason = FINISH_STOP
                elif step + 1 >= row.params.max_new_tokens:
                    text, row.finish_reason = text + row.stops.flush(), FINISH_LENGTH
            if text or row.finish_reason:
                deltas.append(Delta(row.index, text, row.finish_reason, len(tokens[row.index])))
        return deltas
