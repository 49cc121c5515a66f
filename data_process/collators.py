"""Batch builders for the training recipes."""

from dataclasses import dataclass

import torch


@dataclass
class PackedBlockCollator:
    """Stack fixed-length blocks into a batch with no padding and no attention mask.

    With `document_mask`, `position_ids` restart at every document, which makes the attention block-diagonal, and the
    first token of each document is not a target: nothing before it in the block may be used to predict it.
    """

    document_mask: bool = True

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows])
        batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        if self.document_mask and "position_ids" in rows[0]:
            position_ids = torch.stack([torch.as_tensor(row["position_ids"], dtype=torch.long) for row in rows])
            batch["labels"][position_ids == 0] = -100
            batch["position_ids"] = position_ids
        return batch


@dataclass
class PackedRowsCollator:
    """Rows packed by TRL (`input_ids`, `seq_lengths`, and `labels` unless every token is a target, as in best-fit
    pretraining) batched as separate rows, right-padded to the longest, with `position_ids` restarting at every
    conversation or document and no attention mask: transformers then masks attention block-diagonally within each
    row.

    TRL's padding-free collator flattens the whole batch into one row instead. The varlen kernels of flash-attention
    skip the masked blocks of that row, but sdpa and eager attend densely: rows^2 * max_length^2 per layer instead of
    rows * max_length^2, which made packed SFT slower than padding on CPU (see benchmarks/sft_throughput.py).
    """

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full_like(input_ids, -100)
        position_ids = torch.zeros_like(input_ids)
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            input_ids[row, :length] = torch.as_tensor(example["input_ids"])
            labels[row, :length] = torch.as_tensor(example.get("labels", example["input_ids"]))
            lengths = [*example["seq_lengths"], width - length]  # the padded tail as one more sequence
            position_ids[row] = torch.cat([torch.arange(n) for n in lengths])
        labels[position_ids == 0] = -100  # a conversation's first token is never predicted from the one before
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
