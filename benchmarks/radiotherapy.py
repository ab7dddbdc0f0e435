"""Benchmark: adaptive radiotherapy, planning CT -> synthetic daily MR, organ-aware vs generic vs ANTs SyN.

For ``--days`` seeded synthetic treatment days (:func:`jaxreg.radiotherapy.synthesize_daily_case` on
``shared/data/pelvis_ct``: a daily MR of the CT's patient under a known mapping with rigid bones, a rigidly moved
prostate, a filled or emptied bladder and deformed bowel), the CT (moving) is registered to the MR (fixed) by

* ``jaxreg organ``: :func:`jaxreg.radiotherapy.organ_aware` (rigid MI -> the prostate's own rigid motion -> velocity field
  with NMI, rigid bones,
  incompressible prostate, free bladder/bowel) through :func:`jaxreg.optimize.register`, on the CT windowed to
  -1000..1500 HU with the prostate's contour painted in (:func:`jaxreg.radiotherapy.ct_window`, part of the
  pipeline's documented use);
* ``jaxreg multimodal``: the generic multi-modal pipeline ``register(..., method="multimodal")``;
* ``ANTs SyN``: antspyx ``ants.registration(type_of_transform="SyN", aff_metric="mattes", syn_metric="mattes",
  initial_transform=["Identity"])`` in the peers' venv (``benchmarks/peers.py``'s worker), transforms read back
  with :mod:`jaxreg.io`. The identity start is ANTs' best here: with antspyx's default start (centres of mass,
  ``[fixed,moving,1]``) the MR's smaller field of view put ANTs 113 mm off on day 0.

Every method is measured with the same code (:func:`jaxreg.radiotherapy.organ_report` against the ground truth
and the MR's labels): mean error in the body (mm), prostate error (mm) and volume change (%), the worst bone's
RMS residual from its best rigid fit (mm) and Jacobian orthonormality error (%), bladder Dice; wall time per
registration (the first jaxreg day includes compilation: ``cold``; the mean over the other days: ``warm``).

``abdomen_ct_mr`` (a real CT and MR of two people): mean Dice over ``eval_labels`` of the CT's labels carried onto
the MR, for the same three methods (the organ-aware pipeline treats every evaluated organ as compressible).

Usage::

    python benchmarks/radiotherapy.py [--days 3] [--seed 0] [--ants-python benchmarks/.venv-ants/bin/python]
        [--threads 2] [--no-ants] [--no-abdomen] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
sys.path.insert(0, HERE)


def _bounds_text(rows: dict) -> list[str]:
    org = rows.get("jaxreg organ")
    if org is None:
        return []
    out = [
        f"prostate error < 1 mm: {org['prostate_err']:.2f} mm -> {'met' if org['prostate_err'] < 1 else 'MISSED'}",
        f"prostate volume change < 2 %: {org['prostate_vol']:.2f} % -> {'met' if abs(org['prostate_vol']) < 2 else 'MISSED'}",
        f"bone rigid residual < 0.5 mm: {org['bone_rigid']:.3f} mm -> {'met' if org['bone_rigid'] < 0.5 else 'MISSED'}",
        f"bone orthonormality < 1 %: {org['bone_orth']:.2f} % -> {'met' if org['bone_orth'] < 1 else 'MISSED'}",
        f"bladder Dice >= 0.90: {org['bladder_dice']:.3f} -> {'met' if org['bladder_dice'] >= 0.9 else 'MISSED'}",
    ]
    for peer in ("jaxreg multimodal", "ANTs SyN"):
        if peer in rows:
            ok = org["body_err"] < rows[peer]["body_err"]
            out.append(
                f"body error below {peer}: {org['body_err']:.2f} vs {rows[peer]['body_err']:.2f} mm -> "
                f"{'met' if ok else 'MISSED'}"
            )
    out.append(f"one pair < 60 s (cold, compilation included): {org['cold']:.1f} s -> {'met' if org['cold'] < 60 else 'MISSED'}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ants-python", default=os.path.join(HERE, ".venv-ants", "bin", "python"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--no-abdomen", action="store_true")
    ap.add_argument("--no-generic", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax
    import numpy as np

    from jaxreg.io import load_image, load_labels, save_image
    from jaxreg.optimize import register
    from jaxreg.radiotherapy import OrganGroups, ct_window, load_groups, organ_aware, organ_report
    from jaxreg.radiotherapy.synthesis import synthesize_daily_case

    ants_ok = not args.no_ants and os.path.exists(args.ants_python)
    if not args.no_ants and not ants_ok:
        print(f"ANTs: skipped, no peers' venv at {args.ants_python} (see benchmarks/peers_requirements.txt)")
    if ants_ok:
        from peers import run_worker
    pelvis = os.path.join(DATA, "pelvis_ct")
    ct = load_image(os.path.join(pelvis, "ct.nii.gz"))
    ct_labels = load_labels(os.path.join(pelvis, "labels.nii.gz"))
    groups = load_groups(os.path.join(pelvis, "labels.json"))
    bones = list(groups.rigid)
    work = tempfile.mkdtemp(prefix="jaxreg_rt_")
    per: dict[str, list[dict]] = {}
    print(f"pelvis_ct: {ct.grid}; {args.days} synthetic days from seed {args.seed}; work folder {work}")

    def measure(name: str, case, transform, seconds: float) -> None:
        rows = organ_report(
            transform, case.ct_labels, groups, fixed_grid=case.mr.grid, moving_grid=case.ct.grid, side="moving",
            reference=case.mr_labels, truth=case.truth,
        )
        by = {r["label"]: r for r in rows}
        body = np.asarray(case.body.data) > 0
        err = np.linalg.norm(
            np.asarray(transform.sample_grid(case.mr.grid)) - np.asarray(case.truth.sample_grid(case.mr.grid)), axis=-1
        )
        pro = groups.incompressible[0]
        rec = {
            "seconds": seconds,
            "body_err": float(err[body].mean()),
            "prostate_err": by[pro]["error_mm"],
            "prostate_vol": by[pro]["volume_change_pct"],
            "bone_rigid": max(by[b]["rigid_residual_mm"] for b in bones),
            "bone_orth": max(by[b]["orthonormality_pct"] for b in bones),
            "bone_err": float(np.mean([by[b]["error_mm"] for b in bones])),
            "bladder_dice": by[21]["dice"],
            "prostate_dice": by[pro]["dice"],
        }
        per.setdefault(name, []).append(rec)
        print(
            f"  {name:<18} {seconds:6.1f} s  body {rec['body_err']:.2f} mm  prostate {rec['prostate_err']:.2f} mm "
            f"({rec['prostate_vol']:+.2f} %)  bones {rec['bone_err']:.2f} mm, rigid residual {rec['bone_rigid']:.3f} mm, "
            f"orth {rec['bone_orth']:.2f} %  bladder Dice {rec['bladder_dice']:.3f}"
        )

    for d in range(args.days):
        seed = args.seed + d
        case = synthesize_daily_case(jax.random.key(seed), ct, ct_labels, groups, mr_spacing=3.0)
        m = case.motion
        print(
            f"day {d} (seed {seed}): MR {case.mr.grid.shape}, bladder volume x{m['bladder']['volume_factor']:.3f}, "
            f"max displacement {m['truth']['max_displacement_mm']:.1f} mm"
        )
        t0 = time.perf_counter()
        res = register(case.mr, ct_window(case.ct, labels=case.ct_labels, groups=groups), method=organ_aware(case.ct_labels, groups, side="moving"))
        jax.block_until_ready(res.transform)
        measure("jaxreg organ", case, res.transform, time.perf_counter() - t0)
        if not args.no_generic:
            t0 = time.perf_counter()
            res = register(case.mr, case.ct, method="multimodal")
            jax.block_until_ready(res.transform)
            measure("jaxreg multimodal", case, res.transform, time.perf_counter() - t0)
        if ants_ok:
            day = os.path.join(work, f"day{d}")
            os.makedirs(day, exist_ok=True)
            fpath, mpath = os.path.join(day, "mr.nii.gz"), os.path.join(day, "ct.nii.gz")
            save_image(case.mr, fpath)
            save_image(case.ct, mpath)
            task = {
                "tool": "ants", "type": "SyN", "fixed": fpath, "moving": mpath, "labels": None, "multimodal": True,
                "ndim": 3, "threads": args.threads, "out": os.path.join(day, "ants"), "seed": 1,
                "initial_transform": ["Identity"],
            }
            (r,) = run_worker(args.ants_python, [task], work, args.threads, print)
            if "error" in r:
                print(f"  ANTs SyN: FAILED: {r['error']}")
            else:
                from jaxreg.io import compose_files

                measure("ANTs SyN", case, compose_files(r["transforms"]), r["seconds"])

    summary: dict[str, dict] = {}
    print()
    print(f"{'method':<18} {'cold s':>7} {'warm s':>7} {'body mm':>8} {'prost mm':>8} {'prost vol%':>10} "
          f"{'bone mm':>8} {'bone rig':>8} {'bone orth%':>10} {'bladder':>8}")
    for name, recs in per.items():
        agg = {k: float(np.mean([r[k] for r in recs])) for k in recs[0] if k != "seconds"}
        agg["prostate_vol"] = float(np.max([abs(r["prostate_vol"]) for r in recs]))
        agg["bone_rigid"] = float(np.max([r["bone_rigid"] for r in recs]))
        agg["bone_orth"] = float(np.max([r["bone_orth"] for r in recs]))
        agg["cold"] = recs[0]["seconds"]
        agg["warm"] = float(np.mean([r["seconds"] for r in recs[1:]])) if len(recs) > 1 else float("nan")
        summary[name] = agg
        print(
            f"{name:<18} {agg['cold']:7.1f} {agg['warm']:7.1f} {agg['body_err']:8.2f} {agg['prostate_err']:8.2f} "
            f"{agg['prostate_vol']:10.2f} {agg['bone_err']:8.2f} {agg['bone_rigid']:8.3f} {agg['bone_orth']:10.2f} "
            f"{agg['bladder_dice']:8.3f}"
        )
    print("(means over days; prostate vol%, bone rigid residual and orthonormality: worst day; bone rig = worst bone)")
    for line in _bounds_text(summary):
        print("  " + line)

    abdomen: dict[str, float] = {}
    if not args.no_abdomen:
        from jaxreg.evaluation import dice
        from jaxreg.io import compose_files
        from jaxreg.warp import warp_labels

        ab = os.path.join(DATA, "abdomen_ct_mr")
        mr, act = load_image(os.path.join(ab, "mr.nii.gz")), load_image(os.path.join(ab, "ct.nii.gz"))
        mr_l, ct_l = load_labels(os.path.join(ab, "mr_labels.nii.gz")), load_labels(os.path.join(ab, "ct_labels.nii.gz"))
        with open(os.path.join(ab, "labels.json")) as fh:
            ev = json.load(fh)["eval_labels"]
        present = [v for v in ev if v in set(np.unique(np.asarray(ct_l.data)).tolist())]

        def ab_dice(t) -> float:
            w = warp_labels(ct_l, t, mr.grid).data
            return float(np.nanmean(np.asarray(dice(mr_l.data, w, labels=ev))))

        print("\nabdomen_ct_mr (CT moving -> MR fixed), mean Dice over eval_labels:")
        t0 = time.perf_counter()
        r0 = register(mr, act, method="multimodal")
        abdomen["jaxreg multimodal"] = ab_dice(r0.transform)
        print(f"  jaxreg multimodal   {abdomen['jaxreg multimodal']:.3f}  ({time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        g = OrganGroups.create(compressible=present)
        r1 = register(mr, ct_window(act, labels=ct_l, groups=g), method=organ_aware(ct_l, g, side="moving"))
        abdomen["jaxreg organ"] = ab_dice(r1.transform)
        print(f"  jaxreg organ        {abdomen['jaxreg organ']:.3f}  ({time.perf_counter() - t0:.1f} s)")
        if ants_ok:
            task = {
                "tool": "ants", "type": "SyN", "fixed": os.path.join(ab, "mr.nii.gz"), "moving": os.path.join(ab, "ct.nii.gz"),
                "labels": None, "multimodal": True, "ndim": 3, "threads": args.threads,
                "out": os.path.join(work, "abdomen_ants"), "seed": 1,
            }
            (r,) = run_worker(args.ants_python, [task], work, args.threads, print)
            if "error" in r:
                print(f"  ANTs SyN: FAILED: {r['error']}")
            else:
                abdomen["ANTs SyN"] = ab_dice(compose_files(r["transforms"]))
                print(f"  ANTs SyN            {abdomen['ANTs SyN']:.3f}  ({r['seconds']:.1f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"days": per, "summary": summary, "abdomen": abdomen}, fh, indent=2)


if __name__ == "__main__":
    main()
