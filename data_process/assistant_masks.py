"""Assistant-token masks from ChatML spans, for chat templates without `{% generation %}` markers.

TRL's `assistant_only_loss` finds the assistant tokens through the template's generation markers, and patches only
the templates it knows. Upstream MiniMind's tokenizer has neither, so SFT with it used to stop at once. For such a
template the rows are tokenized here instead: each conversation is rendered by the tokenizer's own template, and
every token from the end of an `<|im_start|>assistant\\n` header through the `<|im_end|>` that closes the turn is
marked, as upstream MiniMind's trainer marks them. On the project's own template this gives exactly the mask of
its generation markers (tests/test_sft.py checks it), so both ways train the same tokens.
"""

import re

import datasets

from data_process.chat import row_tools
from modeling_miniminds.tokenizer.chat_format import BOS, EOS

ASSISTANT_TURN = re.compile(re.escape(f"{BOS}assistant\n") + r"(.*?" + re.escape(EOS) + ")", re.DOTALL)


def has_chatml_tokens(tokenizer) -> bool:
    """Whether `<|im_start|>` and `<|im_end|>` are single tokens of the vocabulary, as ChatML spans need."""
    ids = tokenizer.convert_tokens_to_ids([BOS, EOS])
    return all(i is not None and i != tokenizer.unk_token_id for i in ids)


def assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of every assistant turn's content and its closing `<|im_end|>` in rendered chat text."""
    return [match.span(1) for match in ASSISTANT_TURN.finditer(text)]


def masked_row(row: dict, tokenizer) -> dict:
    """`{"input_ids", "assistant_masks"}` of one chat row (`messages`, `tools` as JSON text) rendered by the
    tokenizer's template: a token is an assistant token when it starts inside an assistant span."""
    text = tokenizer.apply_chat_template(row["messages"], tools=row_tools(row), tokenize=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_spans(text)
    masks = [int(any(lo <= start < hi for lo, hi in spans)) for start, _ in encoding["offset_mapping"]]
    return {"input_ids": encoding["input_ids"], "assistant_masks": masks}


def with_assistant_masks(rows: datasets.Dataset, tokenizer) -> datasets.Dataset:
    """Chat rows tokenized with their assistant masks, the processed form TRL's SFTTrainer trains on as is."""
    if not has_chatml_tokens(tokenizer):
        raise ValueError(
            "the tokenizer's chat template has no {% generation %} markers and the tokenizer has no ChatML "
            f"{BOS}/{EOS} tokens to find assistant turns by: add generation markers to the template, or pass "
            "--assistant_only_loss false to train on every token"
        )
    return rows.map(
        masked_row,
        fn_kwargs={"tokenizer": tokenizer},
        remove_columns=rows.column_names,
        desc="tokenize with assistant masks",
    )
