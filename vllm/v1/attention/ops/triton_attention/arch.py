# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""What the library needs to know about the GPU, and which dtypes it reads.

The only place that names GPU architectures' abilities: the plan, the input
checks and vLLM's glue all ask :class:`GpuArch`.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

# Queries and outputs.
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# KV caches may also be fp8 with per-tensor scales.
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2)
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 240.0, torch.float8_e5m2: 57344.0}
# Attention outputs may be e4m3 (fused static quantisation; the kernels'
# jit_helpers.output_values knows these two formats' ranges).
FP8_OUTPUT_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
# vLLM's int4_per_token_head cache: two 4-bit codes per uint8 byte (dimension
# 2i in the low nibble, 2i + 1 in the high one) of RHT-rotated vectors, with a
# scale per token and KV head whose 4 low mantissa bits hold the zero point.
INT4_KV_DTYPE = torch.uint8
# Caches that store quantised values and scales: fp8 (a scale per tensor, or per
# token and head), int8 and int4 (per token and head), with each type's largest
# code (int4: the codes are 0..15 around a zero point).
QUANTISED_KV_DTYPES = (*FP8_DTYPES, torch.int8, INT4_KV_DTYPE)
QUANT_MAX = {**FP8_MAX, torch.int8: 127.0, INT4_KV_DTYPE: 15.0}
# The seed of the rotation's signs, as vLLM 0.34.0 draws them (its
# int4_per_token_head module): other readers of the cache rotate the same way.
RHT_SIGNS_SEED = 0x9E3779B9


def rht_block(head_size: int) -> int:
    """The order of the Hadamard blocks an int4 cache rotates head vectors by:
    the largest power of two dividing ``head_size`` (the rotation is block
    diagonal below a power-of-two head size, so ``H H^T = block * I``)."""
    return head_size & -head_size


@functools.cache  # made once per head size and device (before any graph capture)
def rht_signs(head_size: int, device: torch.device | str) -> torch.Tensor:
    """The int4 cache's random signs ``[head_size]`` float32: vLLM's ``rht_block``
    draws of +-1, repeated for each block. A stored vector is ``H (signs * x)``
    with ``H`` the unnormalised (Sylvester) Hadamard matrix of each block."""
    block = rht_block(head_size)
    generator = torch.Generator(device="cpu").manual_seed(RHT_SIGNS_SEED)
    draws = torch.bernoulli(torch.full((block,), 0.5), generator=generator)
    return (2.0 * draws - 1.0).repeat(head_size // block).to(device)


# vLLM reports an AMD GPU's gfx number as a compute capability: gfx942 ->
# (9, 4), gfx90a -> (9, 0), gfx1100 -> (11, 0).
_GFX_OF_CAPABILITY = {(9, 0): "gfx90a", (9, 4): "gfx942", (9, 5): "gfx950"}


@dataclasses.dataclass(frozen=True)
class GpuArch:
    """The GPU (or the CPU interpreter) a plan is made for."""

    vendor: str  # "cuda", "hip" or "interpreter"
    name: str  # "sm_90", "gfx942", ... or "cpu"
    num_compute_units: int  # SMs (NVIDIA) or CUs (AMD)

    @classmethod
    @functools.cache  # device properties do not change; keep it off the hot path
    def of_device(cls, device: torch.device | str) -> GpuArch:
        device = torch.device(device)
        if device.type != "cuda":  # tensors on the CPU: the Triton interpreter,
            return cls("interpreter", "cpu", 1)  # which runs one program at a time
        props = torch.cuda.get_device_properties(device)
        if torch.version.hip is not None:
            return cls("hip", props.gcnArchName.split(":")[0], props.multi_processor_count)
        return cls("cuda", f"sm_{props.major}{props.minor}", props.multi_processor_count)

    @classmethod
    def of_capability(cls, vendor: str, major: int, minor: int) -> GpuArch:
        """The architecture behind a compute capability as vLLM reports it (no
        compute-unit count: for capability questions, not for planning)."""
        if vendor == "cuda":
            return cls(vendor, f"sm_{major}{minor}", 0)
        if vendor == "hip":
            name = _GFX_OF_CAPABILITY.get((major, minor), f"gfx{major}{minor:02d}")
            return cls(vendor, name, 0)
        return cls("interpreter", "cpu", 0)

    @property
    def sm(self) -> int:
        """NVIDIA compute capability as one number (90 for ``sm_90``)."""
        if self.vendor != "cuda":
            raise ValueError(f"{self.vendor} {self.name} has no NVIDIA compute capability")
        return int(self.name[3:])

    @property
    def is_rdna(self) -> bool:
        return self.vendor == "hip" and self.name.startswith(("gfx11", "gfx12"))

    @property
    def is_rdna4(self) -> bool:
        """RDNA4 (gfx12): WMMA operands no longer replicated across the wave's
        halves as on RDNA3, so the same tiles take fewer registers."""
        return self.vendor == "hip" and self.name.startswith("gfx12")

    @functools.cached_property  # read per launch
    def programmatic_launch(self) -> bool:
        """Programmatic dependent launch (Hopper+): a kernel may start while the
        one before it finishes, and waits for its results only where it says so
        (``griddepcontrol``)."""
        return self.vendor == "cuda" and self.sm >= 90

    def supports_kv_dtype(self, dtype: torch.dtype) -> bool:
        """Whether a KV cache of ``dtype`` can be read here (fp8 needs native
        conversions; the interpreter converts in software)."""
        if dtype not in FP8_DTYPES or self.vendor == "interpreter":
            return True
        if self.vendor == "cuda":  # the OCP formats need sm_89+; NVIDIA has no fnuz format
            return dtype != torch.float8_e4m3fnuz and self.sm >= 89
        # AMD: MI300 (gfx942) has fnuz, MI350 (gfx950) and RDNA4 (gfx12) the OCP formats.
        if dtype == torch.float8_e4m3fnuz:
            return self.name == "gfx942"
        return self.name == "gfx950" or self.name.startswith("gfx12")
