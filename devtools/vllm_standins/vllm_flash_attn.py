# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Stand-in for ``vllm.vllm_flash_attn`` on a GPU machine without vLLM's compiled
flash-attention extensions (``devtools/gpu_glue_check.sh``).

vLLM's layer modules import names from it at import time; on such a machine the
real package raises. Here every name resolves, and calling one raises: the
backend under test never does.
"""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def absent(*args, **kwargs):
        raise RuntimeError(f"vllm.vllm_flash_attn.{name}: the compiled extension is absent here")

    absent.__name__ = name
    return absent
