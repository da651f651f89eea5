"""PyTorch runtime export (needs ``torch``): ``weightpress.torch.load_into(module, "model.wpz")``
puts a container into a module with its compressed layers computing compressed; see
:mod:`weightpress.model.export_torch`."""

from .model.export_torch import (QUANT_MODES, LoadRow, LoadRows, LowRankConv, LowRankLinear, LowRankQuantLinear,
                                 QuantConv, QuantEmbedding, QuantLinear, SparseLinear, load_into,
                                 quant_modes)

__all__ = ["load_into", "LoadRow", "LoadRows", "QUANT_MODES", "LowRankLinear", "LowRankConv", "QuantLinear", "SparseLinear",
           "LowRankQuantLinear", "QuantConv", "QuantEmbedding", "quant_modes"]
