# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The readable specification of paged attention, in plain PyTorch.

Every kernel in this package is tested against :func:`reference_paged_attention`.
It follows the semantics in the package docstring one sequence at a time and
computes in float64, so its own
rounding error is far below any tolerance the tests use.
"""

import torch

from .arch import INT4_KV_DTYPE, rht_block, rht_signs


def _visible_keys(
    query_pos: torch.Tensor,
    seq_len: int,
    causal: bool,
    sliding_window: int | None,
    mm_ranges: list[list[int]],
    mm_clamp_sliding_window: bool,
    chunk_lookback: int | None,
    rswa_prefix_len: int | None,
) -> torch.Tensor:
    """Boolean [q_len, seq_len]: may the query at ``query_pos[i]`` see key ``j``?"""
    key_pos = torch.arange(seq_len, device=query_pos.device)
    offset = key_pos[None, :] - query_pos[:, None]  # j - p
    visible = torch.ones_like(offset, dtype=torch.bool)
    if causal:
        visible &= offset <= 0
    if sliding_window is not None and chunk_lookback is not None:
        chunk = sliding_window // (chunk_lookback + 1)  # p // C - j // C <= lookback
        visible &= query_pos[:, None] // chunk - key_pos[None, :] // chunk <= chunk_lookback
    elif sliding_window is not None:
        visible &= offset > -sliding_window  # keys p-W+1 .. p
        if not causal:  # non-causal (encoder layers, some drafters): a symmetric window
            visible &= offset < sliding_window
    if rswa_prefix_len is not None:  # R-SWA: the prompt prefix stays visible (causally)
        visible |= (key_pos[None, :] < rswa_prefix_len) & (offset <= 0)
    # Multimodal prefix ranges: (causal AND window) OR (query and key in one range).
    for start, end in mm_ranges:
        if start >= end:  # padding
            continue
        query_in = (query_pos >= start) & (query_pos <= end)
        key_in = (key_pos >= start) & (key_pos <= end)
        in_range = query_in[:, None] & key_in[None, :]
        if mm_clamp_sliding_window and sliding_window is not None:
            in_range &= offset > -sliding_window
        visible |= in_range
    return visible


def reference_paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    scale: float,
    causal: bool | torch.Tensor = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    mm_prefix_ranges: torch.Tensor | None = None,
    mm_prefix_clamp_sliding_window: bool = False,
    alibi_sqrt: bool = False,
    chunk_lookback: int | None = None,
    rswa_prefix_lens: torch.Tensor | None = None,
    q_scale: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    plan=None,
) -> torch.Tensor:
    """Paged attention in PyTorch; same arguments as ``paged_attention``.

    Returns a new tensor shaped like ``q`` (``out``, if given, only sets the
    dtype). Rows of tokens that belong to no sequence are zero. With
    ``out_scale`` (an fp8 ``out``) the float32 result times the scale's
    reciprocal, saturated, in ``out``'s format. ``lse`` (``[num_tokens,
    num_q_heads]``), if given, receives each row's natural log-sum-exp of its
    visible scores (the sink's logit included), -inf for rows without keys.
    """
    del max_query_len, max_seq_len, plan  # hints for the kernels only
    compute_dtype = torch.float64
    num_tokens, num_q_heads, head_size = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    result = torch.zeros(q.shape, dtype=compute_dtype, device=q.device)
    # Scales: one per tensor, or one per cache slot and KV head ([blocks, slots, heads]).
    per_token_head = k_scale is not None and k_scale.dim() == 3
    k_factor = 1.0 if k_scale is None or per_token_head else float(k_scale)
    v_factor = 1.0 if v_scale is None or per_token_head else float(v_scale)

    starts = query_start_loc.tolist()
    per_seq_causal = causal.tolist() if isinstance(causal, torch.Tensor) else None
    mm_ranges = mm_prefix_ranges.tolist() if mm_prefix_ranges is not None else None
    prefix_lens = rswa_prefix_lens.tolist() if rswa_prefix_lens is not None else None
    for seq, seq_len in enumerate(seq_lens.tolist()):
        q_start, q_end = starts[seq], starts[seq + 1]
        q_len = q_end - q_start
        if q_len == 0 or seq_len == 0:
            continue
        # Gather this sequence's keys and values out of the paged cache.
        key_idx = torch.arange(seq_len, device=q.device)
        blocks = block_table[seq, key_idx // block_size].long()
        slots = key_idx % block_size
        if k_cache.dtype == INT4_KV_DTYPE:
            keys = int4_vectors(k_cache[blocks, slots], k_scale[blocks, slots])
            values = int4_vectors(v_cache[blocks, slots], v_scale[blocks, slots])
        else:
            keys = k_cache[blocks, slots].to(compute_dtype) * k_factor  # [seq_len, kv_heads, d]
            values = v_cache[blocks, slots].to(compute_dtype) * v_factor
            if per_token_head:
                keys = keys * k_scale[blocks, slots].to(compute_dtype)[..., None]
                values = values * v_scale[blocks, slots].to(compute_dtype)[..., None]
        keys = keys.repeat_interleave(group, dim=1)  # query head h reads kv head h // group
        values = values.repeat_interleave(group, dim=1)

        query = q[q_start:q_end].to(compute_dtype)  # [q_len, heads, d]
        if q_scale is not None:  # fp8 queries: one scale, or one per KV head
            per_head = q_scale.to(compute_dtype).flatten().expand(num_kv_heads)
            query = query * per_head.repeat_interleave(group)[:, None]
        query_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)

        scores = scale * torch.einsum("qhd,khd->hqk", query, keys)
        if logits_soft_cap is not None:
            scores = logits_soft_cap * torch.tanh(scores / logits_soft_cap)
        if alibi_slopes is not None:
            distance = (key_idx[None, :] - query_pos[:, None]).to(compute_dtype)
            if alibi_sqrt:  # -sqrt(p - j) on past keys, no bias on later ones
                distance = -(-distance).clamp(min=0).sqrt()
            scores = scores + alibi_slopes.to(compute_dtype)[:, None, None] * distance
        seq_causal = causal if per_seq_causal is None else bool(per_seq_causal[seq])
        visible = _visible_keys(
            query_pos,
            seq_len,
            seq_causal,
            sliding_window,
            mm_ranges[seq] if mm_ranges is not None else [],
            mm_prefix_clamp_sliding_window,
            chunk_lookback,
            prefix_lens[seq] if prefix_lens is not None else None,
        )
        scores = scores.masked_fill(~visible, float("-inf"))
        # Keys no query sees (outside every window) may be stale or NaN: drop them.
        values = values.masked_fill(~visible.any(0)[:, None, None], 0.0)

        if sinks is not None:  # one extra logit per head: in the denominator, no value
            sink = sinks.to(compute_dtype)[:, None, None].expand(-1, q_len, 1)
            scores = torch.cat([scores, sink], dim=-1)
        if lse is not None:
            lse[q_start:q_end] = torch.logsumexp(scores, dim=-1).T.to(lse.dtype)
        probs = torch.softmax(scores, dim=-1)
        if sinks is not None:
            probs = probs[..., :-1]
        result[q_start:q_end] = torch.einsum("hqk,khd->qhd", probs, values)

    if out_scale is not None:
        fp8_max = torch.finfo(out.dtype).max
        scaled = result.to(torch.float32) * (1.0 / out_scale.to(torch.float32))
        return scaled.clamp(-fp8_max, fp8_max).to(out.dtype)
    return result.to(q.dtype if out is None else out.dtype)


def reference_rotary_embedding(
    x: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> torch.Tensor:
    """vLLM's rotary embedding of ``x`` ``[num_tokens, heads, head_size]``, in
    float64 (as ``rope_and_write_kv_cache`` applies it): each pair of the
    first ``rotary_dim`` dimensions (``d, d + rotary_dim / 2`` for NeoX,
    ``2i, 2i + 1`` for GPT-J) read as a complex number and multiplied by
    ``cos + i sin`` of its token's row ``positions[t]`` of ``cos_sin_cache``
    ``[max_position, rotary_dim]`` (cosines, then sines)."""
    rotary_dim = cos_sin_cache.shape[-1]
    half = rotary_dim // 2
    cos_sin = cos_sin_cache[positions[: x.shape[0]].long()].to(torch.float64)
    turn = torch.complex(cos_sin[:, :half], cos_sin[:, half:])[:, None, :]
    x = x.to(torch.float64)
    rotary, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if is_neox:
        pairs = torch.complex(rotary[..., :half], rotary[..., half:]) * turn
        rotary = torch.cat([pairs.real, pairs.imag], dim=-1)
    else:
        pairs = torch.complex(rotary[..., 0::2], rotary[..., 1::2]) * turn
        rotary = torch.stack([pairs.real, pairs.imag], dim=-1).flatten(-2)
    return torch.cat([rotary, rest], dim=-1)


def int4_vectors(packed: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """An int4 cache's vectors ``[..., head_size]`` (float64) from their bytes
    ``[..., head_size // 2]`` and scale words ``[...]``: codes (dimension 2i in
    byte i's low nibble, 2i + 1 in its high one) minus the zero point held in
    the word's 4 low mantissa bits, times the rest of the word as the scale,
    then rotated back: the stored vector is ``H (signs * x)`` for ``H`` the
    Sylvester Hadamard matrix of each ``rht_block`` dimensions, whose inverse
    is ``signs * H / block``."""
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2).to(torch.float64)
    bits = words.contiguous().view(torch.int32)
    zero = (bits & 0xF).to(torch.float64)
    scale = (bits & -16).view(torch.float32).to(torch.float64)
    rotated = (codes - zero[..., None]) * scale[..., None]
    head_size = rotated.shape[-1]
    block = rht_block(head_size)
    # Sylvester's Hadamard matrix entry by entry: (-1) ** popcount(i & j)
    index = torch.arange(block)
    common_bits = index[:, None] & index[None, :]
    parity = torch.zeros(block, block, dtype=torch.long)
    while common_bits.any():
        parity ^= common_bits & 1
        common_bits >>= 1
    hadamard = (1 - 2 * parity).to(torch.float64)
    blocks = rotated.reshape(*rotated.shape[:-1], head_size // block, block)
    vectors = (blocks @ hadamard.to(rotated.device)).reshape(rotated.shape) / block
    return vectors * rht_signs(head_size, rotated.device).to(torch.float64)
