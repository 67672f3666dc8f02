"""Attention: pocketml's fused kernels against torch's scaled_dot_product_attention
(CPU flash kernel) on the same tensors and threads. MLX's CPU backend is a peer
on the L = 512 shapes when the `mlx` package is importable (the dev extra installs
`mlx[cpu]` on Linux x86-64; see MLX_MAX_LENGTH).

GFLOP/s count 4 * B * H * Lq * Lk * D for the forward (two GEMMs), halved when
causal, and 2.5x that for the backward (five GEMMs); % peak is against the
measured FMA rate. Prefill runs in fp32, bf16 and fp16 (forward only for fp16):
on ARM CPUs with FEAT_FHM the fp16 rows take the FMLAL kernels, elsewhere fp16
is widened to fp32. Decode cycles through several caches whose total exceeds the
last-level cache, so the KV bytes come from DRAM; its GB/s counts the K and V
bytes (and int8 scales) read once.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

import pocketml
from harness import Peer
from pocketml import attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mlx_peer(q, k, v, causal):
    try:
        import mlx.core as mx
    except ImportError:
        return []
    dtype = {torch.float32: mx.float32, torch.bfloat16: mx.bfloat16, torch.float16: mx.float16}[q.dtype]
    qm, km, vm = (mx.array(x.float().numpy()).astype(dtype) for x in (q, k, v))
    mask = "causal" if causal else None
    scale = q.shape[-1] ** -0.5
    return [Peer("mlx cpu", lambda: mx.eval(mx.fast.scaled_dot_product_attention(qm, km, vm, scale=scale, mask=mask)))]


# MLX's CPU attention (mlx 0.32 on Linux x86-64) ran ~100 ms at H=8 L=512 D=64 and
# ~2.9 s at H=32 L=1024 D=128 here, 10-100x behind torch: it joins only the
# shortest shapes so that the suite still finishes.
MLX_MAX_LENGTH = 512


def _prefill_shapes(quick):
    if quick:
        return [(8, 512, 64), (8, 1024, 128)]
    return [(h, length, d) for h in (8, 32) for length in (512, 1024, 4096) for d in (64, 128)]


def run(report, quick: bool) -> None:
    run_prefill(report, quick)
    run_decode(report, quick)


def run_prefill(report, quick: bool) -> None:
    for (heads, length, dim), causal, dtype in itertools.product(_prefill_shapes(quick), (False, True), DTYPES):
        rounds = 5 if quick or length >= 4096 else 9  # a 4096-long case takes seconds per call
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, heads, length, dim, generator=g).to(DTYPES[dtype]) for _ in range(3))
        flops = 4 * heads * length * length * dim / (2 if causal else 1)
        name = f"fwd H={heads} L={length} D={dim} {'causal' if causal else 'full'} {dtype}"
        report.compare(name, [
            Peer("pocketml", lambda: attention.scaled_dot_product_attention(q, k, v, is_causal=causal)),
            Peer("torch sdpa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)),
        ] + (_mlx_peer(q, k, v, causal) if length <= MLX_MAX_LENGTH else []), flops=flops, rounds=rounds)

        # torch's CPU fp16 backward runs 4-8x slower than its fp32 one (15-25x
        # behind pocketml, seen here at L=512/1024): too slow a peer to time at
        # these shapes, and the fp16 backward shares the forward's FMLAL kernel.
        if length > (1024 if quick else 4096) or dtype == "fp16":
            continue
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        grad = torch.randn(q.shape, generator=g).to(q.dtype)
        ours_out = attention.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
        torch_out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
        report.compare(name.replace("fwd", "bwd"), [
            Peer("pocketml", lambda: torch.autograd.grad(ours_out, (qg, kg, vg), grad, retain_graph=True)),
            Peer("torch sdpa", lambda: torch.autograd.grad(torch_out, (qg, kg, vg), grad, retain_graph=True)),
        ], flops=2.5 * flops, rounds=rounds)


def run_decode(report, quick: bool) -> None:
    """The decode cases alone (benches/attention_decode.py runs them in ~1.5 minutes)."""
    rounds = 5 if quick else 9
    decode_lengths = (4096,) if quick else (4096, 32768)
    for length, (hq, hkv), cache_dtype in itertools.product(decode_lengths, ((32, 32), (32, 8)), ("fp16", "int8")):
        dim = 128
        per_cache = 2 * hkv * length * dim * (2 if cache_dtype == "fp16" else 1)
        copies = max(2, (256 << 20) // per_cache + 1)  # >= 256 MiB in all: beyond the last-level cache
        caches = []
        for _ in range(copies):
            cache = attention.KVCache(1, hkv, length, dim, dtype=cache_dtype)
            cache.append(torch.randn(1, hkv, length, dim).half(), torch.randn(1, hkv, length, dim).half())
            caches.append(cache)
        q = torch.randn(1, hq, 1, dim).half()
        ours, theirs = itertools.cycle(caches), itertools.cycle(caches)

        def torch_decode():
            c = next(theirs)
            if cache_dtype == "int8":  # torch has no int8 KV attention: dequantize, then SDPA
                k = (c.k.float() * c.k_scale[..., None]).half()
                v = (c.v.float() * c.v_scale[..., None]).half()
            else:
                k, v = c.k, c.v
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=hq != hkv)

        moved = per_cache + (2 * hkv * length * 4 if cache_dtype == "int8" else 0)
        with pocketml.keep_warm():  # decode steps run back to back (see suites/quant.py)
            report.compare(f"decode H={hq}/{hkv} L={length} D={dim} {cache_dtype} KV", [
                Peer("pocketml", lambda: attention.decode(q, next(ours))),
                Peer("torch sdpa", torch_decode),
            ], bytes_moved=moved, rounds=rounds)
        del caches
