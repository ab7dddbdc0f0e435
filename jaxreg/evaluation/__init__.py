"""Evaluation metrics of a registration, in natural units (higher Dice is better; distances in mm).

* Overlap of label maps (:mod:`~jaxreg.evaluation.overlap`): :func:`dice`, :func:`jaccard`, :func:`mean_dice`,
  :func:`overlap` (all per-label statistics and presence flags), and a differentiable :func:`soft_dice`.
* Surface distances of masks (:mod:`~jaxreg.evaluation.distance`): :func:`hausdorff` (HD, or HD95 with
  ``percentile=95``), :func:`average_surface_distance` (ASSD), :func:`surface_distances` (all three), their
  per-label versions :func:`hd95_per_label` and :func:`surface_distances_per_label`, and the exact
  :func:`euclidean_distance_transform` and :func:`surface` they are built on.
* Landmarks (:mod:`~jaxreg.evaluation.landmarks`): :func:`target_registration_error`.
* Deformation plausibility (:mod:`~jaxreg.evaluation.jacobian`): :func:`jacobian_statistics` (folding count
  and fraction, min/max/mean of ``det J``, SDlogJ).
* Inverse consistency (:mod:`~jaxreg.evaluation.consistency`): :func:`inverse_consistency_error`, mean and max of
  ``|T(S(x)) - x|`` in mm for a transform and its computed inverse.
* The report of a registration run (:mod:`~jaxreg.evaluation.report`): :func:`summarize` computes, from a
  run's :class:`RegistrationInputs` and result, the warped image and labels, NCC/NMI before and after, the Dice
  table (:func:`format_dice_table`), the Jacobian statistics and the figure, as the
  :class:`jaxreg.io.outputs.Outputs` that :func:`jaxreg.io.write_outputs` writes. It imports the warp, plot
  and io layers only when it runs.

Conventions (missing labels, surfaces, percentiles, SDlogJ clipping) are stated in each module's docstring.
"""

from jaxreg.evaluation.consistency import InverseConsistencyError, inverse_consistency_error
from jaxreg.evaluation.distance import (
    SurfaceDistances,
    average_surface_distance,
    euclidean_distance_transform,
    hausdorff,
    hd95_per_label,
    surface,
    surface_distances,
    surface_distances_per_label,
)
from jaxreg.evaluation.jacobian import JacobianStatistics, jacobian_statistics
from jaxreg.evaluation.landmarks import TargetRegistrationError, target_registration_error
from jaxreg.evaluation.overlap import Overlap, dice, jaccard, mean_dice, overlap, soft_dice
from jaxreg.evaluation.report import RegistrationInputs, format_dice_table, options_json, summarize

__all__ = [
    "Overlap",
    "overlap",
    "dice",
    "jaccard",
    "mean_dice",
    "soft_dice",
    "SurfaceDistances",
    "surface_distances",
    "hausdorff",
    "average_surface_distance",
    "surface_distances_per_label",
    "hd95_per_label",
    "euclidean_distance_transform",
    "surface",
    "TargetRegistrationError",
    "target_registration_error",
    "InverseConsistencyError",
    "inverse_consistency_error",
    "JacobianStatistics",
    "jacobian_statistics",
    "RegistrationInputs",
    "summarize",
    "format_dice_table",
    "options_json",
]
