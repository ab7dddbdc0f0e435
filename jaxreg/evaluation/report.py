"""The evaluation report of one registration run: metrics, Dice table, Jacobian statistics and a figure.

:func:`summarize` takes the run's inputs (:class:`RegistrationInputs`), its result (a pipeline result with the
linear part ``affine``, the deformable part ``deformable`` or ``None``, per-stage level records ``stages`` and
the wall time ``seconds``) and the options it ran with, and computes in memory everything the run writes: the
warped image and labels, the deformable part sampled on the fixed grid, the report (JSON values) and its
figure. It returns a :class:`jaxreg.io.outputs.Outputs`, which :func:`jaxreg.io.write_outputs` writes all or
nothing; ``jaxreg register``, ``jaxreg predict`` and ``jaxreg demo`` use both.

Metrics, on the fixed grid (inside the fixed mask when there is one), for the moving image *before*
registration (identity), after the *affine* stage and *after* registration:

* NCC: Pearson's correlation ``sum(x' y') / sqrt(sum(x'^2) sum(y'^2))`` of the mean-free intensities (0 when
  an image is constant), higher is better;
* NMI: Studholme's normalised mutual information ``(H(A) + H(B)) / H(A, B)`` of a 32x32-bin joint histogram
  (Studholme, Hill & Hawkes, Pattern Recognition 1999), in [1, 2], higher is better;
* with labels: Dice per label and its mean, HD95 in mm (:func:`jaxreg.evaluation.overlap`,
  :func:`jaxreg.evaluation.hd95_per_label`);
* ``det J`` of the deformable part (of the affine when there is none): % of voxels with ``det J <= 0``, SDlogJ
  (:func:`jaxreg.evaluation.jacobian_statistics`);
* the inverse of the deformable part on the fixed grid (:func:`jaxreg.transforms.inverse_displacement`: exact
  ``exp(-v)`` for a velocity field, else the fixed-point inverse of the sampled field) and its inverse-consistency
  error ``|u(x + u_inv(x)) + u_inv(x)|``, mean and max in mm over the voxels ``x`` of the fixed grid whose
  ``x + u_inv(x)`` stays inside it (:func:`jaxreg.evaluation.inverse_consistency_error`), reported as
  ``report["inverse_warp"] = {"method", "mean_mm", "max_mm", "num_voxels", "num_outside"}``.

Both NCC and NMI are computed in float64 NumPy on the host: they are reported figures, not losses. Non-finite
values are reported as ``None`` (JSON ``null``).

This module sits above the metric modules of :mod:`jaxreg.evaluation`: it warps (:mod:`jaxreg.warp`), draws
(:mod:`jaxreg.plot`, only when matplotlib is installed) and returns the output type of :mod:`jaxreg.io`; all of
those are imported when :func:`summarize` runs, never when :mod:`jaxreg.evaluation` is imported.
"""

from __future__ import annotations

import functools
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["RegistrationInputs", "format_dice_table", "options_json", "summarize"]


class RegistrationInputs(NamedTuple):
    """The checked inputs of a registration run (what :func:`summarize` evaluates).

    Attributes:
      fixed: fixed image (scalar ``Image``, float32).
      moving: moving image (scalar ``Image``, float32, any grid).
      fixed_mask: 0/1 float32 ``Image`` on the fixed grid, or ``None``; the similarity metrics are computed
        inside it.
      moving_mask: 0/1 float32 ``Image`` on the moving grid, or ``None``.
      fixed_labels: int32 label ``Image`` on the fixed grid, or ``None``.
      moving_labels: int32 label ``Image`` on the moving grid (given with ``fixed_labels``), or ``None``.
      labels: the label values to evaluate (with label maps), or ``None``.
      names: label names by value (possibly empty).
      paths: the input files of the run (never to be overwritten by its outputs).
    """

    fixed: Any
    moving: Any
    fixed_mask: Any = None
    moving_mask: Any = None
    fixed_labels: Any = None
    moving_labels: Any = None
    labels: list[int] | None = None
    names: Mapping[int, str] = MappingProxyType({})
    paths: tuple[str, ...] = ()


def _finite(x: Any, digits: int = 6) -> float | None:
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> float:
    """Pearson correlation of ``a`` and ``b`` (inside ``mask > 0``), float64; 0 when either is constant."""
    sel = np.ones(a.shape, bool) if mask is None else mask > 0
    x, y = a[sel].astype(np.float64), b[sel].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def _nmi(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None, bins: int = 32) -> float:
    """Studholme's ``(H(A) + H(B)) / H(A, B)`` of a ``bins x bins`` joint histogram (inside ``mask > 0``)."""
    sel = np.ones(a.shape, bool) if mask is None else mask > 0
    h, _, _ = np.histogram2d(a[sel].ravel(), b[sel].ravel(), bins=bins)
    p = h / max(h.sum(), 1.0)

    def ent(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    hab = ent(p)
    return (ent(p.sum(1)) + ent(p.sum(0))) / hab if hab > 0 else 1.0


def _similarity(fixed: np.ndarray, images: dict[str, np.ndarray], mask: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, im in images.items():
        out[f"ncc_{name}"] = _finite(_ncc(fixed, im, mask))
        out[f"nmi_{name}"] = _finite(_nmi(fixed, im, mask))
    return out


def _stage_json(name: str, stage: Any) -> dict[str, Any]:
    recs = []
    for rec in stage.levels:
        lv = rec.level
        loss = np.asarray(rec.loss, np.float64)
        loss = loss[np.isfinite(loss)]
        recs.append(
            {
                "shrink": int(lv[0]),
                "smooth_mm": float(lv[1]),
                "iterations_cap": int(lv[2]),
                "iterations": int(rec.iterations),
                "converged": bool(rec.converged),
                "seconds": round(float(rec.seconds), 3),
                "compile_seconds": round(float(rec.compile_seconds), 3),
                "first_loss": _finite(loss[0]) if loss.size else None,
                "final_loss": _finite(loss[-1]) if loss.size else None,
                "loss": [_finite(v) for v in loss],
            }
        )
    return {
        "stage": name,
        "start": stage.start,
        "iterations": int(sum(r["iterations"] for r in recs)),
        "seconds": round(float(stage.seconds), 3),
        "levels": recs,
    }


def _stage_line(name: str, stage: dict[str, Any]) -> str:
    def g(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    levels = "; ".join(
        f"x{lv['shrink']}: {lv['iterations']} it, {g(lv['first_loss'])} -> {g(lv['final_loss'])}"
        for lv in stage["levels"]
    )
    return f"{name + ':':<11} {levels}  [{stage['seconds']:.1f} s]"


def _dice_summary(
    fixed_labels: np.ndarray,
    stages: dict[str, np.ndarray],
    labels: list[int],
    names: dict[int, str],
    spacing: Sequence[float],
) -> dict[str, Any]:
    """Dice of every stage's warped labels, HD95 (mm) of the final one, per label and their means."""
    from jaxreg.evaluation.distance import hd95_per_label
    from jaxreg.evaluation.overlap import overlap

    result: dict[str, Any] = {"labels": [], "spacing_mm": [float(s) for s in spacing]}
    dice = {}
    for key, warped in stages.items():
        dice[key] = np.asarray(overlap(fixed_labels, warped, labels=labels).dice, np.float64)
    final = stages["after"]
    ov = overlap(fixed_labels, final, labels=labels)
    hd95 = np.asarray(hd95_per_label(fixed_labels, final, labels=labels, spacing=tuple(spacing)), np.float64)
    for i, lab in enumerate(labels):
        row: dict[str, Any] = {"label": int(lab)}
        if lab in names:
            row["name"] = names[lab]
        for key in stages:
            row["dice" if key == "after" else f"dice_{key}"] = _finite(dice[key][i])
        row["hd95_mm"] = _finite(hd95[i])
        row["voxels_fixed"] = int(ov.count_a[i])
        row["voxels_warped"] = int(ov.count_b[i])
        result["labels"].append(row)
    for key in stages:
        d = dice[key][np.isfinite(dice[key])]
        result["mean_dice" if key == "after" else f"mean_dice_{key}"] = _finite(d.mean()) if d.size else None
    result["num_labels_dice"] = int(np.isfinite(dice["after"]).sum())
    h = hd95[np.isfinite(hd95)]
    result["mean_hd95_mm"] = _finite(h.mean()) if h.size else None
    result["num_labels_hd95"] = int(h.size)
    return result


def format_dice_table(summary: dict[str, Any]) -> str:
    """The printed Dice table of a Dice summary (the ``dice`` of :func:`summarize`, ``dice.json``).

    Args:
      summary: ``{"labels": [{"label", "name"?, "dice_before", "dice_affine"?, "dice", "hd95_mm",
        "voxels_fixed", "voxels_warped"}, ...], "mean_dice", "mean_dice_before", ...}``.

    Returns:
      The table, one label per line, and a closing line with the means.
    """

    def f(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    rows = summary["labels"]
    named = any("name" in r for r in rows)
    width = min(max([4] + [len(r.get("name", "")) for r in rows]), 28)
    keys = [k for k in ("before", "affine") if f"mean_dice_{k}" in summary]
    head = f"{'label':>6}" + (f"  {'name':<{width}}" if named else "")
    head += (
        "".join(f"  {'Dice ' + k:>11}" for k in keys)
        + f"  {'Dice':>7}  {'HD95 mm':>8}  {'voxels F':>9}  {'voxels W':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['label']:>6}" + (f"  {r.get('name', '')[:width]:<{width}}" if named else "")
        line += "".join(f"  {f(r[f'dice_{k}'], '11.4f')}" for k in keys)
        line += f"  {f(r['dice'], '7.4f')}  {f(r['hd95_mm'], '8.3f')}"
        line += f"  {r['voxels_fixed']:>9}  {r['voxels_warped']:>9}"
        lines.append(line)
    lines.append("-" * len(head))
    means = ", ".join(f"{k} {f(summary[f'mean_dice_{k}'], '.4f')}" for k in keys)
    lines.append(
        f"mean Dice {f(summary['mean_dice'], '.4f')} over {summary['num_labels_dice']} labels"
        + (f" ({means})" if means else "")
        + f"; mean HD95 {f(summary['mean_hd95_mm'], '.3f')} mm over {summary['num_labels_hd95']} labels"
    )
    return "\n".join(lines)


def options_json(options: dict[str, Any]) -> dict[str, Any]:
    """Pipeline options as plain JSON values (the ``options`` entry of the report).

    Args:
      options: ``{"pipeline": str, "linear_levels": [(shrink, smooth_mm, iterations), ...],
        "deformable_levels": [...], "greedy": {greedy setting: value} overrides, "window": int}`` and an
        optional ``"similarity"`` registry spec.
    """
    return {
        "pipeline": options["pipeline"],
        "linear_levels": [[int(a), float(b), int(c)] for a, b, c in options["linear_levels"]],
        "deformable_levels": [[int(a), float(b), int(c)] for a, b, c in options["deformable_levels"]],
        "greedy": {
            k: (v if isinstance(v, (bool, str)) else float(v) if isinstance(v, float) else int(v))
            for k, v in dict(options["greedy"]).items()
        },
        "window": int(options["window"]),
        **({"similarity": str(options["similarity"])} if options.get("similarity") is not None else {}),
    }


def _figure_png(fixed, moving_before, warped, field, jac, losses, title, contours=None) -> bytes | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from jaxreg.plot import _pyplot, registration_report

    fig = registration_report(
        fixed, moving_before, warped, deformation=field, jacobian=jac, losses=losses, title=title, contours=contours
    )
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return buf.getvalue()


@functools.cache
def _jitted() -> tuple[Callable, Callable, Callable]:
    """``to_displacement``, ``jacobian_determinant`` and ``inverse_displacement`` compiled whole (grid static): one
    compilation each instead of one per operation."""
    from jaxreg.core.compilation import jit
    from jaxreg.transforms import inverse_displacement, jacobian_determinant, to_displacement

    return (
        jit(to_displacement, static_argnums=1),
        jit(jacobian_determinant, static_argnums=1),
        jit(inverse_displacement, static_argnums=1),
    )


def summarize(
    inputs: RegistrationInputs,
    result: Any,
    options: dict[str, Any],
    *,
    title: str | None = None,
    extra: dict[str, Any] | None = None,
    contours: dict[str, Any] | None = None,
    figure: bool = True,
) -> Any:
    """Compute every output of a registration run in memory (nothing is written).

    Args:
      inputs: the run's inputs.
      result: a :class:`~jaxreg.optimize.Registration` (its ``linear`` and ``deformable`` parts, ``stages`` with
        their level records, ``seconds``).
      options: the options it ran with (see :func:`options_json`).
      title: figure title.
      extra: more ``report.json`` entries.
      contours: ``{name: label map on the fixed grid}`` drawn as contours on the figure (organs).
      figure: draw ``report.png`` (``False``: no figure, e.g. for many pairs).

    Returns:
      :class:`jaxreg.io.outputs.Outputs` (the warped image, transforms, labels, Dice summary, report, figure
      bytes and the lines to print).
    """
    from jaxreg.evaluation.consistency import inverse_consistency_error
    from jaxreg.evaluation.jacobian import jacobian_statistics
    from jaxreg.io.outputs import Outputs
    from jaxreg.transforms import Affine, compose, inverse_method
    from jaxreg.warp import warp, warp_labels

    to_displacement, jacobian_determinant, inverse_displacement = _jitted()
    t0 = time.perf_counter()
    fixed, moving = inputs.fixed, inputs.moving
    g = fixed.grid
    linear = result.linear if result.linear is not None else Affine.identity(g.ndim)
    field = None if result.deformable is None else to_displacement(result.deformable, g)
    for what, t in (("linear", linear), ("deformable", field)):
        leaves = [] if t is None else jax.tree_util.tree_leaves(t)
        if not all(bool(np.all(np.isfinite(np.asarray(x)))) for x in leaves):
            raise ValueError(
                f"registration: the {what} transform holds NaN or Inf values (the optimisation diverged); try a "
                "smaller step or learning rate, or check the inputs"
            )
    full = linear if field is None else compose(linear, field)
    warped = warp(moving, full, g, order=1)
    identity = Affine.identity(g.ndim)
    before = warp(moving, identity, g, order=1)
    affine_only = warp(moving, linear, g, order=1) if field is not None else warped
    f = np.asarray(fixed.data)
    fmask = None if inputs.fixed_mask is None else np.asarray(inputs.fixed_mask.data)
    stages_img = {
        "before": np.asarray(before.data),
        "affine": np.asarray(affine_only.data),
        "after": np.asarray(warped.data),
    }
    metrics = _similarity(f, stages_img, fmask)

    of = "deformable" if field is not None else "affine"
    jt = field if field is not None else linear
    st = jacobian_statistics(jt, g)
    jac = np.asarray(jacobian_determinant(jt, g)) if field is not None else None
    jacobian = {
        "of": of,
        "percent_nonpositive": _finite(100.0 * float(st.fraction_nonpositive)),
        "num_nonpositive": int(st.num_nonpositive),
        "num_voxels": int(st.num_voxels),
        "sdlogj": _finite(st.std_log),
        "min": _finite(st.min),
        "max": _finite(st.max),
        "mean": _finite(st.mean),
    }
    inverse_field = None
    inverse_report = None
    if field is not None:
        # exp(-v) of a velocity field; otherwise the fixed-point inverse of the written field itself, so that
        # warp.nii.gz and inverse_warp.nii.gz undo each other as well as the iteration allows
        method = "exp(-v)" if inverse_method(result.deformable) == "exp(-v)" else "fixed-point"
        inverse_field = inverse_displacement(result.deformable if method == "exp(-v)" else field, g)
        ic = inverse_consistency_error(field, inverse_field, g)
        inverse_report = {
            "method": method,
            "mean_mm": _finite(ic.mean),
            "max_mm": _finite(ic.max),
            "num_voxels": ic.num_voxels,
            "num_outside": ic.num_outside,
        }
    warped_labels = None
    dice = None
    if inputs.fixed_labels is not None:
        warped_labels = warp_labels(inputs.moving_labels, full, g)
        lab_stages = {"before": np.asarray(warp_labels(inputs.moving_labels, identity, g).data)}
        if field is not None:
            lab_stages["affine"] = np.asarray(warp_labels(inputs.moving_labels, linear, g).data)
        lab_stages["after"] = np.asarray(warped_labels.data)
        dice = _dice_summary(
            np.asarray(inputs.fixed_labels.data), lab_stages, list(inputs.labels), inputs.names, g.spacing
        )
        metrics["mean_dice_before"] = dice["mean_dice_before"]
        if "mean_dice_affine" in dice:
            metrics["mean_dice_affine"] = dice["mean_dice_affine"]
        metrics["mean_dice"] = dice["mean_dice"]
        metrics["mean_hd95_mm"] = dice["mean_hd95_mm"]

    # report keys: "linear" for the linear stage(s), the stage's name for the others ("deformable", ...)
    keyed = {("linear" if st_.transform.linear_part() is not None else st_.name): st_ for st_ in result.stages}
    stages = {key: _stage_json(key, st_) for key, st_ in keyed.items()}
    t_eval = time.perf_counter() - t0
    losses = {key: [np.asarray(lv.loss) for lv in st_.levels] for key, st_ in keyed.items()}
    t1 = time.perf_counter()
    png = _figure_png(fixed, before, warped, field, jac, losses, title, contours) if figure else None
    t_fig = time.perf_counter() - t1

    report: dict[str, Any] = {
        "pipeline": options["pipeline"],
        "options": options_json(options),
        "fixed_grid": {"shape": list(g.shape), "spacing_mm": [float(s) for s in g.spacing]},
        "moving_grid": {
            "shape": list(moving.grid.shape),
            "spacing_mm": [float(s) for s in moving.grid.spacing],
        },
        "metrics": metrics,
        "stages": stages,
        "jacobian": jacobian,
        **({"inverse_warp": inverse_report} if inverse_report is not None else {}),
        "timings": {
            "registration": round(float(result.seconds), 3),
            "evaluation": round(t_eval, 3),
            "figure": round(t_fig, 3),
        },
    }
    if extra:
        report.update(extra)
    text = [_stage_line(name, st_) for name, st_ in stages.items()]
    keys = ["before", "affine", "after"] if field is not None else ["before", "after"]
    text.append("NCC:        " + ", ".join(f"{k} {metrics[f'ncc_{k}']:.4f}" for k in keys))
    text.append("NMI:        " + ", ".join(f"{k} {metrics[f'nmi_{k}']:.4f}" for k in keys))
    text.append(
        f"det J:      {jacobian['num_nonpositive']} of {jacobian['num_voxels']} voxels <= 0 "
        f"({jacobian['percent_nonpositive']:.4f} %), SDlogJ {jacobian['sdlogj']:.4f}, "
        f"range [{jacobian['min']:.3f}, {jacobian['max']:.3f}] ({of} part)"
    )
    if inverse_report is not None:
        text.append(
            f"inverse:    {inverse_report['method']} of the deformable part, |u(x + u_inv(x)) + u_inv(x)| mean "
            f"{ic.mean:.4f} mm, max {ic.max:.4f} mm"
            + (f" ({ic.num_outside} voxels mapped outside the grid left out)" if ic.num_outside else "")
        )
    if dice is not None:
        text.append(format_dice_table(dice))
    if png is None and figure:
        text.append("report.png: skipped (matplotlib is not installed: pip install 'jaxreg[plot]')")
    return Outputs(warped, linear, field, warped_labels, dice, report, png, text, inverse_field)
