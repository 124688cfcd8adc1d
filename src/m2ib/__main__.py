"""``python -m m2ib ...``: the same as the ``m2ib`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
