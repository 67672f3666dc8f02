"""pytest-benchmark view of the conversion kernel (`make bench`); compare.py holds the peer table."""

import pytest
import torch

import pocketml


@pytest.mark.parametrize("dst", ["fp16", "bf16"])
def test_pocketml_convert(benchmark, dst):
    x = torch.randn(1 << 22)
    benchmark(pocketml.convert, x, dst)


@pytest.mark.parametrize("dst", [torch.float16, torch.bfloat16])
def test_torch_to(benchmark, dst):
    x = torch.randn(1 << 22)
    benchmark(x.to, dst)
