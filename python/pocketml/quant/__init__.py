"""Weight quantization: formats, quantizers, quantized matmul and PyTorch modules.

    qt = pocketml.quant.quantize(w, bits=4, group_size=64)          # group-wise affine
    qt = pocketml.quant.palettize(w, nbits=4)                       # k-means LUT
    y = pocketml.quant.matmul(x, qt)                                # x @ W^T
    report = pocketml.quant.quantize_model(model, pocketml.quant.QuantConfig(bits=4))
"""

from pocketml.quant.config import QuantConfig
from pocketml.quant.tensor import QuantizedTensor, matmul, packed_row_bytes, palettize, quantize

__all__ = ["QuantConfig", "QuantizedTensor", "QuantizedLinear", "QuantizationReport", "matmul", "packed_row_bytes",
           "palettize", "quantize", "quantize_model", "save", "load"]


def __getattr__(name):
    # The torch modules load on first use, so NumPy-only users never import torch.
    if name in ("QuantizedLinear",):
        from pocketml.quant import linear

        return getattr(linear, name)
    if name in ("QuantizationReport", "quantize_model", "save", "load"):
        from pocketml.quant import model

        return getattr(model, name)
    raise AttributeError(f"module 'pocketml.quant' has no attribute {name!r}")
