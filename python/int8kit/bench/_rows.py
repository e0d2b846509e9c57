"""The row every bench section reports, whatever it measures.

A row compares int8kit with float32 and with the fastest installed peer (torch.ao,
torch._int_mm, ONNX Runtime, ...) at one shape/model and thread count.
"""

from __future__ import annotations

ROW_KEYS = ("section", "name", "threads", "int8kit_ms", "float_ms", "best_peer",
            "best_peer_ms", "speedup_vs_float", "speedup_vs_best_peer", "fraction_of_peak",
            "latency_ms", "extra")


def make_row(section: str, name: str, threads: int, int8kit_ms: float,
             float_ms: float | None, peers_ms: dict[str, float] | None = None, *,
             fraction_of_peak: float | None = None, latency_ms: dict | None = None,
             extra: dict | None = None, int8kit_ms_beside_float: float | None = None) -> dict:
    """peers_ms: {peer name: median ms} of the peers that ran; the fastest is kept.
    latency_ms: {contender: {"p25", "p50", "p75", ...[, "samples"]}} for the plots.
    int8kit_ms_beside_float: int8kit's median from the rotation float_ms was timed in, when
    float32 ran apart from the int8 contenders; the speedup vs float divides by it.
    Speedups are other / int8kit (> 1: int8kit is faster)."""
    vs_float = int8kit_ms_beside_float or int8kit_ms
    peers = {k: v for k, v in (peers_ms or {}).items() if v is not None}
    best = min(peers, key=peers.get) if peers else None
    best_ms = peers[best] if best else None
    return {
        "section": section, "name": name, "threads": threads,
        "int8kit_ms": int8kit_ms, "float_ms": float_ms,
        "best_peer": best, "best_peer_ms": best_ms,
        "speedup_vs_float": float_ms / vs_float if float_ms and vs_float else None,
        "speedup_vs_best_peer": best_ms / int8kit_ms if best_ms and int8kit_ms else None,
        "fraction_of_peak": fraction_of_peak,
        "latency_ms": latency_ms or {}, "extra": extra or {},
    }


def check_rows(section: str, result) -> list[dict]:
    """A section's result must be a dict with a list of rows carrying every ROW_KEYS key."""
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise TypeError(f"bench section {section!r} must return a dict with a 'rows' list, "
                        f"got {type(result).__name__}")
    for i, row in enumerate(result["rows"]):
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"bench section {section!r}: row {i} lacks {missing}")
    return result["rows"]
