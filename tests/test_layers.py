"""The layering of docs DESIGN: an import only goes down. The surfaces (``api.py``, ``cli.py``, ``bench/``,
``serve/``, and ``train/`` beside the stack) may call the public API; nothing below them imports it
(Review II item 14: the diffusion trainer, commit-filter trainer and suite called it from below)."""

from __future__ import annotations

import ast
from pathlib import Path

import paradec

ROOT = Path(paradec.__file__).parent
SURFACES = {"api.py", "cli.py", "__init__.py", "bench", "serve", "train"}
# parallel/branches.py: generate_n, first_finish, extract and reason are public functions over
# ``prepare``; they stay on it until ``prepare`` itself moves below the surfaces.
KNOWN = {"parallel/branches.py"}


def imports_api(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p) if node.level else node.module or ""
            names = {a.name for a in node.names}
            if module == "paradec.api" or (module == "paradec" and names & {"api", "generate", "stream", "prepare",
                                                                             "encode_prompt"}):
                return True
        elif isinstance(node, ast.Import) and any(a.name == "paradec.api" for a in node.names):
            return True
    return False


def test_nothing_below_the_surfaces_imports_the_public_api():
    below = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in SURFACES]
    assert len(below) > 40
    offenders = sorted(str(p.relative_to(ROOT)) for p in below if imports_api(p))
    assert offenders == sorted(KNOWN)


def test_training_and_benchmarks_live_in_their_rooms():
    """The diffusion package keeps the decoders; its trainers are in train/, its suite in bench/."""
    assert not (ROOT / "diffusion" / "train.py").exists() and not (ROOT / "diffusion" / "suite.py").exists()
    from paradec.bench import diffusion as suite
    from paradec.diffusion import learned
    from paradec.train import commit_filter, dllm

    assert callable(suite.run) and callable(dllm.train) and callable(commit_filter.train_filter)
    assert not hasattr(learned, "train_filter") and not hasattr(learned, "collect")
