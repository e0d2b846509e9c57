"""The conv paths added for speed are bit-identical to the scalar oracle on every ISA path:
strided 1x1 convs read in place (no im2col), and depthwise convs whose input rows are
quantized band by band inside conv2d_dynamic_f32 (batches, strides, padding, dilation,
channel tails, bands split across threads)."""

from __future__ import annotations

import numpy as np
import pytest

from int8kit import _C
from int8kit import conv_ops as co

from test_conv_dynamic import oracle

# (n, h, w, in, out, k, stride, padding, dilation, groups)
STRIDED_1X1 = [
    (1, 9, 11, 64, 128, 1, 2, 0, 1, 1),
    (2, 13, 10, 19, 35, 1, 3, 0, 1, 1),
    (1, 7, 12, 24, 20, 1, (2, 3), 0, 1, 2),
    (3, 5, 5, 3, 1, 1, (1, 2), 0, 1, 1),
]
DEPTHWISE = [
    (2, 9, 10, 128, 128, 3, 1, 1, 1, 128),
    (3, 11, 9, 96, 96, 3, 2, 1, 1, 96),
    (2, 8, 13, 70, 70, 3, 2, 0, 1, 70),
    (1, 12, 7, 33, 33, (5, 3), (1, 2), (2, 1), 1, 33),
    (2, 10, 10, 16, 16, 3, 1, 2, 2, 16),
    (5, 3, 4, 8, 8, 3, 1, 1, 1, 8),
    (2, 13, 11, 32, 32, 3, 1, 1, 1, 32),  # 2 pixels per vector, bands across threads
    (1, 10, 9, 16, 16, 3, 1, (1, 0), 1, 16),  # 4 pixels per vector, no side padding
    (2, 11, 9, 144, 144, 3, 1, 1, 1, 144),  # last block of 16 channels, 4 pixels per vector
    (1, 13, 10, 96, 96, 3, 1, 1, 1, 96),  # last block of 32 channels, 2 pixels per vector
]

# K = KH*KW*in/groups >= 256: the AMX path convolves those with K % 64 == 0 by im2col +
# AMX GEMM (16- and 32-row steps, an odd panel), the others by implicit GEMM.
DEEP_K = [
    (1, 9, 11, 32, 40, 3, 1, 1, 1, 1),
    (2, 7, 6, 64, 17, 3, 2, 1, 1, 1),
    (1, 8, 9, 128, 64, 3, 1, 2, 2, 2),
    (1, 6, 7, 300, 33, 1, 1, 0, 1, 1),
    (2, 5, 9, 256, 48, 1, 2, 0, 1, 1),
]


def _run_all(rng, path, shape):
    n, h, w_, c, oc, k, stride, padding, dilation, groups = shape
    kh, kw = (k, k) if isinstance(k, int) else k
    x = (rng.standard_normal((n, c, h, w_)) * 2 - 0.3).astype(np.float32)
    w = rng.integers(-128, 128, (oc, c // groups, kh, kw), dtype=np.int8)
    ws = rng.uniform(0.001, 0.05, oc).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    packed = co.pack_conv_weight(w, stride, padding, dilation, groups).buffer.numpy()
    for relu in (False, True):
        want, s, z = oracle(x, w, ws, bias, relu, stride, padding, dilation, groups)
        for x_nhwc in (False, True):
            xa = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x_nhwc else x
            for threads in (1, 2, 3):
                out = np.full(want.shape, np.nan, np.float32)
                ok, gs, gz = _C.conv2d_dynamic_f32(xa, x_nhwc, packed, ws, bias, relu, out,
                                                   True, threads, path)
                assert ok and (gs, gz) == (s, z)
                np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))
    return x, w, packed


@pytest.mark.parametrize("shape", STRIDED_1X1)
def test_strided_1x1_in_place(rng, path, shape):
    _, w, packed = _run_all(rng, path, shape)
    n, h, w_, c, oc, k, stride, padding, dilation, groups = shape
    q = rng.integers(0, 256, (n, h, w_, c), dtype=np.uint8)
    want = co.conv2d_reference(q, 77, w, stride, padding, dilation, groups)
    for threads in (1, 2):
        got = co.conv2d_s32(q, 77, co.pack_conv_weight(w, stride, padding, dilation, groups),
                            threads=threads, isa=path)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", DEEP_K)
def test_deep_k_convs(rng, path, shape):
    _run_all(rng, path, shape)


@pytest.mark.parametrize("shape", DEPTHWISE)
def test_depthwise_banded_quantize(rng, path, shape):
    _run_all(rng, path, shape)


def test_depthwise_banded_repeat_calls(rng, path):
    # Per-thread band state must not leak from one call into the next (same shapes, new x).
    shape = DEPTHWISE[1]
    for _ in range(3):
        _run_all(rng, path, shape)


# (n, h, w, in, out, k, stride, padding, dilation, groups): few output rows and few column
# units, so that many threads get row tiles cut finer than the cache-sized ones.
FEW_ROWS = [
    (1, 20, 20, 64, 64, 3, 1, 1, 1, 1),  # 400 rows, one 64-column unit
    (2, 7, 7, 256, 512, 3, 1, 1, 1, 1),  # 98 rows, 512 columns
    (1, 9, 13, 64, 96, 3, 1, 1, 1, 2),  # two groups, 117 rows
    (3, 5, 6, 40, 70, (3, 2), 2, 1, 1, 1),  # im2col (K not a multiple of 4), 36 rows
]


@pytest.mark.parametrize("shape", FEW_ROWS)
def test_few_rows_split_over_many_threads(rng, path, shape):
    n, h, w_, c, oc, k, stride, padding, dilation, groups = shape
    kh, kw = (k, k) if isinstance(k, int) else k
    q = rng.integers(0, 256, (n, h, w_, c), dtype=np.uint8)
    w = rng.integers(-128, 128, (oc, c // groups, kh, kw), dtype=np.int8)
    packed = co.pack_conv_weight(w, stride, padding, dilation, groups)
    want = co.conv2d_reference(q, 131, w, stride, padding, dilation, groups)
    for threads in (1, 3, 8, 16):
        got = co.conv2d_s32(q, 131, packed, threads=threads, isa=path)
        np.testing.assert_array_equal(got, want)
