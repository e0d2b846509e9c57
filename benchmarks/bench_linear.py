"""Linear microbenchmark: see int8kit/bench/linear.py (also part of `int8kit bench`)."""

from int8kit.bench.linear import main

if __name__ == "__main__":
    main()
