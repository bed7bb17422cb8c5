"""python -m zaya1.tools.bench"""

import sys

from . import main

sys.exit(main())
