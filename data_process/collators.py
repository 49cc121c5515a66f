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
