"""File I/O at the edge of the library: NIfTI images and ITK/ANTs transform files.

Nothing in the JAX core imports this package, so nibabel and scipy.io stay optional for pure computation.

* :mod:`jaxreg.io.nifti`: ``.nii``/``.nii.gz`` <-> :class:`~jaxreg.core.grid.Image` (data on a RAS+ mm grid).
* :mod:`jaxreg.io.itk`: ITK/ANTs ``.mat``, ``.tfm``/``.txt`` and displacement-field NIfTI files <-> jaxreg
  transforms, with the LPS <-> RAS conversion and ANTs' ``-t`` order convention (:func:`compose_files`).
* :mod:`jaxreg.io.landmarks`: landmark files in world mm: plain CSV (RAS), 3D Slicer ``.fcsv`` (RAS/LPS) and
  ANTs CSV (LPS).
* :mod:`jaxreg.io.outputs`: the files of a registration run (warped image, ``affine.mat``, ``warp.nii.gz``,
  labels, ``dice.json``, ``report.json``/``.png``) written all or nothing (:func:`write_outputs`), or as a new
  folder that appears whole (:func:`write_outputs_folder`).
* :func:`atomic_write`: every writer writes a temporary file next to the destination and renames it.
* :func:`check_registrable`: the checks of an image before it is registered (finite, not constant).
"""

from jaxreg.io._atomic import atomic_write, check_not_input
from jaxreg.io.itk import (
    compose_files,
    itk_to_transform,
    read_displacement_field,
    read_itk_transforms,
    read_transform,
    read_transforms,
    transform_to_itk,
    write_displacement_field,
    write_transform,
)
from jaxreg.io.landmarks import Landmarks, landmark_format, match_landmarks, read_landmarks, write_landmarks
from jaxreg.io.nifti import check_registrable, load_image, load_labels, save_image
from jaxreg.io.outputs import (
    OUTPUT_NAMES,
    Outputs,
    check_output_folder,
    composite_transforms,
    is_complete,
    output_paths,
    write_outputs,
    write_outputs_folder,
)

__all__ = [
    "Landmarks",
    "landmark_format",
    "match_landmarks",
    "read_landmarks",
    "write_landmarks",
    "atomic_write",
    "check_not_input",
    "check_output_folder",
    "check_registrable",
    "compose_files",
    "composite_transforms",
    "is_complete",
    "itk_to_transform",
    "load_image",
    "load_labels",
    "OUTPUT_NAMES",
    "Outputs",
    "output_paths",
    "read_displacement_field",
    "read_itk_transforms",
    "read_transform",
    "read_transforms",
    "save_image",
    "transform_to_itk",
    "write_displacement_field",
    "write_outputs",
    "write_outputs_folder",
    "write_transform",
]
