"""dtype conversion: pocketml.convert against torch's .to() on the same tensors.

Inputs cycle through several tensors whose total exceeds the last-level cache,
so both implementations stream from DRAM.
"""

import itertools

import torch

import pocketml
from harness import Peer

PAIRS = [("fp32", "fp16"), ("fp32", "bf16"), ("fp16", "fp32"), ("bf16", "fp32")]
TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run(report, quick: bool) -> None:
    elements = 1 << (22 if quick else 24)
    copies = 4 if quick else 8  # 8 x 64 MiB of fp32 inputs: far above a 32 MiB L3
    for src, dst in PAIRS:
        inputs = [torch.randn(elements).to(TORCH[src]) for _ in range(copies)]
        ours, theirs = itertools.cycle(inputs), itertools.cycle(inputs)
        moved = elements * (inputs[0].element_size() + torch.empty(0, dtype=TORCH[dst]).element_size())
        report.compare(
            f"convert {src}->{dst} n={elements}",
            [Peer("pocketml", lambda: pocketml.convert(next(ours), dst)),
             Peer("torch .to()", lambda: next(theirs).to(TORCH[dst]))],
            bytes_moved=moved)
