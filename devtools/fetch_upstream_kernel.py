# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Put the pinned vLLM's own Triton attention kernel beside ours, for benchmarks only.

Extracts upstream's attention kernel files and its Triton cache write from the
pinned wheel (downloaded by the patch tool, ``scripts/patchset.py fetch
wheel``) into the ignored folder ``benchmarks/upstream/`` (never committed) and
writes minimal stand-ins for the seven vLLM modules they import, so they run on
a GPU machine without vLLM. Take
the folder there with the working tree and run the benchmarks with
``--upstream``.
"""

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

OUT = REPO / "benchmarks" / "upstream"
KERNEL_FILES = [
    "vllm/v1/attention/ops/triton_unified_attention.py",
    "vllm/v1/attention/ops/triton_attention_helpers.py",
    # its Triton cache write, for whole-step timings (devtools/host_overhead.py --steps)
    "vllm/v1/attention/ops/triton_reshape_and_cache_flash.py",
    # its int4_per_token_head mode: the rotation, the cache write and the kernels
    "vllm/v1/attention/ops/int4_per_token_head.py",
]
STAND_INS = {
    "vllm/envs.py": "VLLM_BATCH_INVARIANT = False\n",
    "vllm/logger.py": (
        "import logging\n\n\n"
        "def init_logger(name):\n"
        "    logger = logging.getLogger(name)\n"
        "    logger.debug_once = logger.debug\n"
        "    return logger\n"
    ),
    "vllm/platforms/__init__.py": (
        "import torch\n\n\n"
        "class _Platform:\n"
        "    def fp8_dtype(self):\n"
        "        return torch.float8_e4m3fn\n\n"
        "    def is_rocm(self):\n"
        "        return torch.version.hip is not None\n\n"
        "    def is_cuda(self):\n"
        "        return torch.version.hip is None\n\n"
        "    def is_xpu(self):\n"
        "        return False\n\n"
        "    def has_device_capability(self, capability):\n"
        "        major, minor = torch.cuda.get_device_capability()\n"
        "        return major * 10 + minor >= capability\n\n"
        "    def is_device_capability_family(self, family):\n"
        "        major, minor = torch.cuda.get_device_capability()\n"
        "        return (major * 10 + minor) // 10 == family // 10\n\n\n"
        "current_platform = _Platform()\n"
    ),
    # the launcher's RDNA3/RDNA4 launch tables ask for the GPU's gfx name
    "vllm/platforms/rocm.py": (
        "import torch\n\n\n"
        "def _gfx():\n"
        "    return torch.cuda.get_device_properties(0).gcnArchName.split(':')[0]\n\n\n"
        "def on_gfx1100():\n"
        "    return _gfx() == 'gfx1100'\n\n\n"
        "def on_gfx1201():\n"
        "    return _gfx() == 'gfx1201'\n"
    ),
    "vllm/triton_utils/__init__.py": "import triton\nimport triton.language as tl\n",
    "vllm/utils/math_utils.py": ("def largest_power_of_2_divisor(n):\n    return n & -n\n"),
    "vllm/v1/kv_cache_interface.py": (
        "import enum\n\n\n"
        "class KVQuantMode(enum.IntEnum):  # the values upstream's kernel compares\n"
        "    NONE = 0\n"
        "    FP8_PER_TENSOR = 1\n"
        "    INT8_PER_TOKEN_HEAD = 2\n"
        "    FP8_PER_TOKEN_HEAD = 3\n"
        "    INT4_PER_TOKEN_HEAD = 4\n\n\n"
        "def is_quantized_kv_cache(kv_cache_dtype):\n"
        "    native = ('auto', 'float16', 'bfloat16', 'float32', 'half', 'float')\n"
        "    return kv_cache_dtype not in native\n"
    ),
    "vllm/model_executor/layers/quantization/utils/quant_utils.py": (
        "import torch\n\n"
        "FP8_DTYPE = torch.float8_e4m3fn\n\n\n"
        "def get_fp8_min_max():\n"
        "    info = torch.finfo(FP8_DTYPE)\n"
        "    return info.min, info.max\n"
    ),
}


def pinned_wheel() -> Path:
    """The pinned upstream wheel, fetched (and sha256-checked) by the patch tool."""
    fetched = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "patchset.py"), "fetch", "wheel"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(fetched.stdout.strip().splitlines()[-1])


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    with zipfile.ZipFile(pinned_wheel()) as wheel:
        for name in KERNEL_FILES:
            target = OUT / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(wheel.read(name))
    for name, text in STAND_INS.items():
        target = OUT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("# stand-in written by devtools/fetch_upstream_kernel.py\n" + text)
    print(OUT)


if __name__ == "__main__":
    main()
