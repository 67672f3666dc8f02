"""QuantConfig: how quantize_model and QuantizedLinear compress a Linear weight."""

from __future__ import annotations

import json
import numbers
from dataclasses import asdict, dataclass, fields

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
        for name in ("bits", "group_size", "lut_group_size", "seed", "act_bits"):  # np.int64(4) as 4; 4.0 refused
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, name, int(value))
            elif value is not None and not isinstance(value, bool):
                raise TypeError(f"argument '{name}': expected an int, got {type(value).__name__} {value!r}")
        if self.method not in METHODS:
            raise ValueError(f"argument 'method': expected one of {', '.join(METHODS)}, got {self.method!r}")
        allowed = LUT_BITS if self.method == "kmeans" else AFFINE_BITS
        if isinstance(self.bits, bool) or self.bits not in allowed:
            raise ValueError(f"argument 'bits': expected one of {', '.join(map(str, allowed))} for method "
                             f"{self.method!r}, got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or self.group_size not in GROUP_SIZES):
            raise ValueError(f"argument 'group_size': expected one of 32, 64, 128 or None, got {self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"argument 'symmetric': expected a bool, got {type(self.symmetric).__name__}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"argument 'scale_dtype': expected one of {', '.join(SCALE_DTYPES)}, got {self.scale_dtype!r}")
        if self.lut_group_size is not None and (isinstance(self.lut_group_size, bool) or
                                                not isinstance(self.lut_group_size, int) or self.lut_group_size <= 0):
            raise ValueError(f"argument 'lut_group_size': expected a positive int or None, got {self.lut_group_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"argument 'seed': expected a non-negative int, got {self.seed!r}")
        if self.act_bits is not None and (isinstance(self.act_bits, bool) or self.act_bits != 8):
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
