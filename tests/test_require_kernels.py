"""Review II item 8: without its C++ kernels the native runtime runs plain torch (``TorchOps``), whose rows
are not bit-identical, with only a warning. ``--require-kernels`` / ``PARADEC_REQUIRE_KERNELS=1`` makes
missing kernels an error instead, from the API and from every command that loads a model."""

from __future__ import annotations

import logging

import pytest
import torch

import paradec.runtime.native as native
from paradec.cli import main
from paradec.errors import ParadecError
from paradec.runtime.kernels import KernelsUnavailable
from paradec.runtime.ops import TorchOps

from conftest import tiny_model


def no_kernels():
    raise KernelsUnavailable("building paradec's CPU kernels needs a C++ compiler")


def test_the_fallback_warns_that_rows_are_not_bit_identical_and_the_variable_forbids_it(monkeypatch, caplog):
    monkeypatch.setattr(native, "kernels", no_kernels)
    monkeypatch.delenv("PARADEC_REQUIRE_KERNELS", raising=False)
    with caplog.at_level(logging.WARNING):
        assert isinstance(native.choose_ops(torch.float32), TorchOps)
    assert "not bit-identical" in caplog.text and "--require-kernels" in caplog.text
    for value in ("1", "yes"):
        monkeypatch.setenv("PARADEC_REQUIRE_KERNELS", value)
        with pytest.raises(ParadecError, match="required"):
            native.choose_ops(torch.float32)
        with pytest.raises(ParadecError, match="required"):
            tiny_model("llama", dtype=torch.float32)  # every way a native runtime is built
    monkeypatch.setenv("PARADEC_REQUIRE_KERNELS", "0")
    assert isinstance(native.choose_ops(torch.float32), TorchOps)


def test_require_kernels_on_the_command_line(monkeypatch, tmp_path, capsys):
    tiny = tiny_model("llama", dtype=torch.float32)
    tiny.hf_model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(native, "kernels", no_kernels)
    monkeypatch.delenv("PARADEC_REQUIRE_KERNELS", raising=False)
    argv = ["generate", "w4 w5", "--model", str(tmp_path), "--dtype", "float32", "--method", "plain",
            "--max-new-tokens", "2"]
    assert main(argv) == 0  # the fallback, with its warning
    try:
        assert main([*argv, "--require-kernels"]) == 2
        assert "the kernels are required" in capsys.readouterr().err
    finally:
        import os

        os.environ.pop("PARADEC_REQUIRE_KERNELS", None)
