"""Gemm microbenchmark: see int8kit/bench/gemm.py (also part of `int8kit bench`)."""

from int8kit.bench.gemm import main

if __name__ == "__main__":
    main()
