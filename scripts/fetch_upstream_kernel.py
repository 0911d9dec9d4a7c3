# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Put vLLM 0.33.0's own Triton attention kernel beside ours, for benchmarks only.

Extracts upstream's two kernel files from the pinned wheel into the ignored
folder ``benchmarks/upstream/`` (never committed) and writes minimal stand-ins
for the five vLLM modules they import, so they run on the GPU box (no vLLM).
Send the folder with the device tool's ``carry`` and run the benchmark with
``--upstream``.
"""

import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import patchset  # noqa: E402

OUT = REPO / "benchmarks" / "upstream"
KERNEL_FILES = [
    "vllm/v1/attention/ops/triton_unified_attention.py",
    "vllm/v1/attention/ops/triton_attention_helpers.py",
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
        "    def is_device_capability_family(self, family):\n"
        "        major, minor = torch.cuda.get_device_capability()\n"
        "        return (major * 10 + minor) // 10 == family // 10\n\n\n"
        "current_platform = _Platform()\n"
    ),
    "vllm/triton_utils/__init__.py": "import triton\nimport triton.language as tl\n",
    "vllm/v1/kv_cache_interface.py": (
        "import enum\n\n\n"
        "class KVQuantMode(enum.IntEnum):  # the values upstream's kernel compares\n"
        "    NONE = 0\n"
        "    FP8_PER_TENSOR = 1\n"
        "    INT8_PER_TOKEN_HEAD = 2\n"
        "    FP8_PER_TOKEN_HEAD = 3\n"
        "    INT4_PER_TOKEN_HEAD = 4\n"
    ),
}


def main():
    with zipfile.ZipFile(patchset.fetch("wheel")) as wheel:
        for name in KERNEL_FILES:
            target = OUT / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(wheel.read(name))
    for name, text in STAND_INS.items():
        target = OUT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("# stand-in written by scripts/fetch_upstream_kernel.py\n" + text)
    print(OUT)


if __name__ == "__main__":
    main()
