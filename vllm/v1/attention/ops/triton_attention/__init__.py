# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Portable Triton paged attention (NVIDIA and AMD), imported by vLLM's TRITON_ATTN.

Imports torch and triton only: platform facts (the fp8 dtype, the GPU) arrive
as arguments, so the package runs unchanged on a GPU machine without vLLM and in
the CPU interpreter (``TRITON_INTERPRET=1``).

Shapes and semantics (vLLM's conventions):

* ``q``, ``out``: ``[num_tokens, num_q_heads, head_size]``; the tokens of
  sequence ``b`` are ``query_start_loc[b]:query_start_loc[b + 1]`` and are its
  last ``q_len`` positions (``query_start_loc[0]`` may be above 0: rows
  outside the sequences' ranges are left untouched).
* ``k_cache``, ``v_cache``: ``[num_blocks, block_size, num_kv_heads,
  head_size]`` with any strides; key ``j`` of sequence ``b`` is in block
  ``block_table[b, j // block_size]``, slot ``j % block_size``. fp16, bf16,
  fp32, or fp8 (e4m3fn / e4m3fnuz / e5m2) with per-tensor ``k_scale``/``v_scale``;
  or int8 or fp8 with a scale per token and KV head (vLLM's
  ``*_per_token_head``): ``k_scale``/``v_scale`` ``[num_blocks, block_size,
  num_kv_heads]`` float32 (any strides, one layout), which ``write_kv_cache``
  fills with ``absmax / max`` of each head's new values. A uint8 cache of
  ``head_size // 2`` columns with such scales is vLLM's int4_per_token_head:
  each stored vector is ``H (signs * x)`` (``arch.rht_signs``; ``H`` the
  Sylvester Hadamard matrix of each ``arch.rht_block(head_size)`` dimensions),
  in 4-bit codes two per byte (dimension ``2i`` in byte ``i``'s low nibble)
  around a zero point, which the 4 low mantissa bits of its scale hold: ``x'
  = (code - zero) * scale``. The kernels rotate the queries and rotate the
  output back, so ``q``, ``out`` and the semantics below stay the model's.
* ``q`` may be fp8 (vLLM quantises queries for an fp8 cache) with an fp8
  cache of its format and per-tensor scales: ``q_scale`` float32, one element
  or one per KV head; q.k then runs in fp8, the rest in 16 bits.
* ``out`` may be e4m3 (e4m3fn, or e4m3fnuz where the GPU has it) with
  ``out_scale``, one float32 element: vLLM's fused static quantisation of
  the output, ``clamp(attention * (1 / out_scale), -max, max)`` in ``out``'s
  format.
* ``lse``, if given: float32 ``[num_tokens, num_q_heads]`` (any strides),
  receives each row's natural log-sum-exp of its scores (the sink's logit
  included; -inf for a row without keys), what decode context parallelism
  merges across ranks. The portable kernels store it; plans for calls with it
  take those.
* causal: position ``p`` sees keys ``0..p``; ``sliding_window=W`` limits that
  to ``p-W+1..p`` (non-causal: ``p-W+1..p+W-1``). ``causal`` is one bool for
  the call or a 1-D int32 tensor, one flag per sequence (0: non-causal).
  ``chunk_lookback=L`` with ``sliding_window=W`` makes the window chunked
  (vLLM's chunked local attention): chunks of ``C = W // (L + 1)`` keys, key
  ``j`` visible to ``p`` when ``p // C - j // C <= L`` (the past only).
  ``rswa_prefix_lens`` (R-SWA, causal): ``[num_seqs]`` int32; keys below
  sequence ``b``'s prefix stay visible whatever the window (``j <
  prefix_len OR p - j < W``), and keys between prefix and window are never
  read.
* ``mm_prefix_ranges``: ``[num_seqs, num_ranges, 2]`` int32, per sequence
  disjoint inclusive ``(start, end)`` key positions (valid when ``start <
  end``; vLLM pads with ``(0, 0)``): a query inside a range also sees every
  key of that range, ``(causal AND window) OR same range``; with
  ``mm_prefix_clamp_sliding_window`` the range part keeps the window's past
  edge (``p - j < W``).
* scores: ``scale * q.k``, then ``c * tanh(s / c)`` for softcap ``c``, then
  ``+ alibi_slopes[h] * (j - p)`` (with ``alibi_sqrt``: ``- alibi_slopes[h] *
  sqrt(p - j)`` for ``j <= p``, nothing for later keys), then masks;
  ``sinks[h]`` is one more logit in the softmax denominator with no value.
* query head ``h`` reads KV head ``h // (num_q_heads // num_kv_heads)``.
* ``rope_and_write_kv_cache`` (vLLM's RoPE + KV-cache fusion) turns ``q`` and
  the new keys in place by vLLM's rotary embedding of each token's position
  (NeoX or GPT-J pairs of the first ``rotary_dim`` dimensions, from its
  ``cos_sin_cache``), then stores the keys as ``write_kv_cache`` does.
* cache slots past ``seq_lens[b]``, blocks outside the window and padding
  rows (``q_len == 0``) may hold anything, NaN included: they never reach a
  valid output.

Layers, each importing only those before it: ``arch`` (the GPU and the
dtypes it reads), ``jit_helpers`` and ``gluon_helpers`` (device code shared by
the kernels), one module per kernel family (``split_kv_decode``,
``long_query``, ``pipelined_decode``, ``pipelined_long_query``,
``cache_write``), ``plan`` (every host decision), ``checks`` (input
validation), ``launch`` (the entry points), and ``reference`` (the
specification in PyTorch).

Example::

    plan = plan_attention(num_tokens=q.shape[0], num_seqs=2, max_query_len=1,
                          num_q_heads=32, num_kv_heads=8, head_size=128,
                          arch=GpuArch.of_device(q.device))
    paged_attention(q, k_cache, v_cache, out, query_start_loc=qsl, seq_lens=lens,
                    block_table=bt, max_query_len=1, max_seq_len=4096,
                    scale=128**-0.5, plan=plan)

Serving calls attention once per layer with the same batch: ``BatchLaunches``
binds the batch once (vLLM's metadata builder makes one per batch) and
launches later layers' calls without re-checking or re-binding them::

    launches = BatchLaunches(query_start_loc=qsl, seq_lens=lens, block_table=bt,
                             max_query_len=1, plan=plan, workspace=workspace)
    for layer in layers:
        launches(layer.q, layer.k_cache, layer.v_cache, layer.out, scale=128**-0.5)
"""

from .arch import GpuArch
from .launch import (
    BatchLaunches,
    SplitKVWorkspace,
    paged_attention,
    rope_and_write_kv_cache,
    write_kv_cache,
)
from .plan import (
    AttentionFeatures,
    AttentionPlan,
    MixedBatchPlan,
    TensorLayout,
    plan_attention,
    plan_batch,
)
from .reference import reference_paged_attention, reference_rotary_embedding

__all__ = [
    "AttentionFeatures",
    "AttentionPlan",
    "BatchLaunches",
    "GpuArch",
    "MixedBatchPlan",
    "SplitKVWorkspace",
    "TensorLayout",
    "paged_attention",
    "plan_attention",
    "plan_batch",
    "reference_paged_attention",
    "reference_rotary_embedding",
    "rope_and_write_kv_cache",
    "write_kv_cache",
]
