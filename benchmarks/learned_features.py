"""Benchmark: learned multi-modal features (``features(model="labelmind")``) against NMI, MIND-SSC and ANTs SyN.

The multi-modal pipeline (:data:`jaxreg.optimize.PRESETS` ``"multimodal"``: affine with Mattes MI, then the
symmetric greedy SVF) is run with its deformable stage's similarity replaced
(``preset("multimodal", similarity=...)``, the command line's ``--similarity``):

* ``nmi(bins=32)``: the pipeline's default;
* ``features(model=M)`` for each ``--model`` (default the shipped ``labelmind``; a model folder works too): SSD of
  the contrast-invariant feature maps of all three planes of a volume + 0.3 x NMI of the rank-equalised images
  (the network runs once per image and level), and ``features(model=M, axes=(2,))``, axial planes only;
* ``weighted_sum(terms=(("features(model=M, nmi=0.4, axes=(2,))", 2.0), ("mind(radius=1)", 1.0)))``: the
  learned axial features (with their NMI, ``--nmi``) plus MIND-SSC radius 1 (``--weight`` sets the 2.0); the sum
  is prepared like ``features`` alone (the network runs once per image and level, :mod:`jaxreg.similarity.combine`);
* ``mind`` (MIND-SSC, Heinrich's default radius 2) and ``mind(radius=1)`` (ConvexAdam's);

and ANTs SyN with Mattes MI (antspyx in the peers' venv, ``benchmarks/peers.py``'s worker, the same task as
``benchmarks/radiotherapy.py``: identity start) in the same run. Measures:

* ``abdomen_ct_mr`` (a real CT, moving, and MR, fixed, of two people): mean Dice over ``eval_labels`` of the CT's
  labels carried onto the MR;
* ``head2d_multimodal``: Dice of ``fixed_mask`` and the warped ``moving_mask`` (as ``benchmarks/peers.py``).

Usage::

    python benchmarks/learned_features.py [--ants-python /work/main/benchmarks/.venv-ants/bin/python]
        [--threads 2] [--no-ants] [--no-head] [--model labelmind] [--weight 2] [--nmi 0.4] [--only NAME ...]
        [--extra NAME=SPEC ...] [--json out.json]
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

FEATURES = {
    "features ({model})": "features(model='{model}')",
    "features ({model}, axial)": "features(model='{model}', axes=(2,))",
    "features ({model}, axial, nmi {nmi}) x{w} + MIND-SSC r1":
        "weighted_sum(terms=((\"features(model='{model}', nmi={nmi}, axes=(2,))\", {w}), ('mind(radius=1)', 1.0)))",
}
BASELINES = {
    "NMI (default)": "nmi(bins=32)",
    "MIND-SSC": "mind",
    "MIND-SSC radius 1": "mind(radius=1)",
}


def similarities(models, weight: float, nmi: float) -> dict[str, str]:
    """The table's rows: NMI, then each model's features (three planes, axial) and + MIND-SSC r1, then MIND-SSC."""
    rows = {"NMI (default)": BASELINES["NMI (default)"]}
    for m in models:
        name = os.path.basename(os.path.normpath(m))
        for k, v in FEATURES.items():
            sub = {"{model}": m, "{w}": repr(float(weight)), "{nmi}": f"{nmi:g}"}
            for a, b in sub.items():
                k, v = k.replace(a, name if a == "{model}" else b), v.replace(a, b)
            rows[k] = v
    rows.update({k: v for k, v in BASELINES.items() if k != "NMI (default)"})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ants-python", default=os.path.join(HERE, ".venv-ants", "bin", "python"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--no-head", action="store_true")
    ap.add_argument("--only", nargs="+", default=None, help="similarity names to run (keys of the table)")
    ap.add_argument("--model", nargs="+", default=["labelmind"],
                    help="feature models: shipped names or model folders (each gives two rows)")
    ap.add_argument("--weight", type=float, default=2.0, help="weight of the features against MIND-SSC r1 in the sum")
    ap.add_argument("--nmi", type=float, default=0.4, help="NMI weight inside the features term of the sum")
    ap.add_argument("--extra", nargs="+", default=[], metavar="NAME=SPEC",
                    help="further rows: a name and a similarity spec, e.g. \"f0=features(model='labelmind', nmi=0)\"")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np

    from jaxreg.evaluation import dice
    from jaxreg.io import compose_files, load_image, load_labels
    from jaxreg.optimize import preset, register
    from jaxreg.warp import warp_labels

    sims = {
        k: v for k, v in similarities(args.model, args.weight, args.nmi).items() if args.only is None or k in args.only or v in args.only
    }
    for item in args.extra:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            ap.error(f"--extra: expected NAME=SPEC, got {item!r}")
        sims[name] = spec
    ants_ok = not args.no_ants and os.path.exists(args.ants_python)
    if not args.no_ants and not ants_ok:
        print(f"ANTs: skipped, no peers' venv at {args.ants_python}")
    work = tempfile.mkdtemp(prefix="jaxreg_features_")
    table: dict[str, dict[str, tuple[float, float]]] = {}

    def run_jaxreg(ds: str, fixed, moving, score) -> None:
        for name, spec in sims.items():
            t0 = time.perf_counter()
            res = register(fixed, moving, method=preset("multimodal", similarity=spec))
            sec = time.perf_counter() - t0
            table.setdefault(name, {})[ds] = (score(res.transform), sec)
            print(f"  {name:<34} {table[name][ds][0]:.4f}  ({sec:.1f} s)", flush=True)

    def run_ants(ds: str, fixed_path: str, moving_path: str, ndim: int, score) -> None:
        if not ants_ok:
            return
        from peers import run_worker

        task = {
            "tool": "ants", "type": "SyN", "fixed": fixed_path, "moving": moving_path, "labels": None,
            "multimodal": True, "ndim": ndim, "threads": args.threads, "out": os.path.join(work, f"{ds}_ants"),
            "seed": 1,
        }
        (r,) = run_worker(args.ants_python, [task], work, args.threads, print)
        if "error" in r:
            print(f"  ANTs SyN (MI): FAILED: {r['error']}")
            return
        table.setdefault("ANTs SyN (MI)", {})[ds] = (score(compose_files(r["transforms"])), r["seconds"])
        print(f"  {'ANTs SyN (MI)':<34} {table['ANTs SyN (MI)'][ds][0]:.4f}  ({r['seconds']:.1f} s)", flush=True)

    # -- abdomen_ct_mr: CT moving -> MR fixed, organ Dice ------------------------------------------------------
    ab = os.path.join(DATA, "abdomen_ct_mr")
    mr, ct = load_image(os.path.join(ab, "mr.nii.gz")), load_image(os.path.join(ab, "ct.nii.gz"))
    mr_l, ct_l = load_labels(os.path.join(ab, "mr_labels.nii.gz")), load_labels(os.path.join(ab, "ct_labels.nii.gz"))
    with open(os.path.join(ab, "labels.json")) as fh:
        ev = json.load(fh)["eval_labels"]

    def ab_dice(t) -> float:
        w = warp_labels(ct_l, t, mr.grid).data
        return float(np.nanmean(np.asarray(dice(mr_l.data, w, labels=ev))))

    print("abdomen_ct_mr (CT moving -> MR fixed), mean Dice over eval_labels:")
    run_jaxreg("abdomen_ct_mr", mr, ct, ab_dice)
    run_ants("abdomen_ct_mr", os.path.join(ab, "mr.nii.gz"), os.path.join(ab, "ct.nii.gz"), 3, ab_dice)

    # -- head2d_multimodal: mask Dice ---------------------------------------------------------------------------
    if not args.no_head:
        hd = os.path.join(DATA, "head2d_multimodal")
        f, m = load_image(os.path.join(hd, "fixed.nii.gz")), load_image(os.path.join(hd, "moving.nii.gz"))
        fm, mm = load_labels(os.path.join(hd, "fixed_mask.nii.gz")), load_labels(os.path.join(hd, "moving_mask.nii.gz"))

        def hd_dice(t) -> float:
            w = warp_labels(mm, t, f.grid).data
            return float(np.asarray(dice(fm.data > 0, np.asarray(w) > 0, labels=[1]))[0])

        print("head2d_multimodal, Dice of the masks:")
        run_jaxreg("head2d_multimodal", f, m, hd_dice)
        run_ants("head2d_multimodal", os.path.join(hd, "fixed.nii.gz"), os.path.join(hd, "moving.nii.gz"), 2, hd_dice)

    print(f"\n{'method':<36} {'abdomen Dice':>12} {'s':>7} {'head2d Dice':>12} {'s':>7}")
    for name, row in table.items():
        cells = []
        for ds in ("abdomen_ct_mr", "head2d_multimodal"):
            v = row.get(ds)
            cells.append(f"{v[0]:12.4f} {v[1]:7.1f}" if v else f"{'-':>12} {'-':>7}")
        print(f"{name:<36} {' '.join(cells)}")
    for fname in [k for k in table if k.startswith("features")]:
        feat = table.get(fname, {})
        if "abdomen_ct_mr" in feat:
            for other in ("NMI (default)", "MIND-SSC", "MIND-SSC radius 1", "ANTs SyN (MI)"):
                if "abdomen_ct_mr" in table.get(other, {}):
                    a, b = feat["abdomen_ct_mr"][0], table[other]["abdomen_ct_mr"][0]
                    print(f"  abdomen: {fname} {a:.3f} vs {other} {b:.3f} -> {'above' if a > b else 'NOT above'}")
        if "head2d_multimodal" in feat:
            v = feat["head2d_multimodal"][0]
            print(f"  head2d_multimodal: {fname} {v:.4f} >= 0.995 -> {'met' if v >= 0.995 else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(table, fh, indent=2)


if __name__ == "__main__":
    main()
