"""``python -m jaxreg.cli``: the same as the ``jaxreg`` command."""

import sys

from jaxreg.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
