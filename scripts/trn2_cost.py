"""Trainium2 cost model from the lowered step graphs: ``python scripts/trn2_cost.py --help`` (the same as
``zaya1 cost``; needs torch-xla, see docs/trainium-cost.md)."""
import sys

from zaya1.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["cost", *sys.argv[1:]]))
