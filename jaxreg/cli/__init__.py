"""The ``jaxreg`` command line: ``jaxreg info | apply | demo``.

The CLI is the outermost layer: it reads files (:mod:`jaxreg.io`), calls the functional library and writes
results atomically. Nothing in the library imports it. The entry point is :func:`jaxreg.cli.main.main`
(``main(argv=None) -> int``); run ``jaxreg --help``, ``python -m jaxreg.cli --help`` or
``python -m jaxreg.cli.main --help``. The demo lives in :mod:`jaxreg.cli.demo` (:func:`run_demo`).

(This ``__init__`` imports nothing, so that ``python -m jaxreg.cli.main`` runs the module cleanly.)
"""
