"""QuantConfig: how quantize_model and QuantizedLinear compress a Linear weight."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from pocketml._arguments import bool_argument, integer_argument
from pocketml.quant.tensor import AFFINE_BITS, GROUP_SIZES, LUT_BITS

METHODS = ("rtn", "mse", "gptq", "kmeans")
SCALE_DTYPES = ("fp16", "bf16", "fp32")


@dataclass(frozen=True)
class QuantConfig:
    """Validated on construction; to_json()/from_json() round-trip exactly.

    method "rtn", "mse" or "gptq": group-wise affine (bits 2, 3, 4, 5, 6, 8; group_size
    32, 64, 128 or None = one group per output row); "gptq" also chooses the codes to
    keep each layer's output error small and needs quantize_model's calibration data
    (pocketml.quant.gptq). method "kmeans": LUT palettization (bits
    1, 2, 3, 4, 6, 8; lut_group_size output channels per table, None = one per tensor).
    act_bits: None keeps activations in floating point (the exact path); 8 opts in to
    int8 activations (rounded per row, VNNI dot products; affine weights only), which
    changes results slightly and is never chosen implicitly.
    """

    bits: int = 4
    group_size: int | None = 64
    symmetric: bool = False
    method: str = "rtn"
    scale_dtype: str = "fp16"
    lut_group_size: int | None = None
    seed: int = 0
    act_bits: int | None = None

    def __post_init__(self):
        limits = {"bits": (None, None), "group_size": (None, None), "lut_group_size": (1, None), "seed": (0, 2**64),
                  "act_bits": (None, None)}
        for name, (low, high) in limits.items():  # np.int64(4) as 4; 4.0 refused
            if getattr(self, name) is not None:
                object.__setattr__(self, name, integer_argument(getattr(self, name), name, low, high))
        object.__setattr__(self, "symmetric", bool_argument(self.symmetric, "symmetric"))
        if self.method not in METHODS:
            raise ValueError(f"argument 'method': expected one of {', '.join(METHODS)}, got {self.method!r}")
        allowed = LUT_BITS if self.method == "kmeans" else AFFINE_BITS
        if self.bits not in allowed:
            raise ValueError(f"argument 'bits': expected one of {', '.join(map(str, allowed))} for method "
                             f"{self.method!r}, got {self.bits!r}")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ValueError(f"argument 'group_size': expected one of 32, 64, 128 or None, got {self.group_size!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"argument 'scale_dtype': expected one of {', '.join(SCALE_DTYPES)}, got {self.scale_dtype!r}")
        if self.act_bits is not None and self.act_bits != 8:
            raise ValueError(f"argument 'act_bits': expected None or 8, got {self.act_bits!r}")
        if self.act_bits == 8 and self.method == "kmeans":
            raise ValueError("argument 'act_bits': expected None for method 'kmeans' (int8 activations need affine "
                             "weights), got 8")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "QuantConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"argument 'text': expected QuantConfig fields {sorted(known)}, got unknown {unknown}")
        return cls(**data)
