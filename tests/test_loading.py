"""Model specs: built-in names, directories, GGUF files, and the errors users meet."""

from __future__ import annotations

import pytest

import paradec
from paradec import ParadecError
from paradec.model.loading import package_dir, parse_dtype, resolve

from conftest import tiny_model


def test_builtin_default_resolves_to_the_packaged_gguf():
    path = resolve("smollm2-135m")
    assert path.suffix == ".gguf" and path.is_file()


def test_missing_package_names_the_install_command():
    with pytest.raises(ParadecError, match="pip install --no-deps some-pkg"):
        package_dir("paradec_no_such_package", "pip install --no-deps some-pkg")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ParadecError, match="no config.json"):
        resolve(str(tmp_path))


def test_non_gguf_file_is_refused(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ParadecError, match="not a .gguf file"):
        resolve(str(f))


def test_unknown_dtype():
    with pytest.raises(ParadecError, match="unknown dtype"):
        parse_dtype("float8")


def test_load_saved_directory_roundtrip(tmp_path):
    model = tiny_model("qwen2")
    model.hf_model.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    loaded = paradec.load(str(tmp_path), dtype="float64")
    a = paradec.generate(model, [4, 5, 6], max_new_tokens=8).token_ids
    b = paradec.generate(loaded, [4, 5, 6], max_new_tokens=8).token_ids
    assert a == b


def test_real_model_dtype_is_selectable():
    assert str(paradec.load("smollm2-135m", dtype="bfloat16").dtype) == "torch.bfloat16"
