# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""What the Gluon kernels (``pipelined_decode.py``, ``pipelined_long_query.py``)
share beyond the layout-free ``jit_helpers``."""

from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

# The CTA-wide barrier: Triton 3.6 names it thread_barrier, 3.8 barrier.
cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
# A cp.async copy into shared memory: Triton 3.6 names it
# async_copy_global_to_shared, 3.8 async_load (with the old name as an alias),
# 3.9 async_load only.
async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
