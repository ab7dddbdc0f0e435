"""Shared test configuration: hypothesis profiles and the shared-data fixture."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# keep tests hermetic: the command line's persistent compilation cache stays off unless a test turns it on
os.environ.setdefault("JAXREG_CACHE_DIR", "")
# one JAX persistent compilation cache per test session, in a fresh temporary folder that the session removes
# (nothing carries over between runs): the xdist workers and the subprocesses (CLI, examples) inherit the folder
# through the environment, so a program one of them compiled is read back by the others instead of compiled
# again (tests/test_warp, test_register, test_transforms, test_transform_contract with -n 2: CPU 144 s -> 126 s).
# The controller (or the only process) makes it, before any worker starts; a JAX_COMPILATION_CACHE_DIR of your own
# is used as it is. Tests of the command line's own cache handling turn it off (fixture without_jax_cache).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    _session_cache = tempfile.mkdtemp(prefix="jaxreg-tests-jax-cache-")
    atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _session_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # tests compile many small programs
# tests run tiny arrays, so XLA's compile time dominates (backend compilation is ~85 % of the CPU time of
# test_transforms.py): skip LLVM's most expensive optimisation passes (about 15 % less suite time on 2 cores), emit
# fusions with XLA's classic elemental emitters instead of the MLIR fusion emitters (backend compile time of
# test_transforms.py 45 s -> 15-19 s, its CPU time 53 s -> 34 s; test_learn_pose.py 79 s -> 48 s), compile each
# program's LLVM module in one piece instead of splitting it for parallel code generation (two xdist workers already
# fill the two cores: tests/test_register.py alone 61 s -> 55 s, its backend compile time 30.9 s -> 26.0 s), and run
# Eigen single-threaded (less system time). The programs and their floating-point
# semantics are the same, only less optimised machine code. Subprocesses (CLI, examples) inherit these flags. Set
# XLA_FLAGS yourself to test with the defaults.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false --xla_cpu_multi_thread_eigen=false --xla_cpu_parallel_codegen_split_count=1",
)

# "ci" (the default) explores: every run draws fresh examples (not derandomised), so a property keeps finding new
# inputs over many runs; no example database is written (runs stay hermetic, a failure prints its reproducing
# example and seed instead); the example count bounds each property's time, and JAX's compile-heavy first example
# neither trips a deadline nor the too_slow health check. "dev" explores more, locally.
settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    derandomize=False,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data (real scans); skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared data folder ../shared/data not found")
    return SHARED_DATA


@pytest.fixture
def without_jax_cache(monkeypatch):
    """JAX's persistent compilation cache (the session's, see above) off for one test, in-process and for its
    subprocesses: for tests of the command line's own cache handling, which leaves a cache configured for JAX
    itself alone."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    cc.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", old)
    cc.reset_cache()


@pytest.fixture
def child_result(tmp_path):
    """Run Python ``code`` in a fresh interpreter and return the JSON object after its last ``RESULT`` line.

    For tests on several forced CPU devices: the child gets neither this process's ``XLA_FLAGS`` nor
    ``JAX_PLATFORMS`` (it sets its own device count before importing JAX) and finds the test run's flags in
    ``PARENT_XLA_FLAGS``, to compile with them next to its device count. ``args`` go to ``sys.argv[1:]``; the
    child runs in ``tmp_path``. A failed child fails the test with the end of its stderr.
    """
    import json
    import subprocess
    import sys

    def run(code: str, *args: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
        env["PARENT_XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
        proc = subprocess.run(
            [sys.executable, "-c", code, *map(str, args)],
            check=False, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path),
        )  # fmt: skip
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
        assert proc.returncode == 0 and lines, proc.stderr[-3000:]
        return json.loads(lines[-1][len("RESULT") :])

    return run
