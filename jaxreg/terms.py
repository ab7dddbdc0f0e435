"""Terms by name: the one registry of similarity and regulariser names, for Python, configs, the CLI and training.

Two kinds of term, one contract each:

* ``"similarity"``: ``loss(fixed, moving, mask=None) -> scalar`` (lower is better; :mod:`jaxreg.similarity`);
* ``"regularizer"``: ``fn(u, *, spacing, mask=None) -> scalar`` with ``u`` ``(*spatial, ndim)`` displacements
  in mm and ``spacing`` the voxel size in mm per axis (:mod:`jaxreg.regularizers`).

Configured terms hash by value (:class:`Configured`), so equal configurations are interchangeable as
``jax.jit`` static arguments and cache keys::

    from jaxreg import terms

    terms.similarity("lncc", window=5) == jaxreg.similarity.lncc(5)      # True
    terms.parse("lncc(window=5)", "similarity")                          # the same term
    terms.parse({"name": "mi", "bins": 64}, "similarity")                # a TOML table
    terms.parse("lncc5", "similarity")                                   # legacy spelling of lncc(window=5)
    terms.regularizer("elastic", mu=1.0, lam=0.5)(u, spacing=(1.0, 1.0, 2.0))
    terms.names("regularizer")  # ('bending', 'diffusion', 'elastic', 'folding', 'log_jacobian', ...)

New terms are registered where they are defined, with :func:`jaxreg.core.registry.configured` (factories)
or :func:`jaxreg.core.registry.register_term` (plain functions).
"""

from jaxreg.core.registry import Configured, names, parse, regularizer, similarity

__all__ = ["similarity", "regularizer", "names", "parse", "Configured"]
