"""Sampling outside the model: batched decoding with streaming text, stop tokens and strings, and per-request
sampling settings. Chat and the server decode through `Generator`; held-out probes, the tool loop, `make_pairs` and
rollouts through `generate_completions` (transformers' `generate`, see `batched`). The model stays a forward pass
and its `generate()` is untouched.

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

from .batched import chat_prompt_ids, generate_completions, pad_batch
from .drafting import DraftModel, PromptLookup, check_speculation
from .generator import Generator, stop_token_ids
from .loading import load_for_decoding
from .packing import PackedLinear, prepare_for_decoding
from .sampling import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    Delta,
    SamplingParams,
    apply_repetition_penalty,
    filter_top_k_top_p,
    sample_tokens,
)
from .text import StopStrings, TextStream

__all__ = [
    "FINISH_CANCELLED",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "Completion",
    "Delta",
    "DraftModel",
    "Generator",
    "PackedLinear",
    "PromptLookup",
    "SamplingParams",
    "StopStrings",
    "TextStream",
    "apply_repetition_penalty",
    "chat_prompt_ids",
    "check_speculation",
    "filter_top_k_top_p",
    "generate_completions",
    "load_for_decoding",
    "pad_batch",
    "prepare_for_decoding",
    "sample_tokens",
    "stop_token_ids",
]
