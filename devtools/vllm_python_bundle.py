# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Pack the installed, patched vLLM's Python layers for a GPU machine without vLLM.

The GPU machines we measure on have torch and Triton but no vLLM, and its
compiled parts are built for another torch. Its Python layers import there
with stand-ins for the compiled extensions (``devtools/vllm_standins``) and a
few pure-Python or abi3 dependencies the machine lacks. This tool writes, into
``--out`` (default ``.vllm-python/``, ignored by git):

* ``vllm.tgz``: every ``*.py`` file of the installed ``vllm`` package (the
  patched one ``make test`` installs; no compiled files, no vendored
  ``third_party`` trees except NVML's Python binding, which platform detection
  uses) and its ``dist-info``;
* ``wheels/``: the dependencies below, at the versions installed here, for
  CPython ``--python-version`` on manylinux x86_64 (downloaded from PyPI).

``bash devtools/gpu_glue_check.sh`` installs both on the GPU machine and runs
the backend's GPU glue tests.

    python -m devtools.vllm_python_bundle [--out .vllm-python] [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import tarfile
from pathlib import Path

# What importing vLLM's config, layers, worker utilities and our backend needs
# beyond a CUDA torch image with transformers' usual companions (found by
# importing them with each candidate hidden). Versions: those installed here.
DEPENDENCIES = (
    "annotated-types",
    "apache-tvm-ffi",
    "cachetools",
    "cbor2",
    "httpcore2",
    "httpx2",
    "huggingface_hub",
    "llguidance",
    "msgspec",
    "pybase64",
    "pydantic",
    "pydantic_core",
    "pyzmq",
    "safetensors",
    "sniffio",
    "tokenizers",
    "transformers",
    "truststore",
    "typing-inspection",
    "typing_extensions",
    "xgrammar",
)
PLATFORMS = (
    "manylinux1_x86_64",
    "manylinux2014_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in (5, 17, 24, 26, 27, 28, 31, 34, 35)),
)
KEPT_THIRD_PARTY = ("__init__.py", "pynvml.py")


def vllm_python_files() -> tuple[Path, list[Path]]:
    """The site directory holding vLLM and the files to pack, relative to it."""
    distribution = importlib.metadata.distribution("vllm")
    site = Path(distribution.locate_file(""))
    package = site / "vllm"

    def packed(path: Path) -> bool:
        inside = path.relative_to(package).parts
        if "__pycache__" in inside:
            return False
        return inside[0] != "third_party" or inside[1:] in [(name,) for name in KEPT_THIRD_PARTY]

    files = [path.relative_to(site) for path in package.rglob("*.py") if packed(path)]
    # the dist-info folder: platform detection reads it
    files += [Path(path) for path in distribution.files or () if ".dist-info" in path.parts[0]]
    return site, sorted(files)


def pack_vllm(out: Path) -> Path:
    site, files = vllm_python_files()
    archive = out / "vllm.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in files:
            tar.add(site / path, arcname=str(path))
    print(f"{archive}: {len(files)} files, {archive.stat().st_size / 2**20:.1f} MiB")
    return archive


def download_wheels(out: Path, python_version: str) -> None:
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("*.whl"):
        old.unlink()
    platform_args = [arg for name in PLATFORMS for arg in ("--platform", name)]
    for name in DEPENDENCIES:
        version = importlib.metadata.version(name)
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--implementation", "cp",
                "--python-version", python_version, *platform_args,
                "--dest", str(wheels), f"{name}=={version}",
            ],
            check=True,
        )  # fmt: skip
    size = sum(path.stat().st_size for path in wheels.glob("*.whl"))
    print(f"{wheels}: {len(DEPENDENCIES)} wheels, {size / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run where the patched vLLM is installed (make test's .venv).",
    )
    parser.add_argument("--out", type=Path, default=Path(".vllm-python"))
    parser.add_argument(
        "--python-version", default="3.12", help="the GPU machine's Python (default 3.12)"
    )
    parser.add_argument(
        "--no-wheels", action="store_true", help="repack vLLM only, keep the wheels"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pack_vllm(args.out)
    if not args.no_wheels:
        download_wheels(args.out, args.python_version)


if __name__ == "__main__":
    main()
