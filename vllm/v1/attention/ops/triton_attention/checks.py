# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Input checks: a clear error for anything the kernels cannot run.

They read metadata only (shapes, dtypes, strides, devices), never tensor
contents, so they cost no device sync. Each message names the argument, what
it must be and what it is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .arch import (
    ACTIVATION_DTYPES,
    FP8_DTYPES,
    FP8_OUTPUT_DTYPES,
    INT4_KV_DTYPE,
    QUANTISED_KV_DTYPES,
    GpuArch,
)
from .plan import (
    MAX_HEAD_SIZE,
    MIN_HEAD_SIZE,
    PIPELINED_KERNELS,
    SPLIT_KV_KERNELS,
    AttentionFeatures,
    AttentionPlan,
    TensorLayout,
    pipelined_kernel_covers,
)


class AttentionCall(NamedTuple):
    """The tensors and scalars of one ``paged_attention`` call (its semantics
    are in the package docstring)."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    out: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    scale: float
    causal: bool | torch.Tensor = True  # or a [num_seqs] int32 flag per sequence
    sliding_window: int | None = None
    logits_soft_cap: float | None = None
    alibi_slopes: torch.Tensor | None = None
    sinks: torch.Tensor | None = None
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    mm_prefix_ranges: torch.Tensor | None = None  # [num_seqs, ranges, 2] int32
    mm_prefix_clamp_sliding_window: bool = False
    alibi_sqrt: bool = False  # ALiBi's bias as -slope * sqrt(distance), on past keys
    chunk_lookback: int | None = None  # the window in chunks of W // (lookback + 1) keys
    rswa_prefix_lens: torch.Tensor | None = None  # [num_seqs] int32: R-SWA's visible prefixes
    q_scale: torch.Tensor | None = None  # fp8 queries' float32 scale: one, or one per KV head
    out_scale: torch.Tensor | None = None  # a fused fp8 output's float32 scale (one)
    lse: torch.Tensor | None = None  # [num_tokens, num_q_heads] float32: the rows' log-sum-exps

    @property
    def kv_is_fp8(self) -> bool:
        """An fp8 cache with one scale per tensor."""
        return self.k_cache.dtype in FP8_DTYPES and not self.kv_token_head_scaled

    @property
    def kv_token_head_scaled(self) -> bool:
        """A quantised cache with a scale per token and KV head (vLLM's
        ``*_per_token_head`` modes)."""
        return self.k_cache.dtype in QUANTISED_KV_DTYPES and token_head_scaled(self.k_scale)

    def window_size(self) -> int:
        """The kernels' ``sliding_window``: W, the chunk size of a chunked window, or 0."""
        if self.sliding_window is None:
            return 0
        if self.chunk_lookback is not None:
            return self.sliding_window // (self.chunk_lookback + 1)
        return self.sliding_window

    def features(self) -> AttentionFeatures:
        return AttentionFeatures(
            sliding_window=self.sliding_window is not None,
            softcap=self.logits_soft_cap is not None,
            alibi=self.alibi_slopes is not None,
            sinks=self.sinks is not None,
            per_seq_causal=isinstance(self.causal, torch.Tensor),
            mm_prefix=self.mm_prefix_ranges is not None,
            chunked_window=self.chunk_lookback is not None,
            rswa=self.rswa_prefix_lens is not None,
            token_head_scales=self.kv_token_head_scaled,
            returns_lse=self.lse is not None,
        )

    def layout(self, strides=None) -> TensorLayout:
        return TensorLayout.of(self.q, self.k_cache, self.v_cache, self.out, strides)


def fail(error: type[Exception], fn: str, name: str, expected: str, got) -> None:
    raise error(f"{fn}: {name} must be {expected}, got {got}")


def check_kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, head_size: int, fn: str) -> None:
    if k_cache.dim() != 4:
        expected = "[num_blocks, block_size, num_kv_heads, head_size]"
        fail(ValueError, fn, "k_cache", expected, tuple(k_cache.shape))
    if v_cache.shape != k_cache.shape:
        expected = f"k_cache.shape {tuple(k_cache.shape)}"
        fail(ValueError, fn, "v_cache.shape", expected, tuple(v_cache.shape))
    if v_cache.dtype != k_cache.dtype:
        fail(TypeError, fn, "v_cache.dtype", f"k_cache.dtype {k_cache.dtype}", v_cache.dtype)
    if k_cache.dtype == INT4_KV_DTYPE:  # two 4-bit codes per byte
        if head_size % 2 or k_cache.shape[3] != head_size // 2:
            expected = f"head_size // 2 ({head_size} / 2 bytes of int4 pairs)"
            fail(ValueError, fn, "k_cache.shape[3] (int4 cache)", expected, k_cache.shape[3])
    elif k_cache.shape[3] != head_size:
        fail(ValueError, fn, "k_cache.shape[3] (head size)", f"{head_size}", k_cache.shape[3])


def check_kv_dtype(kv_dtype: torch.dtype, arch: GpuArch, fn: str) -> None:
    if not arch.supports_kv_dtype(kv_dtype):
        raise NotImplementedError(
            f"{fn}: a {kv_dtype} KV cache is not supported on {arch.vendor} {arch.name}"
        )


def token_head_scaled(k_scale) -> bool:
    """Whether ``k_scale`` holds a scale per cache slot and KV head
    (``[num_blocks, block_size, num_kv_heads]``) rather than one per tensor."""
    return isinstance(k_scale, torch.Tensor) and k_scale.dim() == 3


def check_scales(k_cache: torch.Tensor, v_cache: torch.Tensor, k_scale, v_scale, fn: str) -> None:
    """fp8 caches take one-element scales or a scale per token and KV head,
    int8 and int4 caches only the latter: float32, K's and V's of one layout."""
    kv_dtype = k_cache.dtype
    if kv_dtype not in QUANTISED_KV_DTYPES:
        return
    per_token_head = token_head_scaled(k_scale)
    slots = tuple(k_cache.shape[:3])
    for name, value in (("k_scale", k_scale), ("v_scale", v_scale)):
        if per_token_head:
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != slots:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else value
                fail(ValueError, fn, f"{name}.shape", f"{slots} (a scale per token and head)", got)
        elif (
            kv_dtype not in FP8_DTYPES or not isinstance(value, torch.Tensor) or value.numel() != 1
        ):
            expected = (
                f"[num_blocks, block_size, num_kv_heads] {slots} float32 scales"
                if kv_dtype not in FP8_DTYPES
                else "a one-element float32 tensor, or one scale per token and head"
            )
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{fn}: {name} must be {expected} for a {kv_dtype} cache, got {got}")
        if value.dtype != torch.float32:
            fail(TypeError, fn, f"{name}.dtype", "torch.float32", value.dtype)
        if per_token_head and value.device != k_cache.device:
            fail(
                ValueError, fn, f"{name}.device", f"k_cache.device ({k_cache.device})", value.device
            )
    if per_token_head and v_scale.stride() != k_scale.stride():
        fail(
            ValueError,
            fn,
            "v_scale.stride()",
            f"k_scale.stride() {k_scale.stride()}",
            v_scale.stride(),
        )
    if per_token_head:  # the kernels read their rows 4 bytes at a time (TOKEN_HEAD_ROW_ALIGN)
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            strides = cache.stride()
            if cache.data_ptr() % 4 or any(n % 4 for n in strides[:3]) or strides[3] != 1:
                got = f"address {cache.data_ptr()} % 4 = {cache.data_ptr() % 4}, strides {strides}"
                expected = (
                    "rows at multiples of 4 bytes (address and strides) with unit head stride"
                )
                fail(ValueError, fn, name, expected, got)


def check_fp8_queries(call: AttentionCall, num_kv_heads: int, fn: str) -> None:
    """fp8 queries, as vLLM quantises them for an fp8 cache: the cache's own
    format with per-tensor scales, and a float32 ``q_scale`` of one element or
    one per KV head (vLLM's per-head query quantisation)."""
    q, q_scale = call.q, call.q_scale
    if q.dtype not in FP8_DTYPES:
        fail(ValueError, fn, "q_scale", f"None for {q.dtype} queries (fp8 ones only)", "a tensor")
    if call.k_cache.dtype != q.dtype or not call.kv_is_fp8:
        expected = f"{q.dtype} with per-tensor k_scale/v_scale, as the fp8 queries"
        fail(TypeError, fn, "k_cache", expected, f"{call.k_cache.dtype} (k_scale {call.k_scale})")
    if (
        not isinstance(q_scale, torch.Tensor)
        or q_scale.dtype != torch.float32
        or q_scale.numel() not in (1, num_kv_heads)
    ):
        got = f"{q_scale.dtype} {tuple(q_scale.shape)}" if q_scale is not None else None
        expected = f"a float32 tensor of 1 or {num_kv_heads} (num_kv_heads) scales"
        fail(ValueError, fn, "q_scale", expected, got)
    if q_scale.device != q.device or (q_scale.numel() > 1 and q_scale.stride(-1) != 1):
        got = f"{q_scale.device}, strides {q_scale.stride()}"
        fail(ValueError, fn, "q_scale", f"contiguous, on q.device ({q.device})", got)


def check_fp8_output(out: torch.Tensor, out_scale, arch: GpuArch, fn: str) -> None:
    """Fused static fp8 output quantisation (vLLM's ``kFp8StaticTensorSym``):
    an e4m3 output this GPU stores, and its one-element float32 scale."""
    if out.dtype not in FP8_OUTPUT_DTYPES:
        expected = f"one of {FP8_OUTPUT_DTYPES} with out_scale (fused fp8 quantisation)"
        fail(TypeError, fn, "out.dtype", expected, out.dtype)
    if not arch.supports_kv_dtype(out.dtype):  # the same conversions as an fp8 cache's
        raise NotImplementedError(f"{fn}: a {out.dtype} output is not supported on {arch.name}")
    if (
        not isinstance(out_scale, torch.Tensor)
        or out_scale.dtype != torch.float32
        or out_scale.numel() != 1
        or out_scale.device != out.device
    ):
        got = (
            f"{out_scale.dtype} {tuple(out_scale.shape)} on {out_scale.device}"
            if isinstance(out_scale, torch.Tensor)
            else out_scale
        )
        fail(ValueError, fn, "out_scale", f"a one-element float32 tensor on {out.device}", got)


def check_rswa(prefix_lens: torch.Tensor, num_seqs: int, call: AttentionCall, fn: str) -> None:
    """R-SWA (a visible prompt prefix beside a causal sliding window) as vLLM
    serves it: with none of the masks no model combines it with."""
    if (
        prefix_lens.dim() != 1
        or prefix_lens.shape[0] < num_seqs
        or prefix_lens.dtype != torch.int32
    ):
        got = f"{prefix_lens.dtype} of shape {tuple(prefix_lens.shape)}"
        fail(ValueError, fn, "rswa_prefix_lens", f"a 1-D int32 tensor of at least {num_seqs}", got)
    if call.sliding_window is None:
        fail(ValueError, fn, "sliding_window", "R-SWA's window W with rswa_prefix_lens", None)
    if call.causal is not True:
        fail(NotImplementedError, fn, "causal", "True with rswa_prefix_lens", call.causal)
    for name in ("mm_prefix_ranges", "chunk_lookback"):
        if getattr(call, name) is not None:
            fail(NotImplementedError, fn, name, "None with rswa_prefix_lens", "a value")


def check_paged_attention_inputs(
    call: AttentionCall, max_query_len: int, plan: AttentionPlan | None, arch: GpuArch
) -> None:
    """Raise a clear error for anything the kernels (or ``plan``) cannot run."""
    fn = "paged_attention"
    (q, k_cache, v_cache, out, query_start_loc, seq_lens, block_table, _, causal, sliding_window,
     logits_soft_cap, alibi_slopes, sinks, k_scale, v_scale, mm_ranges, _, alibi_sqrt,
     chunk_lookback, rswa_prefix_lens, q_scale, out_scale, lse) = call  # fmt: skip
    if q.dim() != 3:
        fail(ValueError, fn, "q", "[num_tokens, num_q_heads, head_size]", tuple(q.shape))
    num_tokens, num_q_heads, head_size = q.shape
    if q.dtype not in (*ACTIVATION_DTYPES, *FP8_DTYPES):
        fail(TypeError, fn, "q.dtype", "float16, bfloat16, float32 or an fp8 type", q.dtype)
    if out.shape != q.shape:
        fail(ValueError, fn, "out.shape", f"q.shape {tuple(q.shape)}", tuple(out.shape))
    if out.dtype in FP8_OUTPUT_DTYPES or out_scale is not None:
        check_fp8_output(out, out_scale, arch, fn)
    elif out.dtype not in ACTIVATION_DTYPES:
        expected = "float16, bfloat16, float32, or float8_e4m3fn/fnuz with out_scale"
        fail(TypeError, fn, "out.dtype", expected, out.dtype)
    if not MIN_HEAD_SIZE <= head_size <= MAX_HEAD_SIZE:
        expected = f"in [{MIN_HEAD_SIZE}, {MAX_HEAD_SIZE}]"
        fail(NotImplementedError, fn, "head_size", expected, head_size)
    check_kv_cache(k_cache, v_cache, head_size, fn)
    num_kv_heads = k_cache.shape[2]
    if num_kv_heads == 0 or num_q_heads % num_kv_heads:
        expected = f"a multiple of num_kv_heads ({num_kv_heads})"
        fail(ValueError, fn, "num_q_heads", expected, num_q_heads)
    if q.dtype in FP8_DTYPES or q_scale is not None:
        check_fp8_queries(call, num_kv_heads, fn)
    if k_cache.dtype in QUANTISED_KV_DTYPES:
        check_kv_dtype(k_cache.dtype, arch, fn)
        check_scales(k_cache, v_cache, k_scale, v_scale, fn)
    elif k_cache.dtype != q.dtype:
        expected = f"q.dtype ({q.dtype}), an fp8 type, int8 or uint8 (int4 pairs)"
        fail(TypeError, fn, "k_cache.dtype", expected, k_cache.dtype)

    if query_start_loc.dim() != 1 or query_start_loc.dtype != torch.int32:
        got = f"{query_start_loc.dim()}-D {query_start_loc.dtype}"
        fail(ValueError, fn, "query_start_loc", "a 1-D int32 tensor", got)
    num_seqs = query_start_loc.shape[0] - 1
    if seq_lens.shape != (num_seqs,) or seq_lens.dtype != torch.int32:
        got = f"{seq_lens.dtype} of shape {tuple(seq_lens.shape)}"
        fail(ValueError, fn, "seq_lens", f"an int32 tensor of shape ({num_seqs},)", got)
    if block_table.dim() != 2 or block_table.shape[0] < num_seqs:
        expected = f"2-D with at least {num_seqs} rows"
        fail(ValueError, fn, "block_table", expected, tuple(block_table.shape))
    if block_table.dtype not in (torch.int32, torch.int64):
        fail(TypeError, fn, "block_table.dtype", "int32 or int64", block_table.dtype)
    if block_table.stride(1) != 1:
        fail(ValueError, fn, "block_table.stride(1)", "1", block_table.stride(1))
    per_seq_causal = isinstance(causal, torch.Tensor)
    if per_seq_causal and (
        causal.dim() != 1 or causal.shape[0] < num_seqs or causal.dtype != torch.int32
    ):
        got = f"{causal.dtype} of shape {tuple(causal.shape)}"
        expected = f"a bool or a 1-D int32 tensor of at least {num_seqs} flags"
        fail(ValueError, fn, "causal", expected, got)
    if mm_ranges is not None and (
        mm_ranges.dim() != 3
        or mm_ranges.shape[0] < num_seqs
        or mm_ranges.shape[2] != 2
        or mm_ranges.dtype != torch.int32
    ):
        got = f"{mm_ranges.dtype} of shape {tuple(mm_ranges.shape)}"
        expected = f"an int32 tensor [at least {num_seqs}, num_ranges, 2]"
        fail(ValueError, fn, "mm_prefix_ranges", expected, got)
    if mm_ranges is not None and mm_ranges.shape[1] and mm_ranges.stride()[1:] != (2, 1):
        expected = "(2, 1) (each sequence's ranges contiguous)"
        fail(ValueError, fn, "mm_prefix_ranges.stride()[1:]", expected, mm_ranges.stride()[1:])
    device = q.device
    for name, tensor in (
        ("k_cache", k_cache),
        ("v_cache", v_cache),
        ("out", out),
        ("query_start_loc", query_start_loc),
        ("seq_lens", seq_lens),
        ("block_table", block_table),
        *((("causal", causal),) if per_seq_causal else ()),
        *((("mm_prefix_ranges", mm_ranges),) if mm_ranges is not None else ()),
        *((("rswa_prefix_lens", rswa_prefix_lens),) if rswa_prefix_lens is not None else ()),
    ):
        if tensor.device != device:
            fail(ValueError, fn, f"{name}.device", f"q.device ({device})", tensor.device)

    if sliding_window is not None and sliding_window <= 0:
        fail(ValueError, fn, "sliding_window", "None or a positive int", sliding_window)
    if chunk_lookback is not None:
        if sliding_window is None or not 0 <= chunk_lookback < sliding_window:
            expected = "in [0, sliding_window) with a sliding_window (chunks of W // (L + 1))"
            fail(ValueError, fn, "chunk_lookback", expected, chunk_lookback)
        if mm_ranges is not None:
            expected = "None with chunk_lookback (no model combines them)"
            fail(NotImplementedError, fn, "mm_prefix_ranges", expected, "a tensor")
    if rswa_prefix_lens is not None:
        check_rswa(rswa_prefix_lens, num_seqs, call, fn)
    if lse is not None and (
        lse.shape != (num_tokens, num_q_heads) or lse.dtype != torch.float32 or lse.device != device
    ):
        got = f"{lse.dtype} {tuple(lse.shape)} on {lse.device}"
        expected = f"a float32 tensor ({num_tokens}, {num_q_heads}) on q.device"
        fail(ValueError, fn, "lse", expected, got)
    if logits_soft_cap is not None and logits_soft_cap <= 0:
        fail(ValueError, fn, "logits_soft_cap", "None or positive", logits_soft_cap)
    for name, tensor in (("alibi_slopes", alibi_slopes), ("sinks", sinks)):
        if tensor is not None and tensor.shape != (num_q_heads,):
            fail(ValueError, fn, f"{name}.shape", f"({num_q_heads},)", tuple(tensor.shape))
    if alibi_slopes is not None and alibi_slopes.dtype != torch.float32:
        fail(TypeError, fn, "alibi_slopes.dtype", "torch.float32", alibi_slopes.dtype)
    if alibi_sqrt and alibi_slopes is None:
        fail(ValueError, fn, "alibi_slopes", "given with alibi_sqrt=True", None)

    if plan is None:
        if max_query_len < 0:
            fail(ValueError, fn, "max_query_len", ">= 0", max_query_len)
        return
    expected = (num_tokens, num_seqs, num_q_heads, num_kv_heads, head_size)
    planned = (plan.num_tokens, plan.num_seqs, plan.num_q_heads, plan.num_kv_heads, plan.head_size)
    if planned != expected:
        name = "plan (num_tokens, num_seqs, q heads, kv heads, head size)"
        fail(ValueError, fn, name, f"{expected} as in the inputs", planned)
    if plan.dtype.itemsize != q.dtype.itemsize:  # its tiles may not fit shared memory
        expected = f"as wide as q.dtype ({q.dtype}): plan with dtype=q.dtype"
        fail(ValueError, fn, "plan.dtype", expected, plan.dtype)
    if plan.kernel in SPLIT_KV_KERNELS and plan.tokens_per_q_block < max_query_len:
        expected = f"<= {plan.tokens_per_q_block} for this split-KV plan"
        fail(ValueError, fn, "max_query_len", expected, max_query_len)


def check_plan_covers(call: AttentionCall, plan: AttentionPlan, strides) -> None:
    """A plan for a pipelined kernel was made for calls of certain features
    and tensor layout; refuse one it cannot compute (rather than run it).
    ``strides``: those of q, out, k_cache and v_cache, read once per call by
    the launcher."""
    if plan.kernel not in PIPELINED_KERNELS:
        return
    features, layout = call.features(), call.layout(strides)
    if not pipelined_kernel_covers(plan.kernel, plan.head_size, call.q.dtype, features, layout):
        raise ValueError(
            f"paged_attention: the plan's {plan.kernel} kernel cannot run this call "
            f"({features}, {layout}): plan with the call's features and layout"
        )


def check_write_kv_cache_inputs(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale,
    v_scale,
    query: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    cos_sin_cache: torch.Tensor | None = None,
) -> None:
    fn = "write_kv_cache" if query is None else "rope_and_write_kv_cache"
    if key.dim() != 3 or value.shape != key.shape:
        raise ValueError(
            f"{fn}: key and value must both be [num_tokens, num_kv_heads, head_size], "
            f"got {tuple(key.shape)} and {tuple(value.shape)}"
        )
    check_kv_cache(k_cache, v_cache, key.shape[2], fn)
    if k_cache.shape[2] != key.shape[1]:
        raise ValueError(f"{fn}: key has {key.shape[1]} KV heads, the cache {k_cache.shape[2]}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] < key.shape[0]:
        raise ValueError(
            f"{fn}: slot_mapping must be 1-D with at least {key.shape[0]} entries, "
            f"got shape {tuple(slot_mapping.shape)}"
        )
    if k_cache.dtype in FP8_DTYPES:
        check_kv_dtype(k_cache.dtype, GpuArch.of_device(k_cache.device), fn)
    elif k_cache.dtype not in (torch.int8, INT4_KV_DTYPE, *ACTIVATION_DTYPES):
        expected = "float16, bfloat16, float32, an fp8 type, int8 or uint8 (int4 pairs)"
        fail(TypeError, fn, "k_cache.dtype", expected, k_cache.dtype)
    check_scales(k_cache, v_cache, k_scale, v_scale, fn)
    if query is not None:
        check_rope_inputs(query, key, positions, cos_sin_cache, fn)


def check_rope_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    fn: str,
) -> None:
    """The rotary embedding's inputs (positions past the table are the caller's to avoid)."""
    num_tokens, _, head_size = key.shape
    if query.dim() != 3 or query.shape[0] != num_tokens or query.shape[2] != head_size:
        expected = f"[{num_tokens}, num_q_heads, {head_size}] (the key's tokens and head size)"
        fail(ValueError, fn, "query", expected, tuple(query.shape))
    for name, x in (("query", query), ("key", key), ("cos_sin_cache", cos_sin_cache)):
        if x.dtype not in ACTIVATION_DTYPES:
            fail(TypeError, fn, f"{name}.dtype", "float16, bfloat16 or float32", x.dtype)
    if positions.dim() != 1 or positions.shape[0] < num_tokens:
        expected = f"1-D with at least {num_tokens} entries"
        fail(ValueError, fn, "positions", expected, tuple(positions.shape))
    if positions.dtype not in (torch.int32, torch.int64):
        fail(TypeError, fn, "positions.dtype", "int32 or int64", positions.dtype)
    rotary_dim = cos_sin_cache.shape[-1]
    if cos_sin_cache.dim() != 2 or rotary_dim % 2 or not 2 <= rotary_dim <= head_size:
        expected = f"[max_position, rotary_dim] with rotary_dim even and at most {head_size}"
        fail(ValueError, fn, "cos_sin_cache", expected, tuple(cos_sin_cache.shape))
    if cos_sin_cache.stride(1) != 1:
        fail(ValueError, fn, "cos_sin_cache.stride(1)", "1", cos_sin_cache.stride(1))
    devices = {x.device for x in (query, key, positions, cos_sin_cache)}
    if len(devices) != 1:
        fail(ValueError, fn, "query, key, positions and cos_sin_cache", "on one device", devices)
