"""GPTQ: codes chosen to keep a layer's output error small on calibration data.

Round-to-nearest rounds each weight alone. GPTQ (Frantar et al., 2022) rounds a
row's weights one input channel at a time and moves each rounding error onto the
channels not yet rounded, in proportion to how the calibration activations couple
them: with H = X^T X / rows (the layer's input second moment) and U the upper
Cholesky factor of H^-1, rounding channel j with error e adds -e * U[j, j+1:] / U[j, j]
to the rest of the row, which minimises the growth of (w - q)^T H (w - q), the
squared output error on X.

Here the groups' scales and zero points are fixed first, by the weighted MSE range
search (method "mse" with the importance diag(H)), and GPTQ chooses only the codes,
so the result is an ordinary group-wise affine QuantizedTensor. Fixed ("static")
groups let the channels be rounded in order of decreasing importance (act order,
the channels with the largest activations first, while the most channels remain to
absorb their errors) without reordering the stored format.
"""

from __future__ import annotations

import numpy as np
import torch

from pocketml._native import core
from pocketml.quant.tensor import QuantizedTensor, packed_row_bytes, quantize

_BLOCK = 128  # channels rounded between updates of the rest of the row (lazy batch updates)


def _check_hessian(hessian, k: int) -> torch.Tensor:
    if not isinstance(hessian, torch.Tensor):
        raise TypeError(f"argument 'hessian': expected a torch.Tensor, got {type(hessian).__name__}")
    if tuple(hessian.shape) != (k, k):
        raise ValueError(f"argument 'hessian': expected shape ({k}, {k}) (in_features squared), "
                         f"got {tuple(hessian.shape)}")
    if not torch.isfinite(hessian).all():
        raise ValueError("argument 'hessian': expected finite values, got NaN or infinity")
    return hessian.detach().to(torch.float64)


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1."""
    k = hessian.shape[0]
    h = hessian.clone()
    dead = torch.diagonal(h) <= 0  # channels the data never drives: any code will do
    h[dead, dead] = 1.0
    h += damp * torch.diagonal(h).mean() * torch.eye(k, dtype=h.dtype)
    try:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError as error:
        raise ValueError("argument 'hessian': expected a symmetric positive semi-definite matrix such as "
                         f"X^T X / rows, got one that stays indefinite after damping ({error})") from None


def gptq_quantize(w, hessian, bits: int = 4, group_size: int | None = 64, symmetric: bool = False,
                  scale_dtype="fp16", damp: float = 0.1, act_order: bool = True) -> QuantizedTensor:
    """Group-wise affine quantization of a weight [N, K] whose codes minimise the output
    error on the activations behind `hessian` [K, K] (X^T X / rows, as collected by
    quantize_model). damp: the fraction of the mean diagonal added to it (its inverse
    must exist; larger values trust the calibration data less). act_order: round the
    channels in order of decreasing diag(H). Deterministic for a given torch thread count.
    """
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp <= 10:
        raise ValueError(f"argument 'damp': expected a number in (0, 10], got {damp!r}")
    weight = torch.as_tensor(w).detach()
    if weight.ndim != 2:
        raise ValueError(f"argument 'w': expected a 2-D weight [out_features, in_features], got shape "
                         f"{tuple(weight.shape)}")
    n, k = weight.shape
    hessian = _check_hessian(hessian, k)
    importance = torch.diagonal(hessian).clamp(min=0)
    importance = importance / importance.mean() if importance.mean() > 0 else torch.ones_like(importance)
    ranges = quantize(weight.float(), bits, group_size, symmetric, "mse", scale_dtype,
                      importance=importance.to(torch.float32))
    group = ranges.group_size
    scale = torch.as_tensor(ranges.scales).to(torch.float64).repeat_interleave(group, dim=1)
    zero = (torch.full_like(scale, float(1 << (bits - 1))) if ranges.zero_points is None else
            torch.as_tensor(ranges.zero_points).to(torch.float64).repeat_interleave(group, dim=1))
    top = float((1 << bits) - 1)

    order = torch.argsort(torch.diagonal(hessian), descending=True, stable=True) if act_order else torch.arange(k)
    # Channel-major [K, N] copies, so that each channel's weights are one contiguous row.
    remaining = weight.to(torch.float64).T[order].contiguous()
    scale, zero = scale.T[order].contiguous(), zero.T[order].contiguous()
    factor = _inverse_cholesky(hessian[order][:, order], damp)
    codes = torch.empty(k, n, dtype=torch.float64)
    for begin in range(0, k, _BLOCK):
        end = min(begin + _BLOCK, k)
        block = remaining[begin:end].clone()
        errors = torch.empty_like(block)
        for j in range(end - begin):
            channel = begin + j
            s, z = scale[channel], zero[channel]  # scales are positive (the quantizer never stores 0)
            q = torch.clamp(torch.round(block[j] / s) + z, 0.0, top)
            codes[channel] = q
            error = (block[j] - s * (q - z)) / factor[channel, channel]
            block[j:] -= factor[channel, channel:end, None] * error[None, :]
            errors[j] = error
        remaining[end:] -= factor[begin:end, end:].T @ errors

    plain = torch.empty_like(codes)
    plain[order] = codes
    plain = plain.T.to(torch.uint8).contiguous().numpy()
    packed = np.empty((n, packed_row_bytes(k, bits)), dtype=np.uint8)
    core.quant_pack(plain, bits, packed)
    return QuantizedTensor("affine", bits, (n, k), group, packed, scales=ranges.scales,
                           zero_points=ranges.zero_points)


def gptq_quantize_layers(model: torch.nn.Module, layers, calibration, config) -> dict:
    """{name: QuantizedTensor} for `layers` [(name, nn.Linear)] of `model`, quantized one
    after the other in that order, each on the Hessian of its inputs with the layers
    before it already quantized (so it also corrects their error), running the model
    on `calibration` once per layer. The Linear weights hold the quantized values while
    this runs and their own afterwards, whatever happens.
    """
    from pocketml.quant.calibration import collect_hessian

    originals = {name: module.weight.detach().clone() for name, module in layers}
    quantized = {}
    try:
        for name, module in layers:
            hessian = collect_hessian(model, calibration, name, module)
            # From its own values: a weight Parameter shared with an earlier layer holds that layer's result now.
            qt = gptq_quantize(originals[name].float(), hessian, config.bits, config.group_size, config.symmetric,
                               config.scale_dtype)
            quantized[name] = qt
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(qt.dequantize("fp32")).to(module.weight.dtype))
    finally:
        with torch.no_grad():
            for name, module in layers:
                module.weight.copy_(originals[name])
    return quantized
