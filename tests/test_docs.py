"""The documentation site: ``mkdocs build --strict`` succeeds (no warnings: broken links, docstrings griffe cannot
parse, pages missing from the navigation) and every ``python`` code block of the how-to and tutorial pages runs.

A page's blocks run in order in one fresh interpreter (they share a namespace, as a reader running them in order
would), with the working directory set to a temporary folder that stands for the repository root: its
``../shared`` links to the real ``../shared`` so that pages using the shared scans find them (those pages skip
when the folder is absent). A block preceded by the line
``<!-- docs-test: skip -->`` is not run (it needs data that is not in the package, e.g. a whole cohort).
Blocks fenced as ``bash``/``text``/``toml`` are never run. Pages use small images, so this stays quick.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_FENCE = re.compile(r"(?P<skip><!-- docs-test: skip -->\n)?^```python\n(?P<code>.*?)^```", re.M | re.S)


def python_blocks(page: pathlib.Path) -> list[str]:
    """The runnable ``python`` blocks of a Markdown page, in order."""
    return [m["code"] for m in _FENCE.finditer(page.read_text()) if not m["skip"]]


def _pages_with_code() -> list[pathlib.Path]:
    return sorted(p for p in DOCS.rglob("*.md") if python_blocks(p))


def test_mkdocs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=os.path.dirname(sys.executable)) or shutil.which("mkdocs")
    assert mkdocs is not None, "mkdocs is part of the test extra: pip install -e '.[test]'"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    out = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for page in ("index.html", "getting-started/index.html", "api/optimize/index.html", "how-to/register/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    # the API reference is generated from the docstrings: the one entry point is there with its signature
    api = (tmp_path / "site" / "api" / "optimize" / "index.html").read_text()
    assert "register" in api and "Registration" in api


def test_every_nav_page_exists():
    nav = re.findall(r":\s*([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert nav, "mkdocs.yml has no navigation"
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, missing
    orphans = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in nav)
    assert not orphans, f"pages not in mkdocs.yml's nav: {orphans}"


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_runs(page, tmp_path):
    code = "\n".join(f"# --- block {i}\n{b}" for i, b in enumerate(python_blocks(page)))
    shared = ROOT.parent / "shared"
    if "../shared/data" in code and not (shared / "data").is_dir():
        pytest.skip(f"{page.name} uses ../shared/data, which is absent")
    work = tmp_path / "repo"
    work.mkdir()
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared)
    script = tmp_path / "page.py"
    script.write_text(code)
    env = dict(os.environ, JAXREG_DOCS_TEST="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"{page.name}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
