"""Checks of scalar arguments, shared by every Python entry point: one message
shape (argument, expected, got) before anything reaches the native bindings,
which would answer with an unlabelled overload error that prints every argument.
No pocketml imports, so that any module (runtime included) can use them."""

from __future__ import annotations

import numbers

import numpy as np


def integer_argument(value, arg: str, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int (NumPy integers too; bool and float refused) in [low, high), else a
    TypeError / ValueError naming `arg`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"argument '{arg}': expected an int, got {type(value).__name__} {repr(value)[:60]}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value >= high):
        expected = f">= {low}" if high is None else f"< {high}" if low is None else f"in [{low}, {high})"
        raise ValueError(f"argument '{arg}': expected an integer {expected}, got {value}")
    return value


def bool_argument(value, arg: str) -> bool:
    """`value` as a bool (NumPy's bool too), else a TypeError naming `arg`."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"argument '{arg}': expected a bool, got {type(value).__name__} {repr(value)[:60]}")
    return bool(value)


def real_argument(value, arg: str) -> float:
    """`value` as a float that stays finite in fp32, where the kernels use it (ints and
    NumPy numbers too; bool and strings refused), else a TypeError / ValueError naming `arg`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"argument '{arg}': expected a number, got {type(value).__name__} {repr(value)[:60]}")
    number = float(value)
    if not np.isfinite(np.float32(number)):
        raise ValueError(f"argument '{arg}': expected a finite number within fp32's range, got {value!r}")
    return number
