"""``python -m m2ib.training``."""

import sys

from .cli import main

sys.exit(main())
