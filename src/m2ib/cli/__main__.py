"""``python -m m2ib.cli ...``: the same as the ``m2ib`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
