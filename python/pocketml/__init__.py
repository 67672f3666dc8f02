"""pocketml: fast native kernels to take PyTorch generative models to Apple devices."""

from pocketml import quant
from pocketml.conversion import convert
from pocketml.runtime import (
    active_isa,
    get_num_threads,
    info,
    keep_warm,
    set_isa,
    set_num_threads,
    supported_isas,
    use_isa,
    use_torch_threads,
)

__version__ = info()["version"]

__all__ = [
    "active_isa",
    "attention",
    "convert",
    "data",
    "decoder",
    "export",
    "get_num_threads",
    "info",
    "keep_warm",
    "quant",
    "set_isa",
    "set_num_threads",
    "supported_isas",
    "use_isa",
    "use_torch_threads",
]


def __getattr__(name):
    # These areas reach for torch (tensors, DataLoader, Core ML tracing), and torch is
    # optional: import them on first use so `import pocketml` stays light.
    if name in ("attention", "data", "decoder", "export", "models"):
        import importlib

        return importlib.import_module(f"pocketml.{name}")
    raise AttributeError(f"module 'pocketml' has no attribute {name!r}")
