"""What the Python layer needs to know about NumPy arrays and torch tensors.

torch is optional: it is only imported when the caller already passed a torch object.
"""

from __future__ import annotations

import sys

import numpy as np

from pocketml import runtime

FLOAT_DTYPES = ("fp32", "fp16", "bf16")
ALL_DTYPES = ("fp32", "fp16", "bf16", "int8", "uint8", "int32", "int64")

_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "f32": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "f16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "int8": "int8", "i8": "int8",
    "uint8": "uint8", "u8": "uint8",
    "int32": "int32", "i32": "int32",
    "int64": "int64", "i64": "int64",
}
_NUMPY = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8, "uint8": np.uint8,
          "int32": np.int32, "int64": np.int64}


def _torch():
    return sys.modules.get("torch")


def is_torch_tensor(x) -> bool:
    torch = _torch()
    if torch is None:
        return False
    if not runtime._torch_threads_decided:  # torch is loaded: its OpenMP threads may spin
        runtime._met_torch()
    return isinstance(x, torch.Tensor)


def describe_type(x) -> str:
    return type(x).__module__ + "." + type(x).__qualname__ if not isinstance(x, (list, tuple)) else type(x).__name__


def canonical_dtype(dtype, arg: str = "dtype", choices: tuple = ALL_DTYPES) -> str:
    """'fp32', 'fp16', 'bf16', ... from a name, a NumPy dtype or a torch dtype; one of `choices`."""
    torch = _torch()
    if torch is not None and isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = dtype.lower()
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
    if _ALIASES.get(name) not in choices:
        raise TypeError(f"argument '{arg}': expected one of {', '.join(choices)}, got {dtype!r}")
    return _ALIASES[name]


def dtype_of(x) -> str:
    return canonical_dtype(x.dtype, "x")


_TORCH_DTYPES: dict = {}  # filled at the first call: torch is imported only when used


def torch_dtype(name: str):
    if not _TORCH_DTYPES:
        import torch

        _TORCH_DTYPES.update({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                              "int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64})
    return _TORCH_DTYPES[name]


def empty_like(x, shape, dtype: str, arg: str = "x"):
    """An uninitialised array of the same kind as `x` (NumPy or torch, on the CPU)."""
    if is_torch_tensor(x):
        return _torch().empty(tuple(shape), dtype=torch_dtype(dtype), device="cpu")  # not torch's default device
    if isinstance(x, np.ndarray):
        if dtype == "bf16":
            raise TypeError(f"argument '{arg}': NumPy has no bfloat16 dtype; pass a torch tensor to get bf16 results")
        return np.empty(tuple(shape), dtype=_NUMPY[dtype])
    raise TypeError(f"argument '{arg}': expected a NumPy array or torch tensor, got {describe_type(x)}")
