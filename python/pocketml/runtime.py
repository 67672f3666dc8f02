"""Threads, instruction-set selection and build information."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

from pocketml._arguments import bool_argument, integer_argument
from pocketml._native import core

# Set once pocketml has first met torch loaded (or use_torch_threads was called).
_torch_threads_decided = False


def info() -> dict:
    """Version, build type, compiler, compiled and active ISA variants, threads, backends."""
    return dict(core.build_info())


def set_num_threads(num_threads: int) -> None:
    """Set the size of the native thread pool shared by every kernel (default: usable cores)."""
    core.set_num_threads(integer_argument(num_threads, "num_threads", 1, core.max_threads + 1))


def get_num_threads() -> int:
    return core.get_num_threads()


def _torch_core_libraries() -> list[str]:
    """Where torch's libtorch_cpu may be: the OpenMP entry points are looked up
    through it (its dependencies included), so they are those of the runtime torch
    itself links, whatever other runtimes other packages loaded. The bare names
    find it where a distribution installs it outside torch's folder."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    names = ["libtorch_cpu.so", "libtorch_cpu.dylib"]
    lib = Path(torch.__file__).parent / "lib" if getattr(torch, "__file__", None) else None
    return [str(lib / name) for name in names if lib is not None and (lib / name).is_file()] + names


def use_torch_threads(enabled: bool = True) -> bool:
    """Run pocketml's parallel kernels on the threads of torch's OpenMP runtime.

    On by default from the first array pocketml receives once torch is imported
    (unless the POCKETML_TORCH_THREADS environment variable is 0). torch's OpenMP threads spin
    for milliseconds after each torch operator; a pocketml kernel called in between
    would share the cores with them, so its own threads would barely run (a MiniLM
    whose Linear layers are pocketml's spent 2x as long in them). Running the
    kernel's work on those threads avoids that. `set_num_threads` still sets how
    many threads a kernel uses; results are identical either way.

    Returns whether kernels now run on torch's threads: False where torch runs no
    OpenMP runtime, in a process forked from one that had its threads, or when
    `enabled` is False (pocketml's own pool).
    """
    enabled = bool_argument(enabled, "enabled")
    global _torch_threads_decided
    _torch_threads_decided = True
    if enabled and not _in_forked_worker():
        if any(core.use_openmp_threads(library) for library in _torch_core_libraries()):
            return True
    core.use_own_threads()
    return False


def _in_forked_worker() -> bool:
    """A multiprocessing worker started by fork may hold a copy of the parent's OpenMP
    team without its threads (the native side also refuses in any child forked
    after pocketml loaded; a bare os.fork() before that cannot be told apart)."""
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True)
    return multiprocessing.parent_process() is not None and method in (None, "fork")


def on_torch_threads() -> bool:
    """Whether pocketml's kernels run on torch's OpenMP threads (see use_torch_threads)."""
    return core.on_openmp_threads()


def _met_torch() -> None:
    """The default choice, made once (_arrays.is_torch_tensor calls it while undecided;
    use_torch_threads marks it decided before anything that can fail)."""
    try:
        use_torch_threads(os.environ.get("POCKETML_TORCH_THREADS", "1") != "0")
    except Exception:  # never fail the call that happened to come first: the own pool stays
        pass


@contextlib.contextmanager
def keep_warm():
    """Keep the native pool's threads spinning between calls while inside.

    Outside (the default), pool threads sleep as soon as a kernel ends, so they never
    take the cores from torch's own threads between calls; waking them costs tens of
    microseconds per call, which matters for small kernels called back to back from
    Python (a decode loop of quantized matmuls). Inside, they spin for up to 100 us
    after each kernel before sleeping, as the native decoder's do (and as torch's
    OpenMP threads do by default). Scopes nest; results are the same either way.
    Kernels running on torch's OpenMP threads (use_torch_threads) follow torch's
    runtime's own wait policy instead.
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
    if not isinstance(name, str):
        raise TypeError(f"argument 'isa': expected a variant name such as 'avx512', got {type(name).__name__} {name!r}")
    core.set_active_isa(name)


_isa_lock = threading.Lock()
_isa_scopes = []  # open use_isa blocks, oldest first: [token, the variant it replaced]


@contextlib.contextmanager
def use_isa(name: str):
    """Run a block with a given kernel variant, restoring the previous one after.
    The variant is process-wide. Blocks of several threads may overlap: while they
    do, the latest one's variant runs, and when the last ends the one from before
    the first is back (restoring each block's own predecessor, out of order, used
    to leave the process on a variant nobody asked for)."""
    token = object()
    with _isa_lock:
        previous = active_isa()
        set_isa(name)
        _isa_scopes.append([token, previous])
    try:
        yield
    finally:
        with _isa_lock:
            index = next(i for i, scope in enumerate(_isa_scopes) if scope[0] is token)
            _, replaced = _isa_scopes.pop(index)
            if index == len(_isa_scopes):
                set_isa(replaced)
            else:  # a later block is still open: it now hands back what this one replaced
                _isa_scopes[index][1] = replaced
