# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""``@triton.jit`` helpers shared by the attention kernels.

Every kernel file imports its helpers from here (and the Gluon kernels theirs
from ``gluon_helpers``), never from another kernel file. Helpers that are
"layout-free" (no ``tl.arange``) also run inside the Gluon kernels.

Scores live in the log2 domain inside the kernels (``exp2`` is the cheap
instruction on every GPU), so the softmax scale is folded with ``log2(e)``
before the loop and sink logits are converted on load.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # jit code reads only constexpr globals
# Rows of per-token-head caches start at multiples of 4 bytes (checks.py).
TOKEN_HEAD_ROW_ALIGN = tl.constexpr(4)


@triton.jit
def key_range(
    first_pos,
    last_pos,
    seq_len,
    sliding_window,
    IS_CAUSAL: tl.constexpr,
    HAS_SLIDING_WINDOW: tl.constexpr,
    seq_causal=None,
    CHUNK_LOOKBACK: tl.constexpr = -1,
):
    """Keys a Q tile of query positions ``first_pos`` to ``last_pos`` can need,
    ``[kv_lo, kv_hi)``, and the keys every one of its rows sees, ``[full_lo,
    full_hi)`` (not rounded to key tiles). ``seq_causal``: the sequence's own
    flag, which then replaces ``IS_CAUSAL``. ``CHUNK_LOOKBACK`` >= 0: the window
    is chunked (``window_start``). Layout-free, so that Gluon kernels can call
    it too."""
    kv_lo = 0
    full_lo = 0
    if seq_causal is not None:
        kv_hi = tl.where(seq_causal, last_pos + 1, seq_len)
        full_hi = tl.where(seq_causal, first_pos + 1, seq_len)
    elif IS_CAUSAL:
        kv_hi = last_pos + 1
        full_hi = first_pos + 1
    else:
        kv_hi = seq_len
        full_hi = seq_len
    if CHUNK_LOOKBACK >= 0:  # bounds the past only, causal or not
        kv_lo = tl.maximum(window_start(first_pos, sliding_window, CHUNK_LOOKBACK), 0)
        full_lo = tl.maximum(window_start(last_pos, sliding_window, CHUNK_LOOKBACK), 0)
    elif HAS_SLIDING_WINDOW:
        kv_lo = tl.maximum(first_pos - sliding_window + 1, 0)
        full_lo = tl.maximum(last_pos - sliding_window + 1, 0)
        if seq_causal is not None:  # a two-sided window for a non-causal sequence
            kv_hi = tl.where(seq_causal, kv_hi, tl.minimum(last_pos + sliding_window, seq_len))
            full_hi = tl.where(seq_causal, full_hi, tl.minimum(first_pos + sliding_window, seq_len))
        elif not IS_CAUSAL:
            kv_hi = tl.minimum(last_pos + sliding_window, seq_len)
            full_hi = tl.minimum(first_pos + sliding_window, seq_len)
    return kv_lo, kv_hi, full_lo, full_hi


@triton.jit
def window_start(pos, chunk_size, CHUNK_LOOKBACK: tl.constexpr):
    """First key a query at ``pos`` sees in a chunked window: the start of the
    chunk ``CHUNK_LOOKBACK`` chunks before its own (``pos // C - j // C <=
    CHUNK_LOOKBACK``). Layout-free."""
    return (pos // chunk_size - CHUNK_LOOKBACK) * chunk_size


@triton.jit
def mm_prefix_rows(
    mm_ranges_ptr,
    stride_mm_seq,
    num_mm_ranges,
    seq,
    query_pos,
    seq_len,
    sliding_window,
    CLAMP_TO_WINDOW: tl.constexpr,
):
    """Per query row, the keys ``[mm_lo, mm_hi)`` its multimodal prefix range
    lets it see besides the causal (and window) ones: the whole range that
    holds the query, up to the keys cached so far (an empty ``[0, 0)`` for a
    row in no range). Ranges are ``(start, end)``, inclusive, valid when
    ``start < end``; a sequence's ranges are disjoint (vLLM's placeholders
    are), so "query and key in one range" is "key in the query's range".
    ``CLAMP_TO_WINDOW``: the range part keeps the window's past edge too.
    Layout-free."""
    mm_lo = query_pos * 0  # zeros in query_pos's layout: Gluon kernels call this too
    mm_hi = mm_lo
    ranges_ptr = mm_ranges_ptr + seq.to(tl.int64) * stride_mm_seq
    for i in range(num_mm_ranges):
        start = tl.load(ranges_ptr + 2 * i)
        end = tl.load(ranges_ptr + 2 * i + 1)
        inside = (start < end) & (query_pos >= start) & (query_pos <= end)
        mm_lo = tl.where(inside, start, mm_lo)
        mm_hi = tl.where(inside, tl.minimum(end + 1, seq_len), mm_hi)
    if CLAMP_TO_WINDOW:
        mm_lo = tl.maximum(mm_lo, query_pos - sliding_window + 1)
    return mm_lo, mm_hi


@triton.jit
def widen_key_range(kv_lo, kv_hi, mm_lo, mm_hi, row_valid):
    """``[kv_lo, kv_hi)`` grown to hold every valid row's range keys. Layout-free."""
    has_range = row_valid & (mm_lo < mm_hi)
    kv_lo = tl.minimum(kv_lo, tl.min(tl.where(has_range, mm_lo, kv_lo), 0))
    kv_hi = tl.maximum(kv_hi, tl.max(tl.where(has_range, mm_hi, kv_hi), 0))
    return kv_lo, kv_hi


@triton.jit
def find_q_tile(query_start_loc_ptr, num_seqs, BLOCK_Q: tl.constexpr):
    """The Q tile and KV head of this program of the long-query grid (Q tiles
    x KV heads): (its sequence, the sequence's first query row, its query
    length, the tile's first token within it, the KV head). Past the
    sequence's last tile that token is at least the query length: the program
    has nothing to do.

    The GPU starts programs in launch order, and with a causal mask a tile
    late in a sequence sees the most keys: programs take the tiles from the
    last one down, every KV head of a tile together, so that the light tiles
    fill in at the end instead of heavy ones running alone there (H200,
    against tiles in order: 1.07-1.40x on causal prefills of 1-4k tokens,
    1.00-1.05x at 8-16k, 1.02-1.06x mixed; 0.96-0.98x on two grids of one
    wave, where order cannot matter; DECISIONS.md: "Heaviest Q tiles
    first").

    Sequence ``b`` owns tiles ``(query_start_loc[b] - query_start_loc[0]) //
    BLOCK_Q + b`` onwards: an upper bound on the Q blocks before it that needs no
    device-to-host sync (see ``plan.long_query_grid_size``). ``query_start_loc[0]``
    may be non-zero (the long queries of a mixed batch start after its decodes).
    Binary search for the last ``b`` whose first tile is at most the
    program's. Layout-free, so that Gluon kernels can call it too.
    """
    launch_order = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    kv_head = launch_order % tl.num_programs(1)
    q_block_index = tl.num_programs(0) - 1 - launch_order // tl.num_programs(1)
    first_row = tl.load(query_start_loc_ptr)
    lo = q_block_index * 0  # a tensor even when num_seqs == 1 is specialised
    hi = lo + num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first_block = (tl.load(query_start_loc_ptr + mid) - first_row) // BLOCK_Q + mid
        if first_block <= q_block_index:
            lo = mid
        else:
            hi = mid - 1
    q_start = tl.load(query_start_loc_ptr + lo)
    q_len = tl.load(query_start_loc_ptr + lo + 1) - q_start
    first_block = (q_start - first_row) // BLOCK_Q + lo
    return lo, q_start, q_len, (q_block_index - first_block) * BLOCK_Q, kv_head


@triton.jit
def tanh(x):
    """tanh from exp2, portable across NVIDIA and AMD (no libdevice), accurate
    to fp32 rounding (``tanh.approx`` is off by up to 2^-11 relative, 0.025 on
    a logit capped at 50); saturates cleanly to +-1. Layout-free."""
    return 1.0 - 2.0 / (tl.math.exp2(x * (2.0 * LOG2E)) + 1.0)


@triton.jit
def query_rows(first_token, q_len, kv_head, BLOCK_M: tl.constexpr, QUERIES_PER_KV: tl.constexpr):
    """Map the BLOCK_M rows of a Q tile to (token within sequence, query head).

    Rows pack every query head of one KV head for consecutive tokens, so one
    K/V tile serves the whole GQA group and ``tl.dot`` gets a large M.
    """
    rows = tl.arange(0, BLOCK_M)
    token = first_token + rows // QUERIES_PER_KV
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    tokens_per_tile: tl.constexpr = BLOCK_M // QUERIES_PER_KV
    valid = (token < q_len) & (rows < tokens_per_tile * QUERIES_PER_KV)
    return token, head, valid


@triton.jit
def tile_blocks(block_table_row_ptr, key_idx, mask, BLOCK_SIZE: tl.constexpr):
    """Cache block of every key in ``key_idx`` (int64: block * stride can pass
    2**31 elements); keys outside ``mask`` get block 0 without reading the
    block table."""
    block = tl.load(block_table_row_ptr + key_idx // BLOCK_SIZE, mask=mask, other=0)
    return block.to(tl.int64)


@triton.jit
def load_kv_tile(
    k_cache_ptr,
    v_cache_ptr,
    block,
    key_idx,
    load_mask,
    kv_head,
    dim,
    dim_mask,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    STRIDE_K_DIM: tl.constexpr,
    STRIDE_V_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    MASKED: tl.constexpr,
    ROW_ALIGN: tl.constexpr = 1,
    KV_INT4: tl.constexpr = False,
):
    """Gather K^T [HEAD_PAD, TILE_N] and V [TILE_N, HEAD_PAD] from the cache blocks
    ``block`` (one per key), in ``COMPUTE_DTYPE`` (the queries'). For fp8
    queries V comes in fp16: their dot with the keys runs in fp8, while
    probabilities keep 10 mantissa bits (fp16 holds every e4m3 and e5m2
    value, and probabilities down to 6e-8).

    ``KV_INT4``: rows of ``HEAD_PAD // 2`` bytes, two 4-bit codes each
    (``unpack_int4``), returned as codes 0..15 (``dim`` then counts bytes:
    ``dim_mask`` marks the ``HEAD_SIZE // 2`` of them).

    ``ROW_ALIGN``: every K and V row starts at a multiple of this many
    elements (the checks made sure). vLLM's per-token-head pages put rows
    ``2 * D + 8`` bytes apart and V ``D + 4`` bytes in: never 16-byte aligned,
    so without the hint Triton would read them a byte at a time.

    With ``MASKED``, keys outside ``load_mask`` are never read (their slots can
    hold NaN) and come back as zeros, so ``0 * V`` can never turn into NaN.
    fp8 tiles are cast to the query's dtype here; their scales are applied
    outside the loop.
    """
    slot = key_idx % BLOCK_SIZE
    k_offset = block * stride_k_block + slot * stride_k_slot + kv_head * stride_k_head
    v_offset = block * stride_v_block + slot * stride_v_slot + kv_head * stride_v_head
    k_ptrs = k_cache_ptr + k_offset[None, :] + dim[:, None] * STRIDE_K_DIM
    v_ptrs = v_cache_ptr + v_offset[:, None] + dim[None, :] * STRIDE_V_DIM
    if ROW_ALIGN > 1:
        k_ptrs = tl.multiple_of(k_ptrs, [ROW_ALIGN, 1])
        v_ptrs = tl.multiple_of(v_ptrs, [1, ROW_ALIGN])
    if MASKED:
        k = tl.load(k_ptrs, mask=dim_mask[:, None] & load_mask[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=load_mask[:, None] & dim_mask[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs, mask=dim_mask[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=dim_mask[None, :], other=0.0)
    if KV_INT4:
        k = tl.trans(unpack_int4(tl.trans(k)))
        v = unpack_int4(v)
    if COMPUTE_DTYPE.is_fp8():
        v = v.to(tl.float16)
    else:
        v = v.to(COMPUTE_DTYPE)
    return k.to(COMPUTE_DTYPE), v


@triton.jit
def cache_columns(HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, KV_INT4: tl.constexpr):
    """The columns of a cache row the kernels read, and which of them are real:
    the head's dimensions, or with ``KV_INT4`` its bytes (two codes each)."""
    if KV_INT4:
        columns = tl.arange(0, HEAD_PAD // 2)
        real = columns < HEAD_SIZE // 2
    else:
        columns = tl.arange(0, HEAD_PAD)
        real = columns < HEAD_SIZE
    return columns, real


@triton.jit
def unpack_int4(packed):
    """[N, B] bytes -> [N, 2 * B] codes: byte ``b`` holds dimension ``2 * b``
    in its low nibble and ``2 * b + 1`` in its high one."""
    codes = tl.join(packed & 0xF, packed >> 4)  # [N, B, 2]
    return tl.reshape(codes, [packed.shape[0], 2 * packed.shape[1]])


@triton.jit
def split_zero_points(scale):
    """An int4 cache's scale words: the scales (4 low mantissa bits cleared)
    and the zero points those bits hold."""
    bits = scale.to(tl.int32, bitcast=True)
    return (bits & -16).to(tl.float32, bitcast=True), bits & 15


@triton.jit
def hadamard_rows(x, BLOCK: tl.constexpr):
    """``x`` [ROWS, PAD] with each run of ``BLOCK`` columns (a power of two)
    times the unnormalised Hadamard matrix of order ``BLOCK`` (Sylvester's:
    symmetric, ``H H = BLOCK * I``). One butterfly per bit of the column
    index: each pairs columns on the lowest bit, then rotates that bit to the
    top, so after all of them every column is back in place."""
    ROWS: tl.constexpr = x.shape[0]
    PAD: tl.constexpr = x.shape[1]
    for bit in tl.static_range(10):  # head sizes up to 1024
        if (1 << bit) < BLOCK:
            a, b = tl.split(tl.reshape(x, [ROWS, PAD // BLOCK, BLOCK // 2, 2]))
            x = tl.reshape(tl.permute(tl.join(a + b, a - b), [0, 1, 3, 2]), [ROWS, PAD])
    return x


@triton.jit
def rotate_rows(x, rht_signs_ptr, dim, dim_mask, RHT_BLOCK: tl.constexpr):
    """Rows ``x`` [ROWS, HEAD_PAD] into an int4 cache's rotated space, ``H
    (signs * x)``, rounded to their dtype as vLLM's readers and writers of
    these caches do: the cache write's keys and values, the kernels' queries
    (q.k' is then ``RHT_BLOCK`` times q.k: the launcher divides the softmax
    scale by it). ``RHT_BLOCK``: ``arch.rht_block`` of the head size."""
    signs = tl.load(rht_signs_ptr + dim, mask=dim_mask, other=0.0)
    return hadamard_rows(x.to(tl.float32) * signs[None, :], RHT_BLOCK).to(x.dtype)


@triton.jit
def unrotate_values(acc, rht_signs_ptr, dim, dim_mask, RHT_BLOCK: tl.constexpr):
    """Attention over rotated values back to the model's space: ``signs * H
    acc / RHT_BLOCK``. Columns past the head size come out zero."""
    signs = tl.load(rht_signs_ptr + dim, mask=dim_mask, other=0.0)
    return hadamard_rows(acc, RHT_BLOCK) * (signs / RHT_BLOCK)[None, :]


@triton.jit
def load_token_head_scales(
    k_scale_ptr,
    v_scale_ptr,
    block,
    key_idx,
    load_mask,
    kv_head,
    stride_scale_block,
    stride_scale_slot,
    stride_scale_head,
    BLOCK_SIZE: tl.constexpr,
    MASKED: tl.constexpr,
):
    """The K and V scales ``[TILE_N]`` of keys ``key_idx`` in a per-token-head
    cache (``[num_blocks, block_size, num_kv_heads]`` float32 each, one layout);
    with ``MASKED``, 0 outside ``load_mask`` (never read: they can hold NaN)."""
    offset = (
        block * stride_scale_block
        + (key_idx % BLOCK_SIZE) * stride_scale_slot
        + kv_head * stride_scale_head
    )
    if MASKED:
        return (
            tl.load(k_scale_ptr + offset, mask=load_mask, other=0.0),
            tl.load(v_scale_ptr + offset, mask=load_mask, other=0.0),
        )
    return tl.load(k_scale_ptr + offset), tl.load(v_scale_ptr + offset)


@triton.jit
def attention_scores(
    q,
    k,
    qk_scale,
    soft_cap,
    alibi_slope,
    query_pos,
    key_idx,
    HAS_SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,  # None, "linear" or "sqrt"
    DOT_PRECISION: tl.constexpr,
    key_scale=None,
):
    """Scores in the log2 domain: scale, then softcap, then ALiBi (the API's order).
    ``key_scale``: each key's dequantisation scale (per-token-head caches).

    Without softcap ``qk_scale`` already holds ``log2(e)``; with it, the scale
    is natural and the conversion happens after ``tanh``. ALiBi adds
    ``slope * (j - p)``, or for ``"sqrt"`` ``-slope * sqrt(p - j)`` on past
    keys and nothing on later ones.
    """
    s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
    if key_scale is not None:
        s = s * key_scale[None, :]
    if HAS_SOFTCAP:
        s = soft_cap * tanh(s / soft_cap) * LOG2E
    if ALIBI is not None:
        distance = (key_idx[None, :] - query_pos[:, None]).to(tl.float32)
        if ALIBI == "sqrt":
            distance = -tl.sqrt(tl.maximum(-distance, 0.0))
        s += (alibi_slope * LOG2E)[:, None] * distance
    return s


@triton.jit
def visible_mask(
    query_pos,
    key_idx,
    seq_len,
    sliding_window,
    IS_CAUSAL: tl.constexpr,
    HAS_SLIDING_WINDOW: tl.constexpr,
    seq_causal=None,
    mm_lo=None,
    mm_hi=None,
    CHUNK_LOOKBACK: tl.constexpr = -1,
):
    """[M, N]: may query position ``query_pos[i]`` see key ``key_idx[j]``?
    ``seq_causal``: the sequence's own flag, which then replaces ``IS_CAUSAL``.
    ``mm_lo``/``mm_hi``: each row's multimodal range keys (``mm_prefix_rows``),
    visible whatever the causal and window masks say. Layout-free."""
    offset = key_idx[None, :] - query_pos[:, None]
    visible = key_idx[None, :] < seq_len
    if seq_causal is not None:
        visible &= tl.where(seq_causal, offset <= 0, True)
    elif IS_CAUSAL:
        visible &= offset <= 0
    if CHUNK_LOOKBACK >= 0:  # sliding_window holds the chunk size
        first = window_start(query_pos, sliding_window, CHUNK_LOOKBACK)
        visible &= key_idx[None, :] >= first[:, None]
    elif HAS_SLIDING_WINDOW:
        visible &= offset > -sliding_window
        if seq_causal is not None:  # a two-sided window for a non-causal sequence
            visible &= tl.where(seq_causal, True, offset < sliding_window)
        elif not IS_CAUSAL:
            visible &= offset < sliding_window
    if mm_lo is not None:  # mm_hi <= seq_len
        visible |= (key_idx[None, :] >= mm_lo[:, None]) & (key_idx[None, :] < mm_hi[:, None])
    return visible


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr, value_scale=None):
    """Fold one tile of log2-domain scores ``s`` and values ``v`` into (m, l, acc).

    A row whose running max is still -inf (nothing visible yet) uses 0 as its
    reference so that exp2 gives 0 rather than NaN. ``value_scale``: each
    value row's dequantisation scale, applied to the probabilities (a tile of
    them is smaller than the value tile at decode).
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_ref)
    p = tl.math.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if value_scale is not None:
        p = p * value_scale[None, :]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def init_softmax_state(sinks_ptr, head, row_valid, HAS_SINKS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Running max and sum before any key; a sink logit starts them at (sink, 1)."""
    if HAS_SINKS:
        m_i = tl.load(sinks_ptr + head, mask=row_valid, other=float("-inf")).to(tl.float32)
        m_i = m_i * LOG2E
        l_i = tl.where(row_valid, 1.0, 0.0)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
    return m_i, l_i


@triton.jit
def load_qk_scale(
    scale, k_scale_ptr, KV_IS_FP8: tl.constexpr, HAS_SOFTCAP: tl.constexpr, q_scale_ptr=None
):
    """The factor on q.k: softmax scale, fp8 key scale, fp8 queries' scale
    (``q_scale_ptr``: this KV head's), and log2(e) unless softcap."""
    qk_scale = scale
    if KV_IS_FP8:
        qk_scale = qk_scale * tl.load(k_scale_ptr)
    if q_scale_ptr is not None:
        qk_scale = qk_scale * tl.load(q_scale_ptr)
    if not HAS_SOFTCAP:
        qk_scale = qk_scale * LOG2E
    return qk_scale


@triton.jit
def load_v_scale(v_scale_ptr, KV_IS_FP8: tl.constexpr):
    # Per-tensor, so it multiplies the output once instead of every V tile.
    if KV_IS_FP8:
        return tl.load(v_scale_ptr)
    return 1.0


@triton.jit
def attend_key_tiles(
    acc,
    m_i,
    l_i,
    q,
    tile_begin,
    tile_end,
    kv_lo,
    kv_hi,
    query_pos,
    seq_len,
    sliding_window,
    qk_scale,
    soft_cap,
    alibi_slope,
    k_cache_ptr,
    v_cache_ptr,
    block_table_row_ptr,
    kv_head,
    dim,
    dim_mask,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    STRIDE_K_DIM: tl.constexpr,
    STRIDE_V_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE_N: tl.constexpr,
    MASKED: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_SLIDING_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,  # None, "linear" or "sqrt"
    DOT_PRECISION: tl.constexpr,
    PREFETCH_BLOCKS: tl.constexpr,
    seq_causal=None,
    mm_lo=None,
    mm_hi=None,
    CHUNK_LOOKBACK: tl.constexpr = -1,
    CLIP_TO_RANGE: tl.constexpr = False,
    k_scale_ptr=None,
    v_scale_ptr=None,
    stride_scale_block=0,
    stride_scale_slot=0,
    stride_scale_head=0,
    TOKEN_HEAD_SCALES: tl.constexpr = False,
    KV_INT4: tl.constexpr = False,
):
    """Fold key tiles ``[tile_begin, tile_end)`` into the softmax state.

    Only keys in ``[kv_lo, kv_hi)`` are read; with ``CLIP_TO_RANGE`` (and
    ``MASKED``) only they are seen, for ranges that start or end inside a tile
    beside another range (R-SWA's prefix and window). With ``MASKED`` off the
    caller guarantees that every row sees every key of these tiles.
    ``TOKEN_HEAD_SCALES``: the cache holds int8 or fp8 values with a scale per
    token and KV head (``load_token_head_scales``); with ``KV_INT4``, 4-bit
    codes around a zero point kept in each scale (``split_zero_points``), of
    vectors the caller rotated (``rotate_rows``): ``dim`` and ``dim_mask``
    then count the cache's bytes.

    ``PREFETCH_BLOCKS`` loads the next tile's block numbers one iteration
    early. Triton 3.6's pipeliner issues tile i+1's K/V copies at the end of
    iteration i, right after that block-table load, so they still wait on it
    (TTGIR): the measured gain is not from hiding that load. Split-KV decode, whose
    programs stream few tiles each, gains 2-7% from it on an H200; the
    long-query kernel loses 8-13% (more registers). Two tiles ahead makes the
    pipeliner fall back to synchronous loads (5-37% slower).
    """
    if PREFETCH_BLOCKS:
        first_keys = tile_begin + tl.arange(0, TILE_N)
        block = tile_blocks(
            block_table_row_ptr, first_keys, first_keys < kv_hi, BLOCK_SIZE=BLOCK_SIZE
        )
    for tile_start in range(tile_begin, tile_end, TILE_N):
        key_idx = tile_start + tl.arange(0, TILE_N)
        load_mask = (key_idx >= kv_lo) & (key_idx < kv_hi)
        if PREFETCH_BLOCKS:
            next_keys = key_idx + TILE_N
            next_block = tile_blocks(
                block_table_row_ptr, next_keys, next_keys < kv_hi, BLOCK_SIZE=BLOCK_SIZE
            )
        else:
            block = tile_blocks(block_table_row_ptr, key_idx, load_mask, BLOCK_SIZE=BLOCK_SIZE)
        k, v = load_kv_tile(
            k_cache_ptr,
            v_cache_ptr,
            block,
            key_idx,
            load_mask,
            kv_head,
            dim,
            dim_mask,
            stride_k_block,
            stride_k_slot,
            stride_k_head,
            stride_v_block,
            stride_v_slot,
            stride_v_head,
            STRIDE_K_DIM=STRIDE_K_DIM,
            STRIDE_V_DIM=STRIDE_V_DIM,
            BLOCK_SIZE=BLOCK_SIZE,
            COMPUTE_DTYPE=q.dtype,
            MASKED=MASKED,
            ROW_ALIGN=TOKEN_HEAD_ROW_ALIGN if TOKEN_HEAD_SCALES else 1,
            KV_INT4=KV_INT4,
        )
        key_scale = None
        value_scale = None
        if TOKEN_HEAD_SCALES:
            key_scale, value_scale = load_token_head_scales(
                k_scale_ptr,
                v_scale_ptr,
                block,
                key_idx,
                load_mask,
                kv_head,
                stride_scale_block,
                stride_scale_slot,
                stride_scale_head,
                BLOCK_SIZE=BLOCK_SIZE,
                MASKED=MASKED,
            )
        if KV_INT4:  # codes minus each row's zero point: small integers, exact
            key_scale, key_zero = split_zero_points(key_scale)
            value_scale, value_zero = split_zero_points(value_scale)
            k -= key_zero[None, :].to(k.dtype)
            v -= value_zero[:, None].to(v.dtype)
        s = attention_scores(
            q,
            k,
            qk_scale,
            soft_cap,
            alibi_slope,
            query_pos,
            key_idx,
            HAS_SOFTCAP=HAS_SOFTCAP,
            ALIBI=ALIBI,
            DOT_PRECISION=DOT_PRECISION,
            key_scale=key_scale,
        )
        if MASKED:
            visible = visible_mask(
                query_pos,
                key_idx,
                seq_len,
                sliding_window,
                IS_CAUSAL=IS_CAUSAL,
                seq_causal=seq_causal,
                mm_lo=mm_lo,
                mm_hi=mm_hi,
                HAS_SLIDING_WINDOW=HAS_SLIDING_WINDOW,
                CHUNK_LOOKBACK=CHUNK_LOOKBACK,
            )
            if CLIP_TO_RANGE:  # keys outside [kv_lo, kv_hi) belong to another range
                visible &= load_mask[None, :]
            s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(
            s, v, m_i, l_i, acc, DOT_PRECISION=DOT_PRECISION, value_scale=value_scale
        )
        if PREFETCH_BLOCKS:
            block = next_block
    return acc, m_i, l_i


@triton.jit
def split_key_range(num_keys, first_key, split, num_splits, TILE_N: tl.constexpr):
    """Keys ``[split_lo, split_hi)`` of split ``split``: keys ``first_key`` to
    ``num_keys`` cut into ``num_splits`` ranges of whole key tiles. The length
    of a range follows the sequence, so the grid does not."""
    keys_per_split = tl.cdiv(tl.cdiv(num_keys - first_key, num_splits), TILE_N) * TILE_N
    split_lo = first_key + split * keys_per_split
    return split_lo, tl.minimum(split_lo + keys_per_split, num_keys)


@triton.jit
def split_count(num_keys, MIN_SPLIT_KEYS: tl.constexpr, MAX_SPLITS: tl.constexpr):
    """Splits of a sequence in batch-invariant mode: enough for ranges of at
    least ``MIN_SPLIT_KEYS`` keys, at most ``MAX_SPLITS``; a function of the
    sequence's own key count only, so its reduction order is too."""
    return tl.minimum(tl.maximum(tl.cdiv(num_keys, MIN_SPLIT_KEYS), 1), MAX_SPLITS)


@triton.jit
def mark_empty_splits(
    partial_lse_ptr,
    q_start,
    token,
    head,
    row_valid,
    num_splits,
    stride_partial_token,
    BLOCK_M: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    NUM_KV_SPLITS: tl.constexpr,
):
    """A log2-sum-exp of -inf for the rows' splits ``num_splits`` and above,
    which no program computes: the merge gives them no weight (and reads
    none of their partials)."""
    splits = tl.arange(0, NUM_KV_SPLITS)
    lse_offset = (q_start + token).to(tl.int64) * (stride_partial_token // HEAD_PAD)
    lse_offset += head * NUM_KV_SPLITS
    tl.store(
        partial_lse_ptr + lse_offset[:, None] + splits[None, :],
        tl.full([BLOCK_M, NUM_KV_SPLITS], float("-inf"), tl.float32),
        mask=row_valid[:, None] & (splits >= num_splits)[None, :],
    )


@triton.jit
def store_split_result(
    out_ptr,
    partial_out_ptr,
    partial_lse_ptr,
    acc,
    m_i,
    l_i,
    q_start,
    token,
    head,
    split,
    row_valid,
    dim,
    dim_mask,
    v_scale,
    stride_out_token,
    stride_out_head,
    stride_partial_token,
    stride_partial_head,
    STRIDE_OUT_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    NUM_KV_SPLITS: tl.constexpr,
    out_scale_ptr=None,
    lse_ptr=None,
    stride_lse_token=0,
    stride_lse_head=0,
):
    """One split's softmax state for its rows: the output itself (and with
    ``lse_ptr`` its log-sum-exp) when there is one split (``output_values``),
    else the normalised partial and its log2-sum-exp for the merge.
    Layout-free: both split-KV kernels store through it."""
    # "!= 0" rather than "> 0": a NaN from real data must reach the output.
    has_keys = l_i != 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    store_mask = row_valid[:, None] & dim_mask[None, :]
    if NUM_KV_SPLITS == 1:
        result = normalised_output(acc, l_i, v_scale)
        out_offset = (q_start + token).to(tl.int64) * stride_out_token + head * stride_out_head
        tl.store(
            out_ptr + out_offset[:, None] + dim[None, :] * STRIDE_OUT_DIM,
            output_values(result, out_ptr, out_scale_ptr),
            mask=store_mask,
        )
        if lse_ptr is not None:
            lse_offset = (q_start + token).to(tl.int64) * stride_lse_token + head * stride_lse_head
            store_lse(lse_ptr + lse_offset, split_lse(m_i, l_i), row_valid)
    else:
        row_offset = (q_start + token).to(tl.int64) * stride_partial_token
        row_offset += head * stride_partial_head + split * HEAD_PAD
        tl.store(
            partial_out_ptr + row_offset[:, None] + dim[None, :],
            acc / l_safe[:, None],
            mask=store_mask,
        )
        lse = tl.where(has_keys, m_i + tl.math.log2(l_safe), float("-inf"))
        lse_offset = (q_start + token).to(tl.int64) * (stride_partial_token // HEAD_PAD)
        lse_offset += head * NUM_KV_SPLITS + split
        tl.store(partial_lse_ptr + lse_offset, lse, mask=row_valid)


# A split's result as a folding program folds it: the operations by which
# store_split_result stores it for the merge, so both fold the same bits.
# (store_split_result keeps them inline: through these helpers ptxas spilled
# in two of its sm_90 head-512 variants.)
@triton.jit
def split_partial(acc, l_i):
    """The split's normalised partial output (zero for rows without keys)."""
    return acc / tl.where(l_i != 0.0, l_i, 1.0)[:, None]


@triton.jit
def split_lse(m_i, l_i):
    """The split's log2-sum-exp, -inf for rows without keys."""
    return tl.where(l_i != 0.0, m_i + tl.math.log2(tl.where(l_i != 0.0, l_i, 1.0)), float("-inf"))


@triton.jit
def store_lse(lse_ptrs, lse2, row_valid):
    """The rows' log-sum-exp of their scores in natural log (vLLM's and
    FlashAttention's convention; -inf for a row without keys), from the
    kernels' log2-domain ``lse2``."""
    tl.store(lse_ptrs, lse2 * (1.0 / LOG2E), mask=row_valid)


@triton.jit
def output_values(result, out_ptr, out_scale_ptr):
    """``result`` in the output's dtype. With ``out_scale_ptr`` (fused static
    fp8 quantisation, an e4m3 output) it is ``result / scale`` saturated to the
    format's range, as vLLM's static per-tensor fp8 quantisation computes it:
    times the reciprocal of the scale."""
    if out_scale_ptr is not None:
        fp8_max: tl.constexpr = 240.0 if out_ptr.dtype.element_ty == tl.float8e4b8 else 448.0
        result = tl.clamp(result * (1.0 / tl.load(out_scale_ptr)), -fp8_max, fp8_max)
    return result.to(out_ptr.dtype.element_ty)


@triton.jit
def normalised_output(acc, l_i, v_scale):
    """``acc / l`` times the V scale (1 unless the cache is fp8); rows without
    keys stay zero."""
    l_safe = tl.where(l_i != 0.0, l_i, 1.0)
    return acc * (v_scale / l_safe)[:, None]


@triton.jit
def fold_split(lse_ref, total, acc, partial, lse):
    """Adds one split's partial (weight ``2**lse``) to a running sum kept
    against ``lse_ref``: ``acc / total`` is the softmax-weighted mean so far.

    Batch-invariant mode merges a sequence's splits by folding them one at a
    time in split order, and a program that holds all of them and the merge
    kernel reading them back do exactly these operations in that order, so
    their outputs are bitwise equal. A split without keys (``lse`` -inf)
    leaves every bit of the sum as it was."""
    new_ref = tl.maximum(lse_ref, lse)
    ref = tl.where(new_ref == float("-inf"), 0.0, new_ref)
    old_weight = tl.math.exp2(lse_ref - ref)
    weight = tl.math.exp2(lse - ref)
    empty = lse == float("-inf")
    new_total = total * old_weight + weight
    new_acc = acc * old_weight[:, None] + partial * weight[:, None]
    return (
        tl.where(empty, lse_ref, new_ref),
        tl.where(empty, total, new_total),
        tl.where(empty[:, None], acc, new_acc),
    )
