"""pytest-benchmark view of the attention kernels (`make bench`); compare.py holds the peer table."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from suites.quant import copies_for

from pocketml import attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_pocketml_prefill(benchmark, dtype, causal):
    q, k, v = (torch.randn(1, 8, 1024, 128).to(dtype) for _ in range(3))
    benchmark(attention.scaled_dot_product_attention, q, k, v, is_causal=causal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_torch_prefill(benchmark, dtype, causal):
    q, k, v = (torch.randn(1, 8, 1024, 128).to(dtype) for _ in range(3))
    benchmark(F.scaled_dot_product_attention, q, k, v, is_causal=causal)


@pytest.mark.parametrize("cache_dtype", ["fp16", "int8"])
def test_pocketml_decode(benchmark, cache_dtype):
    # Caches cycled beyond the last-level cache: a decode step reads its KV from DRAM.
    per_cache = 2 * 8 * 4096 * 128 * (2 if cache_dtype == "fp16" else 1)
    caches = []
    for _ in range(copies_for(per_cache)):
        cache = attention.KVCache(1, 8, 4096, 128, dtype=cache_dtype)
        cache.append(torch.randn(1, 8, 4096, 128), torch.randn(1, 8, 4096, 128))
        caches.append(cache)
    q = torch.randn(1, 32, 1, 128)
    cycle = itertools.cycle(caches)
    benchmark(lambda: attention.decode(q, next(cycle)))
