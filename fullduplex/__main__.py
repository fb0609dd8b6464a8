"""``python -m fullduplex ...``: the same as the ``fullduplex`` command."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
