#!/usr/bin/env python
"""Same as `zaya1 compile` (src/zaya1/neuron/compile_cli.py): python scripts/compile.py --model-path DIR ..."""
import sys

from zaya1.neuron.compile_cli import main

if __name__ == "__main__":
    sys.exit(main())
