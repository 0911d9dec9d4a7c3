# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Portable Triton paged attention (NVIDIA and AMD), imported by vLLM's TRITON_ATTN.

Imports torch and triton only: platform facts (the fp8 dtype, the GPU) arrive
as arguments, so the package runs unchanged on a GPU box without vLLM and in
the CPU interpreter (``TRITON_INTERPRET=1``).

Shapes and semantics (vLLM's conventions):

* ``q``, ``out``: ``[num_tokens, num_q_heads, head_size]``; the tokens of
  sequence ``b`` are ``query_start_loc[b]:query_start_loc[b + 1]`` and are its
  last ``q_len`` positions (``query_start_loc[0]`` may be above 0: rows
  outside the sequences' ranges are left untouched).
* ``k_cache``, ``v_cache``: ``[num_blocks, block_size, num_kv_heads,
  head_size]`` with any strides; key ``j`` of sequence ``b`` is in block
  ``block_table[b, j // block_size]``, slot ``j % block_size``. fp16, bf16,
  fp32, or fp8 (e4m3fn / e4m3fnuz) with per-tensor ``k_scale``/``v_scale``.
* causal: position ``p`` sees keys ``0..p``; ``sliding_window=W`` limits that
  to ``p-W+1..p`` (non-causal: ``p-W+1..p+W-1``).
* scores: ``scale * q.k``, then ``c * tanh(s / c)`` for softcap ``c``, then
  ``+ alibi_slopes[h] * (j - p)``, then masks; ``sinks[h]`` is one more
  logit in the softmax denominator with no value.
* query head ``h`` reads KV head ``h // (num_q_heads // num_kv_heads)``.
* cache slots past ``seq_lens[b]``, blocks outside the window and padding
  rows (``q_len == 0``) may hold anything, NaN included: they never reach a
  valid output.

Example::

    plan = plan_attention(num_tokens=q.shape[0], num_seqs=2, max_query_len=1,
                          num_q_heads=32, num_kv_heads=8, head_size=128,
                          arch=GpuArch.of_device(q.device))
    paged_attention(q, k_cache, v_cache, out, query_start_loc=qsl, seq_lens=lens,
                    block_table=bt, max_query_len=1, max_seq_len=4096,
                    scale=128**-0.5, plan=plan)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from .cache_write import write_kv_cache_kernel
from .long_query import long_query_attention_kernel
from .pipelined_decode import split_kv_decode_pipelined_kernel
from .pipelined_long_query import long_query_pipelined_kernel
from .plan import (
    FINE_KV_SPLITS,
    FP8_DTYPES,
    FP8_MAX,
    MAX_HEAD_SIZE,
    AttentionPlan,
    GpuArch,
    MixedBatchPlan,
    next_power_of_2,
    plan_attention,
    plan_mixed_attention,
)
from .reference import reference_paged_attention
from .split_kv_decode import merge_kv_splits_kernel, split_kv_decode_kernel

__all__ = [
    "AttentionPlan",
    "GpuArch",
    "MixedBatchPlan",
    "SplitKVWorkspace",
    "paged_attention",
    "plan_attention",
    "plan_mixed_attention",
    "reference_paged_attention",
    "write_kv_cache",
]

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_SIZE = 16


@dataclasses.dataclass(frozen=True)
class SplitKVWorkspace:
    """Scratch for split-KV partial results; allocate once and reuse (graph-safe)."""

    partial_out: torch.Tensor  # flat float32
    partial_lse: torch.Tensor  # flat float32
    # The views of each plan shape asked for so far (at most one per batch shape
    # the builder plans for): every layer of a batch asks for the same ones, and
    # making them costs ~6 us per call on the host.
    _views: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def allocate(cls, plan: AttentionPlan | MixedBatchPlan, device: torch.device
                 ) -> SplitKVWorkspace:  # fmt: skip
        return cls.for_plans([plan], device)

    @classmethod
    def for_plans(cls, plans: list[AttentionPlan | MixedBatchPlan], device: torch.device
                  ) -> SplitKVWorkspace:  # fmt: skip
        """One scratch that serves every plan in ``plans`` (each buffer at its largest)."""
        needs = [plan.workspace_elements() for plan in plans]
        out_elements, lse_elements = (max(column) for column in zip(*needs, strict=True))
        return cls(
            torch.empty(max(out_elements, 1), dtype=torch.float32, device=device),
            torch.empty(max(lse_elements, 1), dtype=torch.float32, device=device),
        )

    def views(self, plan: AttentionPlan) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (plan.num_tokens, plan.num_q_heads, plan.num_kv_splits, plan.head_pad)
        views = self._views.get(shape)
        if views is None:
            views = self._views[shape] = self._make_views(plan)
        return views

    def _make_views(self, plan: AttentionPlan) -> tuple[torch.Tensor, torch.Tensor]:
        out_elements, lse_elements = plan.workspace_elements()
        if out_elements > self.partial_out.numel() or lse_elements > self.partial_lse.numel():
            raise ValueError(
                f"workspace holds {self.partial_out.numel()} partial-output elements, "
                f"the plan needs {out_elements}: size it for the largest batch"
            )
        shape = (plan.num_tokens, plan.num_q_heads, plan.num_kv_splits)
        return (
            self.partial_out[:out_elements].view(*shape, plan.head_pad),
            self.partial_lse[:lse_elements].view(shape),
        )


def _fail(error: type[Exception], name: str, expected: str, got) -> None:
    raise error(f"paged_attention: {name} must be {expected}, got {got}")


def _check_kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, head_size: int) -> None:
    if k_cache.dim() != 4:
        _fail(ValueError, "k_cache", "[num_blocks, block_size, num_kv_heads, head_size]",
              tuple(k_cache.shape))  # fmt: skip
    if v_cache.shape != k_cache.shape:
        _fail(ValueError, "v_cache.shape", f"k_cache.shape {tuple(k_cache.shape)}",
              tuple(v_cache.shape))  # fmt: skip
    if v_cache.dtype != k_cache.dtype:
        _fail(TypeError, "v_cache.dtype", f"k_cache.dtype {k_cache.dtype}", v_cache.dtype)
    if k_cache.shape[3] != head_size:
        _fail(ValueError, "k_cache.shape[3] (head size)", f"{head_size}", k_cache.shape[3])


def _check_scales(kv_dtype: torch.dtype, k_scale, v_scale, fn: str) -> None:
    if kv_dtype not in FP8_DTYPES:
        return
    for name, value in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(
                f"{fn}: {name} must be a one-element float32 tensor for an fp8 cache "
                f"({kv_dtype}), got {type(value).__name__}"
            )
        if value.dtype != torch.float32:
            _fail(TypeError, f"{name}.dtype", "torch.float32", value.dtype)


def check_paged_attention_inputs(
    q, k_cache, v_cache, out, query_start_loc, seq_lens, block_table, max_query_len,
    sliding_window, logits_soft_cap, alibi_slopes, sinks, k_scale, v_scale, plan, arch,
) -> None:  # fmt: skip
    """Raise a clear error for anything the kernels cannot run; reads metadata only."""
    if q.dim() != 3:
        _fail(ValueError, "q", "[num_tokens, num_q_heads, head_size]", tuple(q.shape))
    num_tokens, num_q_heads, head_size = q.shape
    if q.dtype not in ACTIVATION_DTYPES:
        _fail(TypeError, "q.dtype", "float16, bfloat16 or float32", q.dtype)
    if out.shape != q.shape:
        _fail(ValueError, "out.shape", f"q.shape {tuple(q.shape)}", tuple(out.shape))
    if out.dtype not in ACTIVATION_DTYPES:
        _fail(TypeError, "out.dtype", "float16, bfloat16 or float32", out.dtype)
    if not MIN_HEAD_SIZE <= head_size <= MAX_HEAD_SIZE:
        _fail(NotImplementedError, "head_size", f"in [{MIN_HEAD_SIZE}, {MAX_HEAD_SIZE}]",
              head_size)  # fmt: skip
    _check_kv_cache(k_cache, v_cache, head_size)
    num_kv_heads = k_cache.shape[2]
    if num_kv_heads == 0 or num_q_heads % num_kv_heads:
        _fail(ValueError, "num_q_heads", f"a multiple of num_kv_heads ({num_kv_heads})",
              num_q_heads)  # fmt: skip
    if k_cache.dtype in FP8_DTYPES:
        if not arch.supports_kv_dtype(k_cache.dtype):
            raise NotImplementedError(
                f"paged_attention: a {k_cache.dtype} KV cache is not supported on "
                f"{arch.vendor} {arch.name}"
            )
        _check_scales(k_cache.dtype, k_scale, v_scale, "paged_attention")
    elif k_cache.dtype != q.dtype:
        _fail(TypeError, "k_cache.dtype", f"q.dtype ({q.dtype}) or an fp8 type", k_cache.dtype)

    if query_start_loc.dim() != 1 or query_start_loc.dtype != torch.int32:
        _fail(ValueError, "query_start_loc", "a 1-D int32 tensor",
              f"{query_start_loc.dim()}-D {query_start_loc.dtype}")  # fmt: skip
    num_seqs = query_start_loc.shape[0] - 1
    if seq_lens.shape != (num_seqs,) or seq_lens.dtype != torch.int32:
        _fail(ValueError, "seq_lens", f"an int32 tensor of shape ({num_seqs},)",
              f"{seq_lens.dtype} of shape {tuple(seq_lens.shape)}")  # fmt: skip
    if block_table.dim() != 2 or block_table.shape[0] < num_seqs:
        _fail(ValueError, "block_table", f"2-D with at least {num_seqs} rows",
              tuple(block_table.shape))  # fmt: skip
    if block_table.dtype not in (torch.int32, torch.int64):
        _fail(TypeError, "block_table.dtype", "int32 or int64", block_table.dtype)
    if block_table.stride(1) != 1:
        _fail(ValueError, "block_table.stride(1)", "1", block_table.stride(1))
    for name, tensor in (("k_cache", k_cache), ("v_cache", v_cache), ("out", out),
                         ("query_start_loc", query_start_loc), ("seq_lens", seq_lens),
                         ("block_table", block_table)):  # fmt: skip
        if tensor.device != q.device:
            _fail(ValueError, f"{name}.device", f"q.device ({q.device})", tensor.device)

    if sliding_window is not None and sliding_window <= 0:
        _fail(ValueError, "sliding_window", "None or a positive int", sliding_window)
    if logits_soft_cap is not None and logits_soft_cap <= 0:
        _fail(ValueError, "logits_soft_cap", "None or positive", logits_soft_cap)
    for name, tensor in (("alibi_slopes", alibi_slopes), ("sinks", sinks)):
        if tensor is not None and tensor.shape != (num_q_heads,):
            _fail(ValueError, f"{name}.shape", f"({num_q_heads},)", tuple(tensor.shape))
    if alibi_slopes is not None and alibi_slopes.dtype != torch.float32:
        _fail(TypeError, "alibi_slopes.dtype", "torch.float32", alibi_slopes.dtype)

    if plan is not None:
        expected = (num_tokens, num_seqs, num_q_heads, num_kv_heads, head_size)
        planned = (plan.num_tokens, plan.num_seqs, plan.num_q_heads, plan.num_kv_heads,
                   plan.head_size)  # fmt: skip
        if planned != expected:
            _fail(ValueError, "plan (num_tokens, num_seqs, q heads, kv heads, head size)",
                  f"{expected} as in the inputs", planned)  # fmt: skip
        if plan.dtype.itemsize != q.dtype.itemsize:  # its tiles may not fit shared memory
            _fail(ValueError, "plan.dtype", f"as wide as q.dtype ({q.dtype}): plan with "
                  "dtype=q.dtype", plan.dtype)  # fmt: skip
        if plan.kernel == "split_kv_decode" and plan.tokens_per_q_block < max_query_len:
            _fail(ValueError, "max_query_len", f"<= {plan.tokens_per_q_block} for this "
                  "split-KV plan", max_query_len)  # fmt: skip
    elif max_query_len < 0:
        _fail(ValueError, "max_query_len", ">= 0", max_query_len)


def _dot_precision(dtype: torch.dtype) -> str | None:
    # fp32 activations get exact fp32 products. 16-bit ones keep the target's
    # default: naming one (e.g. "tf32") is an error on targets that lack it (RDNA).
    return "ieee" if dtype == torch.float32 else None


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    *,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    plan: AttentionPlan | MixedBatchPlan | None = None,
    workspace: SplitKVWorkspace | None = None,
    arch: GpuArch | None = None,
) -> torch.Tensor:
    """Attention of ``q`` over the paged KV cache, written into ``out``.

    ``max_query_len`` and ``max_seq_len`` are host-side bounds (no device sync).
    ``plan`` (from :func:`plan_attention`, or :func:`plan_mixed_attention` for
    a batch of decodes followed by long queries) and ``workspace`` (its
    split-KV scratch) are normally made once per batch by vLLM's metadata
    builder; when omitted they are made here.
    """
    del max_seq_len  # the kernels read each sequence's own length
    if isinstance(plan, MixedBatchPlan):
        return _mixed_batch_attention(
            q, k_cache, v_cache, out, query_start_loc, seq_lens, block_table, max_query_len,
            plan, workspace, scale=scale, causal=causal, sliding_window=sliding_window,
            logits_soft_cap=logits_soft_cap, alibi_slopes=alibi_slopes, sinks=sinks,
            k_scale=k_scale, v_scale=v_scale,
        )  # fmt: skip
    arch = arch or (plan.arch if plan is not None else GpuArch.of_device(q.device))
    check_paged_attention_inputs(
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_table, max_query_len,
        sliding_window, logits_soft_cap, alibi_slopes, sinks, k_scale, v_scale, plan, arch,
    )  # fmt: skip
    num_tokens, num_q_heads, head_size = q.shape
    num_seqs = seq_lens.shape[0]
    if plan is None:
        plan = plan_attention(
            num_tokens=num_tokens,
            num_seqs=num_seqs,
            max_query_len=max_query_len,
            num_q_heads=num_q_heads,
            num_kv_heads=k_cache.shape[2],
            head_size=head_size,
            arch=arch,
            dtype=q.dtype,
        )
    if num_tokens == 0 or num_seqs == 0:
        return out

    for launch in kernel_launches(
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_table, scale, causal,
        sliding_window, logits_soft_cap, alibi_slopes, sinks, k_scale, v_scale, plan, workspace,
    ):  # fmt: skip
        launch.kernel[launch.grid](*launch.args, **launch.constexprs)
    return out


def _mixed_batch_attention(
    q, k_cache, v_cache, out, query_start_loc, seq_lens, block_table, max_query_len, plan,
    workspace, *, scale, causal, sliding_window, logits_soft_cap, alibi_slopes, sinks, k_scale,
    v_scale,
) -> torch.Tensor:  # fmt: skip
    """Decodes (the first sequences and tokens) on split-KV, the rest on long-query.

    The long queries launch right after the split-KV kernel and before its
    merge, so that with programmatic launch they fill the SMs the decode
    leaves idle instead of waiting for it.
    """
    decodes, decode_tokens = plan.num_decodes, plan.num_decode_tokens
    features = (sliding_window, logits_soft_cap, alibi_slopes, sinks, k_scale, v_scale)
    decode = (q[:decode_tokens], k_cache, v_cache, out[:decode_tokens],
              query_start_loc[: decodes + 1], seq_lens[:decodes],
              block_table[:decodes])  # fmt: skip
    # Full q and out: the long queries' offsets in query_start_loc are absolute.
    prefill = (q, k_cache, v_cache, out, query_start_loc[decodes:], seq_lens[decodes:],
               block_table[decodes:])  # fmt: skip
    check_paged_attention_inputs(*decode, plan.max_decode_query_len, *features, plan.decode,
                                 plan.arch)  # fmt: skip
    check_paged_attention_inputs(*prefill, max_query_len, *features, plan.prefill, plan.arch)
    if q.shape[0] == 0:
        return out
    split_kv, *merge = kernel_launches(*decode, scale, causal, *features, plan.decode, workspace,
                                       early_dependents=True)  # fmt: skip
    (long_query,) = kernel_launches(*prefill, scale, causal, *features, plan.prefill, None,
                                    after_split_kv=True)  # fmt: skip
    for launch in (split_kv, long_query, *merge):
        launch.kernel[launch.grid](*launch.args, **launch.constexprs)
    return out


class KernelLaunch(NamedTuple):  # made per layer: builds in half a frozen dataclass's time
    """One kernel launch of a plan: what ``kernel[grid](*args, **constexprs)`` runs."""

    kernel: object  # a @triton.jit function
    grid: tuple[int, int, int]
    args: tuple
    constexprs: dict  # constexpr arguments, num_warps and num_stages


def kernel_launches(
    q, k_cache, v_cache, out, query_start_loc, seq_lens, block_table, scale, causal,
    sliding_window, logits_soft_cap, alibi_slopes, sinks, k_scale, v_scale, plan, workspace,
    after_split_kv=False, early_dependents=False,
) -> list[KernelLaunch]:  # fmt: skip
    """The launches ``paged_attention`` makes for ``plan``: its only source of
    kernel arguments, so the portability compile matrix
    (``scripts/compile_matrix.py``) compiles exactly what would run.

    On GPUs with programmatic dependent launch, the merge is launched before
    its split-KV launch completes and waits in-kernel for the partials. The
    split-KV programs release the next launch as soon as they start when the
    plan says so (``AttentionPlan.releases_merge_early``) or with
    ``early_dependents``: a mixed batch puts its long queries there
    (``after_split_kv``), which then run alongside the decodes."""
    num_seqs = seq_lens.shape[0]
    head_size = q.shape[2]
    kv_is_fp8 = k_cache.dtype in FP8_DTYPES
    dummy = q  # stands in for absent optional pointers; never read
    pointers = (
        q, k_cache, v_cache, out,
        query_start_loc, seq_lens, block_table,
        alibi_slopes if alibi_slopes is not None else dummy,
        sinks if sinks is not None else dummy,
        k_scale if kv_is_fp8 else dummy,
        v_scale if kv_is_fp8 else dummy,
    )  # fmt: skip
    # This runs per layer: every tensor's strides are read once.
    tensor_strides = q.stride(), out.stride(), k_cache.stride(), v_cache.stride()
    q_strides, out_strides, k_strides, v_strides = tensor_strides
    strides = (*q_strides[:2], *out_strides[:2], *k_strides[:3], *v_strides[:3],
               block_table.stride(0))  # fmt: skip
    scalars = (
        scale,
        logits_soft_cap if logits_soft_cap is not None else 0.0,
        sliding_window if sliding_window is not None else 0,
    )
    block_size = k_cache.shape[1]
    pdl = plan.arch.programmatic_launch
    # The split-KV kernel may start while the kernel before it finishes; it waits in-kernel.
    launched_early = dict(PDL=True, launch_pdl=True) if pdl else dict(PDL=False)

    def portable_constexprs(**launch):
        return dict(
            STRIDE_Q_DIM=q_strides[2],
            STRIDE_OUT_DIM=out_strides[2],
            STRIDE_K_DIM=k_strides[3],
            STRIDE_V_DIM=v_strides[3],
            HEAD_SIZE=head_size,
            HEAD_PAD=plan.head_pad,
            QUERIES_PER_KV=plan.queries_per_kv,
            BLOCK_SIZE=block_size,
            BLOCK_M=plan.block_m,
            TILE_N=plan.kv_tile_size,
            IS_CAUSAL=causal,
            HAS_SLIDING_WINDOW=sliding_window is not None,
            HAS_SOFTCAP=logits_soft_cap is not None,
            HAS_ALIBI=alibi_slopes is not None,
            HAS_SINKS=sinks is not None,
            KV_IS_FP8=kv_is_fp8,
            DOT_PRECISION=_dot_precision(q.dtype),
            num_warps=plan.num_warps,
            num_stages=plan.num_stages,
            **launch,
        )

    if plan.kernel == "long_query":
        beside = launched_early if after_split_kv else dict(PDL=False)
        if (
            plan.pipelined_long_query
            and block_size & (block_size - 1) == 0
            and k_strides == v_strides
            and _pipelined_covers(q, k_cache, v_cache, plan, tensor_strides, alibi_slopes, sinks)
        ):
            tile, buffers, fma_exp2_every = plan.pipelined_long_query
            gluon_args = (*pointers[:7], *strides[:4], *k_strides[:3], strides[-1], num_seqs,
                          *scalars)  # fmt: skip
            gluon_switches = dict(
                HEAD_PAD=plan.head_pad, QUERIES_PER_KV=plan.queries_per_kv,
                BLOCK_SIZE=block_size, BLOCK_M=plan.block_m, TILE_N=tile, IS_CAUSAL=causal,
                HAS_SLIDING_WINDOW=sliding_window is not None,
                HAS_SOFTCAP=logits_soft_cap is not None, KV_BUFFERS=buffers,
                FMA_EXP2_EVERY=fma_exp2_every,
                num_warps=plan.num_warps, **beside,
            )  # fmt: skip
            return [KernelLaunch(long_query_pipelined_kernel, plan.grid, gluon_args,
                                 gluon_switches)]  # fmt: skip
        args = (*pointers, *strides, num_seqs, *scalars)
        return [KernelLaunch(long_query_attention_kernel, plan.grid, args,
                             portable_constexprs(**beside))]  # fmt: skip

    if plan.num_kv_splits == 1:
        partial_out = partial_lse = dummy
        partial_strides = (0, 0)
    else:
        workspace = workspace or SplitKVWorkspace.allocate(plan, q.device)
        partial_out, partial_lse = workspace.views(plan)
        partial_strides = partial_out.stride()[:2]
    early = pdl and (early_dependents or plan.releases_merge_early)
    if plan.pipelined_decode and _pipelined_covers(
        q, k_cache, v_cache, plan, tensor_strides, sliding_window, logits_soft_cap, alibi_slopes,
        sinks,
    ):  # fmt: skip
        tile, buffers = plan.pipelined_decode
        gluon_args = (*pointers[:4], partial_out, partial_lse, *pointers[4:7], *strides,
                      *partial_strides, scale)  # fmt: skip
        gluon_switches = dict(
            HEAD_PAD=plan.head_pad, QUERIES_PER_KV=plan.queries_per_kv,
            BLOCK_SIZE=block_size, BLOCK_M=plan.block_m, TILE_N=tile,
            NUM_KV_SPLITS=plan.num_kv_splits, IS_CAUSAL=causal, KV_BUFFERS=buffers,
            EARLY_DEPENDENTS=early, num_warps=plan.num_warps, **launched_early,
        )  # fmt: skip
        launches = [KernelLaunch(split_kv_decode_pipelined_kernel, plan.grid, gluon_args,
                                 gluon_switches)]  # fmt: skip
    else:
        args = (*pointers[:4], partial_out, partial_lse, *pointers[4:], *strides,
                *partial_strides, *scalars)  # fmt: skip
        # Finely split programs stream a few tiles each: fetching the next tile's
        # block numbers early pays there (H200: 2-7% at batch 1-16) and not for
        # long ranges (1 split at batch 128: 2% slower).
        switches = portable_constexprs(
            NUM_KV_SPLITS=plan.num_kv_splits, PREFETCH_BLOCKS=plan.num_kv_splits >= FINE_KV_SPLITS,
            EARLY_DEPENDENTS=early, **launched_early,
        )  # fmt: skip
        launches = [KernelLaunch(split_kv_decode_kernel, plan.grid, args, switches)]
    if plan.num_kv_splits > 1:
        args = (out, partial_out, partial_lse, query_start_loc, pointers[10], *out_strides[:2],
                *partial_strides, num_seqs)  # fmt: skip
        heads_per_program, dims_per_program = plan.merge_tile
        constexprs = dict(
            STRIDE_OUT_DIM=out_strides[2],
            NUM_Q_HEADS=plan.num_q_heads,
            HEAD_SIZE=head_size,
            HEAD_PAD=plan.head_pad,
            HEADS_PER_PROGRAM=heads_per_program,
            DIMS_PER_PROGRAM=dims_per_program,
            NUM_KV_SPLITS=plan.num_kv_splits,
            SPLITS_PAD=next_power_of_2(plan.num_kv_splits),
            KV_IS_FP8=kv_is_fp8,
            PDL=pdl,
            num_warps=4,
        )
        if pdl:  # may start before the split-KV launch completes; waits in-kernel
            constexprs["launch_pdl"] = True
        launches.append(KernelLaunch(merge_kv_splits_kernel, plan.merge_grid, args, constexprs))
    return launches


def _pipelined_covers(q, k_cache, v_cache, plan, tensor_strides, *features) -> bool:
    """Whether the Gluon kernels (``split_kv_decode_pipelined_kernel``,
    ``long_query_pipelined_kernel``) handle this launch: 2-byte queries and
    cache, a power-of-two head size, none of ``features`` (those the kernel
    lacks: ALiBi and sinks for both, sliding window and softcap for the
    decode one), contiguous head dimensions, and caches their 16-byte copies
    can move: 16-byte aligned pointers and strides that are multiples of 16
    elements (what Triton's launcher marks as divisible, without which the
    copies do not compile). The long-query kernel also needs a power-of-two
    block size and K and V caches of the same strides (checked at its
    launch). ``tensor_strides``: those of q, out, k_cache and v_cache, read
    once by the caller (this runs per layer on the host)."""
    if features.count(None) != len(features):
        return False
    if q.dtype.itemsize != 2 or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        return False
    q_strides, out_strides, k_strides, v_strides = tensor_strides
    if q.shape[2] != plan.head_pad or q_strides[2] != 1 or out_strides[2] != 1:
        return False
    for cache, (block, slot, head, dim) in ((k_cache, k_strides), (v_cache, v_strides)):
        if dim != 1 or block % 16 or slot % 16 or head % 16 or cache.data_ptr() % 16:
            return False
    return True


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Store ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` at their slots.

    Token ``t`` goes to block ``slot_mapping[t] // block_size``, offset
    ``slot_mapping[t] % block_size``; tokens with ``slot_mapping[t] < 0`` are
    skipped. An fp8 cache stores ``x / scale``, saturated to the format's range.
    """
    if key.dim() != 3 or value.shape != key.shape:
        raise ValueError(
            "write_kv_cache: key and value must both be [num_tokens, num_kv_heads, head_size], "
            f"got {tuple(key.shape)} and {tuple(value.shape)}"
        )
    _check_kv_cache(k_cache, v_cache, key.shape[2])
    if k_cache.shape[2] != key.shape[1]:
        raise ValueError(
            f"write_kv_cache: key has {key.shape[1]} KV heads, the cache {k_cache.shape[2]}"
        )
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] < key.shape[0]:
        raise ValueError(
            f"write_kv_cache: slot_mapping must be 1-D with at least {key.shape[0]} entries, "
            f"got shape {tuple(slot_mapping.shape)}"
        )
    kv_is_fp8 = k_cache.dtype in FP8_DTYPES
    if kv_is_fp8:
        arch = GpuArch.of_device(k_cache.device)  # no CUDA call for CPU tensors
        if not arch.supports_kv_dtype(k_cache.dtype):
            raise NotImplementedError(
                f"write_kv_cache: a {k_cache.dtype} KV cache is not supported on "
                f"{arch.vendor} {arch.name}"
            )
    _check_scales(k_cache.dtype, k_scale, v_scale, "write_kv_cache")
    num_tokens, num_kv_heads, head_size = key.shape
    if num_tokens == 0:
        return
    write_kv_cache_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        k_scale if kv_is_fp8 else key, v_scale if kv_is_fp8 else key,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        STRIDE_KEY_DIM=key.stride(2),
        STRIDE_VALUE_DIM=value.stride(2),
        STRIDE_K_DIM=k_cache.stride(3),
        STRIDE_V_DIM=v_cache.stride(3),
        NUM_KV_HEADS=num_kv_heads,
        HEADS_PAD=next_power_of_2(num_kv_heads),
        HEAD_SIZE=head_size,
        HEAD_PAD=next_power_of_2(head_size),
        BLOCK_SIZE=k_cache.shape[1],
        KV_IS_FP8=kv_is_fp8,
        FP8_MAX=FP8_MAX.get(k_cache.dtype, 0.0),
        num_warps=4,
    )  # fmt: skip
