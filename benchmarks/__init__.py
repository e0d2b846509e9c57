"""int8kit microbenchmarks.

Each ``bench_*`` module can be run as a script (``python benchmarks/bench_gemm.py``) or
imported from the repository root (``from benchmarks import bench_gemm``); every one offers
``run(shapes, threads, quick, ...) -> dict`` for programmatic use and ``main()`` for the
command line. Shared timing, peak measurement, table and JSON helpers live in
``benchmarks/_harness.py``.
"""
