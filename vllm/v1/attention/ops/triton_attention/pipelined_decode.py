# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Split-KV decode with an explicit copy pipeline, for NVIDIA GPUs (sm_80+).

The same work as ``split_kv_decode_kernel`` (same partials and merge), written
in Gluon (``triton.experimental.gluon``) so that the copies of the next
``KV_BUFFERS - 1`` key tiles are in flight while the loop computes on one.
Triton's pipeliner cannot do that for a paged cache: each tile's addresses
come from a block-table load, and it waits for every outstanding copy
(``async_wait {num = 0}``) at the top of each iteration, so within a program
no copy overlaps compute (see ``jit_helpers.attend_key_tiles``).

Each program issues ``cp.async`` copies of K^T and V tiles into a ring of
shared-memory buffers, waits only for the oldest (``wait_group``), and loads
the block numbers of the next tile to issue one iteration early. It covers
2-byte queries and cache with a power-of-two head size and none of sliding
window, softcap, ALiBi or sinks; the plan picks it (``AttentionPlan.
pipelined_decode``) only where it measured faster than the portable kernel
(``plan.PIPELINED_DECODE_TILES``) and where it covers the call
(``plan.pipelined_kernel_covers``).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .gluon_helpers import async_load, cta_barrier
from .jit_helpers import LOG2E, split_key_range, store_split_result


@gluon.constexpr_function
def decode_layout(name: str, head_pad: int, num_warps: int):
    """Layout ``name`` of ``split_kv_decode_pipelined_kernel``, which builds its
    layouts while it compiles: the ones Triton itself picks for the portable
    kernel on sm_90 (16-byte copies along the head dimension, mma.sync with
    warps side by side along N). Passed in as arguments instead, they cost
    Triton's launcher ~4 us of host time per launch (measured up to the
    driver call), most of it hashing them into its kernel-cache key."""
    threads_d = min(32, head_pad // 8)
    return {
        "MMA": gl.NVMMADistributedLayout(
            version=[2, 0], warps_per_cta=[1, num_warps], instr_shape=[16, 8]
        ),
        # K^T [head, keys], head dimension contiguous
        "KT": gl.BlockedLayout([8, 1], [threads_d, 32 // threads_d], [1, num_warps], [0, 1]),
        # V [keys, head] and Q [rows, head]
        "V": gl.BlockedLayout([1, 8], [32 // threads_d, threads_d], [num_warps, 1], [1, 0]),
        "KT_SHARED": gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[0, 1]),
        "V_SHARED": gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0]),
    }[name]


@gluon.jit
def _tile_blocks(
    block_table_row_ptr,
    tile_start,
    split_hi,
    BLOCK_SIZE: gl.constexpr,
    TILE_N: gl.constexpr,
    KT_LAYOUT: gl.constexpr,
    V_LAYOUT: gl.constexpr,
):
    """Cache blocks of the keys ``[tile_start, tile_start + TILE_N)``, in the
    key layouts of K^T and of V (0 for keys past ``split_hi``)."""
    keys_kt = tile_start + gl.arange(0, TILE_N, layout=gl.SliceLayout(0, KT_LAYOUT))
    keys_v = tile_start + gl.arange(0, TILE_N, layout=gl.SliceLayout(1, V_LAYOUT))
    block_kt = gl.load(
        block_table_row_ptr + keys_kt // BLOCK_SIZE, mask=keys_kt < split_hi, other=0
    )
    block_v = gl.load(block_table_row_ptr + keys_v // BLOCK_SIZE, mask=keys_v < split_hi, other=0)
    return block_kt, block_v


@gluon.jit
def _issue_tile_copies(
    k_buffer,
    v_buffer,
    k_cache_ptr,
    v_cache_ptr,
    block_kt,
    block_v,
    tile_start,
    split_hi,
    kv_head,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    BLOCK_SIZE: gl.constexpr,
    TILE_N: gl.constexpr,
    HEAD_PAD: gl.constexpr,
    KT_LAYOUT: gl.constexpr,
    V_LAYOUT: gl.constexpr,
):
    """Start copying keys ``[tile_start, tile_start + TILE_N)`` (those below
    ``split_hi``, in cache blocks ``block_kt``/``block_v``) into the given
    buffers, as one commit group. Keys past ``split_hi`` are not read; their
    rows of the buffer become zeros."""
    keys_kt = tile_start + gl.arange(0, TILE_N, layout=gl.SliceLayout(0, KT_LAYOUT))
    keys_v = tile_start + gl.arange(0, TILE_N, layout=gl.SliceLayout(1, V_LAYOUT))
    dim_kt = gl.arange(0, HEAD_PAD, layout=gl.SliceLayout(1, KT_LAYOUT))
    dim_v = gl.arange(0, HEAD_PAD, layout=gl.SliceLayout(0, V_LAYOUT))
    k_offset = (
        block_kt.to(gl.int64) * stride_k_block
        + (keys_kt % BLOCK_SIZE) * stride_k_slot
        + kv_head * stride_k_head
    )
    v_offset = (
        block_v.to(gl.int64) * stride_v_block
        + (keys_v % BLOCK_SIZE) * stride_v_slot
        + kv_head * stride_v_head
    )
    async_load(
        k_buffer,
        k_cache_ptr + k_offset[None, :] + dim_kt[:, None],
        mask=(keys_kt < split_hi)[None, :],
    )
    async_load(
        v_buffer,
        v_cache_ptr + v_offset[:, None] + dim_v[None, :],
        mask=(keys_v < split_hi)[:, None],
    )
    async_copy.commit_group()


@gluon.jit
def split_kv_decode_pipelined_kernel(
    # pointers
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    partial_out_ptr,  # [num_tokens, num_q_heads, NUM_KV_SPLITS, HEAD_PAD] float32
    partial_lse_ptr,  # [num_tokens, num_q_heads, NUM_KV_SPLITS] float32, log2 domain
    query_start_loc_ptr,
    seq_lens_ptr,
    block_table_ptr,
    out_scale_ptr,  # fused fp8 output's float32 scale (jit_helpers.output_values), or None
    # strides (head dimensions contiguous: the plan checked)
    stride_q_token,
    stride_q_head,
    stride_out_token,
    stride_out_head,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    stride_block_table_seq,
    stride_partial_token,
    stride_partial_head,
    # scalars
    scale,
    # shapes and switches
    HEAD_PAD: gl.constexpr,
    QUERIES_PER_KV: gl.constexpr,
    BLOCK_SIZE: gl.constexpr,
    BLOCK_M: gl.constexpr,
    TILE_N: gl.constexpr,
    NUM_KV_SPLITS: gl.constexpr,
    IS_CAUSAL: gl.constexpr,
    KV_BUFFERS: gl.constexpr,
    EARLY_DEPENDENTS: gl.constexpr,
    PDL: gl.constexpr,
):
    NUM_WARPS: gl.constexpr = gl.num_warps()
    MMA_LAYOUT: gl.constexpr = decode_layout("MMA", HEAD_PAD, NUM_WARPS)
    KT_LAYOUT: gl.constexpr = decode_layout("KT", HEAD_PAD, NUM_WARPS)
    V_LAYOUT: gl.constexpr = decode_layout("V", HEAD_PAD, NUM_WARPS)
    KT_SHARED: gl.constexpr = decode_layout("KT_SHARED", HEAD_PAD, NUM_WARPS)
    V_SHARED: gl.constexpr = decode_layout("V_SHARED", HEAD_PAD, NUM_WARPS)
    if PDL:  # see split_kv_decode_kernel: waits before its dependents may start
        gdc_wait()
    if EARLY_DEPENDENTS:
        gdc_launch_dependents()
    seq = gl.program_id(0)
    kv_head = gl.program_id(1)
    split = gl.program_id(2)
    q_start = gl.load(query_start_loc_ptr + seq)
    q_len = gl.load(query_start_loc_ptr + seq + 1) - q_start
    if q_len == 0:  # a padding row of the batch
        return
    seq_len = gl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    split_lo, split_hi = split_key_range(seq_len, 0, split, NUM_KV_SPLITS, TILE_N)
    num_tiles = gl.cdiv(gl.maximum(split_hi - split_lo, 0), TILE_N)

    k_buffers = gl.allocate_shared_memory(
        k_cache_ptr.dtype.element_ty, [KV_BUFFERS, HEAD_PAD, TILE_N], KT_SHARED
    )
    v_buffers = gl.allocate_shared_memory(
        v_cache_ptr.dtype.element_ty, [KV_BUFFERS, TILE_N, HEAD_PAD], V_SHARED
    )
    block_table_row_ptr = block_table_ptr + seq.to(gl.int64) * stride_block_table_seq
    # Start the first KV_BUFFERS - 1 tiles before touching the queries. Tiles
    # past the split copy nothing, but still commit a group, so that the
    # count of outstanding groups below is the same for every program.
    for i in gl.static_range(KV_BUFFERS - 1):
        block_kt, block_v = _tile_blocks(
            block_table_row_ptr,
            split_lo + i * TILE_N,
            split_hi,
            BLOCK_SIZE,
            TILE_N,
            KT_LAYOUT,
            V_LAYOUT,
        )
        _issue_tile_copies(
            k_buffers.index(i),
            v_buffers.index(i),
            k_cache_ptr,
            v_cache_ptr,
            block_kt,
            block_v,
            split_lo + i * TILE_N,
            split_hi,
            kv_head,
            stride_k_block,
            stride_k_slot,
            stride_k_head,
            stride_v_block,
            stride_v_slot,
            stride_v_head,
            BLOCK_SIZE,
            TILE_N,
            HEAD_PAD,
            KT_LAYOUT,
            V_LAYOUT,
        )
    # The blocks of the next tile to issue are loaded one iteration early:
    # their latency then hides behind that iteration's compute.
    block_kt, block_v = _tile_blocks(
        block_table_row_ptr,
        split_lo + (KV_BUFFERS - 1) * TILE_N,
        split_hi,
        BLOCK_SIZE,
        TILE_N,
        KT_LAYOUT,
        V_LAYOUT,
    )

    # Rows: every query token of the sequence times every query head of this KV head.
    row_layout: gl.constexpr = gl.SliceLayout(1, MMA_LAYOUT)
    rows = gl.arange(0, BLOCK_M, layout=row_layout)
    token = rows // QUERIES_PER_KV
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    row_valid = (token < q_len) & (rows < (BLOCK_M // QUERIES_PER_KV) * QUERIES_PER_KV)
    query_pos = context_len + token

    q_rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, V_LAYOUT))
    q_token = q_rows // QUERIES_PER_KV
    q_head = kv_head * QUERIES_PER_KV + q_rows % QUERIES_PER_KV
    q_valid = (q_token < q_len) & (q_rows < (BLOCK_M // QUERIES_PER_KV) * QUERIES_PER_KV)
    q_dim = gl.arange(0, HEAD_PAD, layout=gl.SliceLayout(0, V_LAYOUT))
    q_offset = (q_start + q_token).to(gl.int64) * stride_q_token + q_head * stride_q_head
    q = gl.load(q_ptr + q_offset[:, None] + q_dim[None, :], mask=q_valid[:, None], other=0.0)
    q = gl.convert_layout(q, gl.DotOperandLayout(operand_index=0, parent=MMA_LAYOUT, k_width=2))
    qk_scale = scale * LOG2E  # scores in the log2 domain

    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_layout)
    l_i = gl.full([BLOCK_M], 0.0, gl.float32, layout=row_layout)
    acc = gl.zeros([BLOCK_M, HEAD_PAD], gl.float32, layout=MMA_LAYOUT)
    b_operand: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA_LAYOUT, k_width=2)
    p_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA_LAYOUT, k_width=2)
    key_offsets = gl.arange(0, TILE_N, layout=gl.SliceLayout(0, MMA_LAYOUT))
    for tile in range(num_tiles):
        # Tile `tile` has landed once at most KV_BUFFERS - 2 younger groups are
        # outstanding; the barrier makes every thread's copies visible and
        # ensures no warp still reads the buffer refilled next.
        async_copy.wait_group(KV_BUFFERS - 2)
        cta_barrier()
        ahead = tile + KV_BUFFERS - 1
        _issue_tile_copies(
            k_buffers.index(ahead % KV_BUFFERS),
            v_buffers.index(ahead % KV_BUFFERS),
            k_cache_ptr,
            v_cache_ptr,
            block_kt,
            block_v,
            split_lo + ahead * TILE_N,
            split_hi,
            kv_head,
            stride_k_block,
            stride_k_slot,
            stride_k_head,
            stride_v_block,
            stride_v_slot,
            stride_v_head,
            BLOCK_SIZE,
            TILE_N,
            HEAD_PAD,
            KT_LAYOUT,
            V_LAYOUT,
        )
        block_kt, block_v = _tile_blocks(
            block_table_row_ptr,
            split_lo + (ahead + 1) * TILE_N,
            split_hi,
            BLOCK_SIZE,
            TILE_N,
            KT_LAYOUT,
            V_LAYOUT,
        )

        slot = tile % KV_BUFFERS
        k = k_buffers.index(slot).load(b_operand)
        s = mma_v2(q, k, gl.zeros([BLOCK_M, TILE_N], gl.float32, layout=MMA_LAYOUT))
        key_idx = split_lo + tile * TILE_N + key_offsets
        # Not jit_helpers.visible_mask: its offset form takes 12 more registers
        # here under Triton 3.8 (96 -> 108), a program fewer per SM.
        visible = key_idx[None, :] < split_hi
        if IS_CAUSAL:
            visible &= key_idx[None, :] <= query_pos[:, None]
        s = gl.where(visible, s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        m_ref = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(m_i - m_ref)
        p = gl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + gl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = v_buffers.index(slot).load(b_operand)
        p = gl.convert_layout(p.to(v.dtype), p_operand)
        acc = mma_v2(p, v, acc)
        m_i = m_new
    async_copy.wait_group(0)  # the copies issued past the last tile

    dim = gl.arange(0, HEAD_PAD, layout=gl.SliceLayout(0, MMA_LAYOUT))
    store_split_result(
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
        dim_mask=dim < HEAD_PAD,
        v_scale=1.0,  # 2-byte caches only
        stride_out_token=stride_out_token,
        stride_out_head=stride_out_head,
        stride_partial_token=stride_partial_token,
        stride_partial_head=stride_partial_head,
        STRIDE_OUT_DIM=1,
        HEAD_PAD=HEAD_PAD,
        NUM_KV_SPLITS=NUM_KV_SPLITS,
        out_scale_ptr=out_scale_ptr,
    )
