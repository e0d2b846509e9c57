"""conv2d_dynamic_f32 (QuantConv2d's one-call path: range scan, quantize fused with the
NCHW -> NHWC change, conv, output layout) equals the composition of its oracle parts bit
for bit, on every path, layout, and thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from int8kit import _C, ops
from int8kit import conv_ops as co

from test_conv_kernels import SHAPES


def oracle(x_nchw, w, ws, bias, relu, stride, padding, dilation, groups):
    """Scalar quantize (torch.ao MinMax parameters) + the scalar conv oracle, NHWC out."""
    before = ops.get_isa()
    ops.set_isa("scalar")
    try:
        flat = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)).reshape(1, -1)
        q = np.empty(flat.shape, np.uint8)
        s, z = np.empty(1, np.float32), np.empty(1, np.int32)
        assert _C.quantize_dynamic_u8(flat, False, q, s, z, 1)
    finally:
        ops.set_isa(before)
    q = q.reshape(x_nchw.shape[0], *x_nchw.shape[2:], x_nchw.shape[1])
    y = co.conv2d_reference(q, int(z[0]), w, stride, padding, dilation, groups,
                            out_dtype=np.float32, x_scale=float(s[0]), w_scale=ws, bias=bias,
                            relu=relu)
    return y, float(s[0]), int(z[0])


@pytest.mark.parametrize("shape", SHAPES + [(2, 19, 21, 35, 20, 3, 1, 1, 1, 1)])
def test_dynamic_f32_bit_identical(rng, path, shape):
    n, h, w_, c, oc, k, stride, padding, dilation, groups = shape
    kh, kw = (k, k) if isinstance(k, int) else k
    x = (rng.standard_normal((n, c, h, w_)) * 3 + 0.5).astype(np.float32)
    w = rng.integers(-128, 128, (oc, c // groups, kh, kw), dtype=np.int8)
    ws = rng.uniform(0.001, 0.05, oc).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    packed = co.pack_conv_weight(w, stride, padding, dilation, groups).buffer.numpy()
    for relu in (False, True):
        want, s, z = oracle(x, w, ws, bias, relu, stride, padding, dilation, groups)
        for x_nhwc in (False, True):
            xa = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x_nhwc else x
            for y_nhwc in (False, True):
                for threads in (1, 2):
                    shp = want.shape if y_nhwc else (want.shape[0], want.shape[3], *want.shape[1:3])
                    out = np.full(shp, np.nan, np.float32)
                    ok, gs, gz = _C.conv2d_dynamic_f32(xa, x_nhwc, packed, ws, bias, relu, out,
                                                       y_nhwc, threads, path)
                    assert ok and (gs, gz) == (s, z)
                    got = out if y_nhwc else out.transpose(0, 2, 3, 1)
                    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def test_dynamic_f32_large_tiles_and_nan(path):
    # Many 64-pixel blocks, channel tails, 2 threads; then NaN is reported, not quantized.
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 40, 33, 35)).astype(np.float32)
    w = rng.integers(-128, 128, (40, 1, 3, 3), dtype=np.int8)
    ws = np.full(40, 0.01, np.float32)
    packed = co.pack_conv_weight(w, 1, 1, 1, 40).buffer.numpy()
    want, _, _ = oracle(x, w, ws, None, False, 1, 1, 1, 40)
    out = np.empty((2, 40, 33, 35), np.float32)
    assert _C.conv2d_dynamic_f32(x, False, packed, ws, None, False, out, False, 2, path)[0]
    np.testing.assert_array_equal(out.transpose(0, 2, 3, 1), want)
    x[1, 3, 5, 7] = np.nan
    assert not _C.conv2d_dynamic_f32(x, False, packed, ws, None, False, out, False, 2, path)[0]


def test_module_raises_on_nan_and_keeps_layouts():
    from int8kit.nn.conv import QuantConv2d
    q = QuantConv2d.from_float(torch.nn.Conv2d(8, 16, 3, padding=1))
    x = torch.randn(2, 8, 9, 9)
    y, ycl = q(x), q(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous() and ycl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, ycl)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        q(x)


@pytest.mark.parametrize("kernel,stride,padding", [(1, 2, 0), (3, 1, 1), (1, 1, 0)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_threads_split_real_sizes_identically(kernel, stride, padding, channels_last):
    """Shapes big enough that quantization and the conv really run on several threads
    (the small shapes above run on one): same bits as one thread, and no crash. Regression:
    worker threads once used their own empty thread_local buffer instead of the caller's."""
    from int8kit.nn.conv import QuantConv2d

    torch.manual_seed(3)
    conv = nn.Conv2d(64, 128, kernel, stride, padding)
    x = torch.randn(2, 64, 56, 56)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        q = QuantConv2d.from_float(conv)
        want = q(x)
        for n in (2, 3):
            torch.set_num_threads(n)
            assert torch.equal(q(x), want)
    finally:
        torch.set_num_threads(before)
