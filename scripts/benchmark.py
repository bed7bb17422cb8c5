"""Benchmark zaya1 against transformers on the same weights: ``python scripts/benchmark.py --help``
(the same as ``zaya1 bench``)."""
import sys

from zaya1.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
