"""int8kit: native int8 GEMM and conv kernels for PyTorch, with exact fallbacks."""

from . import ops
from .ops import cpu_info

__version__ = "0.1.0"

__all__ = ["ops", "cpu_info", "__version__"]
