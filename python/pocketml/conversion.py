"""Floating-point conversion between fp32, fp16 and bf16 on the native kernels."""

from __future__ import annotations

from pocketml._arrays import FLOAT_DTYPES, canonical_dtype, empty_like
from pocketml._native import core


def convert(x, dtype):
    """Return `x` converted to `dtype` ('fp32', 'fp16', 'bf16' or a NumPy/torch dtype).

    Rounds to nearest, ties to even; denormals are kept; equal to torch's ``.to()``
    bit for bit for every non-NaN value. NaN stays NaN with its sign and upper
    payload, quieted except from bf16 to fp32, whose widening keeps every bit
    (a signalling NaN stays signalling, as in torch). NumPy in gives NumPy out, torch in gives torch out; `x` must be
    contiguous and on the CPU. The result does not track gradients.
    """
    target = canonical_dtype(dtype, "dtype", FLOAT_DTYPES)
    out = empty_like(x, tuple(getattr(x, "shape", ())), target)
    core.convert(x, out)
    return out
