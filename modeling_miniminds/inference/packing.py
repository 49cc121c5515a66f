"""oneDNN CPU weight packing: Linear weights laid out for decoding, values unchanged."""

import torch

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
