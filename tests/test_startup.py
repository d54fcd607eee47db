"""Start-up: commands that need no model import neither torch nor transformers (issue 10 item 16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import paradec
from paradec.drafters import METHODS
from paradec.methods import BUILTIN_METHODS, DIFFUSION_DECODERS

HEAVY = ("torch", "transformers", "tokenizers", "numpy")

# Runs the command line in a fresh interpreter, then reports which heavy packages it imported.
WRAPPER = """
import sys
try:
    from paradec.cli import main
    main(sys.argv[1:])
except SystemExit:
    pass
finally:
    print("HEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def heavy_imports(*argv: str) -> tuple[list[str], str]:
    src = str(Path(paradec.__file__).resolve().parents[1])  # the paradec under test
    done = subprocess.run([sys.executable, "-c", WRAPPER.format(heavy=HEAVY), *argv], capture_output=True, text=True,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}, timeout=120)
    line = [x for x in done.stderr.splitlines() if x.startswith("HEAVY:")][-1]
    return [m for m in line[len("HEAVY:"):].split(",") if m], done.stdout


@pytest.mark.parametrize("argv", [["--help"], ["methods"], ["models"], ["generate", "--help"], ["bench", "--help"],
                                  ["serve", "--help"], ["train-drafter", "--help"]])
def test_commands_without_a_model_import_no_heavy_package(argv):
    heavy, out = heavy_imports(*argv)
    assert heavy == [], f"`paradec {' '.join(argv)}` imported {heavy}"
    assert out.strip()


def test_methods_lists_every_registered_method():
    heavy, out = heavy_imports("methods")
    causal, diffusion = out.split("\n\n")
    assert sorted(line.split()[0] for line in causal.splitlines()) == sorted(METHODS)
    assert [line.split()[0] for line in diffusion.splitlines()[1:]] == list(DIFFUSION_DECODERS)


def test_the_catalog_names_each_method_and_its_module():
    assert set(BUILTIN_METHODS) == set(METHODS)
    for name, method in BUILTIN_METHODS.items():
        assert METHODS[name].__module__ == f"paradec.drafters.{method.module}" and METHODS[name].name == name


def test_import_paradec_is_light_and_names_resolve_on_use():
    src = str(Path(paradec.__file__).resolve().parents[1])
    code = ("import sys, paradec; light = 'torch' not in sys.modules; paradec.generate, paradec.METHODS['ngram']; "
            "print(light, 'torch' in sys.modules, sorted(paradec.__all__) == sorted(set(dir(paradec)) & set(paradec.__all__)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}, timeout=120)
    assert done.stdout.split() == ["True", "True", "True"], done.stderr
    with pytest.raises(AttributeError):
        paradec.no_such_name
