"""The ``jaxreg`` command line: ``jaxreg info | apply | demo``.

The CLI is the outermost layer: it reads files (:mod:`jaxreg.io`), calls the functional library and writes
results atomically. Nothing in the library imports it. Entry point: :func:`jaxreg.cli.main.main`; run
``jaxreg --help`` or ``python -m jaxreg.cli --help``.
"""

from jaxreg.cli.main import main

__all__ = ["main"]
