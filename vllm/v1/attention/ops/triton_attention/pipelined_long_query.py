# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Long-query attention for Hopper whose tensor cores run during the softmax.

The same work as ``long_query_attention_kernel`` (one program per Q tile of
one KV head, online softmax over key tiles), written in Gluon for what Triton
does not do there: it waits for each ``tl.dot`` right after issuing it, so
the tensor cores idle while the softmax runs. Here ``wgmma`` runs
asynchronously, in one of two key loops (``_key_loop``):

- With four or more K/V buffers it takes two key tiles per iteration: the
  second tile's Q K^T runs during the first tile's softmax, the first tile's
  P V during the second tile's softmax, and the second P V with the next
  iteration's Q K^T during the copy work for later tiles.
- With two buffers it keeps one score tile in registers: tile t's Q K^T and
  tile t - 1's P V are issued together, and tile t's softmax runs during
  that P V.

Up to head 128 Q is the register operand of Q K^T: with Q in shared memory,
64-key tiles would read it and K at the SM's whole shared-memory bandwidth.
At head 256 the output alone takes 128 registers per thread, and Q stays in
shared memory. There two score tiles in registers leave room for 32-key tiles
only, whose Q K^T reads Q and K at 1.5x that bandwidth; one score tile leaves
room for 64-key tiles. Row maxima and sums are reduced within each thread
first (``_per_thread``); part of the exponentials may run on the FMA units
(``_exp2``).

Key and value tiles arrive through a ring of ``KV_BUFFERS`` shared-memory
buffers filled by ``cp.async`` (a paged cache is a gather; Hopper's TMA has
no row gather), ``KV_BUFFERS - 2`` tiles ahead of the one in the softmax
(with two buffers, one tile ahead), one block-table load per group of rows in
one cache block. It covers 2-byte queries and cache, power-of-two head and
block sizes, K and V caches of the same strides, causal or not (per call or
per sequence), sliding window, softcap and multimodal prefix ranges, and
neither ALiBi, sinks nor chunked windows; the plan picks it
(``AttentionPlan.pipelined_long_query``) where it was measured faster.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.language.extra.cuda import gdc_wait

from .gluon_helpers import async_load, cta_barrier
from .jit_helpers import (
    LOG2E,
    find_q_tile,
    key_range,
    mm_prefix_rows,
    output_values,
    tanh,
    visible_mask,
    widen_key_range,
)


@gluon.constexpr_function
def long_query_layout(name: str, head_pad: int, tile_n: int, num_warps: int, block_size: int):
    """Layout ``name`` of ``long_query_pipelined_kernel``, which builds its layouts
    while it compiles (as ``pipelined_decode.decode_layout``, for the same reason): wgmma
    accumulators with warps stacked along the rows (16 each); 16-byte loads
    along the head dimension (Q, and K/V copies into the swizzled layout wgmma
    reads: for 2-byte elements, fp16 and bf16 share it). The copies see a key
    tile as groups of consecutive rows in one cache block, each group in one
    thread: one block number and one block address per group ("COPY_GROUP":
    the rows of a group)."""
    threads_d = min(32, head_pad // 8)
    rows_per_pass = 32 // threads_d * num_warps
    group = max(1, min(tile_n // rows_per_pass, block_size))

    def wgmma(n):
        return gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, 16]
        )

    return {
        "SCORE": wgmma(tile_n),
        "OUT": wgmma(head_pad),
        "ROW": gl.BlockedLayout([1, 8], [32 // threads_d, threads_d], [num_warps, 1], [1, 0]),
        "COPY_GROUP": group,
        "COPY": gl.BlockedLayout([group, 8], [32 // threads_d, threads_d], [num_warps, 1], [1, 0]),
        # The same threads and rows as [groups, rows per group, dims].
        "GROUP": gl.BlockedLayout(
            [1, group, 8], [32 // threads_d, 1, threads_d], [num_warps, 1, 1], [2, 1, 0]
        ),
        "KV_SHARED": gl.NVMMASharedLayout.get_default_for([tile_n, head_pad], gl.bfloat16),
    }[name]


@gluon.jit
def _tile_rows(
    first_token,
    q_len,
    kv_head,
    BLOCK_M: gl.constexpr,
    QUERIES_PER_KV: gl.constexpr,
    layout: gl.constexpr,
):
    """(token, query head, valid) of each row of a Q tile, in ``layout``: rows
    pack every query head of this KV head for consecutive tokens (as
    ``jit_helpers.query_rows``, whose ``tl.arange`` has no layout for Gluon)."""
    rows = gl.arange(0, BLOCK_M, layout=layout)
    token = first_token + rows // QUERIES_PER_KV
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    valid = (token < q_len) & (rows < (BLOCK_M // QUERIES_PER_KV) * QUERIES_PER_KV)
    return token, head, valid


@gluon.jit
def _per_thread(x):
    """[M, N] wgmma scores as [M, N // 8, 8]: the middle axis (the 8-column
    groups) lies within each thread, so reducing it needs no shuffles."""
    return gl.reshape(x, [x.shape[0], x.shape[1] // 8, 8])


@gluon.jit
def _row_max(s):
    """Row maxima of ``s`` as a tree: within each thread first (a per-row
    chain of max instructions is latency ``gl.max`` would pay), then across
    the row's four lanes."""
    m = gl.max(gl.max(_per_thread(s), 1), 1)
    return gl.convert_layout(m, gl.SliceLayout(1, s.type.layout))


@gluon.jit
def _exp2_on_fma(x):
    """2^x for x <= 0 without the MUFU unit: x = j + f with integer j and f in
    [-0.5, 0.5]; 2^f by a degree-3 polynomial (relative error 7.5e-5, far
    below bf16's 3.9e-3), 2^j added to its exponent bits. Below -126 (a
    masked score is -inf) it returns at most 2^-126, about 1e-38, not 0."""
    x = gl.maximum(x, -126.0)  # so that 2^j stays a valid exponent
    rounded = x + 12582912.0  # 1.5 * 2^23: x rounded to an integer, in the low bits
    f = x - (rounded - 12582912.0)
    p = gl.fma(gl.fma(gl.fma(f, 0.05517167, 0.24261114), f, 0.69326099), f, 0.99992807)
    bits = p.to(gl.int32, bitcast=True) + (rounded.to(gl.int32, bitcast=True) << 23)
    return bits.to(gl.float32, bitcast=True)


@gluon.jit
def _exp2(x, FMA_EXP2_EVERY: gl.constexpr):
    """2^x, with every ``FMA_EXP2_EVERY``-th 8-column group (0: none, else 4) on
    the FMA units (``_exp2_on_fma``): at head 64 a tile's exponentials need the
    MUFU unit (16 per SM and cycle) as long as its two wgmmas the tensor
    cores. Every 2nd group measured slower (DECISIONS.md: "Pipelined long
    query")."""
    gl.static_assert(FMA_EXP2_EVERY == 0 or FMA_EXP2_EVERY == 4)
    if FMA_EXP2_EVERY == 0:
        p = gl.exp2(x)
    else:
        M: gl.constexpr = x.shape[0]
        N: gl.constexpr = x.shape[1]
        # [M, 8, N // 32, 2, 2]: the column groups on the last three axes, within
        # each thread; groups 4k + 3 go to the FMA units.
        g = gl.permute(_per_thread(x), (0, 2, 1))
        a, b = gl.split(gl.reshape(g, [M, 8, N // 32, 2, 2]))
        b0, b1 = gl.split(b)
        g = gl.join(gl.exp2(a), gl.join(gl.exp2(b0), _exp2_on_fma(b1)))
        g = gl.permute(gl.reshape(g, [M, 8, N // 8]), (0, 2, 1))
        layout: gl.constexpr = x.type.layout
        p = gl.convert_layout(gl.reshape(g, [M, N]), layout)
    return p


@gluon.jit
def _softmax_tile(s, m_i, row_sums, qk_scale, FMA_EXP2_EVERY: gl.constexpr):
    """This tile's probabilities (in the log2 domain), the rescale factor of
    the running output and the new running max, folded into ``row_sums``.

    ``qk_scale`` > 0, so the max of raw scores is taken before scaling: one
    multiply-add per score instead of a multiply and a subtract. ``row_sums``
    holds each thread's partial sums (``_per_thread``): the four lanes of a
    row share its rescale factor, so their sums are combined once, after the
    loop."""
    m_new = gl.maximum(m_i, _row_max(s) * qk_scale)
    m_ref = gl.where(m_new == float("-inf"), 0.0, m_new)  # a row that sees nothing yet
    alpha = gl.exp2(m_i - m_ref)
    p = _exp2(s * qk_scale - m_ref[:, None], FMA_EXP2_EVERY)
    alpha_sums = gl.convert_layout(alpha, gl.SliceLayout(1, row_sums.type.layout))
    row_sums = row_sums * alpha_sums[:, None] + gl.sum(_per_thread(p), 1)
    return p, alpha, m_new, row_sums


@gluon.jit
def _mask_tile(
    s,
    tile_start,
    full_lo,
    full_hi,
    kv_hi,
    query_pos,
    key_offsets,
    sliding_window,
    seq_causal,
    mm_lo,
    mm_hi,
    IS_CAUSAL: gl.constexpr,
    HAS_SLIDING_WINDOW: gl.constexpr,
):
    """-inf where a row may not see a key (``visible_mask``), on the tiles that
    need it (the causal diagonal, the ragged end, the sliding window's edges,
    multimodal range keys outside them): keys before ``full_lo`` or at or past
    ``full_hi`` may be hidden. Positions may be relative to any key (masks
    depend on differences); ``kv_hi`` bounds the keys any row sees."""
    TILE_N: gl.constexpr = key_offsets.shape[0]
    needs_mask = tile_start + TILE_N > full_hi
    if HAS_SLIDING_WINDOW:
        needs_mask |= tile_start < full_lo
    if needs_mask:
        visible = visible_mask(
            query_pos,
            tile_start + key_offsets,
            kv_hi,
            sliding_window,
            IS_CAUSAL=IS_CAUSAL,
            HAS_SLIDING_WINDOW=HAS_SLIDING_WINDOW,
            seq_causal=seq_causal,
            mm_lo=mm_lo,
            mm_hi=mm_hi,
        )
        s = gl.where(visible, s, float("-inf"))
    return s


@gluon.jit
def _probabilities(
    s,
    tile_start,
    m_i,
    row_sums,
    qk_scale,
    full_lo,
    full_hi,
    kv_hi,
    query_pos,
    key_offsets,
    sliding_window,
    seq_causal,
    mm_lo,
    mm_hi,
    soft_cap_log2,
    IS_CAUSAL: gl.constexpr,
    HAS_SLIDING_WINDOW: gl.constexpr,
    HAS_SOFTCAP: gl.constexpr,
    dtype: gl.constexpr,
    p_operand: gl.constexpr,
    out_rows: gl.constexpr,
    FMA_EXP2_EVERY: gl.constexpr,
):
    """One key tile's softmax step (softcap, ``_mask_tile``, ``_softmax_tile``):
    P as the register operand of P V, the output's rescale factor in the
    output's rows. With softcap, ``qk_scale`` is scale / softcap and the
    scores become softcap * tanh(scale * q.k / softcap) in the log2 domain."""
    if HAS_SOFTCAP:
        s = tanh(s * qk_scale) * soft_cap_log2
        qk_scale = 1.0
    s = _mask_tile(
        s,
        tile_start,
        full_lo,
        full_hi,
        kv_hi,
        query_pos,
        key_offsets,
        sliding_window,
        seq_causal,
        mm_lo,
        mm_hi,
        IS_CAUSAL,
        HAS_SLIDING_WINDOW,
    )
    p, alpha, m_i, row_sums = _softmax_tile(s, m_i, row_sums, qk_scale, FMA_EXP2_EVERY)
    return (
        gl.convert_layout(p.to(dtype), p_operand),
        gl.convert_layout(alpha, out_rows),
        m_i,
        row_sums,
    )


@gluon.jit
def _tile_cache_blocks(
    block_table_row_ptr, tile_start, kv_hi, group_rows, BLOCK_SIZE: gl.constexpr
):
    """Cache block of each row group of the tile at ``tile_start`` (0 past
    ``kv_hi``); ``group_rows``: each group's first row within the tile.

    Block size and tile are powers of two and tiles start at multiples of
    the tile, so the group at row ``r`` is in block ``tile_start // BLOCK_SIZE
    + r // BLOCK_SIZE``, at slot ``tile_start % BLOCK_SIZE + r % BLOCK_SIZE``:
    per tile, one scalar changes."""
    return gl.load(
        block_table_row_ptr + tile_start // BLOCK_SIZE + group_rows // BLOCK_SIZE,
        mask=tile_start + group_rows < kv_hi,
        other=0,
    )


@gluon.jit
def _group_to_rows(values, rows_layout: gl.constexpr, GROUP: gl.constexpr):
    """Per-group ``values`` [groups] repeated for each row of the group, as
    [rows] in ``rows_layout`` (the same registers: no data moves)."""
    group_layout: gl.constexpr = values.type.layout.parent
    repeat = gl.zeros([1, GROUP], values.dtype, layout=group_layout)
    rows, _ = gl.broadcast(values[:, None], repeat)
    return gl.convert_layout(gl.reshape(rows, [values.shape[0] * GROUP]), rows_layout)


@gluon.jit
def _issue_kv_copies(
    k_buffer,
    v_buffer,
    k_cache_ptr,
    v_cache_ptr,
    block,
    tile_start,
    kv_lo,
    kv_hi,
    key_rows,
    row_offset,
    dims,
    stride_block,
    stride_slot,
    BLOCK_SIZE: gl.constexpr,
):
    """Start copying the K and V rows of the tile at ``tile_start`` (cache blocks
    ``block``, one per row group) into the given buffers, as one commit group. Keys
    past ``kv_hi`` are not read; their rows become zeros. ``row_offset``:
    each row's slot and head offset within its block, for a tile starting at
    a block's start (the K and V caches share strides)."""
    _issue_copy(
        k_buffer,
        k_cache_ptr,
        block,
        tile_start,
        kv_lo,
        kv_hi,
        key_rows,
        row_offset,
        dims,
        stride_block,
        stride_slot,
        BLOCK_SIZE,
    )
    _issue_copy(
        v_buffer,
        v_cache_ptr,
        block,
        tile_start,
        kv_lo,
        kv_hi,
        key_rows,
        row_offset,
        dims,
        stride_block,
        stride_slot,
        BLOCK_SIZE,
    )
    async_copy.commit_group()


@gluon.jit
def _issue_copy(
    buffer,
    cache_ptr,
    block,
    tile_start,
    kv_lo,
    kv_hi,
    key_rows,
    row_offset,
    dims,
    stride_block,
    stride_slot,
    BLOCK_SIZE: gl.constexpr,
):
    """Start copying the rows of one cache (K or V) of the tile at
    ``tile_start`` into ``buffer``, in the open commit group: keys in [kv_lo,
    kv_hi) (``kv_lo`` None: from 0), zeros elsewhere. Blocks before a sliding
    window may have been freed and reused: their keys are not read."""
    slot = tile_start % BLOCK_SIZE
    GROUP: gl.constexpr = key_rows.shape[0] // block.shape[0]
    rows_layout: gl.constexpr = key_rows.type.layout
    block = _group_to_rows(block, rows_layout, GROUP).to(gl.int64)
    key = tile_start + key_rows
    valid = key < kv_hi
    if kv_lo is not None:
        valid &= key >= kv_lo
    valid = valid[:, None]
    rows = (block * stride_block + (row_offset + slot * stride_slot))[:, None] + dims[None, :]
    async_load(buffer, cache_ptr + rows, mask=valid)


@gluon.jit
def _refill(
    tile,
    k_buffers,
    v_buffers,
    k_cache_ptr,
    v_cache_ptr,
    block,
    block_table_row_ptr,
    kv_lo,
    kv_hi,
    group_rows,
    key_rows,
    row_offset,
    dims,
    stride_block,
    stride_slot,
    BLOCK_SIZE: gl.constexpr,
    TILE_N: gl.constexpr,
    KV_BUFFERS: gl.constexpr,
):
    """After tile ``tile``'s P V is issued: start copying tile ``tile +
    KV_BUFFERS - 1`` (cache blocks ``block``) into the buffer of tile ``tile -
    1``; return the blocks of the tile after it.

    First, tile + 2 (which the next Q K^T reads) has landed in every thread,
    and every warpgroup is done with tile - 1 (it waited for that P V before
    this one was issued). Copies issued right after the barrier need no other
    one before them."""
    async_copy.wait_group(KV_BUFFERS - 4)
    cta_barrier()
    ahead = tile + KV_BUFFERS - 1
    _issue_kv_copies(
        k_buffers.index(ahead % KV_BUFFERS),
        v_buffers.index(ahead % KV_BUFFERS),
        k_cache_ptr,
        v_cache_ptr,
        block,
        ahead * TILE_N,
        kv_lo,
        kv_hi,
        key_rows,
        row_offset,
        dims,
        stride_block,
        stride_slot,
        BLOCK_SIZE,
    )
    return _tile_cache_blocks(
        block_table_row_ptr, (ahead + 1) * TILE_N, kv_hi, group_rows, BLOCK_SIZE
    )


@gluon.jit
def _key_loop(
    q,
    k_buffers,
    v_buffers,
    k_cache_ptr,
    v_cache_ptr,
    block,
    block_table_row_ptr,
    num_tiles,
    full_lo,
    full_hi,
    kv_lo,
    kv_hi,
    query_pos,
    key_offsets,
    sliding_window,
    seq_causal,
    mm_lo,
    mm_hi,
    qk_scale,
    soft_cap_log2,
    m_i,
    row_sums,
    acc,
    no_scores,
    group_rows,
    key_rows,
    row_offset,
    dims,
    stride_kv_block,
    stride_kv_slot,
    IS_CAUSAL: gl.constexpr,
    HAS_SLIDING_WINDOW: gl.constexpr,
    HAS_SOFTCAP: gl.constexpr,
    BLOCK_SIZE: gl.constexpr,
    TILE_N: gl.constexpr,
    KV_BUFFERS: gl.constexpr,
    FMA_EXP2_EVERY: gl.constexpr,
    p_operand: gl.constexpr,
    out_rows: gl.constexpr,
):
    """The loop over key tiles; returns the output and the row sums.

    With two buffers, one score tile is in registers at a time (K and V in
    rings of two): tile t's Q K^T and tile t - 1's P V are issued together,
    and tile t's softmax runs while that P V does. At head 256, where the
    output takes 128 registers per thread, this leaves room for 64-key
    tiles. On entry tile 0's K and V copies are in flight (one commit group)
    and ``block`` holds tile 1's blocks. A buffer is refilled only after the
    barrier that follows every warpgroup's last read of it: K(t + 1) goes
    where K(t - 1) was, V(t) where V(t - 2) was.

    With four or more buffers (one ring, copies ``KV_BUFFERS - 2`` tiles
    ahead), two tiles per iteration: the second tile's Q K^T runs during the
    first one's softmax, the first one's P V during the second one's. On
    entry tiles 0 to ``KV_BUFFERS - 2`` are in flight, one commit group each,
    and ``block`` holds the blocks of the next tile to copy."""
    dtype: gl.constexpr = k_cache_ptr.dtype.element_ty
    if KV_BUFFERS == 2:
        _issue_copy(
            k_buffers.index(1),
            k_cache_ptr,
            block,
            TILE_N,
            kv_lo,
            kv_hi,
            key_rows,
            row_offset,
            dims,
            stride_kv_block,
            stride_kv_slot,
            BLOCK_SIZE,
        )
        async_copy.commit_group()
        block_v = block  # tile 1's blocks, for V(1)
        block = _tile_cache_blocks(block_table_row_ptr, 2 * TILE_N, kv_hi, group_rows, BLOCK_SIZE)
        async_copy.wait_group(1)  # K(0) and V(0) have landed
        cta_barrier()
        s = warpgroup_mma(
            q, k_buffers.index(0).permute((1, 0)), no_scores, use_acc=False, is_async=True
        )
        s = warpgroup_mma_wait(0, deps=[s])
        p, alpha, m_i, row_sums = _probabilities(
            s,
            0,  # tile_start: the first tile
            m_i,
            row_sums,
            qk_scale,
            full_lo,
            full_hi,
            kv_hi,
            query_pos,
            key_offsets,
            sliding_window,
            seq_causal,
            mm_lo,
            mm_hi,
            soft_cap_log2,
            IS_CAUSAL,
            HAS_SLIDING_WINDOW,
            HAS_SOFTCAP,
            dtype,
            p_operand,
            out_rows,
            FMA_EXP2_EVERY,
        )
        for tile in range(1, num_tiles):
            async_copy.wait_group(0)  # K(tile) and V(tile - 1)
            cta_barrier()
            # Q K^T first, so that the tensor cores start right after the
            # barrier; the copies are issued while it runs (Gemma-2 shapes,
            # H200: 0.98-1.04x against copies first, the gains at batch 4;
            # DECISIONS.md: "Pipelined long query").
            s = warpgroup_mma(
                q,
                k_buffers.index(tile % 2).permute((1, 0)),
                no_scores,
                use_acc=False,
                is_async=True,
            )
            _issue_copy(
                k_buffers.index((tile + 1) % 2),
                k_cache_ptr,
                block,
                (tile + 1) * TILE_N,
                kv_lo,
                kv_hi,
                key_rows,
                row_offset,
                dims,
                stride_kv_block,
                stride_kv_slot,
                BLOCK_SIZE,
            )
            _issue_copy(
                v_buffers.index(tile % 2),
                v_cache_ptr,
                block_v,
                tile * TILE_N,
                kv_lo,
                kv_hi,
                key_rows,
                row_offset,
                dims,
                stride_kv_block,
                stride_kv_slot,
                BLOCK_SIZE,
            )
            async_copy.commit_group()
            block_v = block
            block = _tile_cache_blocks(
                block_table_row_ptr, (tile + 2) * TILE_N, kv_hi, group_rows, BLOCK_SIZE
            )
            acc = warpgroup_mma(
                p, v_buffers.index((tile - 1) % 2), acc * alpha[:, None], is_async=True
            )
            s = warpgroup_mma_wait(1, deps=[s])
            p, alpha, m_i, row_sums = _probabilities(
                s,
                tile * TILE_N,
                m_i,
                row_sums,
                qk_scale,
                full_lo,
                full_hi,
                kv_hi,
                query_pos,
                key_offsets,
                sliding_window,
                seq_causal,
                mm_lo,
                mm_hi,
                soft_cap_log2,
                IS_CAUSAL,
                HAS_SLIDING_WINDOW,
                HAS_SOFTCAP,
                dtype,
                p_operand,
                out_rows,
                FMA_EXP2_EVERY,
            )
            acc = warpgroup_mma_wait(0, deps=[acc])
        async_copy.wait_group(0)  # V of the last tile
        cta_barrier()
        acc = warpgroup_mma(
            p, v_buffers.index((num_tiles - 1) % 2), acc * alpha[:, None], is_async=True
        )
        acc = warpgroup_mma_wait(0, deps=[acc])
    else:
        # Like Triton's own pipeliner, wgmma reads what cp.async wrote once every
        # thread's copies have landed (wait_group) and the CTA has met (barrier).
        async_copy.wait_group(KV_BUFFERS - 3)  # tiles 0 and 1 have landed
        cta_barrier()
        s = warpgroup_mma(
            q, k_buffers.index(0).permute((1, 0)), no_scores, use_acc=False, is_async=True
        )
        s = warpgroup_mma_wait(0, deps=[s])
        for pair in range(num_tiles // 2):
            # Two tiles per iteration: the second one's Q K^T runs on the tensor
            # cores during the first one's softmax, the first one's P V during the
            # second one's softmax. The next iteration's Q K^T starts with the
            # second P V, after that softmax: in flight during it, its accumulator
            # would need registers the softmax uses (ptxas of Triton 3.6 spills).
            # A wgmma in flight across the loop's back edge would make ptxas
            # serialise them all.
            tile = 2 * pair
            s_odd = warpgroup_mma(
                q,
                k_buffers.index((tile + 1) % KV_BUFFERS).permute((1, 0)),
                no_scores,
                use_acc=False,
                is_async=True,
            )
            p, alpha, m_i, row_sums = _probabilities(
                s,
                tile * TILE_N,
                m_i,
                row_sums,
                qk_scale,
                full_lo,
                full_hi,
                kv_hi,
                query_pos,
                key_offsets,
                sliding_window,
                seq_causal,
                mm_lo,
                mm_hi,
                soft_cap_log2,
                IS_CAUSAL,
                HAS_SLIDING_WINDOW,
                HAS_SOFTCAP,
                dtype,
                p_operand,
                out_rows,
                FMA_EXP2_EVERY,
            )
            acc = warpgroup_mma(
                p, v_buffers.index(tile % KV_BUFFERS), acc * alpha[:, None], is_async=True
            )
            if tile + 2 < num_tiles:
                block = _refill(
                    tile,
                    k_buffers,
                    v_buffers,
                    k_cache_ptr,
                    v_cache_ptr,
                    block,
                    block_table_row_ptr,
                    kv_lo,
                    kv_hi,
                    group_rows,
                    key_rows,
                    row_offset,
                    dims,
                    stride_kv_block,
                    stride_kv_slot,
                    BLOCK_SIZE,
                    TILE_N,
                    KV_BUFFERS,
                )
            s_odd = warpgroup_mma_wait(1, deps=[s_odd])  # P V still runs
            p, alpha, m_i, row_sums = _probabilities(
                s_odd,
                (tile + 1) * TILE_N,
                m_i,
                row_sums,
                qk_scale,
                full_lo,
                full_hi,
                kv_hi,
                query_pos,
                key_offsets,
                sliding_window,
                seq_causal,
                mm_lo,
                mm_hi,
                soft_cap_log2,
                IS_CAUSAL,
                HAS_SLIDING_WINDOW,
                HAS_SOFTCAP,
                dtype,
                p_operand,
                out_rows,
                FMA_EXP2_EVERY,
            )
            acc = warpgroup_mma_wait(0, deps=[acc])
            # The next iteration's first scores (after the last tile: the last
            # tile's again, unused; its buffer is not being written).
            next_slot = gl.minimum(tile + 2, num_tiles - 1) % KV_BUFFERS
            s = warpgroup_mma(
                q,
                k_buffers.index(next_slot).permute((1, 0)),
                no_scores,
                use_acc=False,
                is_async=True,
            )
            acc = warpgroup_mma(
                p, v_buffers.index((tile + 1) % KV_BUFFERS), acc * alpha[:, None], is_async=True
            )
            if tile + 3 < num_tiles:
                block = _refill(
                    tile + 1,
                    k_buffers,
                    v_buffers,
                    k_cache_ptr,
                    v_cache_ptr,
                    block,
                    block_table_row_ptr,
                    kv_lo,
                    kv_hi,
                    group_rows,
                    key_rows,
                    row_offset,
                    dims,
                    stride_kv_block,
                    stride_kv_slot,
                    BLOCK_SIZE,
                    TILE_N,
                    KV_BUFFERS,
                )
            acc, s = warpgroup_mma_wait(0, deps=[acc, s])
        if num_tiles % 2 == 1:  # the last tile, its scores in s
            tile = num_tiles - 1
            p, alpha, m_i, row_sums = _probabilities(
                s,
                tile * TILE_N,
                m_i,
                row_sums,
                qk_scale,
                full_lo,
                full_hi,
                kv_hi,
                query_pos,
                key_offsets,
                sliding_window,
                seq_causal,
                mm_lo,
                mm_hi,
                soft_cap_log2,
                IS_CAUSAL,
                HAS_SLIDING_WINDOW,
                HAS_SOFTCAP,
                dtype,
                p_operand,
                out_rows,
                FMA_EXP2_EVERY,
            )
            acc = warpgroup_mma(
                p, v_buffers.index(tile % KV_BUFFERS), acc * alpha[:, None], is_async=True
            )
            acc = warpgroup_mma_wait(0, deps=[acc])
        async_copy.wait_group(0)  # the copies issued past the last tile
    return acc, row_sums


@gluon.jit
def long_query_pipelined_kernel(
    # pointers
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_table_ptr,
    causal_ptr,  # [num_seqs] int32 per-sequence causal flags, with PER_SEQ_CAUSAL
    mm_ranges_ptr,  # [num_seqs, num_mm_ranges, 2] int32 (start, end), with HAS_MM_PREFIX
    out_scale_ptr,  # fused fp8 output's float32 scale (jit_helpers.output_values), or None
    # strides (K and V share theirs; head dimensions contiguous)
    stride_q_token,
    stride_q_head,
    stride_out_token,
    stride_out_head,
    stride_kv_block,
    stride_kv_slot,
    stride_kv_head,
    stride_block_table_seq,
    stride_mm_seq,
    # scalars
    num_seqs,
    num_mm_ranges,
    scale,
    soft_cap,
    sliding_window,
    # shapes and switches
    HEAD_PAD: gl.constexpr,
    QUERIES_PER_KV: gl.constexpr,
    BLOCK_SIZE: gl.constexpr,
    BLOCK_M: gl.constexpr,
    TILE_N: gl.constexpr,
    IS_CAUSAL: gl.constexpr,
    PER_SEQ_CAUSAL: gl.constexpr,
    HAS_MM_PREFIX: gl.constexpr,
    MM_CLAMP_TO_WINDOW: gl.constexpr,
    HAS_SLIDING_WINDOW: gl.constexpr,
    HAS_SOFTCAP: gl.constexpr,
    KV_BUFFERS: gl.constexpr,
    FMA_EXP2_EVERY: gl.constexpr,
    PDL: gl.constexpr,
):
    NUM_WARPS: gl.constexpr = gl.num_warps()
    SCORE_LAYOUT: gl.constexpr = long_query_layout("SCORE", HEAD_PAD, TILE_N, NUM_WARPS, BLOCK_SIZE)
    OUT_LAYOUT: gl.constexpr = long_query_layout("OUT", HEAD_PAD, TILE_N, NUM_WARPS, BLOCK_SIZE)
    ROW_LAYOUT: gl.constexpr = long_query_layout("ROW", HEAD_PAD, TILE_N, NUM_WARPS, BLOCK_SIZE)
    COPY_GROUP: gl.constexpr = long_query_layout(
        "COPY_GROUP", HEAD_PAD, TILE_N, NUM_WARPS, BLOCK_SIZE
    )
    COPY_LAYOUT: gl.constexpr = long_query_layout("COPY", HEAD_PAD, TILE_N, NUM_WARPS, BLOCK_SIZE)
    GROUP_LAYOUT: gl.constexpr = long_query_layout("GROUP", HEAD_PAD, TILE_N, NUM_WARPS, BLOCK_SIZE)
    KV_SHARED: gl.constexpr = long_query_layout(
        "KV_SHARED", HEAD_PAD, TILE_N, NUM_WARPS, BLOCK_SIZE
    )
    gl.static_assert(KV_BUFFERS == 2 or KV_BUFFERS >= 4)  # the two key loops
    BLOCK_Q: gl.constexpr = BLOCK_M // QUERIES_PER_KV  # tokens per Q tile
    seq, q_start, q_len, first_token, kv_head = find_q_tile(query_start_loc_ptr, num_seqs, BLOCK_Q)
    if first_token >= q_len:  # the grid is an upper bound; spare programs leave
        if PDL:
            gdc_wait()
        return
    seq_len = gl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len
    seq_causal = None  # IS_CAUSAL holds for every sequence
    if PER_SEQ_CAUSAL:
        seq_causal = gl.load(causal_ptr + seq) != 0

    # Keys this tile can need: [kv_lo, kv_hi); keys every row sees: [full_lo,
    # full_hi), rounded inwards to whole key tiles below.
    first_pos = context_len + first_token
    last_pos = context_len + gl.minimum(first_token + BLOCK_Q, q_len) - 1
    kv_lo, kv_hi, full_lo, full_hi = key_range(
        first_pos, last_pos, seq_len, sliding_window, IS_CAUSAL, HAS_SLIDING_WINDOW, seq_causal
    )
    # The rows' key positions (the score tile's rows), and their multimodal
    # range keys: those widen what the tile reads, never what all rows see.
    score_token, _, score_valid = _tile_rows(
        first_token, q_len, kv_head, BLOCK_M, QUERIES_PER_KV, gl.SliceLayout(1, SCORE_LAYOUT)
    )
    query_pos = context_len + score_token
    mm_lo = None  # no multimodal ranges
    mm_hi = None
    if HAS_MM_PREFIX:
        mm_lo, mm_hi = mm_prefix_rows(
            mm_ranges_ptr,
            stride_mm_seq,
            num_mm_ranges,
            seq,
            query_pos,
            seq_len,
            sliding_window,
            CLAMP_TO_WINDOW=MM_CLAMP_TO_WINDOW,
        )
        kv_lo, kv_hi = widen_key_range(kv_lo, kv_hi, mm_lo, mm_hi, score_valid)
    # Key positions from here on count from key_base, the first key of the
    # first tile, which starts a cache block: the key loop walks tiles 0 to
    # num_tiles - 1 of the sequence's keys from there. The copies skip keys
    # before copy_lo (None: none).
    key_base = 0
    copy_lo = None
    if HAS_SLIDING_WINDOW:
        BASE_ALIGN: gl.constexpr = TILE_N if TILE_N > BLOCK_SIZE else BLOCK_SIZE
        key_base = kv_lo // BASE_ALIGN * BASE_ALIGN
        full_lo = gl.cdiv(full_lo - key_base, TILE_N) * TILE_N
        full_hi = gl.maximum((full_hi - key_base) // TILE_N * TILE_N, full_lo)
        copy_lo = kv_lo - key_base
        kv_hi -= key_base
        query_pos -= key_base
        if HAS_MM_PREFIX:
            mm_lo -= key_base
            mm_hi -= key_base
    else:
        full_hi = full_hi // TILE_N * TILE_N
    num_tiles = gl.cdiv(kv_hi, TILE_N)  # >= 1: every row sees a key

    dtype: gl.constexpr = k_cache_ptr.dtype.element_ty
    k_buffers = gl.allocate_shared_memory(dtype, [KV_BUFFERS, TILE_N, HEAD_PAD], KV_SHARED)
    v_buffers = gl.allocate_shared_memory(dtype, [KV_BUFFERS, TILE_N, HEAD_PAD], KV_SHARED)
    block_table_row_ptr = block_table_ptr + seq.to(gl.int64) * stride_block_table_seq
    block_table_row_ptr += key_base // BLOCK_SIZE
    # Block numbers are loaded once per group of rows (GROUP_LAYOUT), used per
    # row (COPY_LAYOUT).
    group_rows = gl.arange(
        0, TILE_N // COPY_GROUP, layout=gl.SliceLayout(1, gl.SliceLayout(2, GROUP_LAYOUT))
    )
    group_rows = group_rows * COPY_GROUP
    copy_rows: gl.constexpr = gl.SliceLayout(1, COPY_LAYOUT)
    key_rows = gl.arange(0, TILE_N, layout=copy_rows)
    row_offset = (key_rows % BLOCK_SIZE) * stride_kv_slot + kv_head * stride_kv_head
    dims = gl.arange(0, HEAD_PAD, layout=gl.SliceLayout(0, COPY_LAYOUT))
    # The first KV_BUFFERS - 1 tiles start before the queries load. Tiles past
    # kv_hi copy nothing but still commit a group, so that every program
    # counts the same outstanding groups.
    for i in gl.static_range(KV_BUFFERS - 1):
        block = _tile_cache_blocks(block_table_row_ptr, i * TILE_N, kv_hi, group_rows, BLOCK_SIZE)
        _issue_kv_copies(
            k_buffers.index(i),
            v_buffers.index(i),
            k_cache_ptr,
            v_cache_ptr,
            block,
            i * TILE_N,
            copy_lo,
            kv_hi,
            key_rows,
            row_offset,
            dims,
            stride_kv_block,
            stride_kv_slot,
            BLOCK_SIZE,
        )
    # The blocks of the next tile to copy are loaded a step early.
    block = _tile_cache_blocks(
        block_table_row_ptr, (KV_BUFFERS - 1) * TILE_N, kv_hi, group_rows, BLOCK_SIZE
    )
    q_token, q_head, q_valid = _tile_rows(
        first_token, q_len, kv_head, BLOCK_M, QUERIES_PER_KV, gl.SliceLayout(1, ROW_LAYOUT)
    )
    q_dim = gl.arange(0, HEAD_PAD, layout=gl.SliceLayout(0, ROW_LAYOUT))
    q_offset = (q_start + q_token).to(gl.int64) * stride_q_token + q_head * stride_q_head
    q = gl.load(q_ptr + q_offset[:, None] + q_dim[None, :], mask=q_valid[:, None], other=0.0)
    if HEAD_PAD <= 128:
        # Q as the register operand of Q K^T: read from shared memory on every
        # tile, it and K would need 128 B/clk, all of the SM's bandwidth.
        q = gl.convert_layout(
            q, gl.DotOperandLayout(operand_index=0, parent=SCORE_LAYOUT, k_width=2)
        )
    else:
        # Above head 128 Q would take 64 registers per thread beside the
        # 128 of the output: it stays in shared memory (swizzled as K, whose
        # rows are as long).
        q = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_PAD], KV_SHARED, q)
        fence_async_shared()  # for wgmma, after the barrier below

    key_offsets = gl.arange(0, TILE_N, layout=gl.SliceLayout(0, SCORE_LAYOUT))
    if HAS_SOFTCAP:  # see _probabilities
        qk_scale = scale / soft_cap
        soft_cap_log2 = soft_cap * LOG2E
    else:
        qk_scale = scale * LOG2E  # scores in the log2 domain
        soft_cap_log2 = 1.0
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=gl.SliceLayout(1, SCORE_LAYOUT))
    no_scores = gl.zeros([BLOCK_M, TILE_N], gl.float32, layout=SCORE_LAYOUT)
    row_sums = gl.sum(_per_thread(no_scores), 1)  # zeros, in the layout of partial sums
    p_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=OUT_LAYOUT, k_width=2)
    out_rows: gl.constexpr = gl.SliceLayout(1, OUT_LAYOUT)
    acc = gl.zeros([BLOCK_M, HEAD_PAD], gl.float32, layout=OUT_LAYOUT)

    acc, row_sums = _key_loop(
        q,
        k_buffers,
        v_buffers,
        k_cache_ptr,
        v_cache_ptr,
        block,
        block_table_row_ptr,
        num_tiles,
        full_lo,
        full_hi,
        copy_lo,
        kv_hi,
        query_pos,
        key_offsets,
        sliding_window,
        seq_causal,
        mm_lo,
        mm_hi,
        qk_scale,
        soft_cap_log2,
        m_i,
        row_sums,
        acc,
        no_scores,
        group_rows,
        key_rows,
        row_offset,
        dims,
        stride_kv_block,
        stride_kv_slot,
        IS_CAUSAL,
        HAS_SLIDING_WINDOW,
        HAS_SOFTCAP,
        BLOCK_SIZE,
        TILE_N,
        KV_BUFFERS,
        FMA_EXP2_EVERY,
        p_operand,
        out_rows,
    )

    l_out = gl.convert_layout(gl.sum(row_sums, 1), out_rows)
    l_out = gl.where(l_out == 0.0, 1.0, l_out)
    result = output_values(acc / l_out[:, None], out_ptr, out_scale_ptr)
    # Output rows from the score rows' key positions (live through the loop
    # anyway): fewer values in registers there.
    o_pos = gl.convert_layout(query_pos, out_rows)
    _, o_head, o_valid = _tile_rows(
        first_token=0,
        q_len=BLOCK_Q,
        kv_head=kv_head,
        BLOCK_M=BLOCK_M,
        QUERIES_PER_KV=QUERIES_PER_KV,
        layout=out_rows,
    )
    o_valid &= o_pos < kv_hi  # tokens past the query sit at kv_hi or later
    o_dim = gl.arange(0, HEAD_PAD, layout=gl.SliceLayout(0, OUT_LAYOUT))
    o_offset = (q_start - context_len + key_base + o_pos).to(gl.int64) * stride_out_token
    o_offset += o_head * stride_out_head
    gl.store(out_ptr + o_offset[:, None] + o_dim[None, :], result, mask=o_valid[:, None])
    if PDL:  # see long_query_attention_kernel: completion implies the decode's
        gdc_wait()
