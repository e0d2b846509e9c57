"""int8kit: native int8 GEMM and conv kernels for PyTorch, with exact fallbacks."""

from . import ops
from .ops import cpu_info
from . import _custom_ops  # registers torch.ops.int8kit.* (needed by torch.load of models)
from . import nn
from .qparams import QParams, choose_qparams, dequantize, quantize
from .dynamic import ConversionReport, quantize_dynamic, register_dynamic_module
from . import observers
from .qconfig import QConfig, QuantConfig
from .fusion import fuse_modules
from .static import calibrate, convert, prepare, quantize_static
from .evaluate import ComparisonReport, compare

__version__ = "0.1.0"

__all__ = ["ops", "cpu_info", "nn", "QParams", "choose_qparams", "quantize", "dequantize",
           "quantize_dynamic", "register_dynamic_module", "ConversionReport", "__version__",
           "observers", "QConfig", "QuantConfig", "fuse_modules", "prepare", "calibrate",
           "convert", "quantize_static", "compare", "ComparisonReport"]
