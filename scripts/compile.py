#!/usr/bin/env python
"""Same as `zaya1 compile` (src/zaya1/compile_cli.py): python scripts/compile.py --model-path DIR ..."""
import sys

import torch

from zaya1.compile_cli import main

if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
