# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""A development platform: the real vLLM engine on a CPU, attention by TRITON_ATTN
run in the Triton interpreter.

It lets the whole serving path (scheduler, model runner, KV cache, our backend)
run on a machine without a GPU, for tests and for trying the project out. It
is a ``vllm.platform_plugins`` entry point that activates only when
``VLLM_TRITON_ATTN_CPU_DEV=1`` is set, so it never changes anything on a GPU
machine. The interpreter is slow (about a second per attention call): use it
with tiny models.
"""

import functools
import os

ENABLE_ENV = "VLLM_TRITON_ATTN_CPU_DEV"


def register() -> str | None:
    """The ``vllm.platform_plugins`` hook: our platform's class path, or None (off)."""
    if os.environ.get(ENABLE_ENV) != "1":
        return None
    if os.environ.get("TRITON_INTERPRET") != "1":
        # Triton reads it when it is imported, which vLLM has done by now.
        raise RuntimeError(
            f"{ENABLE_ENV}=1 runs attention in the Triton interpreter: set "
            "TRITON_INTERPRET=1 in the environment too, before Python starts"
        )
    return "vllm.platforms.triton_interpreter.TritonInterpreterPlatform"


@functools.cache
def _platform_class():
    # Imported here, not at module level: plugins load while vllm.platforms is
    # still resolving the current platform.
    from vllm.platforms.cpu import CpuPlatform
    from vllm.platforms.interface import DeviceCapability
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    class TritonInterpreterPlatform(CpuPlatform):
        """vLLM's CPU platform with TRITON_ATTN as its only attention backend."""

        @classmethod
        def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):
            if selected_backend not in (None, AttentionBackendEnum.TRITON_ATTN):
                raise ValueError(
                    f"{cls.__name__} runs TRITON_ATTN only, not {selected_backend.name}"
                )
            reasons = AttentionBackendEnum.TRITON_ATTN.get_class().validate_configuration(
                device_capability=DeviceCapability(0, 0),  # the interpreter: no GPU limits
                **attn_selector_config._asdict(),
            )
            if reasons:
                raise ValueError(f"TRITON_ATTN cannot run this layer: {', '.join(reasons)}")
            return AttentionBackendEnum.TRITON_ATTN.get_path()

        @classmethod
        def import_kernels(cls) -> None:
            pass  # the CUDA wheel has no compiled CPU kernels; nothing here needs them

        @classmethod
        def check_and_update_config(cls, vllm_config) -> None:
            super().check_and_update_config(vllm_config)
            compilation = vllm_config.compilation_config
            # vLLM's compiled custom ops (RMSNorm, RoPE, ...) are CUDA-only in this
            # wheel: run their PyTorch implementations instead.
            compilation.custom_ops = [op for op in compilation.custom_ops if op != "all"]
            if "none" not in compilation.custom_ops:
                compilation.custom_ops.append("none")
            parallel = vllm_config.parallel_config
            if parallel.worker_cls in ("auto", "vllm.v1.worker.cpu_worker.CPUWorker"):
                parallel.worker_cls = (
                    "vllm.v1.worker.triton_interpreter_worker.TritonInterpreterWorker"
                )

    return TritonInterpreterPlatform


def __getattr__(name):
    # vLLM imports the class path that register() returns; building the class
    # lazily keeps register() cheap and free of import cycles.
    if name == "TritonInterpreterPlatform":
        return _platform_class()
    raise AttributeError(name)
