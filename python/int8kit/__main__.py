"""The int8kit command line: `int8kit info` and `int8kit bench` (also `python -m int8kit`)."""

from __future__ import annotations

import argparse
import sys


def _info(out) -> int:
    import torch

    import int8kit
    info = int8kit.cpu_info()
    flags = info.get("features", {})
    features = [k for k, v in flags.items() if v]
    missing = [k for k, v in flags.items() if not v]
    known = {"active_path", "active_path_reason", "threads", "supported_paths", "features"}
    lines = [
        f"int8kit {int8kit.__version__} (torch {torch.__version__})",
        f"kernel path:      {info['active_path']}",
        f"why:              {info['active_path_reason']}",
        f"paths available:  {', '.join(info.get('supported_paths', []))}",
        f"CPU features:     {', '.join(features) or 'none detected'}",
        f"not available:    {', '.join(missing) or '-'}",
        f"threads:          {info['threads']} (torch.get_num_threads(); int8kit follows it "
        "per call)",
    ]
    lines += [f"{k + ':':<18}{v}" for k, v in sorted(info.items())
              if k not in known]
    cuda_ext = getattr(int8kit, "_C_cuda", None)
    lines += [
        "CUDA extension:   " + ("built" if cuda_ext is not None else
                                "not built (int8kit has no CUDA kernels yet; CPU only)"),
        f"torch CUDA:       {torch.version.cuda or 'CPU-only build'}; available: "
        f"{torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""),
    ]
    print("\n".join(lines), file=out)
    return 0


def _threads(spec: str) -> list[int]:
    try:
        vals = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"--threads expects positive ints like 1,4; got {spec!r}")
    return vals


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="int8kit", description="int8kit: native int8 kernels "
                                 "for PyTorch. Shows what int8 buys on this machine.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="CPU features, the kernel path chosen and why, threads, CUDA")
    b = sub.add_parser("bench", help="benchmark int8kit against float32 and installed peers")
    b.add_argument("--quick", action="store_true", help="few shapes and repeats (< 1 minute)")
    b.add_argument("--threads", type=_threads, default=None,
                   help="thread counts, e.g. 1 or 1,4 (default: torch.get_num_threads())")
    b.add_argument("--json", metavar="PATH", help="write every result as JSON")
    b.add_argument("--plot", metavar="DIR", help="write speedup.png and latency.png")
    b.add_argument("--sections", default=None,
                   help="comma-separated subset of: gemm, linear, conv, digits, transformer")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def main(argv=None) -> int:
    """Exit status: 0; 2 for bad arguments (before anything runs); 1 when a bench section
    or the plots failed (the other sections' results are still printed and saved)."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.command == "info":
        return _info(sys.stdout)
    from .bench import SECTIONS, check_output_path, run_bench
    sections = None
    if args.sections is not None:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = [s for s in sections if s not in SECTIONS]
        if not sections or unknown:
            what = f"unknown {', '.join(unknown)}" if unknown else "no section named"
            ap.error(f"--sections: {what}; choose from {', '.join(SECTIONS)}")
    try:  # a bad output path must not cost a whole bench run
        if args.json:
            check_output_path(args.json, "--json")
        if args.plot:
            check_output_path(args.plot, "--plot", directory=True)
    except ValueError as e:
        ap.error(str(e))
    payload = run_bench(sections, quick=args.quick, threads=args.threads, json_path=args.json,
                        plot_dir=args.plot, progress=not args.no_progress)
    return 1 if payload["failed"] or payload["plot_error"] else 0


if __name__ == "__main__":
    sys.exit(main())
