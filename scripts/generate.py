#!/usr/bin/env python
"""Same as `zaya1 generate`: python scripts/generate.py [--model DIR] --prompt "..." """
import sys

from zaya1.tools.cli import main

sys.exit(main(["generate", *sys.argv[1:]]))
