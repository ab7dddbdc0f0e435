"""The organ-aware pipeline: planning CT <-> daily MR with rigid bones, an incompressible target and free organs.

:func:`organ_aware` builds a pipeline (a tuple of :class:`~jaxreg.optimize.Stage`) for the one registration
entry point, :func:`jaxreg.optimize.register`::

    stages = organ_aware(ct_labels, groups, side="moving")      # CT moving, daily MR fixed
    ct_reg = ct_window(ct, labels=ct_labels, groups=groups)    # windowed, the prostate's contour painted in
    result = register(mr, ct_reg, method=stages)                # result.transform: MR mm -> CT mm

The CT is registered as :func:`ct_window` prepares it (clipped to -1000..1500 HU, the target's contour painted in
at 400 HU: the prostate is invisible on CT): pass ``ct_window(ct, labels=ct_labels, groups=groups)``.

1. **rigid** -- Mattes mutual information (multi-modal), best of the candidate starts (``init="auto"``), 3 levels
   (the last at full resolution: bones to ~0.4 mm instead of ~0.9 mm with two).
   The planning CT and the daily MR are the same patient: the linear part is rigid, not affine.
2. **target** -- the incompressible organs (the prostate) moved rigidly on their own against the rest
   (:class:`~jaxreg.optimize.Region`: the motion weighted 1 within 10 mm of the target, 0 beyond 25 mm and on
   the bones), driven by normalised MI over the target dilated by 10 mm, started from the best of a lattice of
   translations (+/-6 mm at 3 mm; that similarity has local minima a few mm apart). The prostate moves a few mm
   against the pelvis from day to day, and a smooth field regularised over the whole pelvis does not find it.
3. **organ-aware deformable** -- a stationary velocity field ``v`` (``T = exp(v)``, a diffeomorphism) optimised
   by gradient descent (Adam) on 2 levels (12 and 6 mm for a 3 mm MR; the field is smooth at that
   resolution and the full-resolution level costs more than it gains) against::

       E(v) = S(F, M o exp(v)) + a_s * mean_x s(x) ||grad v||^2                     (smoothness, diffusion)
            + a_r * Rig_lin(v; c_rigid)                                              (bones: rigid)
            + a_t * Rig_lin(v; c_target) + a_i * mean_{c_target} (div v)^2          (prostate: rigid, volume kept)

   ``S`` is a multi-modal similarity (normalised MI by default; MIND-SSC, which on the synthetic pelvis days is
   lower 3 mm off the truth than at it around the prostate, or NGF), ``Rig_lin`` the linearised local
   rigidity penalty of Staring et al. 2007 (:func:`jaxreg.regularizers.rigidity` with ``linearized=True``:
   ``exp(v)`` is rigid exactly where ``v`` is a Killing field, an affine field with a skew-symmetric gradient,
   and ``div v = 0`` makes it volume preserving), ``c_rigid`` and ``c_target`` are weight maps of the rigid and
   incompressible label groups dilated by ``margin_mm`` (:func:`jaxreg.regularizers.label_weight_map`), and the
   smoothness weight ``s(x)`` is 1 except in the compressible organs (bladder, bowel: dilated by ``margin_mm``),
   where it is ``compressible_smoothness`` so they may fill and empty (spatially varying regularisation,
   Zachiu et al. 2020).

The maps are built from the CT side's labels. With ``side="fixed"`` (CT fixed) they lie on the field's grid;
with ``side="moving"`` (CT moving, the usual adaptive-RT direction: the plan is carried onto the daily anatomy)
each level pulls them through the rigid stage's transform (:class:`~jaxreg.regularizers.WeightMapped`).

References: M. Staring, S. Klein, J.P.W. Pluim, Med. Phys. 34(11), 2007; C. Zachiu et al., Phys. Med. Biol.
65(21), 2020; M. P. Heinrich et al., "MIND", Med. Image Anal. 16(7), 2012; T. Vercauteren et al., MICCAI 2008
(stationary velocity fields).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Image
from jaxreg.optimize.engine import Level, Stage
from jaxreg.optimize.methods import Gradient, Optimizer, Stopping
from jaxreg.evaluation.distance import euclidean_distance_transform
from jaxreg.optimize.models import BSpline, Field, Linear, Region
from jaxreg.optimize.objective import field_term, objective, similarity_term
from jaxreg.radiotherapy.groups import OrganGroups
from jaxreg.regularizers.organ import incompressibility, label_weight_map, rigidity, weight_mapped
from jaxreg.regularizers.smoothness import diffusion

__all__ = ["CT_WINDOW", "ORGAN_DEFORMABLE_LEVELS", "ORGAN_LINEAR_LEVELS", "ct_window", "organ_aware", "organ_maps"]

CT_WINDOW = (-1000.0, 1500.0)
"""HU window of :func:`ct_window`: air to dense cortical bone (metal and noise beyond are clipped)."""

ORGAN_LINEAR_LEVELS = (Level(4, 0.0, 100), Level(2, 0.0, 50), Level(1, 0.0, 20))
ORGAN_DEFORMABLE_LEVELS = (Level(4, 0.0, 60), Level(2, 0.0, 40))

_SIMILARITIES = {"mind": "mind", "nmi": "nmi(bins=32)", "ngf": "ngf", "mi": "mi(bins=32)"}


def ct_window(
    ct: Image,
    *,
    window: tuple[float, float] = CT_WINDOW,
    labels: Image | None = None,
    groups: OrganGroups | None = None,
    target_hu: float | None = 400.0,
) -> Image:
    """The CT as the organ-aware pipeline registers it: clipped to a HU window, the target's contour painted in.

    Histogram similarities spread their bins over the image's range; a few metal or noise voxels at 3000 HU and
    more would squeeze soft tissue and bone into a handful of bins. Clipping to ``[-1000, 1500]`` HU keeps every
    tissue apart.

    The prostate has almost no contrast on CT (its HU are those of the muscle around it) while the daily MR shows
    it; the planning contour does. With ``labels`` and ``groups``, the incompressible organs (the target) are set
    to ``target_hu`` (between soft tissue and cortical bone), so the similarity sees the outline the contour gives
    ("controlling structures" of commercial deformable registration). Without it the deformable stage has no
    evidence of the target's own motion and it follows the bones.

    Args:
      ct: CT in HU.
      window: ``(low, high)`` in HU.
      labels: the CT's labels (on its grid), to paint the incompressible organs.
      groups: the organ groups (checked against ``labels``).
      target_hu: the value painted inside the incompressible organs; ``None`` paints nothing.

    Returns:
      float32 :class:`Image` on the same grid.
    """
    if not isinstance(ct, Image):
        raise TypeError(f"ct: expected a jaxreg Image, got {type(ct).__name__}")
    lo, hi = (float(v) for v in window)
    if not lo < hi:
        raise ValueError(f"window: expected (low, high) with low < high in HU, got {window!r}")
    data = jnp.clip(jnp.asarray(ct.data, jnp.float32), lo, hi)
    if (labels is None) != (groups is None):
        raise ValueError("labels: pass the CT's labels and the organ groups together (or neither)")
    if labels is not None and target_hu is not None and groups.incompressible:
        groups.check(labels, name="labels", image=ct)
        target = np.isin(np.asarray(labels.data), groups.incompressible)
        data = jnp.where(jnp.asarray(target), jnp.float32(np.clip(target_hu, lo, hi)), data)
    return Image(data, ct.grid)


def organ_maps(
    labels: Image,
    groups: OrganGroups,
    *,
    margin_mm: float = 6.0,
    compressible_smoothness: float = 0.1,
) -> dict[str, Image]:
    """The weight maps of the organ-aware objective, on the label map's grid (world coordinates).

    Args:
      labels: the CT side's integer label map.
      groups: which labels are rigid, incompressible, compressible (checked against ``labels``).
      margin_mm: dilation of every group's mask in mm (covers the boundary and the residual motion after the
        rigid stage).
      compressible_smoothness: the smoothness weight ``s`` inside the dilated compressible organs (1 elsewhere).

    Returns:
      ``{"rigid": c_rigid, "incompressible": c_target, "smoothness": s}``; a key is missing when its group is
      empty (``smoothness`` is always there).

    Raises:
      ValueError: invalid groups for ``labels`` (see :meth:`OrganGroups.check`), a negative margin, a smoothness
        weight outside ``(0, 1]``.
    """
    if not isinstance(groups, OrganGroups):
        raise TypeError(f"groups: expected OrganGroups, got {type(groups).__name__}")
    groups.check(labels)
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise ValueError(f"margin_mm: expected a distance >= 0 in mm, got {margin_mm!r}")
    if not 0 < compressible_smoothness <= 1:
        raise ValueError(f"compressible_smoothness: expected a weight in (0, 1], got {compressible_smoothness!r}")
    out: dict[str, Image] = {}
    if groups.rigid:
        out["rigid"] = label_weight_map(labels, [groups.rigid], dilate_mm=margin_mm)
    if groups.incompressible:
        out["incompressible"] = label_weight_map(labels, [groups.incompressible], dilate_mm=margin_mm)
    s = np.ones(labels.grid.shape, np.float32)
    if groups.compressible:
        m = np.asarray(label_weight_map(labels, [groups.compressible], dilate_mm=margin_mm).data)
        s = 1.0 - (1.0 - compressible_smoothness) * m
        # rigid and incompressible organs keep the full smoothness where the dilated maps meet
        for key in ("rigid", "incompressible"):
            if key in out:
                s = np.maximum(s, np.asarray(out[key].data))
    out["smoothness"] = Image(jnp.asarray(s, jnp.float32), labels.grid)
    return out


def organ_aware(
    labels: Image,
    groups: OrganGroups,
    *,
    side: str = "moving",
    similarity: str = "nmi",
    smoothness: float = 2.0,
    rigidity_weight: float = 20.0,
    target_rigidity: float = 5.0,
    incompressibility_weight: float = 20.0,
    compressible_smoothness: float = 0.05,
    margin_mm: float = 6.0,
    target_stage: bool = True,
    target_levels: Sequence[Level] = (Level(2, 0.0, 40), Level(1, 0.0, 60)),
    target_options: dict | None = None,
    learning_rate: float = 0.1,
    rigid_learning_rate: float = 0.05,
    model: str = "velocity",
    spacing_mm: float = 15.0,
    linear_levels: Sequence[Level] = ORGAN_LINEAR_LEVELS,
    levels: Sequence[Level] = ORGAN_DEFORMABLE_LEVELS,
    init: str = "auto",
) -> tuple[Stage, ...]:
    """The organ-aware CT <-> MR pipeline (module docstring) for :func:`jaxreg.optimize.register`.

    Args:
      labels: the CT's integer label map (on the CT's grid, which is the fixed or the moving image).
      groups: rigid / incompressible / compressible label values (:class:`OrganGroups`).
      side: ``"moving"`` when the CT (and ``labels``) is the moving image, ``"fixed"`` when it is the fixed one.
      similarity: ``"nmi"`` (normalised MI), ``"mind"`` (MIND-SSC), ``"ngf"`` or ``"mi"`` (deformable stage; the rigid stage
        always uses Mattes MI), or a similarity registry spec.
      smoothness: weight ``a_s`` of the (spatially varying) diffusion of ``v``, in mm^-2 x similarity units.
      rigidity_weight: weight ``a_r`` of the bones' linearised rigidity penalty.
      target_rigidity: weight ``a_t`` of the incompressible organs' rigidity penalty (0: volume only).
      incompressibility_weight: weight ``a_i`` of ``(div v)^2`` over the incompressible organs.
      compressible_smoothness: smoothness weight inside the compressible organs, in ``(0, 1]``.
      margin_mm: dilation of the organ maps in mm.
      target_stage: add the target stage (module docstring) between the rigid and the deformable stage.
      target_levels: levels of that stage (the search runs on the first).
      target_options: ``bone_mm`` (ramp of the region's weight away from the bones, mm) and ``falloff_mm``.
      learning_rate: Adam step of the field's parameters (mm per iteration at most, roughly).
      rigid_learning_rate: Adam step of the rigid stage (mm per iteration; rotations scaled by a quarter of the
        fixed grid's diagonal).
      model: ``"velocity"`` (a stationary velocity field on each level's grid; the rigidity penalty is the
        linearised one and the volume term ``(div v)^2``) or ``"bspline"`` (a cubic B-spline FFD with control
        points every ``spacing_mm``; Staring's full penalty on its displacement and ``(det J - 1)^2``).
      spacing_mm: control point spacing of ``model="bspline"`` (mm).
      linear_levels: levels of the rigid stage.
      levels: levels of the deformable stage.
      init: start of the rigid stage (``"auto"``: best of the candidate starts).

    Returns:
      ``(rigid_stage, target_stage, organ_stage)`` (no target stage without incompressible organs or with
      ``target_stage=False``).

    Raises:
      ValueError: bad groups for ``labels`` (a label in two groups, a label absent from the map), an unknown
        ``side`` or similarity, negative weights.
    """
    if side not in ("fixed", "moving"):
        raise ValueError(f"side: expected 'fixed' (CT fixed) or 'moving' (CT moving), got {side!r}")
    for name, w in (
        ("smoothness", smoothness),
        ("rigidity_weight", rigidity_weight),
        ("target_rigidity", target_rigidity),
        ("incompressibility_weight", incompressibility_weight),
        ("learning_rate", learning_rate),
        ("rigid_learning_rate", rigid_learning_rate),
    ):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
            raise ValueError(f"{name}: expected a non-negative number, got {w!r}")
    sim = _SIMILARITIES.get(similarity, similarity)
    maps = organ_maps(labels, groups, margin_mm=margin_mm, compressible_smoothness=compressible_smoothness)
    terms = [
        similarity_term(sim, name="similarity"),
        field_term(weight_mapped(diffusion, maps["smoothness"], side=side), smoothness, name="smoothness"),
    ]
    if model not in ("velocity", "bspline"):
        raise ValueError(f"model: expected 'velocity' or 'bspline', got {model!r}")
    rig = _linearized_rigidity if model == "velocity" else rigidity
    vol = _divergence if model == "velocity" else incompressibility
    if "rigid" in maps and rigidity_weight > 0:
        terms.append(field_term(weight_mapped(rig, maps["rigid"], side=side), rigidity_weight, name="rigidity"))
    if "incompressible" in maps:
        if target_rigidity > 0:
            terms.append(
                field_term(
                    weight_mapped(rig, maps["incompressible"], side=side), target_rigidity, name="target_rigidity"
                )
            )
        if incompressibility_weight > 0:
            terms.append(
                field_term(
                    weight_mapped(vol, maps["incompressible"], side=side),
                    incompressibility_weight,
                    name="incompressibility",
                )
            )
    rigid_stage = Stage(
        Gradient(objective(similarity_term("mi(bins=32)")), Optimizer("adam", float(rigid_learning_rate), radius_mm="auto"), Stopping(tol=1e-5)),
        Linear("rigid"),
        tuple(linear_levels),
        init,
        "rigid",
    )
    target = []
    if target_stage and groups.incompressible:
        target = [_target_stage(labels, groups, side, tuple(target_levels), **dict(target_options or {}))]
    organ_stage = Stage(
        Gradient(objective(*terms), Optimizer("adam", float(learning_rate)), Stopping(tol=0.0)),
        Field("velocity", steps=6) if model == "velocity" else BSpline(float(spacing_mm)),
        tuple(levels),
        name="organ",
    )
    return (rigid_stage, *target, organ_stage)


def _target_stage(
    labels: Image, groups: OrganGroups, side: str, levels: tuple, bone_mm: float = 3.0, falloff_mm: float = 15.0
) -> Stage:
    """The rigid stage of the target alone (see :func:`organ_aware`)."""
    lab = np.asarray(labels.data)
    spacing = tuple(float(s) for s in labels.grid.spacing)
    d = np.asarray(euclidean_distance_transform(jnp.asarray(np.isin(lab, groups.incompressible)), spacing=spacing))
    w = np.clip(1.0 - (d - 10.0) / falloff_mm, 0.0, 1.0)
    if groups.rigid and bone_mm > 0:  # the bones stay where the rigid stage put them
        db = np.asarray(euclidean_distance_transform(jnp.asarray(np.isin(lab, groups.rigid)), spacing=spacing))
        w = w * np.clip(db / bone_mm, 0.0, 1.0)
    region = Image(jnp.asarray(w, jnp.float32), labels.grid)
    focus = label_weight_map(labels, [groups.incompressible], dilate_mm=10.0)
    method = Gradient(
        objective(similarity_term(weight_mapped("nmi(bins=32)", focus, side=side, kind="similarity"))),
        Optimizer("adam", 0.1),
        Stopping(tol=1e-6),
    )
    return Stage(method, Region(region, side=side), levels, name="target")


def _linearized_rigidity(u, *, spacing=None, grid=None, mask=None):
    """Staring's rigidity penalty linearised for a velocity field (Killing-field residual)."""
    return rigidity(u, spacing=spacing, grid=grid, mask=mask, linearized=True)


def _divergence(u, *, spacing=None, grid=None, mask=None):
    """``mean_mask (div v)^2``: the incompressibility of a velocity field."""
    return rigidity(u, spacing=spacing, grid=grid, mask=mask, weights=(0.0, 0.0, 1.0), linearized=True)
