"""Benchmark: jaxreg's ready pipelines against established registration tools on the shared real images.

Methods (each registers ``moving`` onto ``fixed``; every transform is a pull map fixed -> moving):

* jaxreg ``register(fixed, moving, method="affine")`` and ``register(fixed, moving, method="default")``
  (``"multimodal"`` for the multi-modal pair, whose affine row is that pipeline's Mattes MI linear stage), the
  presets' levels and options, run in this process. Its wall time includes compilation: the
  JAX caches are cleared before each method (and, for the 2D slices, before the first pair only; later pairs
  reuse the compiled code as a user's loop would). The "warm" column repeats the run with the code compiled.
* ANTs (antspyx): ``ants.registration(fixed, moving, type_of_transform="Affine")`` and ``"SyN"`` (affine stage
  + SyN) with antspyx's defaults (Mattes MI for both stages; set explicitly for the multi-modal pair). Its wall
  time is that of the ``ants.registration`` call.
* PICSL greedy (``picsl_greedy``, optional): centre-of-mass moments, affine (12 dof), then deformable, NCC
  2x2(x2) (NMI for the multi-modal pair), 100x50x10 iterations; the "greedy affine" row is the affine part of
  the same run (its time: moments + affine).
* elastix (``itk-elastix``, optional): its default ``affine`` then ``bspline`` parameter maps (Mattes MI,
  B-spline with bending energy), centre-of-gravity initialisation.

The peers run in a separate Python (``--ants-python``, a venv made from ``benchmarks/peers_requirements.txt``:
antspyx pins NumPy/SciPy versions the main venv must not get), as a subprocess of this script in ``--worker``
mode, with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=--threads``. The worker writes its transform files to a
temporary folder; this process reads them with :mod:`jaxreg.io` and measures every method with the same
jaxreg evaluation code:

* brain3d (subj2_t1 onto subj1_t1): mean Dice over the 30 labels of ``labels.json`` and mean HD95 (mm, over
  the labels with a finite value) of the aseg maps warped with nearest neighbour (:func:`jaxreg.warp_labels`);
* brain2d (r16 fixed, each other slice moving): global NCC of the fixed and the (linearly) warped moving
  slice, mean over the 5 pairs; times are sums over the pairs;
* head2d_multimodal: Dice (and HD95) of ``fixed_mask`` and the warped ``moving_mask``;
* all: non-positive Jacobian determinant % and SDlogJ (:func:`jaxreg.evaluation.jacobian_statistics`, whole
  fixed grid) of the deformable part: jaxreg's velocity field, ANTs' ``1Warp.nii.gz``, greedy's warp, and
  elastix's full deformation field (``T = A o B`` so ``det J_T = det A det J_B``: the folding % and SDlogJ of
  the full field equal those of the B-spline part).

CPU seconds (all threads of the process over the same span: ``time.process_time`` around jaxreg's run and,
in the worker, around each peer's registration call) are reported beside the wall times: on a machine shared
with other work they are a steadier basis for the ratios than wall time.

Consistency checks (printed below the table): each tool's own resampling of the moving image (and of the
labels, nearest neighbour) is compared with jaxreg's warp through the transform files read back, so a wrong
reading of a file format shows up. ANTs' ``genericLabel`` interpolation is reported too.

Usage::

    python benchmarks/peers.py [--ants-python benchmarks/.venv-ants/bin/python] [--datasets brain3d brain2d
        head2d_multimodal] [--tools ants greedy elastix] [--threads 2] [--json out.json] [--no-warm]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
DEFAULT_ANTS_PYTHON = os.path.join(HERE, ".venv-ants", "bin", "python")
DATASETS = ("brain3d", "brain2d", "head2d_multimodal")
TOOLS = ("ants", "greedy", "elastix")
SLICES = ("r27", "r30", "r62", "r64", "r85")  # moving slices of brain2d; r16 is fixed


# ============================================================================================================
# Worker: runs inside the peers' venv (antspyx / picsl_greedy / itk-elastix). Imports neither jax nor jaxreg.
# ============================================================================================================
def _itk_text_affine(matrix_ras, path: str) -> None:
    """Write a RAS homogeneous matrix (fixed -> moving, as greedy writes it) as an ITK text affine (LPS)."""
    import numpy as np

    h = np.asarray(matrix_ras, np.float64)
    n = h.shape[0] - 1
    flip = np.diag([-1.0, -1.0] + [1.0] * (n - 2))
    m = flip @ h[:n, :n] @ flip
    t = flip @ h[:n, n]
    params = " ".join(repr(float(v)) for v in list(m.ravel()) + list(t))
    with open(path, "w") as fh:
        fh.write("#Insight Transform File V1.0\n#Transform 0\n")
        fh.write(f"Transform: AffineTransform_double_{n}_{n}\nParameters: {params}\n")
        fh.write("FixedParameters: " + " ".join(["0"] * n) + "\n")


def _worker_ants(task: dict) -> dict:
    import ants

    if task.get("seed") is not None:
        ants.config._random_seed = int(task["seed"])  # seeds the affine stage's sampling, keeps the threads
    out = task["out"]
    f = ants.image_read(task["fixed"])
    m = ants.image_read(task["moving"])
    kw = {}
    if task["multimodal"]:
        kw = {"aff_metric": "mattes", "syn_metric": "mattes"}
    if task.get("initial_transform"):  # e.g. ["Identity"]: start from the headers' frames (antspy's default: [f,m,1])
        kw["initial_transform"] = list(task["initial_transform"])
    for k, v in (task.get("options") or {}).items():  # more ants.registration arguments (lists become tuples)
        kw[k] = tuple(v) if isinstance(v, list) else v
    t0, c0 = time.perf_counter(), time.process_time()
    reg = ants.registration(f, m, type_of_transform=task["type"], outprefix=os.path.join(out, "ants_"), **kw)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    tx = list(reg["fwdtransforms"])
    res = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "transforms": tx,
        "deformable": next((p for p in tx if p.endswith("Warp.nii.gz")), None),
        "version": ants.__version__,
        "warped_image": os.path.join(out, "tool_warped.nii.gz"),
        "image_order": 1,
    }
    ants.image_write(reg["warpedmovout"], res["warped_image"])
    if task.get("labels"):
        lab = ants.image_read(task["labels"])
        for interp, key in (("nearestNeighbor", "warped_labels"), ("genericLabel", "warped_labels_generic")):
            res[key] = os.path.join(out, f"tool_labels_{interp}.nii.gz")
            ants.image_write(ants.apply_transforms(f, lab, tx, interpolator=interp), res[key])
    return res


def _worker_greedy(task: dict) -> dict:
    from importlib.metadata import version

    import numpy as np
    import picsl_greedy

    n = int(task["ndim"])
    g = picsl_greedy.Greedy3D() if n == 3 else picsl_greedy.Greedy2D()
    out, fx, mv = task["out"], task["fixed"], task["moving"]
    metric = "NMI" if task["multimodal"] else "NCC " + "x".join(["2"] * n)
    common = f"-d {n} -threads {int(task['threads'])}"
    mom, aff, warp = (
        os.path.join(out, s) for s in ("greedy_moments.mat", "greedy_affine.mat", "greedy_warp.nii.gz")
    )
    t0, c0 = time.perf_counter(), time.process_time()
    g.execute(f"{common} -moments 1 -i {fx} {mv} -o {mom}")
    g.execute(f"{common} -a -dof 12 -ia {mom} -m {metric} -n 100x50x10 -i {fx} {mv} -o {aff}")
    t_aff, c_aff = time.perf_counter() - t0, time.process_time() - c0
    g.execute(f"{common} -m {metric} -n 100x50x10 -wp 0 -i {fx} {mv} -it {aff} -o {warp}")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    aff_itk = os.path.join(out, "greedy_affine_itk.txt")
    _itk_text_affine(np.loadtxt(aff), aff_itk)
    res = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "affine_seconds": t_aff,
        "affine_cpu_seconds": c_aff,
        "transforms": [warp, aff_itk],
        "affine_transforms": [aff_itk],
        "deformable": warp,
        "version": version("picsl_greedy"),
        "image_order": 1,
        "warped_image": os.path.join(out, "tool_warped.nii.gz"),
    }
    g.execute(f"-d {n} -rf {fx} -rm {mv} {res['warped_image']} -r {warp} {aff}")
    if task.get("labels"):
        res["warped_labels"] = os.path.join(out, "tool_labels_nn.nii.gz")
        g.execute(f"-d {n} -rf {fx} -ri NN -rm {task['labels']} {res['warped_labels']} -r {warp} {aff}")
    return res


def _worker_elastix(task: dict) -> dict:
    import itk

    out = task["out"]
    f = itk.imread(task["fixed"], itk.F)
    m = itk.imread(task["moving"], itk.F)
    po = itk.ParameterObject.New()
    a = po.GetDefaultParameterMap("affine")
    a["AutomaticTransformInitialization"] = ["true"]
    a["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
    po.AddParameterMap(a)
    po.AddParameterMap(po.GetDefaultParameterMap("bspline"))
    t0, c0 = time.perf_counter(), time.process_time()
    warped, tpo = itk.elastix_registration_method(f, m, parameter_object=po, log_to_console=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    field = os.path.join(out, "elastix_field.nii.gz")
    itk.imwrite(itk.transformix_deformation_field(m, tpo), field)
    res = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "transforms": [field],
        "deformable": field,
        "version": itk.__version__,
        "warped_image": os.path.join(out, "tool_warped.nii.gz"),
        "image_order": 3,
    }
    itk.imwrite(warped, res["warped_image"])
    return res


def worker_main(job_path: str, result_path: str) -> None:
    """Run the tasks of ``job_path`` (JSON list) and write one result (or error) per task to ``result_path``."""
    with open(job_path) as fh:
        tasks = json.load(fh)
    fns = {"ants": _worker_ants, "greedy": _worker_greedy, "elastix": _worker_elastix}
    results = []
    for task in tasks:
        os.makedirs(task["out"], exist_ok=True)
        os.chdir(task["out"])  # transformix writes deformationField.nii into the working directory
        try:
            results.append(fns[task["tool"]](task))
        except Exception as exc:  # noqa: BLE001 - reported by the parent, which goes on with the others
            results.append({"error": f"{type(exc).__name__}: {exc}"})
        with open(result_path, "w") as fh:  # after every task, so a crash keeps the finished ones
            json.dump(results, fh)


# ============================================================================================================
# Parent: jaxreg, the subprocess driver, evaluation and the table.
# ============================================================================================================
def run_worker(python: str, tasks: list[dict], workdir: str, threads: int, log) -> list[dict]:
    """Run ``tasks`` in ``python --worker``; a crashed worker yields errors for its unfinished tasks."""
    job = os.path.join(workdir, f"job_{len(os.listdir(workdir))}.json")
    result = job.replace("job_", "result_")
    with open(job, "w") as fh:
        json.dump(tasks, fh)
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    with open(job.replace(".json", ".log"), "w") as out:
        proc = subprocess.run(
            [python, os.path.abspath(__file__), "--worker", job, result],
            check=False,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    results = []
    if os.path.exists(result):
        with open(result) as fh:
            results = json.load(fh)
    if proc.returncode != 0:
        log(f"  worker exited with code {proc.returncode} (log: {out.name})")
    return results + [{"error": f"worker exited with code {proc.returncode}"}] * (len(tasks) - len(results))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--ants-python",
        default=None,
        help=f"python of the peers' venv (default {DEFAULT_ANTS_PYTHON} if it exists)",
    )
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument(
        "--tools",
        nargs="+",
        default=list(TOOLS),
        choices=TOOLS,
        help="peers to run (greedy/elastix skipped if absent)",
    )
    ap.add_argument(
        "--threads", type=int, default=2, help="ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS of the peers"
    )
    ap.add_argument(
        "--ants-seed",
        type=int,
        default=None,
        help="seed ANTs' random sampling (default: unseeded, as antspyx)",
    )
    ap.add_argument("--no-warm", action="store_true", help="skip jaxreg's second (compiled) run")
    ap.add_argument("--json", default=None, help="write the table (and checks) as JSON here")
    ap.add_argument("--keep", default=None, help="keep the peers' transform files in this folder")
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return
    Bench(args).run()


class Bench:
    """The parent side: runs every method on every dataset, measures them alike, prints and saves the table."""

    def __init__(self, args) -> None:
        sys.path.insert(0, os.path.join(HERE, ".."))
        import jax  # noqa: F401  (imported here so that the worker never imports it)

        self.args = args
        self.rows: list[dict] = []
        self.checks: list[str] = []
        self.meta: dict = {}
        self.python = self._peers_python()
        self.tools = self._available_tools() if self.python else []

    # -- setup ---------------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def _peers_python(self) -> str | None:
        py = self.args.ants_python
        if py is None:
            if not os.path.exists(DEFAULT_ANTS_PYTHON):
                self.log(
                    f"note: {DEFAULT_ANTS_PYTHON} not found and no --ants-python given: skipping ANTs and the other "
                    "peers (see benchmarks/README.md to create the venv)"
                )
                return None
            py = DEFAULT_ANTS_PYTHON
        if not os.path.exists(py):
            raise SystemExit(f"--ants-python: {py} does not exist")
        return py

    def _available_tools(self) -> list[str]:
        mods = {"ants": "ants", "greedy": "picsl_greedy", "elastix": "itk"}
        code = (
            "import importlib.util, json; "
            f"print(json.dumps({{k: importlib.util.find_spec(m) is not None for k, m in {mods!r}.items()}}))"
        )
        found = json.loads(
            subprocess.run([self.python, "-c", code], capture_output=True, text=True, check=True).stdout
        )
        if "elastix" in self.args.tools and found["elastix"]:
            ok = subprocess.run(
                [self.python, "-c", "import itk; itk.ElastixRegistrationMethod"],
                capture_output=True,
                check=False,
            )
            found["elastix"] = ok.returncode == 0
        tools = [t for t in self.args.tools if found.get(t)]
        for t in self.args.tools:
            if not found.get(t):
                self.log(f"note: {t} is not installed in {self.python}: skipped")
        return tools

    # -- jaxreg --------------------------------------------------------------------------------------------
    @staticmethod
    def _cold() -> None:
        """Forget every compiled function, so that the next run pays its compilation as a fresh process would."""
        import jax

        from jaxreg.optimize import engine

        jax.clear_caches()
        engine._EXECUTABLES.clear()  # the engine's ahead-of-time compiled level kernels

    def _jaxreg(self, pairs, pipeline: str) -> tuple[list, float, float, float | None]:
        """Run jaxreg over ``pairs`` cold (and warm): ((transform, deformable) per pair, cold wall s, cold CPU s,
        warm wall s).

        ``pipeline``: ``"affine"`` / ``"affine-mi"`` (the linear stage of the default / multi-modal pipeline,
        NCC / Mattes MI) or the name of a pipeline of :data:`jaxreg.optimize.PRESETS`.
        """
        import jax

        from jaxreg.optimize import preset, register

        method = preset("multimodal")[:1] if pipeline == "affine-mi" else pipeline

        def one(f, m):
            r = register(f, m, method=method)
            return r.transform, r.deformable

        def once():
            out, t0, c0 = [], time.perf_counter(), time.process_time()
            for f, m in pairs:
                out.append(jax.block_until_ready(one(f, m)))
            return out, time.perf_counter() - t0, time.process_time() - c0

        self._cold()
        res, cold, cpu = once()
        warm = None if self.args.no_warm else once()[1]
        return res, cold, cpu, warm

    # -- evaluation ----------------------------------------------------------------------------------------
    def _jacobian(self, deformable, grid) -> tuple[float, float]:
        from jaxreg.evaluation import jacobian_statistics

        if deformable is None:
            return float("nan"), float("nan")
        st = jacobian_statistics(deformable, grid)
        return 100.0 * float(st.fraction_nonpositive), float(st.std_log)

    def _evaluate(self, ds: str, case: dict, transform, deformable) -> dict:
        import jax.numpy as jnp
        import numpy as np

        import jaxreg as jr
        from jaxreg.evaluation import dice, hd95_per_label
        from jaxreg.similarity import ncc

        fixed = case["fixed"]
        out = {}
        if ds == "brain2d":
            w = jr.warp(case["moving"], transform, fixed.grid)
            out["score"] = -float(ncc(fixed.data.astype(jnp.float32), w.data))
        else:
            lab = case["labels"]
            w = jr.warp_labels(case["moving_labels"], transform, fixed.grid).data
            d = np.asarray(dice(case["fixed_labels"].data, w, labels=lab))
            out["score"] = float(np.nanmean(d))
            h = np.asarray(
                hd95_per_label(case["fixed_labels"].data, w, labels=lab, spacing=fixed.grid.spacing)
            )
            out["hd95"] = float(np.mean(h[np.isfinite(h)])) if np.isfinite(h).any() else float("nan")
            out["hd95_infinite"] = int(np.sum(np.isinf(h)))
        out["folding_pct"], out["sdlogj"] = self._jacobian(deformable, fixed.grid)
        return out

    def _mean_eval(self, evals: list[dict]) -> dict:
        keys = evals[0].keys()
        return {k: float(sum(e[k] for e in evals) / len(evals)) for k in keys}

    # -- data ----------------------------------------------------------------------------------------------
    def _cases(self, ds: str) -> list[dict]:
        from jaxreg.io import load_image, load_labels

        d = os.path.join(DATA, ds)
        if ds == "brain3d":
            with open(os.path.join(d, "labels.json")) as fh:
                labels = json.load(fh)["eval_labels"]
            p = {
                k: os.path.join(d, f"{k}.nii.gz")
                for k in ("subj1_t1", "subj2_t1", "subj1_aseg", "subj2_aseg")
            }
            return [
                {
                    "name": "subj2->subj1",
                    "fixed_path": p["subj1_t1"],
                    "moving_path": p["subj2_t1"],
                    "labels_path": p["subj2_aseg"],
                    "fixed": load_image(p["subj1_t1"]),
                    "moving": load_image(p["subj2_t1"]),
                    "labels": labels,
                    "fixed_labels": load_labels(p["subj1_aseg"]),
                    "moving_labels": load_labels(p["subj2_aseg"]),
                }
            ]
        if ds == "brain2d":
            fp = os.path.join(d, "r16.nii.gz")
            fixed = load_image(fp)
            return [
                {
                    "name": f"{s}->r16",
                    "fixed_path": fp,
                    "moving_path": os.path.join(d, f"{s}.nii.gz"),
                    "labels_path": None,
                    "fixed": fixed,
                    "moving": load_image(os.path.join(d, f"{s}.nii.gz")),
                }
                for s in SLICES
            ]
        p = {k: os.path.join(d, f"{k}.nii.gz") for k in ("fixed", "moving", "fixed_mask", "moving_mask")}
        return [
            {
                "name": "moving->fixed",
                "fixed_path": p["fixed"],
                "moving_path": p["moving"],
                "labels_path": p["moving_mask"],
                "fixed": load_image(p["fixed"], dtype="float32"),
                "moving": load_image(p["moving"], dtype="float32"),
                "labels": [1],
                "fixed_labels": load_labels(p["fixed_mask"]),
                "moving_labels": load_labels(p["moving_mask"]),
            }
        ]

    # -- one dataset ---------------------------------------------------------------------------------------
    def _add(self, ds: str, method: str, kind: str, seconds, cpu, warm, evals: list[dict], **extra) -> None:
        row = dict(
            dataset=ds,
            method=method,
            kind=kind,
            seconds=seconds,
            cpu_seconds=cpu,
            warm_seconds=warm,
            **self._mean_eval(evals),
            **extra,
        )
        self.rows.append(row)
        sc = row.get("score", float("nan"))
        t = "-" if seconds is None else f"{seconds:.1f} s"
        self.log(
            f"  {method:28s} {t:>9s}  score {sc:.4f}  J<=0 {row['folding_pct']:.4f} %  SDlogJ {row['sdlogj']:.4f}"
        )

    def _dataset(self, ds: str, workdir: str) -> None:
        from jaxreg.transforms import Translation

        self.log(f"\n== {ds}")
        cases = self._cases(ds)
        nd = cases[0]["fixed"].grid.ndim
        ident = Translation.identity(nd)
        self._add(
            ds,
            "identity (no registration)",
            "none",
            None,
            None,
            None,
            [self._evaluate(ds, c, ident, None) for c in cases],
        )
        pipe = "multimodal" if ds == "head2d_multimodal" else "default"
        pairs = [(c["fixed"], c["moving"]) for c in cases]
        lin = "affine-mi" if pipe == "multimodal" else "affine"
        for pl, kind in ((lin, "affine"), (pipe, "deformable")):
            res, cold, cpu, warm = self._jaxreg(pairs, pl)
            evals = [self._evaluate(ds, c, t, d) for c, (t, d) in zip(cases, res)]
            self._add(ds, f"jaxreg {pl}", kind, cold, cpu, warm, evals)
        for tool in self.tools:
            self._peer(ds, tool, cases, workdir)

    def _peer(self, ds: str, tool: str, cases: list[dict], workdir: str) -> None:
        multi = ds == "head2d_multimodal"
        kinds = [("Affine", "affine"), ("SyN", "deformable")] if tool == "ants" else [(None, "deformable")]
        for typ, kind in kinds:
            tasks = []
            for i, c in enumerate(cases):
                out = os.path.join(workdir, ds, f"{tool}{'_' + typ if typ else ''}_{i}")
                tasks.append(
                    {
                        "tool": tool,
                        "type": typ,
                        "fixed": c["fixed_path"],
                        "moving": c["moving_path"],
                        "labels": c["labels_path"],
                        "multimodal": multi,
                        "ndim": c["fixed"].grid.ndim,
                        "threads": self.args.threads,
                        "out": out,
                        "seed": self.args.ants_seed,
                    }
                )
            t0 = time.perf_counter()
            results = run_worker(self.python, tasks, workdir, self.args.threads, self.log)
            self.log(f"  ({tool}{' ' + typ if typ else ''}: subprocess {time.perf_counter() - t0:.1f} s)")
            bad = [r["error"] for r in results if "error" in r]
            name = {
                "ants": f"ANTs {typ}",
                "greedy": "greedy affine+deformable",
                "elastix": "elastix affine+bspline",
            }[tool]
            if bad:
                self.log(f"  {name}: FAILED: {bad[0]}")
                self.checks.append(f"{ds} {name}: failed: {bad[0]}")
                continue
            self.meta[f"{tool}_version"] = results[0].get("version")
            evals, aff_evals = [], []
            for c, r in zip(cases, results):
                transform, deform = self._read(r)
                evals.append(self._evaluate(ds, c, transform, deform))
                self._check(ds, name, c, r, transform)
                if tool == "greedy":
                    aff_evals.append(self._evaluate(ds, c, self._read(r, affine=True)[0], None))
            if tool == "greedy":
                self._add(
                    ds,
                    "greedy affine",
                    "affine",
                    sum(r["affine_seconds"] for r in results),
                    sum(r["affine_cpu_seconds"] for r in results),
                    None,
                    aff_evals,
                )
            self._add(
                ds,
                name,
                kind,
                sum(r["seconds"] for r in results),
                sum(r["cpu_seconds"] for r in results),
                None,
                evals,
            )

    @staticmethod
    def _read(result: dict, affine: bool = False):
        from jaxreg.io import compose_files, read_transform

        paths = result["affine_transforms"] if affine else result["transforms"]
        deform = None if affine or not result.get("deformable") else read_transform(result["deformable"])
        return compose_files(paths), deform

    def _check(self, ds: str, name: str, case: dict, result: dict, transform) -> None:
        """Compare the tool's own resampling with jaxreg's warp through the files read back."""
        import numpy as np

        import jaxreg as jr
        from jaxreg.evaluation import dice
        from jaxreg.io import load_image, load_labels

        fixed = case["fixed"]
        mine = np.asarray(jr.warp(case["moving"], transform, fixed.grid, order=result["image_order"]).data)
        theirs = np.asarray(load_image(result["warped_image"], dtype="float32").data)
        rng = float(np.ptp(np.asarray(case["moving"].data)))
        diff = np.abs(mine - theirs) / rng
        big = diff > 0.01
        where = ""
        if big.any():
            # where ITK and jaxreg differ by design: sample points within half a voxel outside the moving grid
            # (ITK extends the edge value there; jaxreg's mode="constant" returns 0 beyond index 0 and n - 1)
            idx = np.asarray(case["moving"].grid.world_to_index(transform.sample_grid(fixed.grid)))[big]
            edge = np.minimum(idx, np.asarray(case["moving"].grid.shape) - 1 - idx).min(axis=-1)
            where = f" (their sample points lie {edge.min():+.2f} to {edge.max():+.2f} voxels from the moving grid's edge)"
        msg = (
            f"{ds} {case['name']} {name}: {name.split()[0]}-resampled vs jaxreg-warped moving image: mean |diff| "
            f"{diff.mean():.1e} of the intensity range; {100.0 * big.mean():.2f} % of voxels differ by > 1 %{where}"
        )
        if result.get("warped_labels"):
            wl = np.asarray(jr.warp_labels(case["moving_labels"], transform, fixed.grid).data)
            tl = np.asarray(load_labels(result["warped_labels"]).data)
            msg += f"; nearest-neighbour labels agree on {100.0 * np.mean(wl == tl):.4f} % of voxels"
            if result.get("warped_labels_generic"):
                gl = load_labels(result["warped_labels_generic"]).data
                gd = float(np.nanmean(np.asarray(dice(case["fixed_labels"].data, gl, labels=case["labels"]))))
                nd = float(np.nanmean(np.asarray(dice(case["fixed_labels"].data, tl, labels=case["labels"]))))
                msg += f"; mean Dice with ANTs' own labels: nearestNeighbor {nd:.4f}, genericLabel {gd:.4f}"
        self.checks.append(msg)

    # -- table ---------------------------------------------------------------------------------------------
    def _ratios(self) -> None:
        ants = {(r["dataset"], r["kind"]): r for r in self.rows if r["method"] in ("ANTs Affine", "ANTs SyN")}
        for r in self.rows:
            a = ants.get((r["dataset"], r["kind"]))
            base = a["seconds"] if a else None
            r["ratio_to_ants"] = r["seconds"] / base if base and r["seconds"] is not None else None
            r["cpu_ratio_to_ants"] = (
                r["cpu_seconds"] / a["cpu_seconds"] if a and r["cpu_seconds"] is not None else None
            )
            r["warm_ratio_to_ants"] = (
                r["warm_seconds"] / base if base and r.get("warm_seconds") is not None else None
            )

    def table(self) -> str:
        measure = {
            "brain3d": "Dice (30 labels)",
            "brain2d": "NCC (5 pairs)",
            "head2d_multimodal": "mask Dice",
        }
        head = [
            "dataset",
            "measure",
            "method",
            "time s",
            "CPU s",
            "warm s",
            "score",
            "HD95 mm",
            "J<=0 %",
            "SDlogJ",
            "time/ANTs",
            "CPU/ANTs",
            "warm/ANTs",
        ]

        def fmt(v, spec):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

        body = [
            [
                r["dataset"],
                measure[r["dataset"]],
                r["method"],
                fmt(r["seconds"], ".1f"),
                fmt(r["cpu_seconds"], ".1f"),
                fmt(r.get("warm_seconds"), ".1f"),
                fmt(r["score"], ".4f"),
                fmt(r.get("hd95"), ".2f"),
                fmt(r["folding_pct"], ".4f"),
                fmt(r["sdlogj"], ".4f"),
                fmt(r["ratio_to_ants"], ".2f"),
                fmt(r["cpu_ratio_to_ants"], ".2f"),
                fmt(r["warm_ratio_to_ants"], ".2f"),
            ]
            for r in self.rows
        ]
        width = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
        line = lambda cells: (
            "| "
            + " | ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width)))
            + " |"
        )
        sep = "|" + "|".join("-" * (w + 2) for w in width) + "|"
        return "\n".join([line(head), sep] + [line(b) for b in body])

    def run(self) -> None:
        import platform

        import jax

        self.meta.update(
            jax=jax.__version__,
            backend=jax.default_backend(),
            cpus=os.cpu_count(),
            threads=self.args.threads,
            platform=platform.platform(),
            peers_python=self.python,
            tools=self.tools,
            load_before=os.getloadavg(),
        )
        t_start = time.perf_counter()
        workdir = os.path.abspath(self.args.keep or tempfile.mkdtemp(prefix="jaxreg_peers_"))
        os.makedirs(workdir, exist_ok=True)
        try:
            for ds in self.args.datasets:
                self._dataset(ds, workdir)
        finally:
            if not self.args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        self._ratios()
        self.meta.update(load_after=os.getloadavg(), total_seconds=time.perf_counter() - t_start)
        self.log(
            f"\njax {self.meta['jax']} ({self.meta['backend']}, {self.meta['cpus']} CPUs); peers: "
            + ", ".join(f"{t} {self.meta.get(t + '_version', '?')}" for t in self.tools)
            + f"; ITK threads {self.args.threads}"
        )
        self.log(
            "time: wall seconds (jaxreg: cold, compilation included; brain2d: sum over 5 pairs); CPU: CPU seconds of "
            "the process (all threads) over the same span; warm: jaxreg again, compiled; x/ANTs: against ANTs Affine "
            "(affine rows) or ANTs SyN (deformable rows) of the same run"
        )
        la, lb = self.meta["load_before"], self.meta["load_after"]
        self.log(
            f"load average (1, 5, 15 min) before {la[0]:.1f} {la[1]:.1f} {la[2]:.1f}, after {lb[0]:.1f} {lb[1]:.1f} {lb[2]:.1f} "
            f"on {self.meta['cpus']} CPUs: above the CPU count, other processes shared the machine and wall times are inflated"
        )
        self.log(
            "J<=0 % and SDlogJ: Jacobian of the deformable part on the fixed grid; HD95: mean over labels with a finite value\n"
        )
        self.log(self.table())
        if self.checks:
            self.log("\nchecks:")
            for c in self.checks:
                self.log("  " + c)
        if self.args.json:
            with open(self.args.json, "w") as fh:
                json.dump(
                    {"rows": self.rows, "checks": self.checks, "meta": self.meta}, fh, indent=1, default=float
                )
            self.log(f"\nwrote {self.args.json}")


if __name__ == "__main__":
    main()
