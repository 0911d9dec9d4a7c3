# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Write new keys and values into the paged KV cache (a tile of tokens per program)."""

import triton
import triton.language as tl


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
def write_kv_cache_kernel(
    # pointers
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    k_scale_ptr,  # one scale (KV_IS_FP8), or [num_blocks, block_size, num_kv_heads]
    v_scale_ptr,  # (TOKEN_HEAD_SCALES: written here)
    num_tokens,
    # strides
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
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
    STRIDE_K_DIM: tl.constexpr,
    STRIDE_V_DIM: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    KV_IS_FP8: tl.constexpr,  # fp8 with a scale per tensor
    TOKEN_HEAD_SCALES: tl.constexpr,  # int8 or fp8 with a scale per token and KV head
    QUANT_MAX: tl.constexpr,
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
    mask = (
        (slots >= 0)[:, None, None]
        & (head_ids < NUM_KV_HEADS)[None, :, None]
        & (dim < HEAD_SIZE)[None, None, :]
    )
    tokens = tokens[:, None, None]
    heads = head_ids[None, :, None]
    dim = dim[None, None, :]

    key = tl.load(
        key_ptr + tokens * stride_key_token + heads * stride_key_head + dim * STRIDE_KEY_DIM,
        mask=mask,
        other=0.0,  # zeros past the head size leave a per-token-head absmax alone
    )
    value = tl.load(
        value_ptr
        + tokens * stride_value_token
        + heads * stride_value_head
        + dim * STRIDE_VALUE_DIM,
        mask=mask,
        other=0.0,
    )
    if TOKEN_HEAD_SCALES:
        key, k_scale = _quantise_per_token_head(key, QUANT_MAX, k_cache_ptr.dtype.element_ty)
        value, v_scale = _quantise_per_token_head(value, QUANT_MAX, v_cache_ptr.dtype.element_ty)
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
    tl.store(k_cache_ptr + k_offset + heads * stride_k_head + dim * STRIDE_K_DIM, key, mask=mask)
    tl.store(v_cache_ptr + v_offset + heads * stride_v_head + dim * STRIDE_V_DIM, value, mask=mask)
