"""``python -m m2ib.serve``: the same as ``m2ib serve``."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
