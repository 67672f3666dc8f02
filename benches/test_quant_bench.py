"""pytest-benchmark view of the quantized matmul and quantizers (`make bench`); compare.py holds the peer table.
Weights cycle through copies beyond the last-level cache, for pocketml and torch alike, as in compare.py."""

import pytest
import torch
from suites.quant import cycled, cycled_quantized

from pocketml import quant

N, K = 4096, 4096


@pytest.fixture(scope="module")
def weight():
    torch.manual_seed(0)
    return torch.randn(N, K) * 0.02


@pytest.mark.parametrize("m", [1, 8, 128])
@pytest.mark.parametrize("fmt", ["int4 g64", "int8 per-row", "lut4"])
def test_pocketml_quantized_matmul(benchmark, weight, fmt, m):
    qt = {"int4 g64": lambda: quant.quantize(weight, bits=4, group_size=64),
          "int8 per-row": lambda: quant.quantize(weight, bits=8, group_size=None, symmetric=True),
          "lut4": lambda: quant.palettize(weight, nbits=4, group_size=256)}[fmt]()
    x = torch.randn(m, K)
    weights = cycled_quantized(qt)
    benchmark(lambda: quant.matmul(x, next(weights)))


@pytest.mark.parametrize("m", [1, 8, 128])
def test_torch_fp32_matmul(benchmark, weight, m):
    x = torch.randn(m, K)
    weights = cycled(lambda: weight.clone(), weight.numel() * 4)
    benchmark(lambda: x @ next(weights).T)


def test_pocketml_quantize_rtn(benchmark, weight):
    benchmark(quant.quantize, weight, bits=4, group_size=64)
