"""Benchmark: cold starts. Fresh processes of ``jaxreg register`` against fresh processes of ANTs SyN, one run.

Rows (each a new process, timed from its start to its exit by this script; median of ``--repeats``, the runs of
the different rows interleaved so that other load on the machine falls on all of them alike):

* ``jaxreg --no-cache``: ``python -m jaxreg.cli --no-cache register FIXED MOVING -o OUT --json`` (default
  pipeline; no persistent compilation cache, so every program is compiled in the process: the cold start);
* ``jaxreg cache, empty``: the same with the persistent compilation cache on in a fresh folder (the first run of
  a new installation: programs are compiled for reuse and stored);
* ``jaxreg cache, warm``: again with that folder filled (every later run);
* ``jaxreg in-process, 2nd call``: one process calling :func:`jaxreg.optimize.register` twice; the second
  call's wall time (compiled code, the "warm" column of ``peers.py``);
* ``ANTs SyN``: a fresh process of the peers' Python (``--ants-python``) that imports antspyx, reads the pair,
  runs ``ants.registration(fixed, moving, type_of_transform="SyN")`` and writes the warped image (its
  transforms are written by the call); the registration call alone is reported too.

Each jaxreg process runs under a small wrapper (``--child``) that counts every XLA compilation (tracing,
lowering and backend compile events of ``jax.monitoring``), so the table gives the process's compilation time
and its share of the process wall time, beside the command's own timings (registration, evaluation, figure).
The 3-D row (``--pair3d``, default brain3d subj2 -> subj1, ``--no-cache``) reports the compilation share
(the bound: under 25 %); ``--no-3d`` skips it.

Ratios: jaxreg process wall / ANTs SyN process wall (the bound: < 1 for ``--no-cache``), and ANTs' registration
call / jaxreg's warm in-process call (the bound: >= 5). CPU seconds (user + system of the process tree) are
given beside wall seconds: on a shared machine they are the steadier figure.

Usage::

    python benchmarks/cold_start.py [--ants-python benchmarks/.venv-ants/bin/python] [--repeats 3] [--no-3d]
        [--repo PATH] [--baseline PATH] [--json out.json]

``--repo PATH`` times the jaxreg of another checkout; ``--baseline PATH`` adds rows for a second checkout (an
older revision) in the same rounds, for before/after tables under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
DEFAULT_ANTS_PYTHON = os.path.join(HERE, ".venv-ants", "bin", "python")
PAIR2D = (os.path.join(DATA, "brain2d", "r16.nii.gz"), os.path.join(DATA, "brain2d", "r64.nii.gz"))
PAIR3D = (os.path.join(DATA, "brain3d", "subj1_t1.nii.gz"), os.path.join(DATA, "brain3d", "subj2_t1.nii.gz"))

_ANTS_SCRIPT = r"""
import json, os, sys, time
t0 = time.perf_counter()
import ants
fixed, moving, out = sys.argv[1:4]
f, m = ants.image_read(fixed), ants.image_read(moving)
t1 = time.perf_counter()
reg = ants.registration(f, m, type_of_transform="SyN", outprefix=os.path.join(out, "ants_"))
t2 = time.perf_counter()
ants.image_write(reg["warpedmovout"], os.path.join(out, "warped.nii.gz"))
print(json.dumps({"import_read": t1 - t0, "registration": t2 - t1, "write": time.perf_counter() - t2}))
"""

_WARM_SCRIPT = r"""
import json, sys, time
import jax, jax.numpy as jnp
from jaxreg.core.grid import Image
from jaxreg.io import load_image
from jaxreg.optimize import register
f, m = (load_image(p) for p in sys.argv[1:3])
f, m = (Image(jnp.asarray(x.data, jnp.float32), x.grid) for x in (f, m))
times = []
for _ in range(2):
    t = time.perf_counter()
    jax.block_until_ready(register(f, m, method="default").transform)
    times.append(time.perf_counter() - t)
print(json.dumps({"first": times[0], "second": times[1]}))
"""


# -- child: one jaxreg command with its compilations counted ---------------------------------------------------
def child_main(result_path: str, argv: list[str]) -> int:
    """Run ``jaxreg argv`` in this process, counting XLA compilation time; write it to ``result_path``."""
    t0 = time.perf_counter()
    from jax import monitoring

    events = {"trace": 0.0, "lower": 0.0, "backend": 0.0, "programs": 0}
    names = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "backend",
    }

    def listen(event: str, seconds: float, **kw) -> None:
        key = names.get(event)
        if key is not None:
            events[key] += seconds
            events["programs"] += key == "backend"

    monitoring.register_event_duration_secs_listener(listen)
    from jaxreg.cli.main import main

    rc = main(argv)
    events["compile"] = events["trace"] + events["lower"] + events["backend"]
    events["in_process"] = time.perf_counter() - t0
    with open(result_path, "w") as fh:
        json.dump(events, fh)
    return rc


# -- parent ------------------------------------------------------------------------------------------------------
def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd``; its wall seconds (start to exit), CPU seconds (user + system) and the completed process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, cpu, proc


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.repo = os.path.abspath(args.repo or ROOT)
        self.tmp = tempfile.mkdtemp(prefix="jaxreg-cold-")
        self.env = dict(os.environ, PYTHONPATH=self.repo)
        self.env.pop("JAX_COMPILATION_CACHE_DIR", None)
        self.env.pop("XLA_FLAGS", None)
        self.rows: dict[str, list[dict]] = {}
        self.count = 0

    def _out(self) -> str:
        self.count += 1
        return os.path.join(self.tmp, f"out{self.count}")

    def jaxreg(self, name: str, pair: tuple[str, str], *, cache: str | None, repo: str | None = None) -> dict:
        out, res = self._out(), os.path.join(self.tmp, f"child{self.count}.json")
        env = dict(self.env, JAXREG_CACHE_DIR=cache or "")
        if repo is not None:
            env["PYTHONPATH"] = repo
        argv = ([] if cache else ["--no-cache"]) + ["register", pair[0], pair[1], "-o", out, "--json"]
        wall, cpu, proc = _run([sys.executable, os.path.abspath(__file__), "--child", res, "--", *argv], env)
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        with open(res) as fh:
            comp = json.load(fh)
        with open(os.path.join(out, "report.json")) as fh:
            report = json.load(fh)
        levels = [lv for st in report["stages"].values() for lv in st["levels"]]
        row = {
            "wall": wall,
            "cpu": cpu,
            "compile": comp["compile"],
            "programs": comp["programs"],
            "level_compile": sum(lv["compile_seconds"] for lv in levels),
            "timings": summary["timings"],
            "metrics": summary["metrics"],
            "jacobian": summary["jacobian"],
        }
        self.rows.setdefault(name, []).append(row)
        shutil.rmtree(out, ignore_errors=True)
        return row

    def warm_in_process(self) -> dict:
        wall, cpu, proc = _run([sys.executable, "-c", _WARM_SCRIPT, *PAIR2D], self.env)
        row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"wall": wall, "cpu": cpu}
        self.rows.setdefault("jaxreg in-process, 2nd call", []).append(row)
        return row

    def ants(self) -> dict | None:
        py = self.args.ants_python or DEFAULT_ANTS_PYTHON
        if not os.path.exists(py):
            return None
        out = self._out()
        os.makedirs(out)
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(self.args.threads))
        wall, cpu, proc = _run([py, "-c", _ANTS_SCRIPT, PAIR2D[0], PAIR2D[1], out], env)
        row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"wall": wall, "cpu": cpu}
        self.rows.setdefault("ANTs SyN", []).append(row)
        shutil.rmtree(out, ignore_errors=True)
        return row

    def run(self) -> None:
        a = self.args
        log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
        log(f"load average before: {os.getloadavg()[0]:.2f}; jaxreg from {self.repo}")
        cache = os.path.join(self.tmp, "cache")
        for r in range(a.repeats):
            log(f"round {r + 1}/{a.repeats}")
            self.ants()
            self.jaxreg("jaxreg --no-cache", PAIR2D, cache=None)
            shutil.rmtree(cache, ignore_errors=True)
            self.jaxreg("jaxreg cache, empty", PAIR2D, cache=cache)
            self.jaxreg("jaxreg cache, warm", PAIR2D, cache=cache)
            self.warm_in_process()
            if a.baseline:
                base = os.path.abspath(a.baseline)
                self.jaxreg("baseline --no-cache", PAIR2D, cache=None, repo=base)
                shutil.rmtree(cache, ignore_errors=True)
                self.jaxreg("baseline cache, empty", PAIR2D, cache=cache, repo=base)
                self.jaxreg("baseline cache, warm", PAIR2D, cache=cache, repo=base)
        if not a.no_3d:
            log("3-D pair (--no-cache)")
            self.jaxreg("3-D jaxreg --no-cache", PAIR3D, cache=None)
            if a.baseline:
                self.jaxreg("3-D baseline --no-cache", PAIR3D, cache=None, repo=os.path.abspath(a.baseline))
        log(f"load average after: {os.getloadavg()[0]:.2f}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.table()

    def table(self) -> None:
        med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
        ants = self.rows.get("ANTs SyN")
        ants_wall = med(ants, "wall") if ants else None
        ants_call = med(ants, "registration") if ants else None
        print(f"{'process':<30} {'wall s':>7} {'CPU s':>6} {'compile s':>9} {'share':>6} {'progs':>5} "
              f"{'reg s':>6} {'eval s':>6} {'fig s':>6} {'/ANTs':>6}")  # fmt: skip
        summary = {}
        for name, rows in self.rows.items():
            wall, cpu = med(rows, "wall"), med(rows, "cpu")
            ratio = f"{wall / ants_wall:6.2f}" if ants_wall else "     -"
            if "timings" in rows[0]:
                comp = med(rows, "compile")
                t = {k: statistics.median(r["timings"][k] for r in rows) for k in ("registration", "evaluation", "figure")}
                print(f"{name:<30} {wall:7.2f} {cpu:6.2f} {comp:9.2f} {100 * comp / wall:5.1f}% "
                      f"{int(med(rows, 'programs')):5d} {t['registration']:6.2f} {t['evaluation']:6.2f} "
                      f"{t['figure']:6.2f} {ratio}")  # fmt: skip
                summary[name] = {"wall": wall, "cpu": cpu, "compile": comp, "timings": t, "metrics": rows[-1]["metrics"],
                                 "jacobian": rows[-1]["jacobian"], "runs": rows}  # fmt: skip
            elif name.startswith("ANTs"):
                print(f"{name:<30} {wall:7.2f} {cpu:6.2f} {'':>9} {'':>6} {'':>5} {med(rows, 'registration'):6.2f} "
                      f"{'':>6} {'':>6} {ratio}")  # fmt: skip
                summary[name] = {"wall": wall, "cpu": cpu, "registration": ants_call, "runs": rows}
            else:
                second = med(rows, "second")
                print(f"{name:<30} {second:7.2f} {'':>6} {'':>9} {'':>6} {'':>5} {second:6.2f} {'':>6} {'':>6} "
                      f"{second / ants_call if ants_call else float('nan'):6.2f}  (ANTs call / this: "
                      f"{ants_call / second if ants_call else float('nan'):.1f}x)")  # fmt: skip
                summary[name] = {"second": second, "first": med(rows, "first"), "runs": rows}
        print("wall: process start to exit; compile: XLA tracing + lowering + backend compilation in the process; "
              "share: compile / wall; /ANTs: wall over ANTs SyN's process wall (in-process row: its call over "
              "ANTs' registration call)")  # fmt: skip
        if self.args.json:
            with open(self.args.json, "w") as fh:
                json.dump(summary, fh, indent=1)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        sys.exit(child_main(argv[1], argv[3:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ants-python", default=None, help=f"python of the peers' venv (default {DEFAULT_ANTS_PYTHON})")
    ap.add_argument("--threads", type=int, default=2, help="ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS of ANTs")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the 2-D rows (medians are reported)")
    ap.add_argument("--no-3d", action="store_true", help="skip the 3-D pair")
    ap.add_argument("--repo", default=None, help="time the jaxreg of this checkout (default: this one)")
    ap.add_argument(
        "--baseline", default=None, help="also time the jaxreg of this checkout (an older revision) in the same rounds"
    )
    ap.add_argument("--json", default=None, help="write the medians and every run here")
    Bench(ap.parse_args(argv)).run()


if __name__ == "__main__":
    main()
