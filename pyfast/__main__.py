"""``python -m pyfast``: the ``pyfast`` command (see :mod:`pyfast.cli`)."""

import sys

from pyfast.cli import main

if __name__ == "__main__":
    sys.exit(main())
