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

from test_conv_kernels import RSS_MEASURABLE, RSS_REASON, SHAPES, peak_growth_mib


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


# (n, c, h, w, oc, k, stride, padding, groups, threads, MiB the peak RSS may grow): the
# scratch once sized [n, h, w, C] per thread for depthwise bands, [h, w, C] per worker for
# one row of a strided 1x1, and the whole padded input for a 512-padded 1x1 input on
# AVX-512 (before: +12, +36, +129 MiB on AVX-512; now 0.5, 4.3, 0.6).
BOUNDED = [
    (16, 32, 112, 112, 32, 3, 1, 1, 32, 2, 3),
    (1, 16, 1024, 1024, 16, 1, 2, 0, 1, 2, 4 + 3),  # 4 MiB: the quantized strided pixels
    (1, 128, 1, 1, 4, 1, 1, 512, 1, 2, 3),
]


@pytest.mark.skipif(not RSS_MEASURABLE, reason=RSS_REASON)
@pytest.mark.parametrize("shape", BOUNDED, ids=["depthwise_bands", "strided_1x1", "pad512"])
def test_dynamic_scratch_is_bounded(ref, tmp_path, path, shape):
    n, c, h, w_, oc, k, stride, padding, groups, threads, bound = shape
    x = np.random.default_rng(1).standard_normal((n, c, h, w_), np.float32)  # as the child
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (oc, c // groups, k, k), dtype=np.int8)
    ws = rng.uniform(0.001, 0.05, oc).astype(np.float32)
    packed = co.pack_conv_weight(w, stride, padding, 1, groups).buffer.numpy()
    oh, ow = (h + 2 * padding - k) // stride + 1, (w_ + 2 * padding - k) // stride + 1
    setup = (f"x = np.random.default_rng(1).standard_normal({(n, c, h, w_)}, np.float32)\n"
             f"out = np.full({(n, oh, ow, oc)}, np.nan, np.float32)")
    call = (f"_C.conv2d_dynamic_f32(x, False, a['packed'], a['ws'], None, False, out, True, "
            f"{threads}, {path!r})")
    grown, got = peak_growth_mib(ref, tmp_path, setup, call, packed=packed, ws=ws)
    assert grown < bound, f"peak RSS grew {grown:.0f} MiB"
    want, _, _ = oracle(x, w, ws, None, False, stride, padding, 1, groups)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("shape", [
    (2, 24, 1024, 64, 64, 3, 1, 1, 1, 64),  # 4-row bands: each shares 2 rows with the last
    (1, 30, 1100, 64, 64, 3, 2, 1, 1, 64),
    (1, 21, 1025, 64, 64, (5, 3), (1, 2), (2, 1), 2, 64),
    (1, 17, 520, 128, 128, 3, 1, 5, 1, 128),  # bands reading only padding rows
])
def test_dynamic_depthwise_thin_bands(rng, path, shape):
    """Rows wide enough that each thread quantizes several bands of one image, keeping the
    rows a band shares with the previous one: same bits as the oracle."""
    n, h, w_, c, oc, k, stride, padding, dilation, groups = shape
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = rng.integers(-128, 128, (oc, 1, kh, kw), dtype=np.int8)
    ws = rng.uniform(0.001, 0.05, oc).astype(np.float32)
    packed = co.pack_conv_weight(w, stride, padding, dilation, groups).buffer.numpy()
    want, _, _ = oracle(x, w, ws, None, False, stride, padding, dilation, groups)
    for threads in (1, 2, 3):
        out = np.full(want.shape, np.nan, np.float32)
        ok, _, _ = _C.conv2d_dynamic_f32(x, False, packed, ws, None, False, out, True, threads,
                                         path)
        assert ok
        np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))


_RELEASE_CHILD = """
import numpy as np
from int8kit import _C, conv_ops as co
def rss_mib():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmRSS:")).split()[1]) / 1024
pb = co.pack_conv_weight(np.ones((16, 16, 1, 1), np.int8)).buffer.numpy()
ws = np.full(16, 0.01, np.float32)
def run(h):
    x = np.ones((1, 16, h, h), np.float32)
    out = np.empty_like(x)  # NCHW: through a float scratch as large
    _C.conv2d_dynamic_f32(x, False, pb, ws, None, False, out, False, 1, PATH)
run(1024)  # 64 MiB of scratch
big = rss_mib()
run(8)
print(big - rss_mib())
"""


@pytest.mark.skipif(not RSS_MEASURABLE, reason=RSS_REASON)
def test_huge_scratch_is_released_by_a_small_call(ref, path):
    """Thread-local scratch used to keep the size of the largest call for good."""
    proc = ref.run_python(_RELEASE_CHILD.replace("PATH", repr(path)), {})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) > 48, proc.stdout
