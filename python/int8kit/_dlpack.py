"""Tensors to and from the native calls as DLPack capsules (csrc/python/dlpack_io.h says
why): torch._C's functions, since torch.utils.dlpack's wrappers add Python steps to every
call."""

import torch
import torch.utils.dlpack

to_dlpack = getattr(torch._C, "_to_dlpack", None) or torch.utils.dlpack.to_dlpack
from_dlpack = getattr(torch._C, "_from_dlpack", None) or torch.utils.dlpack.from_dlpack
