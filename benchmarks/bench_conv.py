"""Conv microbenchmark: see int8kit/bench/conv.py (also part of `int8kit bench`)."""

from int8kit.bench.conv import main

if __name__ == "__main__":
    main()
