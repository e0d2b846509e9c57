"""int8 conv2d kernels: numpy int64 reference -> scalar oracle -> every kernel path, bit for bit.

The numpy reference pads the uint8 input with the activation zero point (zero in real
terms) and sums exact int64 products; the C++ oracle (direct loops) must agree exactly,
and each kernel path (GEMM via im2col or in place, depthwise direct) must reproduce the
oracle's int32, float32 and uint8 outputs byte for byte, at 1 and 2 threads.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from int8kit import conv_ops as co

# Peak-RSS bounds need Linux's /proc, and no ASan (.ci/sanitize): its redzones and
# quarantine (freed memory is held back) change what RSS shows.
RSS_MEASURABLE = (os.path.exists("/proc/self/status")
                   and "libasan" not in os.environ.get("LD_PRELOAD", ""))
RSS_REASON = "measures peak RSS: needs Linux /proc and no ASan"

# (N, H, W, C, OC, k, stride, padding, dilation, groups): odd sizes, every option.
SHAPES = [
    (1, 5, 6, 3, 7, 3, 1, 1, 1, 1),       # RGB-like stem, K = 27
    (2, 9, 7, 8, 16, 3, 2, 1, 1, 2),      # grouped, strided, batch 2
    (1, 7, 7, 16, 17, (3, 1), (1, 2), (1, 0), (2, 1), 1),  # rectangular everything
    (1, 6, 6, 20, 40, 1, 1, 0, 1, 1),     # 1x1 stride 1: GEMM in place
    (2, 6, 5, 20, 40, 1, 1, 0, 1, 4),     # 1x1 grouped in place (A offset per group)
    (1, 7, 7, 24, 8, 1, 2, 0, 1, 1),      # 1x1 stride 2: gathered
    (1, 4, 4, 5, 3, 3, 1, 3, 1, 1),       # padding larger than the kernel reach
    (1, 8, 8, 64, 64, 3, 1, 1, 1, 64),    # depthwise, one full block
    (2, 7, 9, 70, 70, 3, 2, 2, 2, 70),    # depthwise, channel tail, stride, dilation
    (1, 10, 10, 33, 33, 5, 1, 2, 1, 33),  # depthwise 5x5
    (1, 12, 13, 130, 130, 3, 1, 1, 1, 130),  # depthwise, 3 blocks, fast 4-pixel runs
    (1, 6, 6, 8, 16, 3, 1, 1, 1, 8),      # depthwise multiplier 2: grouped GEMM path
    (1, 3, 3, 2, 5, 3, 1, 0, 1, 1),       # 1x1 output
    # depthwise 3x3 with strides (MobileNet's downsampling blocks)
    (2, 9, 11, 70, 70, 3, 2, 1, 1, 70),   # stride 2, channel tail, batch 2
    (1, 8, 7, 64, 64, 3, (1, 2), (0, 1), 1, 64),  # horizontal stride only, no top padding
    (1, 9, 10, 130, 130, 3, (3, 1), 1, 1, 130),  # vertical stride 3, 3 blocks
    # implicit GEMM (AVX-512: activation rows read in place, no im2col)
    (2, 15, 13, 32, 48, 3, 1, 1, 1, 1),   # one run per kernel row; tiles cross rows, images
    (1, 9, 11, 12, 10, 3, 1, 2, (1, 2), 1),  # horizontal dilation: one run per tap
    (1, 4, 4, 64, 256, 3, 1, 1, 1, 1),    # few pixels: 2 threads split the 16 panels 8 + 8
    (1, 3, 5, 64, 208, 3, 1, 1, 1, 1),    # 13 panels, split in units of 3
    (1, 8, 9, 16, 20, 3, (2, 1), 0, 1, 1),  # no padding: x itself is read
    # depthwise 3x3 stride 1 with C = 8, 16, 32: 64 / C pixels per vector, partial last one
    (1, 7, 13, 32, 32, 3, 1, 1, 1, 32),   # 6 full vectors (a 4-vector run) + 1 pixel
    (2, 6, 9, 16, 16, 3, 1, 1, 1, 16),    # batch 2, 2 full vectors + 1 pixel
    (1, 5, 37, 16, 16, 3, 1, 1, 1, 16),   # 9 full vectors + 1 pixel
    (1, 5, 11, 16, 16, 3, 1, 0, 1, 16),   # no padding: windows run past the row end
    (2, 4, 10, 32, 32, 3, 1, 0, 1, 32),   # no padding, no partial vector
    (2, 5, 3, 16, 16, 3, 1, 1, 1, 16),    # output narrower than a vector
    (1, 6, 1, 32, 32, 3, 1, 1, 1, 32),    # an image 1 pixel wide
    (1, 5, 3, 32, 32, 3, 1, 0, 1, 32),    # 1 output pixel, no padding
    (1, 6, 5, 16, 16, 3, 1, (2, 3), 1, 16),  # padding wider than 1
    (1, 4, 67, 8, 8, 3, 1, 1, 1, 8),      # C = 8: two 4-vector runs + 3 pixels
    (1, 4, 7, 8, 8, 3, 1, (0, 1), 1, 8),  # C = 8, output narrower than a vector
    # depthwise 3x3 stride 1 goes two output rows per step (four-row columns); a row
    # without a partner (an image's last, a thread's last) goes alone
    (2, 5, 9, 32, 32, 3, 1, 1, 1, 32),    # odd rows per image, batch 2: pairs stop at images
    (3, 1, 9, 64, 64, 3, 1, 1, 1, 64),    # one-row images: no pair at all
    (2, 7, 10, 128, 128, 3, 1, 0, 1, 128),  # two blocks, no padding: 5 rows per image
    (1, 2, 12, 8, 8, 3, 1, 1, 1, 8),      # C = 8, one pair
    (1, 9, 7, 144, 144, 3, 1, 1, 1, 144),  # 128 + 16: pairs in both kernels, 9 rows
    # depthwise 3x3 stride 1 whose last block has 16 or 32 channels: that block goes
    # 64 / 16 or 64 / 32 pixels per vector, its pixels C bytes apart in memory
    (1, 7, 13, 80, 80, 3, 1, 1, 1, 80),   # 64 + 16: 3 full vectors + 1 pixel
    (2, 6, 9, 96, 96, 3, 1, 1, 1, 96),    # 64 + 32, batch 2: 4 full vectors + 1 pixel
    (1, 5, 37, 144, 144, 3, 1, 1, 1, 144),  # 128 + 16: a 4-vector run, partial vector
    (1, 11, 20, 160, 160, 3, 1, 0, 1, 160),  # 128 + 32, no padding, 9 rows: two row passes
    (2, 19, 6, 80, 80, 3, 1, 1, 1, 80),   # row passes that cross images
    (1, 6, 5, 96, 96, 3, 1, (2, 3), 1, 96),  # padding wider than 1
    (1, 5, 1, 144, 144, 3, 1, 1, 1, 144),  # an image 1 pixel wide
    # depthwise 3x3 stride 1, rows wider than 62 pixels: built in chunks of 60 pixels
    (1, 4, 63, 64, 64, 3, 1, 1, 1, 64),   # one chunk of 60 + 3 pixels (1-pixel calls)
    (1, 3, 131, 70, 70, 3, 1, 0, 1, 70),  # no padding: 60 + 60 + 9, a block of 6 channels
    (2, 3, 125, 80, 80, 3, 1, 1, 1, 80),  # the 64-channel block in chunks, then 16 wide
    # the general depthwise kernel with a last block of 16 or 32 channels: inside the row
    # 4 or 2 pixels share a vector, in runs of 4 vectors, then single vectors, then pixels
    (1, 9, 17, 96, 96, 3, 2, 1, 1, 96),   # stride 2, 64 + 32: 7 inside pixels
    (2, 11, 40, 80, 80, 3, 2, 1, 1, 80),  # stride 2, 64 + 16, batch 2: 18 inside pixels
    (1, 12, 30, 144, 144, 5, 1, 2, 1, 144),  # 5x5, 128 + 16
    (1, 10, 21, 96, 96, 3, 1, 2, 2, 96),  # dilation 2
    (1, 8, 9, 160, 160, 3, (2, 1), 1, 1, 160),  # vertical stride only, 128 + 32
    (1, 6, 3, 80, 80, 3, 2, 1, 1, 80),    # no pixel inside the row: edges only
    # the general kernel's last 1-3 inside pixels go in one call (full and partial blocks)
    (1, 5, 19, 64, 64, 3, 3, 1, 1, 64),   # 5 inside pixels: 4 + 1
    (1, 4, 22, 130, 130, 3, 3, 1, 1, 130),  # 6: 4 + 2, two full blocks and 2 channels
    (2, 5, 25, 70, 70, 3, 3, 1, 1, 70),   # 7: 4 + 3, a block of 6 channels
    (1, 5, 9, 8, 8, 3, 2, 1, 1, 8),       # stride 2 with C = 8
    # AVX2 pairs the taps (an odd last one against zero weights), 16 channels a step
    (1, 6, 7, 20, 20, (2, 2), 1, 1, 1, 20),  # 4 taps: no spare; a 4-channel last step
    (1, 5, 5, 17, 17, 1, 1, 0, 1, 17),    # 1x1 depthwise: one tap and its spare
    (1, 7, 8, 40, 40, (1, 3), (1, 2), (0, 1), 1, 40),  # 3 taps in one row, stride 2 across
    # AVX-VNNI groups kernel rows in fours; a shorter kernel reuses a cached group of rows
    # through shifted weights (3 rows: each group serves two output rows)
    (1, 9, 8, 24, 24, (4, 3), 1, 1, 1, 24),  # 4 rows: one quad, two pairs, no reuse
    (1, 11, 7, 20, 20, (3, 2), 1, (2, 1), (2, 1), 20),  # rows 2 apart: shifted by a gap
    (2, 6, 6, 16, 16, (2, 3), 1, 1, 1, 16),  # 2 rows: a quad serves 3 output rows, batch 2
    # lane rows of about 128 KB: wide rows go in chunks of output columns
    (1, 3, 40, 2048, 2048, 3, 1, 1, 1, 2048),  # 16 columns a chunk: 16 + 16 + 8
    (1, 4, 70, 1030, 1030, 3, 2, 1, 1, 1030),  # stride 2: 15 columns a chunk, a channel tail
    # depthwise 3x3 stride 2 by built columns: 2 per output pixel; with C = 16 or 32 the
    # rows are copied in even and odd phases, 64 / C pixels a vector
    (1, 5, 13, 64, 64, 3, 2, 1, 1, 64),   # one block
    (1, 4, 15, 130, 130, 3, 2, 1, 1, 130),  # two full blocks and 2 channels
    (1, 6, 7, 48, 48, 3, 2, 1, 1, 48),    # one partial block
    (1, 4, 130, 64, 64, 3, 2, 1, 1, 64),  # 65 pixels a row: chunks of 28 + 28 + 9
    (1, 7, 13, 32, 32, 3, 2, 1, 1, 32),   # 3 full vectors + 1 pixel
    (2, 9, 67, 16, 16, 3, 2, 1, 1, 16),   # batch 2, two 4-vector runs + 2 pixels
    (1, 8, 12, 32, 32, 3, 2, 0, 1, 32),   # no padding, even width: the last column unread
    (1, 5, 10, 16, 16, 3, 2, (2, 3), 1, 16),  # padding wider than 1
    (1, 1, 1, 32, 32, 3, 2, 1, 1, 32),    # a 1x1 image
    (1, 7, 2, 16, 16, 3, 2, 1, 1, 16),    # an image 2 pixels wide
    (1, 6, 9, 24, 24, 3, 2, 0, 1, 24),    # a partial block, no padding
    (2, 5, 9, 200, 200, 3, 2, 1, 1, 200),  # 3 blocks and 8 channels, batch 2
    (1, 9, 113, 96, 96, 3, 2, 1, 1, 96),  # 64 + 32: the general kernel, 57 pixels a row
    (2, 7, 9, 144, 144, 3, 2, 1, 1, 144),  # 128 + 16: the general kernel, batch 2
    # implicit GEMM on images big enough that inside pixels read x in place and only the
    # edge pixels read copies (left/right strips, top/bottom bands; conv_windows.h)
    (1, 20, 24, 16, 24, 3, 1, 1, 1, 1),   # all four edges
    (2, 22, 19, 8, 16, 3, 2, (1, 2), 1, 1),  # stride 2, padding 1 x 2, batch 2
    (1, 30, 21, 16, 16, 3, 1, (2, 0), (2, 1), 1),  # no horizontal padding: bands only
    (1, 17, 20, 8, 8, (1, 5), 1, (0, 2), 1, 1),  # no vertical padding: strips only
    (1, 24, 20, 16, 32, 3, 1, 1, 1, 2),   # grouped: one run per tap
    (11, 18, 20, 8, 8, 3, 1, 1, 1, 1),    # 3 images' strips share a row; 11 images: 4 rows
]


def pair(v):
    return v if isinstance(v, tuple) else (v, v)


def ref_conv_s32(x, zp, w, stride, padding, dilation, groups):
    """Exact int64 conv of NHWC uint8 x (padded with zp) by w [OC, IC/G, KH, KW]."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    n, h, wd, c = x.shape
    oc, icg, kh, kw = w.shape
    xp = np.full((n, h + 2 * ph, wd + 2 * pw, c), zp, np.int64)
    xp[:, ph:ph + h, pw:pw + wd] = x
    xp -= zp
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, oh, ow, oc), np.int64)
    ocg = oc // groups
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            for g in range(groups):
                out[..., g * ocg:(g + 1) * ocg] += (
                    patch[..., g * icg:(g + 1) * icg] @ w[g * ocg:(g + 1) * ocg, :, i, j].astype(np.int64).T)
    return out


def make(rng, shape, extreme=False):
    n, h, wd, c, oc, k, s, p, d, g = shape
    kh, kw = pair(k)
    x = rng.integers(0, 256, (n, h, wd, c), dtype=np.uint8)
    w = rng.integers(-128, 128, (oc, c // g, kh, kw), dtype=np.int8)
    if extreme:  # the largest magnitudes: 255 * -128 in every term
        x[...] = 255
        w[...] = -128
    return x, w


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_oracle_matches_numpy_int64(rng, shape):
    x, w = make(rng, shape)
    _, _, _, _, _, k, s, p, d, g = shape
    for zp in (0, 77, 255):
        expect = ref_conv_s32(x, zp, w, s, p, d, g)
        got = co.conv2d_reference(x, zp, w, s, p, d, g)
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_paths_bit_identical_to_oracle(rng, ref, path, shape):
    x, w = make(rng, shape)
    _, _, _, _, oc, k, s, p, d, g = shape
    zp = int(rng.integers(1, 255))
    packed = co.pack_conv_weight(w, s, p, d, g)
    ws = (rng.random(oc, dtype=np.float32) * 0.01 + 1e-4).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    kw = dict(x_scale=0.02, w_scale=ws, bias=bias)
    want_s32 = co.conv2d_reference(x, zp, w, s, p, d, g)
    want_f32 = co.conv2d_reference(x, zp, w, s, p, d, g, out_dtype=np.float32, relu=True, **kw)
    want_u8 = co.conv2d_reference(x, zp, w, s, p, d, g, out_dtype=np.uint8, out_scale=0.7,
                                  out_zero_point=9, **kw)
    want_u8_relu = co.conv2d_reference(x, zp, w, s, p, d, g, out_dtype=np.uint8, relu=True,
                                       out_scale=0.3, out_zero_point=200, **kw)
    for threads in (1, 2):
        ref.assert_bit_identical(co.conv2d_s32(x, zp, packed, threads=threads, isa=path),
                                 want_s32, f"s32 {path} t{threads}")
        ref.assert_bit_identical(
            co.conv2d_f32(x, zp, 0.02, packed, ws, bias, relu=True, threads=threads, isa=path),
            want_f32, f"f32 {path} t{threads}")
        ref.assert_bit_identical(
            co.conv2d_u8(x, zp, 0.02, packed, ws, 0.7, 9, bias, threads=threads, isa=path),
            want_u8, f"u8 {path} t{threads}")
        ref.assert_bit_identical(
            co.conv2d_u8(x, zp, 0.02, packed, ws, 0.3, 200, bias, relu=True, threads=threads,
                         isa=path),
            want_u8_relu, f"u8 relu {path} t{threads}")


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[8], SHAPES[3], SHAPES[19]], ids=str)
def test_extreme_values_exact(ref, path, shape):
    x, w = make(np.random.default_rng(0), shape, extreme=True)
    _, _, _, _, _, k, s, p, d, g = shape
    packed = co.pack_conv_weight(w, s, p, d, g)
    np.testing.assert_array_equal(co.conv2d_s32(x, 0, packed, isa=path),
                                  ref_conv_s32(x, 0, w, s, p, d, g))


@pytest.mark.parametrize("c", [32, 64, 130])  # depthwise: super-pixel, one and three blocks
@pytest.mark.parametrize("groups", ["depthwise", 1])
def test_u8_epilogue_overflowing_scales_match_the_oracle(path, c, groups):
    # x_scale * w_scale overflows to inf: zero sums give NaN (0 * inf) and the others
    # +-inf. Clamping then rounding must give the oracle's bytes (NaN -> 0) on every path.
    rng = np.random.default_rng(5)
    g = c if groups == "depthwise" else 1
    x = rng.integers(0, 256, (1, 7, 9, c), dtype=np.uint8)
    x[0, 2:5, 2:5, :] = 9  # the zero point: windows of zero sums
    w = rng.integers(-128, 128, (c, c // g, 3, 3), dtype=np.int8)
    packed = co.pack_conv_weight(w, 1, 1, 1, g)
    for w_scale, relu in ((3e38, False), (3e38, True), (1e-38, False)):
        ws = np.full(c, w_scale, np.float32)
        bias = np.linspace(-5, 5, c).astype(np.float32)
        args = (x, 9, 10.0, packed, ws, 0.5, 3, bias)
        want = co.conv2d_u8(*args, relu=relu, isa="scalar")
        np.testing.assert_array_equal(co.conv2d_u8(*args, relu=relu, isa=path), want)


def test_padding_reads_the_zero_point(rng, path):
    """With zp != 0, padding by zp (real zero) and by 0 give different results; ours is zp."""
    for groups, c in ((1, 6), (6, 6)):  # GEMM path and depthwise path
        x = rng.integers(100, 200, (1, 5, 5, c), dtype=np.uint8)
        w = rng.integers(1, 100, (c, c // groups, 3, 3), dtype=np.int8)  # all positive
        got = co.conv2d_s32(x, 150, co.pack_conv_weight(w, 1, 1, 1, groups), isa=path)
        np.testing.assert_array_equal(got, ref_conv_s32(x, 150, w, 1, 1, 1, groups))
        # Padding with 0 instead would add (0 - 150) * w on border taps: clearly different.
        x_pad0 = np.zeros((1, 7, 7, c), np.uint8)
        x_pad0[:, 1:6, 1:6] = x
        wrong = co.conv2d_s32(x_pad0, 150, co.pack_conv_weight(w, 1, 0, 1, groups), isa=path)
        assert (wrong[:, 0] != got[:, 0]).all()
        np.testing.assert_array_equal(wrong[:, 1:-1, 1:-1], got[:, 1:-1, 1:-1])


_WIDE_SPAN_CHILD = """
import resource, numpy as np
from int8kit import conv_ops as co
C = 4096  # one row of 33 taps, dilation 4096: the kernel spans 131073 padded columns
x = np.full((1, 2, 1, C), 7, np.uint8)
w = np.ones((C, 1, 1, 33), np.int8)
p = co.pack_conv_weight(w, 1, (0, 65536), (1, 4096), C)
want = co.conv2d_s32(x, 3, p, isa="scalar")
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30),) * 2)  # 1 GB more than now
for threads in (1, 2):
    assert (co.conv2d_s32(x, 3, p, isa=ISA, threads=threads) == want).all(), threads
print("ok")
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_depthwise_with_a_huge_kernel_span_runs_in_bounded_memory(ref, path):
    """The AVX2 and AVX-VNNI depthwise kernels cache lane rows as wide as the kernel's
    span: this legal conv asked for 8.6 GB per thread (MemoryError on one thread, the
    process ended by std::terminate on two). It must run within 1 GB and stay exact."""
    proc = ref.run_python(_WIDE_SPAN_CHILD.replace("ISA", repr(path)), {})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# In a fresh interpreter: the arrays of __NPZ__ as `a`, __SETUP__, then __CALL__; prints
# how far the peak RSS (VmHWM, reset just before) rose in it, in MiB, and saves `out`.
_PEAK_CHILD = """
import numpy as np
from int8kit import _C
a = dict(np.load(__NPZ__))
__SETUP__
def peak_kib():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM:")).split()[1])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := RSS now
except OSError:
    pass
before = peak_kib()
__CALL__
print((peak_kib() - before) / 1024)
np.save(__OUT__, out)
"""


def peak_growth_mib(ref, tmp_path, setup, call, **arrays):
    """(peak RSS growth of `call` in MiB, `out`), run in a fresh interpreter. Large inputs
    belong in `setup` (made there, not written to disk)."""
    npz, out = tmp_path / "args.npz", tmp_path / "out.npy"
    np.savez(npz, **arrays)
    code = (_PEAK_CHILD.replace("__NPZ__", repr(str(npz))).replace("__OUT__", repr(str(out)))
            .replace("__SETUP__", setup).replace("__CALL__", call))
    try:
        proc = ref.run_python(code, {})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return float(proc.stdout.split()[-1]), np.load(out)
    finally:
        npz.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


@pytest.mark.skipif(not RSS_MEASURABLE, reason=RSS_REASON)
def test_huge_padding_runs_in_bounded_memory(ref, tmp_path, path):
    """A 1x1 input padded by 512 (legal up to 65536): the AVX-512 implicit GEMM wrote out
    the whole padded input, 128 MiB for these 128 bytes of x (and kept it). Such convs take
    the im2col route there: the scratch is a tile per thread."""
    rng = np.random.default_rng(5)
    c, oc, pad = 128, 4, 512
    x = rng.integers(0, 256, (1, 1, 1, c), dtype=np.uint8)
    w = rng.integers(-128, 128, (oc, c, 1, 1), dtype=np.int8)
    packed = co.pack_conv_weight(w, 1, pad).buffer.numpy()
    setup = f"out = np.full((1, {2 * pad + 1}, {2 * pad + 1}, {oc}), -1, np.int32)"  # 16 MiB
    call = (f"_C.conv2d(a['x'], 3, a['packed'], out, 1.0, None, None, False, 1.0, 0, 2, "
            f"{path!r})")
    grown, got = peak_growth_mib(ref, tmp_path, setup, call, x=x, packed=packed)
    assert grown < 4, f"peak RSS grew {grown:.0f} MiB"
    np.testing.assert_array_equal(got, co.conv2d_reference(x, 3, w, 1, pad))


@pytest.mark.parametrize("threads", [1, 2])
def test_huge_padding_3x3_takes_im2col_exactly(rng, path, threads):
    """Convs whose padded copy would dwarf x and y (im2col on AVX-512 too), exact."""
    for groups, stride in ((1, 1), (2, 2)):
        x = rng.integers(0, 256, (2, 3, 2, 128), dtype=np.uint8)
        w = rng.integers(-128, 128, (4, 128 // groups, 3, 3), dtype=np.int8)
        packed = co.pack_conv_weight(w, stride, 60, 2, groups)
        got = co.conv2d_s32(x, 201, packed, threads=threads, isa=path)
        np.testing.assert_array_equal(got, co.conv2d_reference(x, 201, w, stride, 60, 2, groups))


_THREADS_CHILD = """
import numpy as np
from int8kit import _C, conv_ops as co
rng = np.random.default_rng(0)
# (x shape, w shape, stride, padding, groups): padded GEMM (implicit on AVX-512: whole
# padded copy, then edge copies), depthwise, strided 1x1, im2col (K % 4 != 0)
cases = [((1, 4, 4, 16), (16, 16, 3, 3), 1, 1, 1), ((2, 40, 40, 32), (32, 32, 3, 3), 1, 1, 1),
         ((1, 9, 9, 32), (32, 1, 3, 3), 1, 1, 32), ((1, 9, 9, 16), (8, 16, 1, 1), 2, 0, 1),
         ((1, 6, 7, 3), (5, 3, 3, 3), 1, 1, 1)]
for xs, ws, stride, pad, groups in cases:
    w = rng.integers(-128, 128, ws, dtype=np.int8)
    pb = co.pack_conv_weight(w, stride, pad, 1, groups).buffer.numpy()
    scale = np.full(ws[0], 0.01, np.float32)
    for path in PATHS:
        for threads in (0, -1):
            for _ in range(2):  # a new x each time: a stale output must not pass
                x = rng.integers(0, 256, xs, dtype=np.uint8)
                args = (x, 3, pb, np.int32, 1.0, None, None, False, 1.0, 0)
                want = _C.conv2d(*args, 1, "scalar")
                assert (_C.conv2d(*args, threads, path) == want).all(), (xs, path, threads)
                xf = rng.standard_normal((xs[0], xs[3], xs[1], xs[2])).astype(np.float32)
                oh, ow = want.shape[1:3]
                y1, y0 = (np.full((xs[0], ws[0], oh, ow), np.nan, np.float32) for _ in "ab")
                _C.conv2d_dynamic_f32(xf, False, pb, scale, None, False, y1, False, 1, path)
                _C.conv2d_dynamic_f32(xf, False, pb, scale, None, False, y0, False, threads, path)
                assert (y0.view(np.int32) == y1.view(np.int32)).all(), (xs, path, threads)
print("ok")
"""


def test_threads_below_one_mean_one(ref, paths):
    """gemm.h: nthreads < 1 means 1; conv2d and conv2d_dynamic_f32 too. The implicit GEMM's
    padded copy divided by 0 threads (SIGFPE) and, at -1, skipped the copy (stale output)."""
    proc = ref.run_python(_THREADS_CHILD.replace("PATHS", repr(paths)), {})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode,
                                                                  proc.stderr[-2000:])


def test_batch_of_zero_and_torch_inputs():
    w = torch.randint(-128, 128, (4, 3, 3, 3), dtype=torch.int8)
    packed = co.pack_conv_weight(w, 1, 1)
    y = co.conv2d_s32(torch.zeros(0, 5, 5, 3, dtype=torch.uint8), 0, packed)
    assert isinstance(y, torch.Tensor) and y.shape == (0, 5, 5, 4)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_unpack_inverts_pack(rng, shape):
    _, _, _, c, oc, k, stride, padding, dilation, groups = shape
    kh, kw = pair(k)
    w = rng.integers(-128, 128, (oc, c // groups, kh, kw), dtype=np.int8)
    packed = co.pack_conv_weight(w, stride, padding, dilation, groups)
    got = co.unpack_conv_weight(packed)
    assert got.dtype == torch.int8 and np.array_equal(got.numpy(), w)


def test_packed_info_and_layouts():
    dw = co.pack_conv_weight(np.ones((8, 1, 3, 3), np.int8), 2, 1, 1, 8)
    assert dw.layout == "depthwise" and dw.stride == (2, 2) and dw.groups == 8
    gm = co.pack_conv_weight(np.ones((8, 2, 3, 1), np.int8), 1, (1, 0), 1, 2)
    assert gm.layout == "gemm" and gm.kernel_size == (3, 1) and gm.in_channels == 4
    assert gm.output_size(5, 5) == (5, 5)


def test_corrupt_or_foreign_buffers_raise():
    packed = co.pack_conv_weight(np.ones((8, 4, 3, 3), np.int8), 1, 1)
    x = np.zeros((1, 5, 5, 4), np.uint8)
    bad = packed.buffer.clone()
    bad[0] ^= 0xFF
    with pytest.raises(ValueError, match="magic"):
        co.conv2d_s32(x, 0, bad)
    with pytest.raises(ValueError, match="inconsistent"):
        co.conv2d_s32(x, 0, packed.buffer[:-1].clone())
    bad = packed.buffer.clone()
    bad[16] = 5  # in_channels no longer matches the sizes
    with pytest.raises(ValueError):
        co.conv2d_s32(x, 0, bad)
    from int8kit import ops
    with pytest.raises(ValueError, match="not an int8kit packed conv weight"):
        co.conv2d_s32(x, 0, ops.pack_weight(np.ones((8, 36), np.int8)).buffer)
    # The per-group stride in the header: reading group g's header at g * group_bytes
    # went outside the buffer (a crash) or to the wrong weights.
    grouped = co.pack_conv_weight(np.ones((8, 2, 3, 3), np.int8), 1, 1, groups=2)
    for group_bytes in (0, 1 << 40):
        bad = grouped.buffer.clone().numpy()
        bad[112:120].view(np.uint64)[0] = group_bytes
        with pytest.raises(ValueError, match="corrupt"):
            co.conv2d_s32(x, 0, torch.from_numpy(bad))


def test_bad_arguments_raise_naming_them():
    w = np.ones((8, 4, 3, 3), np.int8)
    packed = co.pack_conv_weight(w, 1, 1)
    x = np.zeros((1, 5, 5, 4), np.uint8)
    with pytest.raises(ValueError, match="4 channels"):
        co.conv2d_s32(np.zeros((1, 5, 5, 3), np.uint8), 0, packed)
    with pytest.raises(ValueError, match="x must be 4-D"):
        co.conv2d_s32(np.zeros((5, 5, 4), np.uint8), 0, packed)
    with pytest.raises(TypeError, match="x must have dtype uint8"):
        co.conv2d_s32(x.astype(np.float32), 0, packed)
    with pytest.raises(ValueError, match="contiguous"):
        co.conv2d_s32(np.zeros((1, 5, 5, 8), np.uint8)[..., ::2], 0, packed)
    with pytest.raises(ValueError, match="x_zero_point"):
        co.conv2d_s32(x, 256, packed)
    with pytest.raises(ValueError, match="x_scale"):
        co.conv2d_f32(x, 0, 0.0, packed, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="w_scale"):
        co.conv2d_f32(x, 0, 1.0, packed, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="w_scale must be a CPU tensor"):
        co.conv2d_f32(x, 0, 1.0, packed, torch.ones(3, device="meta"))
    for bad_scale in (0.0, -1.0, np.nan, np.inf):  # values: the kernel checks them
        ws_bad = np.ones(8, np.float32)
        ws_bad[5] = bad_scale
        with pytest.raises(ValueError, match="w_scale must be finite and > 0.*index 5"):
            co.conv2d_f32(x, 0, 1.0, packed, ws_bad)
    bias_bad = np.zeros(8, np.float32)
    bias_bad[2] = np.nan
    with pytest.raises(ValueError, match="bias must be finite.*index 2"):
        co.conv2d_u8(x, 0, 1.0, packed, np.ones(8, np.float32), 0.1, 3, bias_bad)
    with pytest.raises(ValueError, match="bias"):
        co.conv2d_f32(x, 0, 1.0, packed, np.ones(8, np.float32), np.ones(3, np.float32))
    ws = np.ones(8, np.float32)
    for out_scale, out_zp, name in ((0.1, 3.5, "out_zero_point"), (0.1, 256, "out_zero_point"),
                                    (1e39, 3, "out_scale"), (1e-42, 3, "out_scale"),
                                    (-1.0, 3, "out_scale"), (None, 3, "out_scale"),
                                    ("0.5", 3, "out_scale"), (np.ones(2), 3, "out_scale"),
                                    (0.1, [3, 4], "out_zero_point")):
        with pytest.raises((TypeError, ValueError), match=name):  # never rounded or clamped
            co.conv2d_u8(x, 0, 1.0, packed, ws, out_scale, out_zp)
    with pytest.raises(ValueError, match="smaller than"):
        co.conv2d_s32(np.zeros((1, 1, 1, 4), np.uint8), 0, co.pack_conv_weight(w))
    with pytest.raises(ValueError, match="divisible by groups"):
        co.pack_conv_weight(np.ones((6, 4, 3, 3), np.int8), groups=4)
    with pytest.raises(ValueError, match="stride"):
        co.pack_conv_weight(w, stride=0)
    with pytest.raises(ValueError, match="padding"):
        co.pack_conv_weight(w, padding=-1)
    with pytest.raises(ValueError, match="dilation"):
        co.pack_conv_weight(w, dilation=(1, 0))
    with pytest.raises(ValueError, match="exceeds"):  # K = 3*3*8000 > the int32 bound
        co.pack_conv_weight(np.ones((1, 8000, 3, 3), np.int8))
    with pytest.raises(ValueError, match="isa"):
        co.conv2d_s32(x, 0, packed, isa="sse9")  # unknown path
