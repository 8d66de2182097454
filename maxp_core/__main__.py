"""``python -m maxp_core``: see :mod:`maxp_core.cli`."""

import sys

from maxp_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
