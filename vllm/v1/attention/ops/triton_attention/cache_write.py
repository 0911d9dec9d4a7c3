# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Write new keys and values into the paged KV cache (a tile of tokens per program)."""

import triton
import triton.language as tl


@triton.jit
def _quantise(x, scale, FP8_MAX: tl.constexpr, CACHE_DTYPE: tl.constexpr):
    # Saturate first: a cast of an out-of-range value to e4m3 gives NaN.
    x = x.to(tl.float32) / scale
    x = tl.minimum(tl.maximum(x, -FP8_MAX), FP8_MAX)
    return x.to(CACHE_DTYPE)  # GPUs round to nearest even here, as torch does


@triton.jit
def write_kv_cache_kernel(
    # pointers
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    k_scale_ptr,
    v_scale_ptr,
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
    KV_IS_FP8: tl.constexpr,
    FP8_MAX: tl.constexpr,
    TOKENS: tl.constexpr,
):
    # [TOKENS, HEADS_PAD, HEAD_PAD] tiles: one token per program on GPUs, many
    # in the interpreter, where every program costs the same fixed time.
    tokens = tl.program_id(0).to(tl.int64) * TOKENS + tl.arange(0, TOKENS)
    # padding tokens, and those whose cache entry is not ours to write, have slot < 0
    slots = tl.load(slot_mapping_ptr + tokens, mask=tokens < num_tokens, other=-1).to(tl.int64)
    block = slots // BLOCK_SIZE
    offset_in_block = slots % BLOCK_SIZE

    heads = tl.arange(0, HEADS_PAD)
    dim = tl.arange(0, HEAD_PAD)
    mask = (
        (slots >= 0)[:, None, None]
        & (heads < NUM_KV_HEADS)[None, :, None]
        & (dim < HEAD_SIZE)[None, None, :]
    )
    tokens = tokens[:, None, None]
    heads = heads[None, :, None]
    dim = dim[None, None, :]

    key = tl.load(
        key_ptr + tokens * stride_key_token + heads * stride_key_head + dim * STRIDE_KEY_DIM,
        mask=mask,
    )
    value = tl.load(
        value_ptr
        + tokens * stride_value_token
        + heads * stride_value_head
        + dim * STRIDE_VALUE_DIM,
        mask=mask,
    )
    if KV_IS_FP8:
        key = _quantise(key, tl.load(k_scale_ptr), FP8_MAX, k_cache_ptr.dtype.element_ty)
        value = _quantise(value, tl.load(v_scale_ptr), FP8_MAX, v_cache_ptr.dtype.element_ty)
    else:
        key = key.to(k_cache_ptr.dtype.element_ty)
        value = value.to(v_cache_ptr.dtype.element_ty)

    k_offset = (block * stride_k_block + offset_in_block * stride_k_slot)[:, None, None]
    v_offset = (block * stride_v_block + offset_in_block * stride_v_slot)[:, None, None]
    tl.store(k_cache_ptr + k_offset + heads * stride_k_head + dim * STRIDE_K_DIM, key, mask=mask)
    tl.store(v_cache_ptr + v_offset + heads * stride_v_head + dim * STRIDE_V_DIM, value, mask=mask)
