"""Kernel path choice: cpu_info(), per-call isa=, set_isa/use_isa, and INT8KIT_ISA (read
once per process, so those tests run in fresh interpreters)."""

import json
import textwrap

import numpy as np
import pytest
import torch

import int8kit
from int8kit import ops

ALL_PATHS = ("scalar", "avx2", "avx_vnni", "avx512_vnni", "amx_int8")
SUPPORTED_PATHS = list(int8kit.cpu_info()["supported_paths"])
UNSUPPORTED_PATHS = [p for p in ALL_PATHS if p not in SUPPORTED_PATHS]

FEATURES = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
            "avx_vnni", "amx_int8", "os_ymm", "os_zmm"}


# ------------------------------------------------------------------------------ cpu_info


def test_cpu_info_keys_and_types():
    info = int8kit.cpu_info()
    assert {"features", "supported_paths", "best_path", "active_path", "active_path_reason",
            "threads"} <= set(info)
    assert set(info["features"]) == FEATURES
    assert all(isinstance(v, bool) for v in info["features"].values())
    assert isinstance(info["active_path_reason"], str) and info["active_path_reason"]
    assert info["threads"] == torch.get_num_threads()


def test_cpu_info_is_consistent():
    info = int8kit.cpu_info()
    supported, f = list(info["supported_paths"]), info["features"]
    assert supported[0] == "scalar"
    assert supported == [p for p in ALL_PATHS if p in supported]  # known names, in order
    assert info["best_path"] == supported[-1]
    assert info["active_path"] in supported
    assert info["active_path"] == ops.get_isa()
    if "avx2" in supported:
        assert f["avx2"] and f["fma"] and f["os_ymm"]
    if "avx_vnni" in supported:
        assert f["avx_vnni"] and "avx2" in supported
    if "avx512_vnni" in supported:
        assert all(f[k] for k in ("avx512f", "avx512bw", "avx512vl", "avx512dq",
                                  "avx512_vnni", "os_zmm"))
    if "amx_int8" in supported:
        assert f["amx_int8"] and "avx512_vnni" in supported
    # A feature the OS does not save state for is never reported.
    if not f["os_ymm"]:
        assert not (f["avx2"] or f["fma"] or f["os_zmm"])
    if not f["os_zmm"]:
        assert not (f["avx512f"] or f["avx512_vnni"])


def test_int8kit_exposes_cpu_info():
    assert int8kit.cpu_info is ops.cpu_info
    assert "cpu_info" in int8kit.__all__


# ------------------------------------------------------------------ forcing in-process


def test_set_isa_and_use_isa(path):
    start = ops.get_isa()
    with ops.use_isa(path):
        assert ops.get_isa() == path
        info = int8kit.cpu_info()
        assert info["active_path"] == path
        assert "set_active_isa" in info["active_path_reason"]
    assert ops.get_isa() == start
    ops.set_isa(path)
    assert ops.get_isa() == path  # (restored by the autouse fixture)


def test_use_isa_restores_on_error(path):
    start = ops.get_isa()
    with pytest.raises(KeyError):
        with ops.use_isa(path):
            raise KeyError("boom")
    assert ops.get_isa() == start


def test_active_path_is_used_when_isa_not_given(rng, ref, path):
    """Without isa=, a call runs on the active path, and gives the oracle's bits."""
    a = ref.rand_u8(rng, (9, 35))
    w = ref.rand_s8(rng, (20, 35))
    p = ops.pack_weight(w)
    with ops.use_isa(path):
        got = ops.gemm_f32(a, 7, 0.01, p, 0.02, np.ones(20, np.float32))
    ref.assert_bit_identical(got, ops.gemm_f32(a, 7, 0.01, p, 0.02, np.ones(20, np.float32),
                                               isa="scalar"), path)


def test_isa_argument_does_not_change_active_path(rng, ref, path):
    before = ops.get_isa()
    a = ref.rand_u8(rng, (2, 5))
    ops.gemm_s32(a, 0, ops.pack_weight(ref.rand_s8(rng, (3, 5))), isa=path)
    assert ops.get_isa() == before


@pytest.mark.parametrize("name", ["bogus", "AVX512", "", "scalar "])
def test_bad_path_names(name):
    with pytest.raises(ValueError, match="isa"):
        ops.set_isa(name)
    with pytest.raises(ValueError):
        with ops.use_isa(name):
            pass


@pytest.mark.skipif(not UNSUPPORTED_PATHS, reason="every path runs on this CPU")
@pytest.mark.parametrize("name", UNSUPPORTED_PATHS or ["none"])
def test_unsupported_path_raises(rng, ref, name):
    a = ref.rand_u8(rng, (2, 5))
    p = ops.pack_weight(ref.rand_s8(rng, (3, 5)))
    with pytest.raises(RuntimeError, match=name):
        ops.gemm_s32(a, 0, p, isa=name)
    with pytest.raises(RuntimeError, match=name):
        ops.set_isa(name)


# ---------------------------------------------------------------- INT8KIT_ISA (subprocess)

CHILD = textwrap.dedent("""
    import json
    import numpy as np
    out = {}
    import int8kit
    from int8kit import ops
    out["imported"] = True
    rng = np.random.default_rng(1234)
    a = rng.integers(0, 256, (7, 37), dtype=np.uint8)
    w = rng.integers(-128, 128, (21, 37), dtype=np.int8)
    x = rng.normal(0, 1, (5, 77)).astype(np.float32)
    p = ops.pack_weight(w)
    def attempt(key, fn):
        try:
            out[key] = fn()
        except Exception as e:
            out[key + "_error"] = [type(e).__name__, str(e)]
    attempt("s32", lambda: ops.gemm_s32(a, 3, p).tolist())
    attempt("s32_again", lambda: ops.gemm_s32(a, 3, p).tolist())
    attempt("f32_bits", lambda: ops.gemm_f32(a, 3, 0.01, p, 0.02).view(np.uint32).tolist())
    attempt("quant", lambda: [v.tolist() for v in ops.quantize_dynamic_u8(x)])
    attempt("info", lambda: {k: v for k, v in int8kit.cpu_info().items() if k != "features"})
    print(json.dumps(out))
""")


def _child_inputs():
    rng = np.random.default_rng(1234)
    a = rng.integers(0, 256, (7, 37), dtype=np.uint8)
    w = rng.integers(-128, 128, (21, 37), dtype=np.int8)
    x = rng.normal(0, 1, (5, 77)).astype(np.float32)
    return a, w, x


@pytest.fixture(scope="module")
def children(ref):
    """One fresh interpreter per INT8KIT_ISA value, started together (each imports torch)."""
    from concurrent.futures import ThreadPoolExecutor

    settings = {p: p for p in ALL_PATHS}
    settings.update({"bogus": "bogus", "empty": "", "unset": None})
    with ThreadPoolExecutor(len(settings)) as pool:
        futures = {k: pool.submit(ref.run_python, CHILD, {"INT8KIT_ISA": v})
                   for k, v in settings.items()}
        return {k: f.result() for k, f in futures.items()}


def _parsed(proc):
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("forced", SUPPORTED_PATHS)
def test_env_forces_the_path(children, ref, forced):
    out = _parsed(children[forced])
    assert out["info"]["active_path"] == forced
    assert "INT8KIT_ISA" in out["info"]["active_path_reason"]
    a, w, x = _child_inputs()
    p = ops.pack_weight(w)
    np.testing.assert_array_equal(out["s32"], ref.gemm_s32(a, 3, w))
    expected_f32 = ops.gemm_f32(a, 3, 0.01, p, 0.02, isa=forced)
    np.testing.assert_array_equal(np.array(out["f32_bits"], np.uint32),
                                  expected_f32.view(np.uint32))
    q, s, z = ref.quantize_dynamic_u8(x, per_row=True)
    np.testing.assert_array_equal(out["quant"][0], q)
    np.testing.assert_array_equal(np.array(out["quant"][1], np.float32), s)
    np.testing.assert_array_equal(out["quant"][2], z)


@pytest.mark.parametrize("setting", ["unset", "empty"])
def test_no_env_picks_the_best_path(children, setting):
    out = _parsed(children[setting])
    assert out["info"]["active_path"] == out["info"]["best_path"]
    assert out["info"]["active_path"] == SUPPORTED_PATHS[-1]
    assert "INT8KIT_ISA" not in out["info"]["active_path_reason"]


def test_bogus_env_raises_a_clear_error_on_the_first_kernel_call(children):
    out = _parsed(children["bogus"])  # rc 0: no crash, and importing works
    assert out["imported"]
    for key in ("s32", "s32_again", "f32_bits", "quant"):
        assert key not in out, f"{key} ran despite INT8KIT_ISA=bogus"
        kind, message = out[key + "_error"]
        assert kind in ("ValueError", "RuntimeError"), (key, kind, message)
        assert "bogus" in message, message
        assert all(name in message for name in ALL_PATHS), message


def test_bogus_env_error_names_the_variable(children):
    out = _parsed(children["bogus"])
    assert "INT8KIT_ISA" in out["s32_error"][1]


def test_cpu_info_reports_a_bogus_env_instead_of_raising(children):
    info = _parsed(children["bogus"])["info"]  # `int8kit info` must be able to say why
    assert info["active_path"] is None
    assert "INT8KIT_ISA" in info["active_path_reason"] and "bogus" in info["active_path_reason"]


@pytest.mark.parametrize("forced", UNSUPPORTED_PATHS or ["none"])
def test_env_asking_for_an_unsupported_path_raises(children, forced):
    if forced == "none":
        pytest.skip("every path runs on this CPU")
    out = _parsed(children[forced])
    kind, message = out["s32_error"]
    assert kind == "RuntimeError" and "INT8KIT_ISA" in message and forced in message
