"""Whole replies to a batch of token prompts through transformers' `generate`: the one decoding path of held-out
probes, the tool loop, `make_pairs` and rollouts, and the one padding routine.

`generate` and not the `Generator`: the Generator is ~1.2x faster on CPU (16 tiny-model prompts, 48 new tokens) but
cannot decode a model sharded by ZeRO-3 over several ranks (`generate` keeps the ranks in step, `synced_gpus`), a
PEFT wrapper, or a whole `GenerationConfig` (a rollout's cache and sampling options).
"""

import torch
from torch.nn.utils.rnn import pad_sequence

from .sampling import FINISH_LENGTH, FINISH_STOP, Completion


def pad_batch(sequences: list[list[int]], pad_token_id: int, padding_side: str = "right"):
    """`input_ids` and `attention_mask` (CPU LongTensors) for token lists of different lengths, padded on either
    side: left for prompts to decode (every row continues at the last column), right for scoring."""
    rows = [torch.tensor(sequence, dtype=torch.long) for sequence in sequences]
    input_ids = pad_sequence(rows, batch_first=True, padding_value=pad_token_id, padding_side=padding_side)
    ones = [torch.ones_like(row) for row in rows]
    attention_mask = pad_sequence(ones, batch_first=True, padding_value=0, padding_side=padding_side)
    return input_ids, attention_mask


def chat_prompt_ids(tokenizer, conversations: list[list[dict]], tools=None, **template_kwargs) -> list[list[int]]:
    """Token ids of each conversation rendered by the chat template, ending with the assistant header."""
    return [
        tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False, **template_kwargs
        )
        for messages in conversations
    ]


@torch.no_grad()
def generate_completions(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int | None = None, **generate_kwargs
) -> list[Completion]:
    """One completion per prompt, `batch_size` left-padded prompts per `generate` call (None: all at once); greedy
    unless `generate_kwargs` sample. Token ids and text stop before the first end-of-sequence token; the finish
    reason says whether there was one ("stop") or the reply ran to `max_new_tokens` ("length")."""
    eos = generate_kwargs.pop("eos_token_id", tokenizer.eos_token_id)
    pad = generate_kwargs.pop("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    if "generation_config" not in generate_kwargs:
        generate_kwargs.setdefault("do_sample", False)
    completions = []
    batch_size = batch_size or len(prompts)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        input_ids, attention_mask = pad_batch(batch, pad, padding_side="left")
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=eos,
            **generate_kwargs,
        )
        for prompt, row in zip(batch, output[:, input_ids.shape[1] :].tolist()):
            ended = eos in row
            ids = row[: row.index(eos)] if ended else row
            text = tokenizer.decode(ids, skip_special_tokens=True)
            completions.append(Completion(text, ids, FINISH_STOP if ended else FINISH_LENGTH, len(prompt)))
    return completions
