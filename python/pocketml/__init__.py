"""pocketml: fast native kernels to take PyTorch generative models to Apple devices."""

from pocketml import attention
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
    "attention",
    "convert",
    "get_num_threads",
    "info",
    "set_isa",
    "set_num_threads",
    "supported_isas",
    "use_isa",
]
