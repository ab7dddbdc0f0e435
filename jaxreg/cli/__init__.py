"""The ``jaxreg`` command line: ``jaxreg info | apply | demo | evaluate | landmarks | register | train | predict``.

* ``info`` -- geometry and value range of a NIfTI image (:mod:`jaxreg.cli.main`);
* ``apply`` -- warp an image through ITK/ANTs transform files, ``antsApplyTransforms`` order
  (:mod:`jaxreg.cli.main`);
* ``demo`` -- register the MNI152 template to a known deformation of itself (:mod:`jaxreg.cli.demo`);
* ``evaluate`` -- Dice/HD95 of label maps, Jacobian statistics of a transform file (:mod:`jaxreg.cli.evaluate`);
* ``landmarks`` -- fit a rigid/similarity/affine transform to landmark files (:mod:`jaxreg.cli.landmarks`);
* ``register`` -- register two images with a ready pipeline and write the warped image, transforms and a report
  (:mod:`jaxreg.cli.register`);
* ``train`` -- train a registration network from a TOML configuration (:mod:`jaxreg.cli.learn`);
* ``predict`` -- register two images with a trained network (:mod:`jaxreg.cli.learn`).

The CLI is the outermost layer and an adapter: each module parses arguments, calls the library (file I/O and the
output writer in :mod:`jaxreg.io`, the run report in :mod:`jaxreg.evaluation`, training set-up in
:mod:`jaxreg.learn.setup`, registration in :mod:`jaxreg.optimize`) and prints. Nothing in the library imports
it. The entry point is :func:`jaxreg.cli.main.main` (``main(argv=None) -> int``); run ``jaxreg --help``,
``python -m jaxreg.cli --help`` or ``python -m jaxreg.cli.main --help``. User errors are one line
``jaxreg: error: ...`` naming the argument concerned, with exit status 2, and nothing written.

(This ``__init__`` imports nothing, so that ``python -m jaxreg.cli.main`` runs the module cleanly.)
"""
