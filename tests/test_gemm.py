"""int32 GEMM: numpy int64 reference -> scalar oracle -> every vector path, bit for bit."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import int8kit
from int8kit import ops

PATHS = int8kit.cpu_info()["supported_paths"]

# (M, K, N): M = 1, odd M, K = 1, K % 4 != 0, N % 16 != 0, several panels / row blocks.
EDGE_SHAPES = [
    (1, 1, 1), (1, 1, 16), (1, 4, 1), (1, 3, 17), (1, 5, 48), (1, 64, 97), (1, 255, 300),
    (2, 2, 2), (3, 7, 15), (5, 8, 16), (7, 9, 33), (8, 12, 48), (9, 13, 49), (11, 1, 70),
    (13, 31, 95), (16, 17, 64), (17, 66, 81), (24, 100, 112), (25, 4, 129), (33, 130, 31),
    (63, 67, 65), (64, 256, 256), (100, 57, 3), (129, 19, 18),
    # AMX: 32- and 16-row tile steps with an odd panel; K tails of 40 and 3 bytes; a block
    # tall enough for its rows-outer order
    (48, 192, 80), (47, 1000, 33), (80, 131, 47), (300, 130, 70),
]


def _all_paths_s32(a, zp, p, ref_acc):
    """Runs every path; asserts each equals the reference and they are bit-identical."""
    outs = {}
    for path in PATHS:
        got = ops.gemm_s32(a, zp, p, isa=path)
        assert got.dtype == np.int32 and got.shape == ref_acc.shape, path
        np.testing.assert_array_equal(got.astype(np.int64), ref_acc, err_msg=path)
        outs[path] = got
    for path in PATHS:
        assert np.array_equal(outs[path], outs["scalar"]), f"{path} != scalar"
    return outs


# --------------------------------------------------------------------- the reference


def test_numpy_reference_on_a_hand_computed_case(ref):
    a = np.array([[1, 2, 3], [0, 255, 7]], np.uint8)
    w = np.array([[1, 0, -1], [2, -128, 127]], np.int8)
    # row 0, zp 1: (0, 1, 2);  row 1, zp 255: (-255, 0, -248)
    expected = np.array([[0 - 2, 0 - 128 + 254], [-255 + 248, -510 - 248 * 127]])
    np.testing.assert_array_equal(ref.gemm_s32(a, [1, 255], w), expected)


def test_numpy_reference_matches_python_loops(rng, ref):
    a = ref.rand_u8(rng, (3, 6), 0.3)
    w = ref.rand_s8(rng, (4, 6), 0.3)
    zp = [0, 128, 255]
    loops = [[sum((int(a[m, k]) - zp[m]) * int(w[n, k]) for k in range(6)) for n in range(4)]
             for m in range(3)]
    np.testing.assert_array_equal(ref.gemm_s32(a, zp, w), np.array(loops))


@pytest.mark.parametrize("m,k,n", EDGE_SHAPES)
def test_scalar_oracle_matches_numpy(rng, ref, m, k, n):
    a = ref.rand_u8(rng, (m, k), 0.1)
    w = ref.rand_s8(rng, (n, k), 0.1)
    p = ops.pack_weight(w)
    for zp in (0, 255, int(rng.integers(0, 256)), rng.integers(0, 256, m).astype(np.int32)):
        got = ops.gemm_s32(a, zp, p, isa="scalar")
        np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, zp, w))


# ------------------------------------------------------------------ every path vs oracle


@pytest.mark.parametrize("m,k,n", EDGE_SHAPES)
def test_path_matches_oracle(rng, ref, path, m, k, n):
    a = ref.rand_u8(rng, (m, k), 0.1)
    w = ref.rand_s8(rng, (n, k), 0.1)
    p = ops.pack_weight(w)
    zps = [0, 255, int(rng.integers(1, 255)), rng.integers(0, 256, m).astype(np.int32)]
    for zp in zps:
        got = ops.gemm_s32(a, zp, p, isa=path)
        oracle = ops.gemm_s32(a, zp, p, isa="scalar")
        assert got.dtype == np.int32 and got.shape == (m, n)
        assert np.array_equal(got, oracle), f"{path} differs from the scalar oracle"
        np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, zp, w))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 127, 129])
def test_every_k_tail(rng, ref, path, k):
    m, n = 5, 21
    a = ref.rand_u8(rng, (m, k), 0.2)
    w = ref.rand_s8(rng, (n, k), 0.2)
    zp = rng.integers(0, 256, m).astype(np.int32)
    got = ops.gemm_s32(a, zp, ops.pack_weight(w), isa=path)
    np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, zp, w))


@pytest.mark.parametrize("n", list(range(1, 50)) + [95, 96, 97, 143, 144, 145])
def test_every_n_tail(rng, ref, path, n):
    m, k = 3, 11
    a = ref.rand_u8(rng, (m, k), 0.2)
    w = ref.rand_s8(rng, (n, k), 0.2)
    got = ops.gemm_s32(a, 17, ops.pack_weight(w), isa=path)
    np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, 17, w))


@pytest.mark.parametrize("m", list(range(1, 20)) + [23, 24, 25, 31, 33])
def test_every_m(rng, ref, path, m):
    k, n = 10, 100
    a = ref.rand_u8(rng, (m, k), 0.2)
    w = ref.rand_s8(rng, (n, k), 0.2)
    zp = rng.integers(0, 256, m).astype(np.int32)
    got = ops.gemm_s32(a, zp, ops.pack_weight(w), isa=path)
    np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, zp, w))


# -------------------------------------------------------------------- extreme values


@pytest.mark.parametrize("a_val,zp,w_val", [
    (255, 0, -128), (255, 0, 127), (0, 255, -128), (0, 255, 127), (255, 255, -128),
    (0, 0, 127), (128, 0, -128), (0, 128, -128),
])
def test_constant_extremes(ref, path, a_val, zp, w_val):
    m, k, n = 7, 301, 35
    a = np.full((m, k), a_val, np.uint8)
    w = np.full((n, k), w_val, np.int8)
    got = ops.gemm_s32(a, zp, ops.pack_weight(w), isa=path)
    np.testing.assert_array_equal(got, np.full((m, n), (a_val - zp) * w_val * k))


def test_random_extremes_only(rng, ref, path):
    m, k, n = 19, 203, 67
    a = rng.choice(np.array([0, 255], np.uint8), size=(m, k))
    w = rng.choice(np.array([-128, 127, 0], np.int8), size=(n, k))
    p = ops.pack_weight(w)
    zp = rng.choice(np.array([0, 255], np.int32), size=m)
    for z in (0, 255, zp):
        got = ops.gemm_s32(a, z, p, isa=path)
        np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, z, w))


# ------------------------------------------------------------- large K near the bound


@pytest.mark.parametrize("k", [ops.MAX_K, ops.MAX_K - 1, ops.MAX_K - 2, ops.MAX_K - 3, 65536])
def test_large_k_extremes_do_not_overflow(path, k):
    """At K = MAX_K the result is within 128 of INT32_MIN / INT32_MAX: any intermediate
    saturation or overflow would show."""
    m, n = 4, 5
    a = np.empty((m, k), np.uint8)
    a[0], a[1], a[2], a[3] = 255, 0, 255, 0
    zp = np.array([0, 255, 0, 255], np.int32)
    w = np.empty((n, k), np.int8)
    w[0], w[1], w[2], w[3], w[4] = -128, 127, -128, 127, 0
    w[3, ::2] = -128  # mixed signs
    got = ops.gemm_s32(a, zp, ops.pack_weight(w), isa=path).astype(np.int64)
    rows = np.array([255, -255, 255, -255], np.int64)[:, None]
    colsum = w.astype(np.int64).sum(axis=1)[None, :]
    np.testing.assert_array_equal(got, rows * colsum)
    assert got[0, 0] == -255 * 128 * k and got[1, 0] == 255 * 128 * k
    if k == ops.MAX_K:
        assert got.min() == -2147483520 and got.max() == 2147483520


@pytest.mark.parametrize("m,k,n", [(14, ops.MAX_K, 5), (4100, 64, 20), (700, 770, 33)])
def test_tall_a_over_several_row_blocks(rng, ref, path, m, k, n):
    """Enough rows for the kernels' row blocks (AVX2 widens A block by block: 6 rows at
    K = MAX_K, ~4000 at K = 64) and row tails; extremes first, so saturation would show."""
    a = ref.rand_u8(rng, (m, k), 0.5)
    a[0::2, :] = 255
    w = ref.rand_s8(rng, (n, k), 0.5)
    w[0] = -128
    w[1, ::2] = -128
    zp = np.zeros(m, np.int32)
    zp[1::4] = 255
    p, expected = ops.pack_weight(w), ref.gemm_s32(a, zp, w)
    for threads in (1, 2):  # one thread: all rows in one call, so in row blocks
        got = ops.gemm_s32(a, zp, p, isa=path, threads=threads)
        np.testing.assert_array_equal(got.astype(np.int64), expected, err_msg=f"{threads}")


def test_large_k_random(rng, ref, path):
    k = ops.MAX_K
    m, n = 3, 8
    a = ref.rand_u8(rng, (m, k), 0.5)
    w = ref.rand_s8(rng, (n, k), 0.5)
    zp = np.array([0, 255, 77], np.int32)
    got = ops.gemm_s32(a, zp, ops.pack_weight(w), isa=path)
    np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, zp, w))


# -------------------------------------------------------- zero points and int8 inputs


def test_per_row_and_per_tensor_zero_points_agree(rng, ref, path):
    m, k, n = 13, 50, 40
    a = ref.rand_u8(rng, (m, k))
    p = ops.pack_weight(ref.rand_s8(rng, (n, k)))
    for z in (0, 1, 128, 254, 255):
        per_tensor = ops.gemm_s32(a, z, p, isa=path)
        per_row = ops.gemm_s32(a, np.full(m, z, np.int32), p, isa=path)
        length_one = ops.gemm_s32(a, np.array([z], np.int32), p, isa=path)
        assert np.array_equal(per_tensor, per_row) and np.array_equal(per_tensor, length_one)


@pytest.mark.parametrize("make_zp", [
    lambda z: z.tolist(),
    lambda z: z.astype(np.int64),
    lambda z: z.astype(np.uint8),
    lambda z: z.astype(np.int16),
    lambda z: torch.from_numpy(z.astype(np.int32)),
    lambda z: torch.from_numpy(z.astype(np.int64)),
])
def test_zero_point_container_types(rng, ref, make_zp):
    m, k, n = 6, 9, 10
    a = ref.rand_u8(rng, (m, k))
    w = ref.rand_s8(rng, (n, k))
    z = rng.integers(0, 256, m)
    got = ops.gemm_s32(a, make_zp(z), ops.pack_weight(w))
    np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, z, w))


def test_scalar_zero_point_types(rng, ref):
    a = ref.rand_u8(rng, (4, 9))
    w = ref.rand_s8(rng, (3, 9))
    p = ops.pack_weight(w)
    expected = ref.gemm_s32(a, 200, w)
    for z in (200, np.int32(200), np.uint8(200), np.int64(200), np.array(200),
              torch.tensor(200)):
        np.testing.assert_array_equal(ops.gemm_s32(a, z, p).astype(np.int64), expected)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 7, 17), (16, 64, 48), (9, 131, 50)])
def test_int8_activations(rng, ref, path, m, k, n):
    a = ref.rand_s8(rng, (m, k), 0.3)
    w = ref.rand_s8(rng, (n, k), 0.3)
    p = ops.pack_weight(w)
    for zp in (0, -128, 127, int(rng.integers(-128, 128)),
               rng.integers(-128, 128, m).astype(np.int32)):
        got = ops.gemm_s32(a, zp, p, isa=path)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, zp, w))
        # The +128 shift: same as uint8 activations a + 128 with zero point zp + 128.
        shifted = (a.astype(np.int16) + 128).astype(np.uint8)
        assert np.array_equal(got, ops.gemm_s32(shifted, np.asarray(zp) + 128, p, isa=path))


def test_int8_activations_extremes(ref, path):
    k, n = 333, 20
    a = np.array([[-128] * k, [127] * k, [0] * k], np.int8)
    w = np.full((n, k), -128, np.int8)
    zp = np.array([127, -128, 0], np.int32)
    got = ops.gemm_s32(a, zp, ops.pack_weight(w), isa=path)
    np.testing.assert_array_equal(got.astype(np.int64), ref.gemm_s32(a, zp, w))
    assert got[0, 0] == (-128 - 127) * -128 * k


def test_int8_torch_activations(rng, ref):
    a = ref.rand_s8(rng, (4, 12))
    w = ref.rand_s8(rng, (6, 12))
    got = ops.gemm_s32(torch.from_numpy(a), torch.tensor([-3, 0, 5, 127]), ops.pack_weight(w))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int32
    np.testing.assert_array_equal(got.numpy(), ref.gemm_s32(a, [-3, 0, 5, 127], w))


# ---------------------------------------------------------- types, empty M, no aliasing


def test_torch_in_torch_out_numpy_in_numpy_out(rng, ref):
    a = ref.rand_u8(rng, (5, 20))
    w = ref.rand_s8(rng, (7, 20))
    p = ops.pack_weight(w)
    t = ops.gemm_s32(torch.from_numpy(a), 3, p)
    n = ops.gemm_s32(a, 3, p)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int32 and t.shape == (5, 7)
    assert isinstance(n, np.ndarray) and n.dtype == np.int32
    np.testing.assert_array_equal(t.numpy(), n)
    # The packed argument may be the PackedWeight, its tensor or a numpy copy.
    assert np.array_equal(ops.gemm_s32(a, 3, p.buffer), n)
    assert np.array_equal(ops.gemm_s32(a, 3, p.buffer.numpy().copy()), n)


def test_inputs_are_not_modified(rng, ref, path):
    a = ref.rand_s8(rng, (9, 33))
    w = ref.rand_s8(rng, (17, 33))
    p = ops.pack_weight(w)
    a0, buf0 = a.copy(), p.buffer.clone()
    zp = rng.integers(-128, 128, 9).astype(np.int32)
    zp0 = zp.copy()
    ops.gemm_s32(a, zp, p, isa=path)
    assert np.array_equal(a, a0) and np.array_equal(zp, zp0) and torch.equal(p.buffer, buf0)


@pytest.mark.parametrize("n", [1, 16, 37])
def test_empty_m_gives_empty_output(path, n):
    p = ops.pack_weight(np.ones((n, 5), np.int8))
    a = np.zeros((0, 5), np.uint8)
    for out in (ops.gemm_s32(a, 0, p, isa=path),
                ops.gemm_s32(a, np.zeros(0, np.int32), p, isa=path)):
        assert out.shape == (0, n) and out.dtype == np.int32
    t = ops.gemm_s32(torch.from_numpy(a), 0, p, isa=path)
    assert isinstance(t, torch.Tensor) and t.shape == (0, n) and t.dtype == torch.int32
    s = ops.gemm_s32(np.zeros((0, 5), np.int8), -5, p, isa=path)
    assert s.shape == (0, n)


# ---------------------------------------------------------------------- bad arguments


def _setup(rng, ref, m=3, k=8, n=5):
    a = ref.rand_u8(rng, (m, k))
    return a, ops.pack_weight(ref.rand_s8(rng, (n, k)))


@pytest.mark.parametrize("make_a, exc, words", [
    (lambda a: a.astype(np.float32), TypeError, ["a", "uint8"]),
    (lambda a: a.astype(np.int16), TypeError, ["a"]),
    (lambda a: a.astype(np.int32), TypeError, ["a"]),
    (lambda a: torch.from_numpy(a.astype(np.float32)), TypeError, ["a"]),
    (lambda a: a.tolist(), TypeError, ["a"]),
    (lambda a: a[0], ValueError, ["a", "2-D"]),
    (lambda a: a[None], ValueError, ["a", "2-D"]),
    (lambda a: np.asfortranarray(a), ValueError, ["a", "contiguous"]),
    (lambda a: np.repeat(a, 2, axis=1)[:, ::2], ValueError, ["a", "contiguous"]),
    (lambda a: torch.from_numpy(a.T.copy()).t(), ValueError, ["a", "contiguous"]),
    (lambda a: a[:, :-1].copy(), ValueError, ["K=7", "K=8"]),
    (lambda a: np.concatenate([a, a], axis=1), ValueError, ["K=16", "K=8"]),
    # torch tensors that numpy cannot view, or views of the wrong rank
    (lambda a: torch.from_numpy(a).to("meta"), ValueError, ["a", "CPU", "meta"]),
    (lambda a: torch.from_numpy(a).to_sparse(), ValueError, ["a", "dense"]),
    (lambda a: torch.nested.nested_tensor([torch.from_numpy(a)]), ValueError, ["a", "dense"]),
    (lambda a: torch.from_numpy(a[0]), ValueError, ["a", "2-D"]),
    (lambda a: torch.from_numpy(a.view(np.int8)).view(torch.uint8)[:, ::2], ValueError,
     ["a", "contiguous"]),
])
def test_bad_activations(rng, ref, make_a, exc, words):
    a, p = _setup(rng, ref)
    with pytest.raises(exc) as info:
        ops.gemm_s32(make_a(a), 0, p)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("zp, exc", [
    (256, ValueError), (-1, ValueError), (1000, ValueError), (np.array([0, 256, 0]), ValueError),
    (np.array([0, -1, 0]), ValueError), ([1, 2], ValueError), (np.zeros(4, np.int32), ValueError),
    (np.zeros((3, 1), np.int32), ValueError), (np.array([1.0, 2.0, 3.0]), TypeError),
    (True, TypeError),
])
@pytest.mark.parametrize("as_torch", [False, True])  # torch: ops' fast path, then checks
def test_bad_zero_points_uint8(rng, ref, zp, exc, as_torch):
    a, p = _setup(rng, ref)
    with pytest.raises(exc, match="a_zero_point"):
        ops.gemm_s32(torch.from_numpy(a) if as_torch else a, zp, p)


@pytest.mark.parametrize("m", [0, 1, 7])
def test_torch_uint8_call_takes_the_dlpack_route_and_is_exact(rng, ref, m, monkeypatch):
    """gemm_s32's common call (torch uint8 [M, K], int zero point) must not fall back to
    the checked path, and its output is exact, aligned and its own."""
    a, p = _setup(rng, ref, m=m, k=37, n=21)
    w = p.unpack().numpy()
    big = torch.from_numpy(ref.rand_u8(rng, (m + 2, 37)))
    monkeypatch.setattr(ops, "_activations", lambda *args: pytest.fail("took the checked path"))
    for at in (torch.from_numpy(a), big[2:]):  # and a view with a storage offset
        y = ops.gemm_s32(at, 5, p, threads=2)
        assert y.dtype == torch.int32 and y.shape == (m, 21) and y.data_ptr() % 64 == 0
        assert np.array_equal(y.numpy(), ref.gemm_s32(at.numpy(), 5, w))
        y.add_(1)  # writable, its own memory


@pytest.mark.parametrize("make_a", [
    lambda a: a.t(), lambda a: a[:, ::2], lambda a: a.to(torch.int8), lambda a: a[:, :7],
    lambda a: a.reshape(-1), lambda a: a.reshape(1, 3, 8)], ids=[
    "transposed", "strided", "int8", "wrong_k", "1d", "3d"])
def test_the_gemm_dlpack_call_declines_what_it_cannot_read(rng, ref, make_a):
    a, p = _setup(rng, ref, m=3, k=8, n=5)
    at = make_a(torch.from_numpy(a))
    assert int8kit._C.gemm_s32_dlpack(torch._C._to_dlpack(at), 0, p._view, 1) is None
    for not_a_capsule in (a, None, 7):
        assert int8kit._C.gemm_s32_dlpack(not_a_capsule, 0, p._view, 1) is None
    with pytest.raises(ValueError, match="a_zero_point"):
        int8kit._C.gemm_s32_dlpack(torch._C._to_dlpack(torch.from_numpy(a)), 256, p._view, 1)


@pytest.mark.parametrize("zp", [128, -129, np.array([0, 128, 0]), 255])
def test_bad_zero_points_int8(rng, ref, zp):
    a, p = _setup(rng, ref)
    with pytest.raises(ValueError, match="a_zero_point"):
        ops.gemm_s32(a.view(np.int8), zp, p)


def test_fractional_zero_point_is_rejected(rng, ref):
    a, p = _setup(rng, ref)
    with pytest.raises(TypeError, match="a_zero_point"):
        ops.gemm_s32(a, 3.7, p)


def test_wrapping_zero_point_is_rejected(rng, ref):
    a, p = _setup(rng, ref)
    with pytest.raises(ValueError, match="a_zero_point"):
        ops.gemm_s32(a, np.array([2**32 + 5] * 3, np.int64), p)


def test_huge_python_int_zero_point_raises(rng, ref):
    a, p = _setup(rng, ref)
    with pytest.raises((ValueError, OverflowError)):
        ops.gemm_s32(a, 2**40, p)




def test_arrays_that_were_pickled_are_accepted(rng, ref):
    """A pickled array (multiprocessing, joblib) carries its own dtype object: equal to
    numpy's, not the same one. It was refused with "must have dtype uint8, got uint8"."""
    import pickle

    a = pickle.loads(pickle.dumps(ref.rand_u8(rng, (4, 40))))
    w = pickle.loads(pickle.dumps(ref.rand_s8(rng, (8, 40))))
    out = pickle.loads(pickle.dumps(np.zeros((4, 8), np.int32)))
    from int8kit import _C
    got = _C.gemm(a, np.array([3], np.int32), ops.pack_weight(w).buffer.numpy(), out, None,
                  None, None, False, 1.0, 0, 1, "")
    np.testing.assert_array_equal(got, ref.gemm_s32(a, 3, w))
    x = pickle.loads(pickle.dumps(rng.normal(size=(4, 8)).astype(np.float32)))
    ops.quantize_dynamic_u8(x)
    with pytest.raises(TypeError, match="float32"):  # a byte-swapped float32 is not float32
        ops.quantize_dynamic_u8(x.astype(">f4"))


def test_output_overlapping_an_input_is_refused(rng, ref):
    from int8kit import _C
    a = ref.rand_u8(rng, (16, 96))
    packed = ops.pack_weight(ref.rand_s8(rng, (96, 96))).buffer.numpy()
    args = (np.array([128], np.int32), packed)
    with pytest.raises(ValueError, match="overlap"):
        _C.gemm(a, *args, a, np.ones(1, np.float32), np.ones(96, np.float32), None, False,
                1.0, 128, 1, "")  # uint8 out over a
    with pytest.raises(ValueError, match="overlap"):
        _C.gemm(ref.rand_u8(rng, (1, 96)), *args, packed[:96].reshape(1, 96),
                np.ones(1, np.float32), np.ones(96, np.float32), None, False, 1.0, 128, 1, "")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
@pytest.mark.parametrize("as_torch", [False, True])
def test_bad_threads(rng, ref, threads, as_torch):
    a, p = _setup(rng, ref)
    with pytest.raises(ValueError, match="threads"):
        ops.gemm_s32(torch.from_numpy(a) if as_torch else a, 0, p, threads=threads)


@pytest.mark.parametrize("isa", ["bogus", "AVX2", "", "sse"])
def test_bad_isa_argument(rng, ref, isa):
    a, p = _setup(rng, ref)
    with pytest.raises(ValueError, match="isa"):
        ops.gemm_s32(a, 0, p, isa=isa)


# ------------------------------------------------------------------- property test


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(m=st.integers(0, 40), k=st.integers(1, 300), n=st.integers(1, 100),
       signed=st.booleans(), per_row=st.booleans(),
       zp_choice=st.sampled_from(["low", "high", "mid", "random"]),
       extreme_frac=st.sampled_from([0.0, 0.5, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_property_every_path_matches_reference(ref, m, k, n, signed, per_row, zp_choice,
                                               extreme_frac, seed):
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 127) if signed else (0, 255)
    a = (ref.rand_s8 if signed else ref.rand_u8)(rng, (m, k), extreme_frac)
    w = ref.rand_s8(rng, (n, k), extreme_frac)
    pick = {"low": lo, "high": hi, "mid": (lo + hi) // 2}
    if per_row:
        zp = (rng.integers(lo, hi + 1, m) if zp_choice == "random"
              else np.full(m, pick[zp_choice])).astype(np.int32)
    else:
        zp = int(rng.integers(lo, hi + 1)) if zp_choice == "random" else pick[zp_choice]
    expected = ref.gemm_s32(a, zp, w)
    _all_paths_s32(a, zp, ops.pack_weight(w), expected)
