"""Valid calls with one argument made bad at random: every call either works or raises a
TypeError/ValueError whose message names that argument; none crashes.

2000 calls per seed by default (about a second); INT8KIT_FUZZ_CALLS=100000 runs a long fuzz.
"""

from __future__ import annotations

import os
import random
import re
import warnings

import numpy as np
import pytest
import torch

from int8kit import conv_ops as co
from int8kit import ops
from int8kit.nn import QuantLinear
from int8kit.nn.conv import QuantConv2d
from int8kit.nn.static import StaticQuantConv2d

CALLS = int(os.environ.get("INT8KIT_FUZZ_CALLS", "2000"))

# Values that stand in for any argument: wrong types, out-of-range and odd numbers, arrays
# and tensors of the wrong size.
ODD_VALUES = [
    None, True, "1", 0, -1, 256, 0.0, -0.5, 1e-45, 1e39, float("nan"), float("inf"), 2**40,
    3.5, np.float32(0.1), np.array([1, 2]), np.array([]), np.zeros((2, 2)), [1, 2], (3,),
    torch.tensor([0.1, 0.2]), torch.tensor(0.1), torch.zeros(3, dtype=torch.int64),
]


def _odd_tensor(rng: random.Random, v):
    """An array or tensor argument changed in one way: dtype, rank, layout, size, device,
    a NaN, autograd."""
    t = torch.as_tensor(v)
    change = rng.choice(["dtype", "rank", "transpose", "stride", "empty", "meta", "nan",
                         "grad", "longer"])
    if change == "dtype":
        t = t.to(rng.choice([torch.float32, torch.float64, torch.int8, torch.uint8,
                             torch.int32, torch.bool]))
    elif change == "rank":
        t = t.reshape(-1) if t.dim() > 1 else t.reshape(1, -1)
    elif change == "transpose" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif change == "stride" and t.dim() >= 1:
        t = t[..., ::2]
    elif change == "empty" and t.dim() >= 1:
        t = t[:0]
    elif change == "meta":
        t = t.to("meta")
    elif change == "nan" and t.is_floating_point() and t.numel():
        t = t.clone()
        t.view(-1)[0] = float("nan")
    elif change == "grad" and t.is_floating_point():
        t = t.clone().requires_grad_()
    elif change == "longer" and t.dim() >= 1:
        t = torch.cat([t, t], dim=-1)
    if isinstance(v, np.ndarray) and t.device.type == "cpu" and not t.requires_grad:
        return t.numpy()
    return t


def _spoil(rng: random.Random, args: dict) -> tuple[dict, str]:
    name = rng.choice(list(args))
    v = args[name]
    if isinstance(v, (np.ndarray, torch.Tensor)) and rng.random() < 0.6:
        v = _odd_tensor(rng, v)
    else:
        v = rng.choice(ODD_VALUES)
    return {**args, name: v}, name


def _one_output(rng, args: dict, s32, f32, u8):
    """The int32, float or uint8 variant of a GEMM or conv, on args ordered as their
    parameters: input, its zero point and scale, packed, w_scale, out_scale,
    out_zero_point, bias."""
    x, zp, scale, packed, w_scale, _, _, bias = args.values()
    return rng.choice([lambda: s32(x, zp, packed),
                       lambda: f32(x, zp, scale, packed, w_scale, bias),
                       lambda: u8(**args)])


def _gemm_call(rng, nrng):
    m, k, n = rng.choice([1, 2, 9]), rng.choice([1, 4, 7, 64]), rng.choice([1, 16, 50])
    args = dict(a=nrng.integers(0, 256, (m, k), dtype=np.uint8), a_zero_point=3, a_scale=0.01,
                packed=ops.pack_weight(nrng.integers(-128, 128, (n, k), dtype=np.int8)),
                w_scale=np.full(n, 0.02, np.float32), out_scale=0.05, out_zero_point=128,
                bias=np.zeros(n, np.float32))
    if rng.random() < 0.5:  # torch activations take ops' fast path when the rest is plain
        args["a"] = torch.from_numpy(args["a"])
    args, name = _spoil(rng, args)
    return name, _one_output(rng, args, ops.gemm_s32, ops.gemm_f32, ops.gemm_u8)


def _conv_call(rng, nrng):
    n, c, h, oc, k = (rng.choice([1, 2]), rng.choice([1, 4, 8]), rng.choice([1, 5, 9]),
                      rng.choice([4, 8]), rng.choice([1, 3]))
    groups = 1
    if rng.random() < 0.3:  # depthwise
        groups = oc = c
    w = nrng.integers(-128, 128, (oc, c // groups, k, k), dtype=np.int8)
    args = dict(x=nrng.integers(0, 256, (n, h, h, c), dtype=np.uint8), x_zero_point=5,
                x_scale=0.01, packed=co.pack_conv_weight(w, 1, k // 2, 1, groups),
                w_scale=np.full(oc, 0.02, np.float32), out_scale=0.05, out_zero_point=100,
                bias=np.zeros(oc, np.float32))
    args, name = _spoil(rng, args)
    return name, _one_output(rng, args, co.conv2d_s32, co.conv2d_f32, co.conv2d_u8)


_MODULES = {}  # built once: from_float is not what this fuzzes


def _module_call(rng, nrng):
    if not _MODULES:
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(4, 6, 3, 1, 1)
        _MODULES["linear"] = QuantLinear.from_float(torch.nn.Linear(8, 4))
        _MODULES["conv"] = QuantConv2d.from_float(conv)
        _MODULES["static"] = StaticQuantConv2d.from_float(conv, torch.tensor([0.02]),
                                                          torch.tensor([7]))
    kind = rng.choice(["linear", "conv", "static"])
    m = _MODULES[kind]
    if kind == "linear":
        args, name = _spoil(rng, dict(x=torch.randn(3, 8)))
        return name, lambda: m(args["x"])
    if kind == "conv":
        args, name = _spoil(rng, dict(x=torch.randn(2, 4, 5, 5)))
        return name, lambda: m(args["x"])
    args, name = _spoil(rng, dict(q=torch.randint(0, 256, (2, 4, 5, 5), dtype=torch.uint8),
                                  out_scale=0.1, out_zero_point=3))
    return name, lambda: m.forward_quantized(
        args["q"], out=(args["out_scale"], args["out_zero_point"]))


def _names(message: str, name: str) -> bool:
    """The message is about `name`: it starts with it (needed for one-letter names, which
    other words hold) or, for longer names, holds it as a word."""
    if re.match(rf"{name}\b", message):
        return True
    return len(name) > 1 and re.search(rf"\b{name}\b", message) is not None


@pytest.mark.parametrize("seed", [1, 2])
def test_one_bad_argument_is_named_or_harmless(seed):
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    worked = 0
    for i in range(CALLS):
        name, call = rng.choice([_gemm_call, _conv_call, _module_call])(rng, nrng)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call()
            worked += 1
        except (TypeError, ValueError) as e:
            assert _names(str(e), name), f"call {i}: {name} spoiled, but the error says: {e!r}"
    assert 0 < worked < CALLS  # both kinds of call were made
