"""Weight packing: layout, header, round trip, argument checks, corrupted buffers."""

import numpy as np
import pytest
import torch

from int8kit import ops

PANEL, KGROUP, HEADER = 16, 4, 64
MAGIC, VERSION = 0x38494B50, 1

SHAPES = [(1, 1), (1, 4), (1, 5), (3, 3), (16, 4), (16, 64), (17, 1), (17, 7), (31, 33),
          (32, 8), (33, 130), (48, 12), (50, 257), (100, 3)]


def ceil_div(a, b):
    return -(-a // b)


def expected_nbytes(n, k):
    panels, groups = ceil_div(n, PANEL), ceil_div(k, KGROUP)
    return HEADER + panels * PANEL * 4 + panels * groups * 64


def expected_layout(w):
    """pack.h's layout built with numpy: header, padded int32 column sums, then panels of
    16 columns with each group of 4 k as 64 contiguous bytes (column c at [4c, 4c+4))."""
    n, k = w.shape
    panels, groups = ceil_div(n, PANEL), ceil_div(k, KGROUP)
    padded = np.zeros((panels * PANEL, groups * KGROUP), np.int8)
    padded[:n, :k] = w
    colsum = np.zeros(panels * PANEL, np.int32)
    colsum[:n] = w.astype(np.int64).sum(axis=1)
    body = padded.reshape(panels, PANEL, groups, KGROUP).transpose(0, 2, 1, 3)
    return colsum, np.ascontiguousarray(body).reshape(-1).view(np.uint8)


def header_fields(buf):
    raw = np.asarray(buf)[:HEADER].tobytes()
    u32 = np.frombuffer(raw[:8], np.uint32)
    i64 = np.frombuffer(raw[8:40], np.int64)
    nbytes = np.frombuffer(raw[40:48], np.uint64)[0]
    return dict(magic=int(u32[0]), version=int(u32[1]), n=int(i64[0]), k=int(i64[1]),
                k_groups=int(i64[2]), n_panels=int(i64[3]), nbytes=int(nbytes))


def test_constants():
    assert ops.PANEL == PANEL
    # MAX_K is the largest K for which 255 * 128 * K fits in int32.
    assert 255 * 128 * ops.MAX_K <= 2**31 - 1
    assert 255 * 128 * (ops.MAX_K + 1) > 2**31 - 1
    assert ops.MAX_K == 65793


@pytest.mark.parametrize("n,k", SHAPES)
def test_unpack_round_trips(rng, ref, n, k):
    w = ref.rand_s8(rng, (n, k), extreme_frac=0.2)
    p = ops.pack_weight(w)
    assert isinstance(p, ops.PackedWeight)
    assert p.shape == (n, k) and p.out_features == n and p.in_features == k
    back = p.unpack()
    assert isinstance(back, torch.Tensor) and back.dtype == torch.int8
    np.testing.assert_array_equal(back.numpy(), w)


@pytest.mark.parametrize("n,k", SHAPES)
def test_layout_header_and_column_sums(rng, ref, n, k):
    w = ref.rand_s8(rng, (n, k), extreme_frac=0.2)
    p = ops.pack_weight(w)
    buf = p.buffer.numpy()
    assert p.buffer.dtype == torch.uint8 and p.buffer.dim() == 1
    assert p.nbytes == buf.size == expected_nbytes(n, k)
    h = header_fields(buf)
    assert h == dict(magic=MAGIC, version=VERSION, n=n, k=k, k_groups=ceil_div(k, KGROUP),
                     n_panels=ceil_div(n, PANEL), nbytes=expected_nbytes(n, k))
    colsum, body = expected_layout(w)
    npad = colsum.size
    got_colsum = np.frombuffer(buf[HEADER:HEADER + 4 * npad].tobytes(), np.int32)
    np.testing.assert_array_equal(got_colsum, colsum)
    # Weights, zero padding of columns and of K included.
    np.testing.assert_array_equal(buf[HEADER + 4 * npad:], body)


def test_column_sums_at_extremes():
    n, k = 20, 1000
    w = np.full((n, k), -128, np.int8)
    w[1::2] = 127
    buf = ops.pack_weight(w).buffer.numpy()
    colsum = np.frombuffer(buf[HEADER:HEADER + 4 * 32].tobytes(), np.int32)
    np.testing.assert_array_equal(colsum[:n], np.where(np.arange(n) % 2, 127 * k, -128 * k))
    np.testing.assert_array_equal(colsum[n:], 0)


def test_numpy_and_torch_inputs_pack_identically(rng, ref):
    w = ref.rand_s8(rng, (37, 29))
    a = ops.pack_weight(w).buffer
    b = ops.pack_weight(torch.from_numpy(w.copy())).buffer
    c = ops.pack_weight(w).buffer
    assert torch.equal(a, b) and torch.equal(a, c)


def test_packing_copies_the_weight(rng, ref):
    w = ref.rand_s8(rng, (5, 9))
    expected = w.copy()
    p = ops.pack_weight(w)
    w[:] = 0  # the packed buffer must not alias the source
    np.testing.assert_array_equal(p.unpack().numpy(), expected)


def test_k_at_bound_is_accepted():
    w = np.zeros((2, ops.MAX_K), np.int8)
    w[1, -1] = -128
    p = ops.pack_weight(w)
    assert p.shape == (2, ops.MAX_K)
    np.testing.assert_array_equal(p.unpack().numpy(), w)


def test_repr_mentions_shape():
    p = ops.pack_weight(np.ones((3, 5), np.int8))
    r = repr(p)
    assert "N=3" in r and "K=5" in r and "PackedWeight" in r


def test_packed_weight_from_existing_buffer(rng, ref):
    w = ref.rand_s8(rng, (9, 10))
    p = ops.pack_weight(w)
    again = ops.PackedWeight(p.buffer.clone())
    assert again.shape == (9, 10)
    np.testing.assert_array_equal(again.unpack().numpy(), w)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad, exc, words", [
    (np.zeros((3, 4), np.uint8), TypeError, ["w", "int8"]),
    (np.zeros((3, 4), np.float32), TypeError, ["w", "int8"]),
    (np.zeros((3, 4), np.int16), TypeError, ["w", "int8"]),
    (torch.zeros((3, 4), dtype=torch.float32), TypeError, ["w", "int8"]),
    (torch.zeros((3, 4), dtype=torch.bfloat16), TypeError, ["w"]),
    ([[1, 2], [3, 4]], TypeError, ["w"]),
    (np.zeros(4, np.int8), ValueError, ["w", "2-D"]),
    (np.zeros((2, 3, 4), np.int8), ValueError, ["w", "2-D"]),
    (np.zeros((4, 8), np.int8)[:, ::2], ValueError, ["w", "contiguous"]),
    (torch.zeros((8, 4), dtype=torch.int8).t(), ValueError, ["w", "contiguous"]),
    (np.zeros((0, 4), np.int8), ValueError, ["w"]),
    (np.zeros((4, 0), np.int8), ValueError, ["w"]),
])
def test_pack_rejects_bad_weights(bad, exc, words):
    with pytest.raises(exc) as info:
        ops.pack_weight(bad)
    for word in words:
        assert word in str(info.value)


def test_pack_rejects_k_beyond_bound():
    with pytest.raises(ValueError, match=r"K=65794.*65793|65793.*65794"):
        ops.pack_weight(np.zeros((1, ops.MAX_K + 1), np.int8))


# --------------------------------------------------------------------- corrupted buffers


def _packed(rng, ref, n=20, k=7):
    w = ref.rand_s8(rng, (n, k))
    return w, ops.pack_weight(w)


def _rejected(buf, a):
    """A corrupted buffer must raise ValueError in PackedWeight() and in the GEMM."""
    with pytest.raises(ValueError):
        ops.PackedWeight(buf)
    with pytest.raises(ValueError):
        ops.gemm_s32(a, 0, buf)
    with pytest.raises(ValueError):
        ops.gemm_f32(a, 0, 1.0, buf.numpy(), 1.0)


def test_flipped_magic_byte_raises(rng, ref):
    w, p = _packed(rng, ref)
    a = ref.rand_u8(rng, (3, w.shape[1]))
    for byte in range(4):
        buf = p.buffer.clone()
        buf[byte] ^= 0xFF
        with pytest.raises(ValueError, match="magic"):
            ops.PackedWeight(buf)
        _rejected(buf, a)


def test_wrong_version_raises(rng, ref):
    w, p = _packed(rng, ref)
    buf = p.buffer.clone()
    buf[4] += 1
    with pytest.raises(ValueError, match="version"):
        ops.PackedWeight(buf)
    _rejected(buf, ref.rand_u8(rng, (2, w.shape[1])))


@pytest.mark.parametrize("keep", [0, 1, 10, 63, 64, 65, "minus1", "minus64"])
def test_truncated_buffer_raises(rng, ref, keep):
    w, p = _packed(rng, ref)
    size = p.nbytes
    keep = {"minus1": size - 1, "minus64": size - 64}.get(keep, keep)
    _rejected(p.buffer[:keep].clone(), ref.rand_u8(rng, (2, w.shape[1])))


def test_extended_buffer_raises(rng, ref):
    w, p = _packed(rng, ref)
    longer = torch.cat([p.buffer, torch.zeros(16, dtype=torch.uint8)])
    _rejected(longer, ref.rand_u8(rng, (2, w.shape[1])))


@pytest.mark.parametrize("field, offset, value", [
    ("n", 8, 0), ("n", 8, -1), ("n", 8, 1000), ("n", 8, 2**62),
    ("k", 16, 0), ("k", 16, -5), ("k", 16, 65794), ("k", 16, 4000),
    ("k_groups", 24, 3), ("k_groups", 24, 0), ("n_panels", 32, 1), ("n_panels", 32, 3),
    ("nbytes", 40, 1 << 40), ("nbytes", 40, 0),
])
def test_inconsistent_header_field_raises(rng, ref, field, offset, value):
    w, p = _packed(rng, ref, n=20, k=7)
    buf = p.buffer.clone()
    buf[offset:offset + 8] = torch.from_numpy(np.array([value], np.int64).view(np.uint8))
    _rejected(buf, ref.rand_u8(rng, (2, w.shape[1])))


def test_every_header_bit_flip_is_rejected_or_harmless(rng, ref):
    """Flip each bit of the header in turn: the call must raise ValueError or run; it must
    never crash. Magic, version and nbytes are always checked; the reserved bytes are not
    read, so flips there change nothing."""
    w, p = _packed(rng, ref, n=20, k=7)
    a = ref.rand_u8(rng, (3, 7))
    expected = ops.gemm_s32(a, 5, p)
    rejected = 0
    for byte in range(HEADER):
        for bit in range(8):
            buf = p.buffer.clone()
            buf[byte] ^= 1 << bit
            try:
                info = ops.PackedWeight(buf)
            except ValueError:
                rejected += 1
                assert byte < 48, f"flip in reserved byte {byte} was rejected"
                continue
            assert byte not in range(0, 8) and byte not in range(40, 48), \
                f"flip of bit {bit} in byte {byte} (magic/version/nbytes) was accepted"
            n, k = info.shape
            a2 = a if k == 7 else ref.rand_u8(rng, (3, k))
            got = ops.gemm_s32(a2, 5, buf)
            assert got.shape == (3, n)
            if byte >= 48:
                np.testing.assert_array_equal(got, expected)
    assert rejected >= 8 * 16  # at least every magic/version/nbytes flip


def test_packed_buffer_type_checks(rng, ref):
    w, p = _packed(rng, ref)
    a = ref.rand_u8(rng, (2, w.shape[1]))
    with pytest.raises(TypeError, match="packed"):
        ops.gemm_s32(a, 0, p.buffer.view(torch.int8))
    with pytest.raises(ValueError, match="packed"):
        ops.gemm_s32(a, 0, p.buffer.reshape(1, -1))
    with pytest.raises(ValueError, match="packed"):
        ops.gemm_s32(a, 0, torch.cat([p.buffer, p.buffer])[::2])
    with pytest.raises(TypeError, match="packed"):
        ops.gemm_s32(a, 0, w)
    with pytest.raises(TypeError, match="packed"):
        ops.gemm_s32(a, 0, bytes(p.buffer.numpy()))


def test_misaligned_copy_of_buffer_works(rng, ref, path):
    """A packed buffer that lives at an odd address (e.g. inside a bigger tensor) reads the
    same as the original."""
    w, p = _packed(rng, ref, n=40, k=37)
    a = ref.rand_u8(rng, (9, 37))
    store = np.zeros(p.nbytes + 1, np.uint8)
    store[1:] = p.buffer.numpy()
    shifted = store[1:]
    assert shifted.ctypes.data % 4 != 0
    np.testing.assert_array_equal(ops.gemm_s32(a, 7, shifted, isa=path),
                                  ref.gemm_s32(a, 7, w))
