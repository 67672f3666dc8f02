"""Quantized matmul and quantizers: pocketml against torch's dense and packed kernels.

GEMV (M = 1, decode) is memory-bound, so every peer cycles through enough copies
of its weights that their total is several times the 32 MiB L3: each call reads
its weights from DRAM, as in a real model. GB/s is the weight bytes each peer
reads (its own format) over its time. GEMM (prefill) quotes GFLOP/s = 2 M N K / t.
The GEMV cases run inside pocketml.keep_warm(): called back to back, as in a
decode loop, pocketml's pool threads spin between calls as torch's OpenMP threads
do by default (outside it they sleep after each call and pay a wake-up per call).
MLX's CPU quantized_matmul joins when the optional `mlx` package is installed.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

import pocketml
from harness import Peer
from pocketml import quant
from pocketml.quant.gptq import gptq_quantize

L3_BYTES = 32 << 20


def copies_for(nbytes: int) -> int:
    """Enough copies to total >= 4x the L3 cache."""
    return max(2, math.ceil(4 * L3_BYTES / nbytes))


def copy_of(qt: quant.QuantizedTensor) -> quant.QuantizedTensor:
    def fresh(a):
        return None if a is None else (a.clone() if isinstance(a, torch.Tensor) else a.copy())
    return quant.QuantizedTensor(qt.kind, qt.bits, qt.shape, qt.group_size, fresh(qt.packed), fresh(qt.scales),
                                 fresh(qt.zero_points), fresh(qt.lut))


def cycled_quantized(qt):
    copies = [qt] + [copy_of(qt) for _ in range(copies_for(qt.nbytes) - 1)]
    return itertools.cycle(copies)


def cycled(make, nbytes):
    return itertools.cycle([make() for _ in range(copies_for(nbytes))])


def torch_int8_weights(w):
    scale = w.abs().amax(1) / 127
    return torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8), scale


def torch_int4_weights(w, group_size=64):
    """torch's int4 CPU layout: codes 0..15, scales_and_zeros [K / g, N, 2]."""
    n, k = w.shape
    groups = w.reshape(n, k // group_size, group_size)
    lo, hi = groups.amin(-1), groups.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    codes = torch.round((groups - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    zero = lo + 8 * scale  # torch dequantizes (q - 8) * scale + zero
    packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales_and_zeros = torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
    return packed, scales_and_zeros


def unpack_int4(packed_and_scales):
    packed, scales_and_zeros = packed_and_scales
    return packed, 64, scales_and_zeros


def mlx_peer(w, x_np):
    """(peer, bytes its format reads per call), its weights cycled from DRAM as every peer's are."""
    try:
        import mlx.core as mx
    except ImportError:
        return None
    mx.set_default_device(mx.cpu)
    wq, scales, biases = mx.quantize(mx.array(w.numpy()), group_size=64, bits=4)
    nbytes = wq.nbytes + scales.nbytes + biases.nbytes  # uint32 codes, fp32 scales and biases
    weights = cycled(lambda: tuple(mx.array(np.array(a)) for a in (wq, scales, biases)), nbytes)  # own buffers
    x = mx.array(x_np)

    def run():
        q, s, b = next(weights)
        mx.eval(mx.quantized_matmul(x, q, s, b, transpose=True, group_size=64, bits=4))

    return Peer("mlx cpu quantized_matmul int4 g64", run), nbytes


def gemv_cases(report, shapes):
    for n, k in shapes:
        w = torch.randn(n, k) * 0.02
        x = torch.randn(1, k)
        q4 = quant.quantize(w, bits=4, group_size=64)
        q8 = quant.quantize(w, bits=8, group_size=None, symmetric=True)
        lut4 = quant.palettize(w, nbits=4, group_size=256)  # one table per 256 output channels
        ours = {name: cycled_quantized(qt) for name, qt in (("int4", q4), ("int8", q8), ("lut4", lut4))}
        fp32 = cycled(lambda: w.clone(), w.numel() * 4)
        bf16 = cycled(lambda: w.to(torch.bfloat16), w.numel() * 2)
        xb = x.to(torch.bfloat16)
        # torch's packed CPU kernels are fastest (by 2-80x) with bf16 activations: give them that,
        # and compare pocketml with the same activations too.
        w8, s8 = torch_int8_weights(w)
        int8 = cycled(lambda: (w8.clone(), s8.to(torch.bfloat16)), w8.numel())
        w4, sz4 = torch_int4_weights(w)
        int4 = cycled(lambda: (w4.clone(), sz4.to(torch.bfloat16)), w4.numel())
        peers = [
            (Peer("pocketml int4 g64", lambda: quant.matmul(x, next(ours["int4"]))), q4.nbytes),
            (Peer("pocketml int4 g64 (bf16 x)", lambda: quant.matmul(xb, next(ours["int4"]))), q4.nbytes),
            (Peer("pocketml int4 g64, int8 activations (opt-in)",
                  lambda: quant.matmul(x, next(ours["int4"]), act_bits=8)), q4.nbytes),
            (Peer("pocketml int8 per-row", lambda: quant.matmul(x, next(ours["int8"]))), q8.nbytes),
            (Peer("pocketml LUT 4-bit", lambda: quant.matmul(x, next(ours["lut4"]))), lut4.nbytes),
            (Peer("torch fp32 x @ W.T", lambda: x @ next(fp32).T), w.numel() * 4),
            (Peer("torch bf16 x @ W.T", lambda: xb @ next(bf16).T), w.numel() * 2),
            (Peer("torch _weight_int8pack_mm (bf16 x)", lambda: torch._weight_int8pack_mm(xb, *next(int8))),
             w8.numel() + 2 * n),
            (Peer("torch _weight_int4pack_mm_for_cpu g64 (bf16 x)",
                  lambda: torch._weight_int4pack_mm_for_cpu(xb, *unpack_int4(next(int4)))),
             w4.numel() + sz4.numel() * 2),
        ]
        mlx = mlx_peer(w, x.numpy())
        if mlx is not None:
            peers.append(mlx)
        with pocketml.keep_warm():
            rows = report.compare(f"GEMV M=1 {n}x{k}", [peer for peer, _ in peers])
        for row, (_, nbytes) in zip(rows, peers):  # each peer reads its own format's bytes
            row.gbps = nbytes / (row.median_ms / 1e3) / 1e9
            row.pct_bandwidth = 100 * row.gbps / report.machine.read_gbps


def gemm_cases(report, n, k, ms):
    w = torch.randn(n, k) * 0.02
    q4 = quant.quantize(w, bits=4, group_size=64)
    w4, sz4 = torch_int4_weights(w)
    sz4 = sz4.to(torch.bfloat16)
    wb = w.to(torch.bfloat16)
    for m in ms:
        x = torch.randn(m, k)
        xb = x.to(torch.bfloat16)
        report.compare(f"GEMM M={m} {n}x{k}", [
            Peer("pocketml int4 g64", lambda: quant.matmul(x, q4)),
            Peer("pocketml int4 g64, int8 activations (opt-in)", lambda: quant.matmul(x, q4, act_bits=8)),
            Peer("torch fp32 x @ W.T", lambda: x @ w.T),
            Peer("torch bf16 x @ W.T", lambda: xb @ wb.T),
            Peer("torch _weight_int4pack_mm_for_cpu g64 (bf16 x)",
                 lambda: torch._weight_int4pack_mm_for_cpu(xb, w4, 64, sz4)),
        ], flops=2.0 * m * n * k, rounds=7)


def quantizer_cases(report, n, k):
    w = torch.randn(n, k) * 0.02
    small = w[:1024].contiguous()
    # GPTQ on K = 4096 columns (its Cholesky factors grow as K^3), Hessian of 2048 random rows.
    square = w[:1024, :4096].contiguous()
    x = torch.randn(2048, 4096, dtype=torch.float64)
    hessian = x.T @ x / x.shape[0]
    cases = [
        ("RTN int4 g64", w, lambda: quant.quantize(w, bits=4, group_size=64)),
        ("MSE int4 g64", small, lambda: quant.quantize(small, bits=4, group_size=64, method="mse")),
        ("GPTQ int4 g64", square, lambda: gptq_quantize(square, hessian, bits=4, group_size=64)),
        ("k-means LUT 4-bit per tensor", small, lambda: quant.palettize(small, nbits=4)),
        ("k-means LUT 4-bit per 16 rows", small, lambda: quant.palettize(small, nbits=4, group_size=16)),
    ]
    for name, weight, fn in cases:
        rows = report.compare(f"quantize {name} {weight.shape[0]}x{weight.shape[1]}", [Peer("pocketml", fn)],
                              rounds=3, min_seconds=0.0, settle_seconds=0.0)  # weights/s; GB/s means nothing here
        rate = weight.numel() / (rows[0].median_ms / 1e3)
        rows[0].case += f" = {rate / 1e6:.0f} M weights/s"


def run(report, quick: bool) -> None:
    shapes = [(4096, 4096)] if quick else [(4096, 4096), (14336, 4096)]
    gemv_cases(report, shapes)
    gemm_cases(report, 4096, 4096, [128] if quick else [128, 512])
    quantizer_cases(report, 4096, 4096 if quick else 14336)
