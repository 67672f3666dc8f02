"""pocketml: fast native kernels to take PyTorch generative models to Apple devices."""

from pocketml import quant
from pocketml import data
from pocketml.conversion import convert
from pocketml.runtime import (
    active_isa,
    get_num_threads,
    info,
    set_isa,
    set_num_threads,
    supported_isas,
    use_isa,
)

__version__ = info()["version"]

__all__ = [
    "active_isa",
    "convert",
    "data",
    "get_num_threads",
    "info",
    "quant",
    "set_isa",
    "set_num_threads",
    "supported_isas",
    "use_isa",
]


def __getattr__(name):
    # pocketml.attention works on torch tensors, and torch is optional: import it on first use.
    if name == "attention":
        import importlib

        return importlib.import_module("pocketml.attention")
    raise AttributeError(f"module 'pocketml' has no attribute {name!r}")
