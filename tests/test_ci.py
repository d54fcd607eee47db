"""The CI script installs every extra the package declares, so that no test file skips in CI for want of
one (Review II item 6: tests/test_serve_ray.py skipped there, `.ci/run` did not install Ray Serve)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_installs_every_extra():
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^(\w+) = \[", section, re.M))  # (tomllib is Python 3.11+; this runs on 3.10)
    assert "ray" in extras
    script = (ROOT / ".ci" / "run").read_text()
    asked = re.findall(r"^make test EXTRAS=(\S+)$", script, re.M)
    assert len(asked) == 1 and set(asked[0].split(",")) == extras, asked
    assert re.search(r"^EXTRAS \?= ", (ROOT / "Makefile").read_text(), re.M)  # make takes the list from the command line


def test_scripts_import_paradec_before_torch():
    """paradec sets OMP_WAIT_POLICY=PASSIVE before torch loads (torch's idle OpenMP threads spun and took
    CPU from the kernels); a timing script that imports torch first measures with them spinning."""
    for script in sorted((ROOT / "scripts").glob("*.py")):
        lines = script.read_text().splitlines()
        torch_at = next((i for i, line in enumerate(lines) if line.startswith("import torch")), None)
        paradec_at = next((i for i, line in enumerate(lines) if line.startswith(("import paradec", "from paradec"))), None)
        if torch_at is not None:
            assert paradec_at is not None and paradec_at < torch_at, script.name
