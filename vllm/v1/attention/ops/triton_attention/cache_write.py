# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Write new keys and values into the paged KV cache (a tile of tokens per program),
optionally after vLLM's rotary embedding of the queries and keys (in place)."""

import triton
import triton.language as tl

from .jit_helpers import rotate_rows


@triton.jit
def _quantise(x, scale, QUANT_MAX: tl.constexpr, CACHE_DTYPE: tl.constexpr):
    # Saturate first: a cast of an out-of-range value to e4m3 gives NaN.
    x = x.to(tl.float32) / scale
    x = tl.minimum(tl.maximum(x, -QUANT_MAX), QUANT_MAX)
    return x.to(CACHE_DTYPE)  # GPUs round to nearest even here, as torch does


@triton.jit
def _quantise_per_token_head(x, QUANT_MAX: tl.constexpr, CACHE_DTYPE: tl.constexpr):
    """``x`` [TOKENS, HEADS, HEAD_PAD] with one scale per (token, head):
    ``absmax / QUANT_MAX`` (at least 1e-6). The bytes vLLM's other readers of
    these caches expect: values times the scale's reciprocal; int8 rounds half
    away from zero and keeps -128; fp8 saturates, then rounds to nearest even."""
    x = x.to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 2) / QUANT_MAX, 1e-6)
    x = x * (1.0 / scale)[:, :, None]
    if tl.int8 == CACHE_DTYPE:
        x = tl.where(x >= 0, x + 0.5, x - 0.5)  # the cast truncates toward zero
        x = tl.minimum(tl.maximum(x, -QUANT_MAX - 1.0), QUANT_MAX)
    else:
        x = tl.minimum(tl.maximum(x, -QUANT_MAX), QUANT_MAX)
    return x.to(CACHE_DTYPE), scale


@triton.jit
def _round_half_away(x):
    return tl.where(x >= 0, x + 0.5, x - 0.5).to(tl.int32)  # the cast truncates toward zero


@triton.jit
def _rotate_int4(x, rht_signs_ptr, HEAD_SIZE: tl.constexpr):
    """``x`` [TOKENS, HEADS, HEAD_PAD] rotated as an int4 cache stores it
    (``jit_helpers.rotate_rows``), in float32."""
    TOKENS: tl.constexpr = x.shape[0]
    HEADS: tl.constexpr = x.shape[1]
    HEAD_PAD: tl.constexpr = x.shape[2]
    dim = tl.arange(0, HEAD_PAD)
    rows = tl.reshape(x, [TOKENS * HEADS, HEAD_PAD])
    rotated = rotate_rows(rows, rht_signs_ptr, dim, dim < HEAD_SIZE, HEAD_SIZE & -HEAD_SIZE)
    return tl.reshape(rotated, [TOKENS, HEADS, HEAD_PAD]).to(tl.float32)


@triton.jit
def _quantise_int4(x, real_dims):
    """``x`` [TOKENS, HEADS, HEAD_PAD] float32 in 4-bit codes around a zero
    point per (token, head), as vLLM's int4_per_token_head stores them: scale
    ``(max - min) / 15`` (at least 1e-6), zero point ``-min / scale`` and codes
    ``x / scale + zero`` rounded half away from zero into 0..15, two per byte
    (even dimension low). Returns the bytes and the scale words: the scale
    with the zero point in its 4 low mantissa bits."""
    TOKENS: tl.constexpr = x.shape[0]
    HEADS: tl.constexpr = x.shape[1]
    HEAD_PAD: tl.constexpr = x.shape[2]
    low = tl.min(tl.where(real_dims, x, float("inf")), 2)
    high = tl.max(tl.where(real_dims, x, float("-inf")), 2)
    scale = tl.maximum((high - low) / 15.0, 1e-6)
    zero = tl.minimum(tl.maximum(_round_half_away(-low / scale), 0), 15)
    codes = _round_half_away(x * (1.0 / scale)[:, :, None] + zero[:, :, None].to(tl.float32))
    codes = tl.minimum(tl.maximum(codes, 0), 15).to(tl.uint8)
    even, odd = tl.split(tl.reshape(codes, [TOKENS, HEADS, HEAD_PAD // 2, 2]))
    word = (scale.to(tl.int32, bitcast=True) & -16) | zero
    return even | (odd << 4), word.to(tl.float32, bitcast=True)


@triton.jit
def _rotated_rows(
    rows_ptr,
    stride_dim,
    mask,
    cos_sin_rows_ptr,
    HEAD_PAD: tl.constexpr,
    ROTARY_DIM: tl.constexpr,
    ROPE_NEOX: tl.constexpr,
):
    """vLLM's rotary embedding of the rows ``rows_ptr + dim * stride_dim``
    (``rows_ptr`` [TOKENS, HEADS, 1]), in float32: each pair of the first
    ``ROTARY_DIM`` dimensions (``d`` and ``d + ROTARY_DIM / 2`` in NeoX style,
    ``2i`` and ``2i + 1`` in GPT-J style) turned by its token's angle, whose
    cosines and sines are ``cos_sin_rows_ptr`` [TOKENS, 1, 1]'s two halves;
    the other dimensions as they are."""
    HALF: tl.constexpr = ROTARY_DIM // 2
    dim = tl.arange(0, HEAD_PAD)[None, None, :]
    if ROPE_NEOX:
        first = dim < HALF
        partner = tl.where(first, dim + HALF, dim - HALF)
        frequency = tl.where(first, dim, dim - HALF)
    else:
        first = dim % 2 == 0
        partner = tl.where(first, dim + 1, dim - 1)
        frequency = dim // 2
    rotary = mask & (dim < ROTARY_DIM)
    x = tl.load(rows_ptr + dim * stride_dim, mask=mask, other=0.0).to(tl.float32)
    pair = tl.load(rows_ptr + partner * stride_dim, mask=rotary, other=0.0).to(tl.float32)
    cos = tl.load(cos_sin_rows_ptr + frequency, mask=rotary, other=1.0).to(tl.float32)
    sin = tl.load(cos_sin_rows_ptr + HALF + frequency, mask=rotary, other=0.0).to(tl.float32)
    return tl.where(rotary, x * cos + tl.where(first, -pair, pair) * sin, x)


@triton.jit
def write_kv_cache_kernel(
    # pointers
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    k_scale_ptr,  # one scale (KV_IS_FP8), or [num_blocks, block_size, num_kv_heads]
    v_scale_ptr,  # (TOKEN_HEAD_SCALES: written here)
    rht_signs_ptr,  # [head_size] float32 rotation signs of an int4 cache, with KV_INT4
    query_ptr,  # rotated in place with the keys (ROTARY_DIM > 0)
    positions_ptr,  # [num_tokens] each token's position (ROTARY_DIM > 0)
    cos_sin_cache_ptr,  # [max_position, ROTARY_DIM]: cosines, then sines (ROTARY_DIM > 0)
    num_tokens,
    # strides
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    stride_query_token,
    stride_query_head,
    stride_cos_sin_position,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    stride_scale_block,
    stride_scale_slot,
    stride_scale_head,
    # shapes and switches
    STRIDE_KEY_DIM: tl.constexpr,
    STRIDE_VALUE_DIM: tl.constexpr,
    STRIDE_QUERY_DIM: tl.constexpr,
    STRIDE_K_DIM: tl.constexpr,
    STRIDE_V_DIM: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    KV_IS_FP8: tl.constexpr,  # fp8 with a scale per tensor
    TOKEN_HEAD_SCALES: tl.constexpr,  # int8, fp8 or int4 with a scale per token and KV head
    KV_INT4: tl.constexpr,  # rotated vectors in int4 codes, two per byte (_quantise_int4)
    QUANT_MAX: tl.constexpr,
    ROTARY_DIM: tl.constexpr,  # 0: no rotary embedding
    ROPE_NEOX: tl.constexpr,  # rotate halves (NeoX), else even/odd pairs (GPT-J)
    NUM_Q_HEADS: tl.constexpr,
    Q_HEADS_BLOCK: tl.constexpr,  # query heads rotated at a time
    TOKENS: tl.constexpr,
):
    # [TOKENS, HEADS_PAD, HEAD_PAD] tiles: one token per program on GPUs, many
    # in the interpreter, where every program costs the same fixed time.
    tokens = tl.program_id(0).to(tl.int64) * TOKENS + tl.arange(0, TOKENS)
    # padding tokens, and those whose cache entry is not ours to write, have slot < 0
    slots = tl.load(slot_mapping_ptr + tokens, mask=tokens < num_tokens, other=-1).to(tl.int64)
    block = slots // BLOCK_SIZE
    offset_in_block = slots % BLOCK_SIZE

    head_ids = tl.arange(0, HEADS_PAD)
    dim = tl.arange(0, HEAD_PAD)
    row_mask = (slots >= 0)[:, None, None] & (head_ids < NUM_KV_HEADS)[None, :, None]
    mask = row_mask & (dim < HEAD_SIZE)[None, None, :]
    in_batch = tokens < num_tokens
    tokens = tokens[:, None, None]
    heads = head_ids[None, :, None]
    dim = dim[None, None, :]

    key_rows = key_ptr + tokens * stride_key_token + heads * stride_key_head
    if ROTARY_DIM > 0:
        # Every token's query and key turn, written or not (another rank's
        # slot, padding): attention reads them from the layer's inputs too.
        positions = tl.load(positions_ptr + tokens, mask=in_batch[:, None, None], other=0)
        cos_sin_rows = cos_sin_cache_ptr + positions.to(tl.int64) * stride_cos_sin_position
        for first_head in tl.range(0, NUM_Q_HEADS, Q_HEADS_BLOCK):
            q_heads = first_head + tl.arange(0, Q_HEADS_BLOCK)[None, :, None]
            q_mask = in_batch[:, None, None] & (q_heads < NUM_Q_HEADS) & (dim < HEAD_SIZE)
            q_rows = query_ptr + tokens * stride_query_token + q_heads * stride_query_head
            query = _rotated_rows(
                q_rows, STRIDE_QUERY_DIM, q_mask, cos_sin_rows, HEAD_PAD, ROTARY_DIM, ROPE_NEOX
            )
            # Each element's pair was read by another thread: every read
            # completes before anything is overwritten.
            tl.debug_barrier()
            tl.store(q_rows + dim * STRIDE_QUERY_DIM, query.to(query_ptr.dtype.element_ty), q_mask)
        k_mask = in_batch[:, None, None] & (heads < NUM_KV_HEADS) & (dim < HEAD_SIZE)
        key = _rotated_rows(
            key_rows, STRIDE_KEY_DIM, k_mask, cos_sin_rows, HEAD_PAD, ROTARY_DIM, ROPE_NEOX
        ).to(key_ptr.dtype.element_ty)  # the cache stores the key the model goes on with
        tl.debug_barrier()
        tl.store(key_rows + dim * STRIDE_KEY_DIM, key, k_mask)
    else:
        # zeros past the head size leave a per-token-head absmax alone
        key = tl.load(key_rows + dim * STRIDE_KEY_DIM, mask=mask, other=0.0)
    value = tl.load(
        value_ptr
        + tokens * stride_value_token
        + heads * stride_value_head
        + dim * STRIDE_VALUE_DIM,
        mask=mask,
        other=0.0,
    )
    # the cache's columns: the head's dimensions, or an int4 cache's bytes
    columns = dim
    column_mask = mask
    if KV_INT4:
        real_dims = dim < HEAD_SIZE
        key, k_scale = _quantise_int4(_rotate_int4(key, rht_signs_ptr, HEAD_SIZE), real_dims)
        value, v_scale = _quantise_int4(_rotate_int4(value, rht_signs_ptr, HEAD_SIZE), real_dims)
        columns = tl.arange(0, HEAD_PAD // 2)[None, None, :]
        column_mask = row_mask & (columns < HEAD_SIZE // 2)
    elif TOKEN_HEAD_SCALES:
        key, k_scale = _quantise_per_token_head(key, QUANT_MAX, k_cache_ptr.dtype.element_ty)
        value, v_scale = _quantise_per_token_head(value, QUANT_MAX, v_cache_ptr.dtype.element_ty)
    if TOKEN_HEAD_SCALES:
        scale_offset = (block * stride_scale_block + offset_in_block * stride_scale_slot)[:, None]
        scale_offset += head_ids[None, :] * stride_scale_head
        scale_mask = (slots >= 0)[:, None] & (head_ids < NUM_KV_HEADS)[None, :]
        tl.store(k_scale_ptr + scale_offset, k_scale, mask=scale_mask)
        tl.store(v_scale_ptr + scale_offset, v_scale, mask=scale_mask)
    elif KV_IS_FP8:
        key = _quantise(key, tl.load(k_scale_ptr), QUANT_MAX, k_cache_ptr.dtype.element_ty)
        value = _quantise(value, tl.load(v_scale_ptr), QUANT_MAX, v_cache_ptr.dtype.element_ty)
    else:
        key = key.to(k_cache_ptr.dtype.element_ty)
        value = value.to(v_cache_ptr.dtype.element_ty)

    k_offset = (block * stride_k_block + offset_in_block * stride_k_slot)[:, None, None]
    v_offset = (block * stride_v_block + offset_in_block * stride_v_slot)[:, None, None]
    k_ptrs = k_cache_ptr + k_offset + heads * stride_k_head + columns * STRIDE_K_DIM
    v_ptrs = v_cache_ptr + v_offset + heads * stride_v_head + columns * STRIDE_V_DIM
    tl.store(k_ptrs, key, mask=column_mask)
    tl.store(v_ptrs, value, mask=column_mask)
