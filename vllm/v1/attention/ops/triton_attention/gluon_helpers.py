# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""What the Gluon kernels (``pipelined_decode.py``, ``pipelined_long_query.py``)
share beyond the layout-free ``jit_helpers``."""

from triton.experimental.gluon import language as gl

# The CTA-wide barrier: Triton 3.6 names it thread_barrier, 3.8 barrier.
cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
