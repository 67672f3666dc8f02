"""Threads, instruction-set selection and build information."""

from __future__ import annotations

import contextlib

from pocketml._native import core


def info() -> dict:
    """Version, build type, compiler, compiled and active ISA variants, threads, backends."""
    return dict(core.build_info())


def set_num_threads(num_threads: int) -> None:
    """Set the size of the native thread pool shared by every kernel (default: usable cores)."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, int):
        raise TypeError(f"argument 'num_threads': expected an int, got {type(num_threads).__name__}")
    core.set_num_threads(num_threads)


def get_num_threads() -> int:
    return core.get_num_threads()


@contextlib.contextmanager
def keep_warm():
    """Keep the native pool's threads spinning between calls while inside.

    Outside (the default), pool threads sleep as soon as a kernel ends, so they never
    take the cores from torch's own threads between calls; waking them costs tens of
    microseconds per call, which matters for small kernels called back to back from
    Python (a decode loop of quantized matmuls). Inside, they spin for up to 100 us
    after each kernel before sleeping, as the native decoder's do (and as torch's
    OpenMP threads do by default). Scopes nest; results are the same either way.
    """
    scope = core.KeepWarm()
    try:
        yield
    finally:
        del scope


def active_isa() -> str:
    """The kernel variant that runs: 'scalar', 'avx2', 'avx512' or 'neon'."""
    return core.active_isa()


def supported_isas() -> list[str]:
    """Variants compiled in that this CPU can run, lowest first."""
    return list(core.supported_isas())


def set_isa(name: str) -> None:
    """Force a variant (as the POCKETML_ISA environment variable does at start-up)."""
    core.set_active_isa(name)


@contextlib.contextmanager
def use_isa(name: str):
    """Run a block with a given kernel variant, restoring the previous one after."""
    previous = active_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)
