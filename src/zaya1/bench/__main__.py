"""python -m zaya1.bench"""

import sys

from . import main

sys.exit(main())
