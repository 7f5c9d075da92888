"""``python -m interlayer ...``: the same as the ``interlayer`` command."""

import sys

from .cli.dispatch import main

if __name__ == "__main__":
    sys.exit(main())
