# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Random paged-attention batches for the tests and the developer tools: the vLLM layouts,
shuffled block tables, and NaN poison wherever the kernels must not look."""

from __future__ import annotations

import dataclasses

import torch

from vllm.v1.attention.ops.triton_attention import (
    AttentionFeatures,
    GpuArch,
    TensorLayout,
    plan_batch,
)
from vllm.v1.attention.ops.triton_attention.arch import (
    FP8_DTYPES,
    FP8_MAX,
    INT4_KV_DTYPE,
    rht_block,
    rht_signs,
)
from vllm.v1.attention.ops.triton_attention.checks import AttentionCall

# Tolerances per activation dtype, against a float64 reference on the same
# (already quantised) inputs. Outputs are convex mixes of N(0, 1) values, so
# |out| < ~4 and the error is set by the rounding the kernels do on purpose:
# - float32: exact products ("ieee" dot); only summation order differs over up
#   to a few thousand keys -> ~1e-6 relative, 1e-4 leaves room.
# - float16: P is rounded to fp16 before the PV product (2**-11 relative) and
#   the output is stored in fp16 (ulp 2**-10 at 1) -> a few 1e-3.
# - bfloat16: the same with 8 mantissa bits (2**-8; ulp 2**-7 at 1) -> 2e-2.
TOLERANCES = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=2.5e-2, rtol=2.5e-2),
}


# A fused fp8 output and the reference's differ by at most one e4m3 step: the
# kernel's value before rounding is within the dtype's tolerance of the
# reference's, which may put it on the other side of a rounding boundary
# (2**-3 of the value; 2**-9, e4m3fn's smallest step, near zero).
FP8_OUTPUT_TOLERANCE = dict(atol=2**-9, rtol=2**-3)


def assert_fp8_output_close(out: torch.Tensor, expected: torch.Tensor) -> None:
    """``out`` (fp8) within one e4m3 step of ``expected`` (the reference's fp8).

    The Triton interpreter (CPU) converts fp32 to fp8 without the carry into
    the exponent (7.9 becomes 4, not 8): there, elements that are or should be
    a power of two are left out (the GPU compares them all)."""
    out, expected = out.float(), expected.float()
    if not out.is_cuda:
        keep = (expected.abs().log2().frac() != 0) & (out.abs().log2().frac() != 0)
        out, expected = out[keep], expected[keep]
    torch.testing.assert_close(out, expected, **FP8_OUTPUT_TOLERANCE)


@dataclasses.dataclass
class Batch:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    max_query_len: int
    max_seq_len: int
    num_actual_tokens: int
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    def plan_facts(self, **feature_args) -> dict:
        """``features`` and ``layout`` for ``plan_for_batch``: those of a call on
        this batch with ``paged_attention``'s feature arguments ``feature_args``."""
        call = AttentionCall(
            q=self.q,
            k_cache=self.k_cache,
            v_cache=self.v_cache,
            out=self.q,
            query_start_loc=self.query_start_loc,
            seq_lens=self.seq_lens,
            block_table=self.block_table,
            scale=1.0,
            **feature_args,
        )
        return dict(features=call.features(), layout=call.layout())

    def kernel_args(self) -> dict:
        return dict(
            query_start_loc=self.query_start_loc,
            seq_lens=self.seq_lens,
            block_table=self.block_table,
            max_query_len=self.max_query_len,
            max_seq_len=self.max_seq_len,
            k_scale=self.k_scale,
            v_scale=self.v_scale,
        )


def kv_cache_views(
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype,
    device,
    layout: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V views ``[num_blocks, block_size, num_kv_heads, head_size]``.

    ``packed_nhd`` / ``packed_hnd`` are views of vLLM's packed
    ``[num_blocks, H, block_size, 2*head_size]`` cache (K|V in the last dim)
    under its default (token-major) and head-major physical layouts;
    ``separate`` are two contiguous tensors.
    """
    if layout == "separate":
        shape = (num_blocks, block_size, num_kv_heads, head_size)
        return torch.empty(shape, dtype=dtype, device=device), torch.empty(
            shape, dtype=dtype, device=device
        )
    if layout == "packed_nhd":
        packed = torch.empty(
            num_blocks, block_size, num_kv_heads, 2 * head_size, dtype=dtype, device=device
        )
    elif layout == "packed_hnd":
        packed = torch.empty(
            num_blocks, num_kv_heads, block_size, 2 * head_size, dtype=dtype, device=device
        ).transpose(1, 2)
    else:
        raise ValueError(layout)
    return packed[..., :head_size], packed[..., head_size:]


def _fill(view: torch.Tensor, values: torch.Tensor) -> None:
    view.copy_(values.to(view.dtype) if view.dtype.is_floating_point else values)


def make_batch(
    q_lens: list[int],
    seq_lens: list[int],
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    dtype: torch.dtype,
    device,
    kv_dtype: torch.dtype | None = None,
    token_head_scales: bool = False,
    layout: str = "separate",
    sliding_window: int | None = None,
    mm_prefix_ranges: list[list[tuple[int, int]]] | None = None,
    rswa_prefix_lens: list[int] | None = None,
    padding_tokens: int = 0,
    shared_prefix_blocks: int = 0,
    generator: torch.Generator | None = None,
) -> Batch:
    """A batch with every unused cache slot, spare block and padding query = NaN.

    ``shared_prefix_blocks``: every sequence's first blocks are the first
    sequence's (prefix caching), where both are long enough. Blocks no query
    sees through ``sliding_window`` are poisoned too, except those a query
    reaches through its ``mm_prefix_ranges``; with ``rswa_prefix_lens`` the
    slots between each prompt prefix and the window (R-SWA's evicted gap).
    """
    if len(q_lens) != len(seq_lens):
        raise ValueError(f"{len(q_lens)} query lengths for {len(seq_lens)} sequences")
    if rswa_prefix_lens is not None and (sliding_window is None or shared_prefix_blocks):
        raise ValueError("rswa_prefix_lens: with a sliding_window, and no shared_prefix_blocks")
    kv_dtype = kv_dtype or dtype
    gen = generator or torch.Generator().manual_seed(0)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    max_blocks = max(blocks_per_seq + [1])
    num_blocks = sum(blocks_per_seq) + 3  # a few spare, poisoned blocks

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    columns = head_size // 2 if kv_dtype == INT4_KV_DTYPE else head_size  # int4: 2 per byte
    k_cache, v_cache = kv_cache_views(
        num_blocks, block_size, num_kv_heads, columns, kv_dtype, device, layout
    )
    k_scale = v_scale = None
    if kv_dtype == INT4_KV_DTYPE:
        # random codes around random zero points (codes - zero: std ~6), scaled
        # so that rotated back (divided by sqrt(block) in norm) they are ~N(0, 1)
        unit = rht_block(head_size) ** 0.5 / 6
        k_scale, v_scale = (
            int4_scale_words(
                (torch.rand(num_blocks, block_size, num_kv_heads, generator=gen) + 0.5) * unit,
                torch.randint(0, 16, (num_blocks, block_size, num_kv_heads), generator=gen),
            ).to(device)
            for _ in range(2)
        )
        for cache in (k_cache, v_cache):
            cache.copy_(torch.randint(0, 256, cache.shape, generator=gen, dtype=torch.uint8))
    elif kv_dtype == torch.int8 or token_head_scales:
        # a scale per slot and KV head, as vLLM's *_per_token_head caches hold
        k_scale, v_scale = (
            torch.rand(num_blocks, block_size, num_kv_heads, generator=gen).to(device) * 0.05 + 0.01
            for _ in range(2)
        )
        quant_max = 127 if kv_dtype == torch.int8 else FP8_MAX[kv_dtype]
        for cache in (k_cache, v_cache):
            values = randn(num_blocks, block_size, num_kv_heads, head_size) * quant_max / 3
            values = values.clamp(-quant_max, quant_max)
            cache.copy_((values.round() if kv_dtype == torch.int8 else values).to(kv_dtype))
    elif kv_dtype in FP8_DTYPES:
        k_scale = torch.tensor(0.05, device=device)
        v_scale = torch.tensor(0.04, device=device)
        # Values spread over the fp8 range after scaling.
        k_values = randn(num_blocks, block_size, num_kv_heads, head_size) * 2
        v_values = randn(num_blocks, block_size, num_kv_heads, head_size) * 2
        k_cache.copy_((k_values / 0.05).to(kv_dtype))
        v_cache.copy_((v_values / 0.04).to(kv_dtype))
    else:
        _fill(k_cache, randn(num_blocks, block_size, num_kv_heads, head_size))
        _fill(v_cache, randn(num_blocks, block_size, num_kv_heads, head_size))

    def poison(block, slots=slice(None)):
        """NaN in these slots: in the values, and in their per-token-head scales
        (an int8 value cannot be NaN)."""
        for cache, scale in ((k_cache, k_scale), (v_cache, v_scale)):
            if cache.dtype.is_floating_point:
                cache[block, slots] = float("nan")
            if scale is not None and scale.dim() == 3:
                scale[block, slots] = float("nan")

    # Shuffled block table; entries past a sequence's blocks point nowhere valid.
    order = torch.randperm(num_blocks, generator=gen).tolist()
    block_table = torch.full((len(seq_lens), max_blocks + 1), 10**6, dtype=torch.int32)
    used = set()
    out_of_window = set()  # (sequence, block) pairs
    cursor = 0
    for seq, count in enumerate(blocks_per_seq):
        ids = order[cursor : cursor + count]
        cursor += count
        if seq > 0 and shared_prefix_blocks:
            # full blocks only: their slots hold the same keys in both sequences
            shared = min(shared_prefix_blocks, count - 1, seq_lens[0] // block_size)
            ids[: max(shared, 0)] = block_table[0, : max(shared, 0)].tolist()
        used.update(ids)
        block_table[seq, :count] = torch.tensor(ids, dtype=torch.int32)
        # Poison the slots at and past seq_len in its last block.
        seq_len, q_len = seq_lens[seq], q_lens[seq]
        if count and seq_len % block_size:
            poison(ids[-1], slice(seq_len % block_size, None))
        # Blocks that no query of this sequence can see through its window
        # (poisoned below, unless another sequence shares them).
        if sliding_window is not None and q_len:
            first_visible = max(seq_len - q_len - sliding_window + 1, 0)
            for start, end in mm_prefix_ranges[seq] if mm_prefix_ranges else ():
                if start < end and start < seq_len and end >= seq_len - q_len:
                    first_visible = min(first_visible, start)
            if rswa_prefix_lens is not None:  # the gap's slots, one by one
                for key in range(rswa_prefix_lens[seq], first_visible):
                    poison(ids[key // block_size], key % block_size)
            else:
                out_of_window.update((seq, ids[i]) for i in range(first_visible // block_size))
    for seq, block in out_of_window:
        others = torch.cat([block_table[:seq], block_table[seq + 1 :]])
        if block not in others.flatten().tolist():
            poison(block)
    for block in set(range(num_blocks)) - used:
        poison(block)

    num_actual_tokens = sum(q_lens)
    q = randn(num_actual_tokens + padding_tokens, num_q_heads, head_size).to(dtype)
    q[num_actual_tokens:] = float("nan")  # padding tokens of a graph-sized batch
    query_start_loc = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return Batch(
        q=q.to(device),
        k_cache=k_cache,
        v_cache=v_cache,
        query_start_loc=query_start_loc.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_table=block_table.to(device),
        max_query_len=max(q_lens + [0]),
        max_seq_len=max(seq_lens + [0]),
        num_actual_tokens=num_actual_tokens,
        k_scale=k_scale,
        v_scale=v_scale,
    )


def mm_prefix_ranges_for(
    q_lens: list[int], seq_lens: list[int], reach: int = 30
) -> list[list[tuple[int, int]]]:
    """Multimodal prefix ranges that meet every case, three per sequence: one
    holding the first half of its query tokens and ``reach`` cached keys
    before them (a range across the cached prefix and the new chunk), vLLM's
    ``(0, 0)`` padding, and one from inside the new tokens to past the keys
    cached so far (an image the chunk cuts)."""
    ranges = []
    for q_len, seq_len in zip(q_lens, seq_lens, strict=True):
        context = seq_len - q_len
        middle = context + q_len // 2
        ranges.append([(max(context - reach, 0), middle), (0, 0), (middle + 2, seq_len + 10)])
    return ranges


def quantise_per_token_head(x: torch.Tensor, cache_dtype: torch.dtype):
    """vLLM's per-token-head quantisation of ``x`` [..., head_size], written
    independently of the kernels: a scale of absmax / max per (token, head), at
    least 1e-6; values times its reciprocal; int8 rounds half away from zero
    (then clamps to [-128, 127]), fp8 saturates and rounds to nearest even.
    Returns (values in ``cache_dtype``, float32 scales)."""
    x = x.float()
    top = 127.0 if cache_dtype == torch.int8 else FP8_MAX[cache_dtype]
    scale = (x.abs().amax(-1) / top).clamp_min(1e-6)
    q = x * (1.0 / scale)[..., None]
    if cache_dtype == torch.int8:
        q = (q.abs() + 0.5).floor().copysign(q).clamp(-128, 127)
    else:
        q = q.clamp(-top, top)
    return q.to(cache_dtype), scale


def int4_scale_words(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """An int4 cache's scale words: float32 ``scale`` with its 4 low mantissa
    bits replaced by ``zero`` (0..15), as vLLM stores them."""
    bits = scale.float().contiguous().view(torch.int32)
    return ((bits & -16) | zero.to(torch.int32)).view(torch.float32)


def quantise_int4(x: torch.Tensor):
    """vLLM's int4_per_token_head storage of ``x`` [..., head_size], written
    independently of the kernels: rotated by each Hadamard block's matrix
    (built here as a float64 matrix) times the signs, rounded to ``x``'s
    dtype; then scale ``(max - min) / 15`` (at least 1e-6), zero point
    ``-min / scale`` and codes ``x / scale + zero``, both rounded half away
    from zero into 0..15; codes two per byte, the even dimension low.
    Returns (bytes [..., head_size // 2] uint8, float32 scale words)."""
    head_size = x.shape[-1]
    block = rht_block(head_size)
    hadamard, order_two = torch.ones(1, 1), torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    while hadamard.shape[0] < block:
        hadamard = torch.kron(order_two, hadamard)
    hadamard = hadamard.double()
    signed = x.double() * rht_signs(head_size, x.device).double()
    blocks = signed.reshape(*x.shape[:-1], head_size // block, block) @ hadamard.to(x.device)
    rotated = blocks.reshape(x.shape).to(x.dtype).float()
    low, high = rotated.amin(-1), rotated.amax(-1)
    scale = ((high - low) / 15.0).clamp_min(1e-6)

    def round_half_away(v):
        return (v.abs() + 0.5).floor().copysign(v)

    zero = round_half_away(-low / scale).clamp(0, 15)
    codes = round_half_away(rotated * (1.0 / scale)[..., None] + zero[..., None]).clamp(0, 15)
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), int4_scale_words(scale, zero)


def token_head_page(
    num_blocks: int, block_size: int, num_kv_heads: int, head_size: int, kv_dtype, device
):
    """A new per-token-head page as vLLM lays it out (slot-major, ``[K | K scale |
    V | V scale]`` per (slot, head)) and the kernels' views of it: K and V
    ``[blocks, block_size, H, D]`` (int4: ``D / 2`` bytes), their float32
    scales ``[blocks, block_size, H]``."""
    values = head_size // 2 if kv_dtype == INT4_KV_DTYPE else head_size  # one-byte columns
    half = values + 4  # the values, then a float32
    page = torch.empty(
        num_blocks, block_size, num_kv_heads, 2 * half, dtype=kv_dtype, device=device
    )
    scales = page.view(torch.int8).view(torch.float32)
    return (
        page[..., :values],
        page[..., half : half + values],
        scales[..., values // 4],
        scales[..., (half + values) // 4],
    )


def token_head_page_views(kv_cache: torch.Tensor, head_size: int, values: torch.dtype):
    """K, V and their scales in vLLM's per-token-head page (logical ``[blocks,
    H, block_size, C]``, ``[K | K scale | V | V scale]`` per (head, slot)), read
    from the bytes on their own: K/V ``[blocks, block_size, H, D]`` and scales
    ``[blocks, block_size, H]``."""
    cells = kv_cache.transpose(1, 2)
    half = cells.shape[-1] // 2
    k_view = cells[..., :head_size].view(values)
    v_view = cells[..., half : half + head_size].view(values)
    k_scale, v_scale = (
        cells[..., start : start + 4].contiguous().view(torch.float32)[..., 0]
        for start in (head_size, half + head_size)
    )
    return k_view, v_view, k_scale, v_scale


def rswa_prefixes_for(q_lens: list[int], seq_lens: list[int]) -> list[int]:
    """R-SWA prompt prefixes that meet every case: a third of each sequence's
    cached keys (a gap before the window in long ones, none in short ones), and
    for a sequence without cached keys a prefix that ends inside its queries."""
    return [
        (seq_len - q_len) // 3 if seq_len > q_len else q_len // 2
        for q_len, seq_len in zip(q_lens, seq_lens, strict=True)
    ]


def small_gpu(kv_dtype: torch.dtype | None = None) -> GpuArch:
    """A 16-unit GPU for the CPU suite to plan for: its tiles and splits make
    short test sequences cross tile and split boundaries, which the
    interpreter's own plan (one program per sequence and KV head, the largest
    tiles) never does. Ada (no Hopper-only kernels or launches), or MI300 for
    the fnuz fp8 format."""
    if kv_dtype == torch.float8_e4m3fnuz:
        return GpuArch("hip", "gfx942", 16)
    return GpuArch("cuda", "sm_89", 16)


def plan_for_batch(
    q_lens: list[int],
    *,
    num_tokens: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_size: int,
    device,
    max_decode_query_len: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    arch: GpuArch | None = None,
    features: AttentionFeatures | None = None,
    layout: TensorLayout | None = None,
    batch_invariant: bool = False,
):
    """``plan_batch`` for a reordered batch of these query lengths, as vLLM's
    builder calls it: the leading queries of at most ``max_decode_query_len``
    tokens are its decodes. ``arch``: the GPU to plan for, when not
    ``device``'s; ``features``/``layout``: those of the calls (default: none,
    and vLLM's packed cache of ``dtype``); ``batch_invariant``: the plan mode."""
    num_decodes = next(
        (i for i, q_len in enumerate(q_lens) if q_len > max_decode_query_len), len(q_lens)
    )
    return plan_batch(
        num_tokens=num_tokens,
        num_seqs=len(q_lens),
        num_decodes=num_decodes,
        num_decode_tokens=sum(q_lens[:num_decodes]),
        max_decode_query_len=max_decode_query_len,
        max_query_len=max(q_lens),
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        arch=arch or GpuArch.of_device(device),
        dtype=dtype,
        features=features or AttentionFeatures(),
        layout=layout or TensorLayout.of_packed_kv_cache(head_size, dtype, block_size=16),
        batch_invariant=batch_invariant,
    )
