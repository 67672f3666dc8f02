"""The bundles the Swift harness validates in `make test`: one per operation the
C ABI exposes, with expected outputs from an independent implementation (torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketml.export.golden import golden


def _convert_bundle(path: Path, overwrite: bool) -> Path:
    import torch

    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(1000).astype(np.float32) * 100,
        np.array([0.0, -0.0, 65504.0, 65520.0, 1e-8, 2.0 ** -24, np.inf, -np.inf, 3e38], np.float32),
    ])
    x = torch.from_numpy(values)
    half, bf16 = x.to(torch.float16), x.to(torch.bfloat16)
    exact = {"max_abs": 0.0, "max_rel": 0.0}
    checks = [
        {"name": "fp32->fp16", "op": "convert", "inputs": ["x"], "attrs": {"dtype": "fp16"}, "expected": "x_fp16",
         "tolerance": exact},
        {"name": "fp32->bf16", "op": "convert", "inputs": ["x"], "attrs": {"dtype": "bf16"}, "expected": "x_bf16",
         "tolerance": exact},
        {"name": "fp16->fp32", "op": "convert", "inputs": ["x_fp16"], "attrs": {"dtype": "fp32"},
         "expected": "x_fp16_widened", "tolerance": exact},
    ]
    return golden(path, "convert", {"x": x, "x_fp16": half, "x_bf16": bf16, "x_fp16_widened": half.float()},
                  checks, overwrite=overwrite)


BUILDERS = {"convert": _convert_bundle}


def write_standard_bundles(out_dir, overwrite: bool = True) -> list[Path]:
    out_dir = Path(out_dir)
    return [build(out_dir / name, overwrite) for name, build in BUILDERS.items()]
