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
    patch_language_once_per_launch()
    return "vllm.platforms.triton_interpreter.TritonInterpreterPlatform"


def patch_language_once_per_launch() -> None:
    """Make Triton's interpreter swap ``triton.language`` once per launch.

    The interpreter runs a kernel with the language's builtins swapped for
    NumPy ones (``interpreter._patch_lang``) when the launch starts, and swaps
    them again on every call of a ``@triton.jit`` helper inside it although
    they are swapped already: about a third of the interpreter's time
    (SmolLM2-135M's decode attention: 38.5 -> 24.7 ms per call; the CPU
    attention kernel tests: 69 -> 45 s). Within a launch a helper now swaps
    only the language modules the launch has not yet (Triton's own
    standard-library helpers bring ``triton.language.core``). Nothing changes
    where the interpreter lacks these hooks (Triton 3.6-3.9 have them)."""
    import inspect
    import threading

    import triton.language as tl
    from triton.runtime import interpreter

    swap = getattr(interpreter, "_patch_lang", None)
    executor = getattr(interpreter, "GridExecutor", None)
    if swap is None or executor is None or getattr(swap, "once_per_launch", False):
        return
    launch = executor.__call__
    state = threading.local()  # the language modules swapped in this thread's launch

    class _NothingToRestore:
        def restore(self):
            pass

    @functools.cache
    def languages(fn) -> frozenset:
        modules = (value for value in fn.__globals__.values() if inspect.ismodule(value))
        return frozenset(id(module) for module in modules if module in (tl, tl.core))

    def swap_once(fn):
        swapped = getattr(state, "swapped", None)
        if swapped is None:  # outside a launch: as Triton does
            return swap(fn)
        needed = languages(fn)
        if needed <= swapped:
            return _NothingToRestore()
        swapped |= needed
        return swap(fn)

    def launch_swapping_once(self, *args, **kwargs):
        state.swapped = set()
        try:
            return launch(self, *args, **kwargs)
        finally:
            state.swapped = None

    swap_once.once_per_launch = True
    interpreter._patch_lang = swap_once
    executor.__call__ = launch_swapping_once


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
