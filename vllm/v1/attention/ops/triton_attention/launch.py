# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The launcher: the public entry points, the split-KV workspace, and one host
function per kernel that builds its arguments by name from a call and its plan.

It executes the plan and never chooses: which kernel runs, its tiles, warps
and split count are the plan's (``plan.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import NamedTuple

import torch
from triton.compiler import CompiledKernel
from triton.runtime import driver

from .arch import (
    FP8_DTYPES,
    INT4_KV_DTYPE,
    QUANT_MAX,
    QUANTISED_KV_DTYPES,
    GpuArch,
    rht_block,
    rht_signs,
)
from .cache_write import write_kv_cache_kernel
from .checks import (
    AttentionCall,
    check_paged_attention_inputs,
    check_plan_covers,
    check_write_kv_cache_inputs,
    token_head_scaled,
)
from .long_query import long_query_attention_kernel
from .pipelined_decode import split_kv_decode_pipelined_kernel
from .pipelined_long_query import long_query_pipelined_kernel
from .plan import (
    LONG_QUERY,
    LONG_QUERY_PIPELINED,
    SPLIT_KV_DECODE,
    SPLIT_KV_DECODE_PIPELINED,
    AttentionPlan,
    MixedBatchPlan,
    next_power_of_2,
    plan_attention,
    plan_cache_write,
)
from .split_kv_decode import merge_kv_splits_kernel, split_kv_decode_kernel


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
    def allocate(
        cls, plan: AttentionPlan | MixedBatchPlan, device: torch.device | str
    ) -> SplitKVWorkspace:
        return cls.for_plans([plan], device)

    @classmethod
    def for_plans(
        cls, plans: list[AttentionPlan | MixedBatchPlan], device: torch.device | str
    ) -> SplitKVWorkspace:
        """One scratch that serves every plan in ``plans`` (each buffer at its largest)."""
        needs = [plan.workspace_elements() for plan in plans]
        out_elements, lse_elements = (max(column) for column in zip(*needs, strict=True))
        return cls(
            torch.empty(max(out_elements, 1), dtype=torch.float32, device=device),
            torch.empty(max(lse_elements, 1), dtype=torch.float32, device=device),
        )

    def views(self, plan: AttentionPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """(partial outputs ``[tokens, q heads, splits, head_pad]``, their
        log2-sum-exps ``[tokens, q heads, splits]``) of ``plan``."""
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


class KernelLaunch(NamedTuple):  # made per layer: builds in half a frozen dataclass's time
    """One kernel launch: ``kernel[grid](**args, **options)``."""

    kernel: object  # a @triton.jit or @gluon.jit function
    grid: tuple[int, int, int]
    args: dict  # every kernel parameter, by name (constexprs included)
    options: dict  # num_warps, num_stages, launch_pdl

    def run(self):
        """Launch through Triton's dispatch; returns the compiled kernel (None
        in the interpreter)."""
        return self.kernel[self.grid](*self.ordered_args(), **self.options)

    def ordered_args(self) -> tuple:
        # Passed in the signature's order: Triton binds 40-50 keyword arguments
        # ~3.5 us slower per launch than positional ones.
        return _in_signature_order(self.kernel)(self.args)


@functools.cache
def _in_signature_order(kernel) -> operator.itemgetter:
    """Picks a launch's arguments out of its by-name dict in ``kernel``'s order."""
    return operator.itemgetter(*kernel.arg_names)


class CallStrides(NamedTuple):
    """Every tensor's strides, read once per call (this runs per layer)."""

    q: tuple[int, ...]
    out: tuple[int, ...]
    k: tuple[int, ...]
    v: tuple[int, ...]
    block_table_seq: int

    @classmethod
    def of(cls, call: AttentionCall) -> CallStrides:
        return cls(
            call.q.stride(),
            call.out.stride(),
            call.k_cache.stride(),
            call.v_cache.stride(),
            call.block_table.stride(0),
        )


def _dot_precision(dtype: torch.dtype) -> str | None:
    # fp32 activations get exact fp32 products. 16-bit ones keep the target's
    # default: naming one (e.g. "tf32") is an error on targets that lack it (RDNA).
    return "ieee" if dtype == torch.float32 else None


def _pdl(beside: bool) -> tuple[dict, dict]:
    """(the PDL switch, launch options) of a launch that may start before the
    one ahead of it completes (``beside``: programmatic launch) and waits for
    it in-kernel."""
    if beside:
        return dict(PDL=True), dict(launch_pdl=True)
    return dict(PDL=False), {}


def _paged_tensor_args(call: AttentionCall, strides: CallStrides) -> dict:
    """Pointers and strides every kernel that reads the paged cache takes."""
    q, out, k, v = strides.q, strides.out, strides.k, strides.v
    return dict(
        q_ptr=call.q,
        k_cache_ptr=call.k_cache,
        v_cache_ptr=call.v_cache,
        out_ptr=call.out,
        out_scale_ptr=call.out_scale,
        query_start_loc_ptr=call.query_start_loc,
        seq_lens_ptr=call.seq_lens,
        block_table_ptr=call.block_table,
        stride_q_token=q[0],
        stride_q_head=q[1],
        stride_out_token=out[0],
        stride_out_head=out[1],
        stride_k_block=k[0],
        stride_k_slot=k[1],
        stride_k_head=k[2],
        stride_v_block=v[0],
        stride_v_slot=v[1],
        stride_v_head=v[2],
        stride_block_table_seq=strides.block_table_seq,
    )


def _mask_args(call: AttentionCall) -> dict:
    """Which keys each query sees: the arguments every kernel with per-sequence
    causal flags and multimodal ranges takes (all but the pipelined decode)."""
    per_seq_causal = isinstance(call.causal, torch.Tensor)
    mm_ranges = call.mm_prefix_ranges
    has_mm = mm_ranges is not None
    return dict(
        causal_ptr=call.causal if per_seq_causal else None,
        mm_ranges_ptr=mm_ranges,
        stride_mm_seq=mm_ranges.stride(0) if has_mm else 0,
        num_mm_ranges=mm_ranges.shape[1] if has_mm else 0,
        sliding_window=call.window_size(),
        IS_CAUSAL=per_seq_causal or call.causal,  # a constexpr; per-sequence flags override it
        PER_SEQ_CAUSAL=per_seq_causal,
        HAS_MM_PREFIX=has_mm,
        MM_CLAMP_TO_WINDOW=has_mm
        and call.mm_prefix_clamp_sliding_window
        and call.sliding_window is not None,
        HAS_SLIDING_WINDOW=call.sliding_window is not None,
    )


def _portable_args(call: AttentionCall, strides: CallStrides, plan: AttentionPlan) -> dict:
    """Arguments the portable kernels (split-KV and long-query) share."""
    kv_is_fp8, token_head = call.kv_is_fp8, call.kv_token_head_scaled
    args = _paged_tensor_args(call, strides)
    args.update(_scale_args(call.k_cache, call.k_scale, call.v_scale, kv_is_fp8, token_head))
    # An int4 cache's rotation scales q.k by its Hadamard block's order.
    scale = call.scale / rht_block(plan.head_size) if args["KV_INT4"] else call.scale
    q_is_fp8, q_scale = call.q.dtype in FP8_DTYPES, call.q_scale
    args.update(
        _mask_args(call),
        rswa_prefix_lens_ptr=call.rswa_prefix_lens,  # R-SWA: the portable kernels only
        alibi_slopes_ptr=call.alibi_slopes,
        sinks_ptr=call.sinks,
        scale=scale,
        soft_cap=call.logits_soft_cap if call.logits_soft_cap is not None else 0.0,
        STRIDE_Q_DIM=strides.q[2],
        STRIDE_OUT_DIM=strides.out[2],
        STRIDE_K_DIM=strides.k[3],
        STRIDE_V_DIM=strides.v[3],
        HEAD_SIZE=plan.head_size,
        HEAD_PAD=plan.head_pad,
        QUERIES_PER_KV=plan.queries_per_kv,
        BLOCK_SIZE=call.k_cache.shape[1],
        BLOCK_M=plan.block_m,
        TILE_N=plan.kv_tile_size,
        CHUNK_LOOKBACK=call.chunk_lookback if call.chunk_lookback is not None else -1,
        HAS_SOFTCAP=call.logits_soft_cap is not None,
        ALIBI=None if call.alibi_slopes is None else "sqrt" if call.alibi_sqrt else "linear",
        HAS_SINKS=call.sinks is not None,
        HAS_RSWA=call.rswa_prefix_lens is not None,
        DOT_PRECISION=_dot_precision(call.q.dtype),
        q_scale_ptr=q_scale if q_is_fp8 else None,
        stride_q_scale=1 if q_is_fp8 and q_scale.numel() > 1 else 0,
        Q_IS_FP8=q_is_fp8,
        **_lse_args(call),
    )
    return args


def _lse_args(call: AttentionCall) -> dict:
    """Where the rows' log-sum-exps go (``call.lse``), if anywhere."""
    strides = call.lse.stride() if call.lse is not None else (0, 0)
    return dict(lse_ptr=call.lse, stride_lse_token=strides[0], stride_lse_head=strides[1])


def _scale_args(k_cache, k_scale, v_scale, kv_is_fp8: bool, token_head: bool) -> dict:
    """A quantised cache's scales: one per tensor (fp8), or one per token and
    KV head (int8, fp8 or int4; K's and V's share strides, the checks made
    sure); an int4 cache's rotation signs."""
    scale_strides = k_scale.stride() if token_head else (0, 0, 0)
    kv_int4 = k_cache.dtype == INT4_KV_DTYPE
    return dict(
        k_scale_ptr=k_scale if kv_is_fp8 or token_head else None,
        v_scale_ptr=v_scale if kv_is_fp8 or token_head else None,
        rht_signs_ptr=rht_signs(2 * k_cache.shape[3], k_cache.device) if kv_int4 else None,
        stride_scale_block=scale_strides[0],
        stride_scale_slot=scale_strides[1],
        stride_scale_head=scale_strides[2],
        KV_IS_FP8=kv_is_fp8,
        TOKEN_HEAD_SCALES=token_head,
        KV_INT4=kv_int4,
    )


def long_query_launch(
    call: AttentionCall, strides: CallStrides, plan: AttentionPlan, *, beside_split_kv: bool
) -> KernelLaunch:
    pdl, options = _pdl(beside_split_kv and plan.arch.programmatic_launch)
    args = _portable_args(call, strides, plan)
    args.update(num_seqs=call.seq_lens.shape[0], **pdl)
    options.update(num_warps=plan.num_warps, num_stages=plan.num_stages)
    return KernelLaunch(long_query_attention_kernel, plan.grid, args, options)


def long_query_pipelined_launch(
    call: AttentionCall, strides: CallStrides, plan: AttentionPlan, *, beside_split_kv: bool
) -> KernelLaunch:
    pdl, options = _pdl(beside_split_kv and plan.arch.programmatic_launch)
    args = _paged_tensor_args(call, strides)
    for name in ("k", "v"):  # K and V share strides (the plan checked it)
        for axis in ("block", "slot", "head"):
            args[f"stride_kv_{axis}"] = args.pop(f"stride_{name}_{axis}")
    args.update(
        _mask_args(call),
        num_seqs=call.seq_lens.shape[0],
        scale=call.scale,
        soft_cap=call.logits_soft_cap if call.logits_soft_cap is not None else 0.0,
        HEAD_PAD=plan.head_pad,
        QUERIES_PER_KV=plan.queries_per_kv,
        BLOCK_SIZE=call.k_cache.shape[1],
        BLOCK_M=plan.block_m,
        TILE_N=plan.kv_tile_size,
        HAS_SOFTCAP=call.logits_soft_cap is not None,
        KV_BUFFERS=plan.kv_buffers,
        FMA_EXP2_EVERY=plan.fma_exp2_every,
        **pdl,
    )
    options.update(num_warps=plan.num_warps)
    return KernelLaunch(long_query_pipelined_kernel, plan.grid, args, options)


def _partials_args(partials: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
    if partials is None:  # one split: the kernel writes the output itself
        return dict(
            partial_out_ptr=None,
            partial_lse_ptr=None,
            stride_partial_token=0,
            stride_partial_head=0,
        )
    partial_out, partial_lse = partials
    token_stride, head_stride = partial_out.stride()[:2]
    return dict(
        partial_out_ptr=partial_out,
        partial_lse_ptr=partial_lse,
        stride_partial_token=token_stride,
        stride_partial_head=head_stride,
    )


def split_kv_decode_launch(
    call: AttentionCall,
    strides: CallStrides,
    plan: AttentionPlan,
    partials: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    early_dependents: bool,
) -> KernelLaunch:
    # Always launched early where the GPU can: the programs are in place when
    # the kernel before (the cache write) finishes, and wait for it in-kernel.
    pdl, options = _pdl(plan.arch.programmatic_launch)
    args = _portable_args(call, strides, plan)
    args.update(
        _partials_args(partials),
        NUM_KV_SPLITS=plan.num_kv_splits,
        MIN_SPLIT_KEYS=plan.min_split_keys,
        FOLD_SPLITS=plan.folds_splits,
        EARLY_DEPENDENTS=early_dependents,
        PREFETCH_BLOCKS=plan.prefetch_blocks,
        **pdl,
    )
    options.update(num_warps=plan.num_warps, num_stages=plan.num_stages)
    return KernelLaunch(split_kv_decode_kernel, plan.grid, args, options)


def split_kv_decode_pipelined_launch(
    call: AttentionCall,
    strides: CallStrides,
    plan: AttentionPlan,
    partials: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    early_dependents: bool,
) -> KernelLaunch:
    pdl, options = _pdl(plan.arch.programmatic_launch)
    args = _paged_tensor_args(call, strides)
    args.update(
        _partials_args(partials),
        scale=call.scale,
        HEAD_PAD=plan.head_pad,
        QUERIES_PER_KV=plan.queries_per_kv,
        BLOCK_SIZE=call.k_cache.shape[1],
        BLOCK_M=plan.block_m,
        TILE_N=plan.kv_tile_size,
        NUM_KV_SPLITS=plan.num_kv_splits,
        IS_CAUSAL=call.causal,
        KV_BUFFERS=plan.kv_buffers,
        EARLY_DEPENDENTS=early_dependents,
        **pdl,
    )
    options.update(num_warps=plan.num_warps)
    return KernelLaunch(split_kv_decode_pipelined_kernel, plan.grid, args, options)


def merge_launch(
    call: AttentionCall,
    strides: CallStrides,
    plan: AttentionPlan,
    partials: tuple[torch.Tensor, torch.Tensor],
) -> KernelLaunch:
    # May start before the split-KV launch completes; waits in-kernel.
    pdl, options = _pdl(plan.arch.programmatic_launch)
    heads_per_program, dims_per_program = plan.merge_tile
    args = dict(
        out_ptr=call.out,
        out_scale_ptr=call.out_scale,
        query_start_loc_ptr=call.query_start_loc,
        v_scale_ptr=call.v_scale if call.kv_is_fp8 else None,
        stride_out_token=strides.out[0],
        stride_out_head=strides.out[1],
        **_partials_args(partials),
        **_lse_args(call),
        num_seqs=call.seq_lens.shape[0],
        STRIDE_OUT_DIM=strides.out[2],
        NUM_Q_HEADS=plan.num_q_heads,
        HEAD_SIZE=plan.head_size,
        HEAD_PAD=plan.head_pad,
        HEADS_PER_PROGRAM=heads_per_program,
        DIMS_PER_PROGRAM=dims_per_program,
        NUM_KV_SPLITS=plan.num_kv_splits,
        SPLITS_PAD=next_power_of_2(plan.num_kv_splits),
        SPARSE_SPLITS=plan.min_split_keys > 0,
        KV_IS_FP8=call.kv_is_fp8,
        **pdl,
    )
    options.update(num_warps=4)
    return KernelLaunch(merge_kv_splits_kernel, plan.merge_grid, args, options)


def kernel_launches(
    call: AttentionCall,
    plan: AttentionPlan,
    workspace: SplitKVWorkspace | None = None,
    *,
    beside_split_kv: bool = False,
    early_dependents: bool = False,
) -> list[KernelLaunch]:
    """The launches ``paged_attention`` makes for ``plan``: its only source of
    kernel arguments, so the portability compile matrix
    (``python -m devtools.compile_matrix``) compiles exactly what would run.

    On GPUs with programmatic dependent launch, the merge is launched before
    its split-KV launch completes and waits in-kernel for the partials. The
    split-KV programs release the next launch as soon as they start when the
    plan says so (``AttentionPlan.releases_merge_early``) or with
    ``early_dependents``: a mixed batch puts its long queries there
    (``beside_split_kv``), which then run alongside the decodes. A plan for a
    pipelined kernel refuses a call that kernel cannot compute."""
    strides = CallStrides.of(call)
    check_plan_covers(call, plan, strides[:4])
    if plan.kernel == LONG_QUERY:
        return [long_query_launch(call, strides, plan, beside_split_kv=beside_split_kv)]
    if plan.kernel == LONG_QUERY_PIPELINED:
        return [long_query_pipelined_launch(call, strides, plan, beside_split_kv=beside_split_kv)]
    partials = None
    if plan.merges_splits:
        workspace = workspace or SplitKVWorkspace.allocate(plan, call.q.device)
        partials = workspace.views(plan)
    early = plan.arch.programmatic_launch and (early_dependents or plan.releases_merge_early)
    if plan.kernel == SPLIT_KV_DECODE_PIPELINED:
        split_kv = split_kv_decode_pipelined_launch(
            call, strides, plan, partials, early_dependents=early
        )
    elif plan.kernel == SPLIT_KV_DECODE:
        split_kv = split_kv_decode_launch(call, strides, plan, partials, early_dependents=early)
    else:
        raise ValueError(f"paged_attention: unknown plan.kernel {plan.kernel!r}")
    if partials is None:
        return [split_kv]
    return [split_kv, merge_launch(call, strides, plan, partials)]


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
    plan: AttentionPlan | MixedBatchPlan | None = None,
    workspace: SplitKVWorkspace | None = None,
    arch: GpuArch | None = None,
) -> torch.Tensor:
    """Attention of ``q`` over the paged KV cache, written into ``out``.

    ``max_query_len`` and ``max_seq_len`` are host-side bounds (no device sync).
    ``plan`` (from :func:`plan_batch` or :func:`plan_attention`) and
    ``workspace`` (its split-KV scratch) are normally made once per batch by
    vLLM's metadata builder; when omitted they are made here, for this call's
    features and tensors.
    """
    del max_seq_len  # the kernels read each sequence's own length
    call = AttentionCall(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        out=out,
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
        block_table=block_table,
        scale=scale,
        causal=causal,
        sliding_window=sliding_window,
        logits_soft_cap=logits_soft_cap,
        alibi_slopes=alibi_slopes,
        sinks=sinks,
        k_scale=k_scale,
        v_scale=v_scale,
        mm_prefix_ranges=mm_prefix_ranges,
        mm_prefix_clamp_sliding_window=mm_prefix_clamp_sliding_window,
        alibi_sqrt=alibi_sqrt,
        chunk_lookback=chunk_lookback,
        rswa_prefix_lens=rswa_prefix_lens,
        q_scale=q_scale,
        out_scale=out_scale,
        lse=lse,
    )
    for launch in _checked_launches(call, max_query_len, plan, workspace, arch):
        launch.run()
    return out


class _LayerTensors(NamedTuple):
    """The tensors a layer brings to its batch's launches (AttentionCall's names)."""

    q: torch.Tensor
    out: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    alibi_slopes: torch.Tensor | None
    sinks: torch.Tensor | None
    k_scale: torch.Tensor | None
    v_scale: torch.Tensor | None
    q_scale: torch.Tensor | None
    out_scale: torch.Tensor | None
    lse: torch.Tensor | None


_LAYER_TENSORS = {f"{field}_ptr": index for index, field in enumerate(_LayerTensors._fields)}


class _BoundLaunch(NamedTuple):
    """A launch to repeat with other tensors: its kernel, grid and options, its
    arguments in signature order with None where each repeat's tensors go (no
    tensor of the first call is kept alive), and the compiled kernel's
    launcher for the grid, from the first launch (None in the interpreter).

    With a launcher, the arguments hold device addresses, not tensors: the
    launcher takes an int as it is, while a tensor costs it a method call and
    a driver query per pointer. ``held`` keeps the tensors behind those
    addresses (the batch's own; a repeat's tensors are its caller's)."""

    kernel: object
    grid: tuple[int, int, int]
    options: dict
    args: tuple
    tensor_slots: tuple[tuple[int, int], ...]  # (argument index, index in a repeat's tensors)
    start: Callable | None
    held: tuple[torch.Tensor, ...]

    @classmethod
    def of_first_run(cls, launch: KernelLaunch, tensor_indices: dict[str, int]) -> _BoundLaunch:
        """Runs ``launch`` and binds it; ``tensor_indices``: kernel parameter ->
        the index of its tensor in a later call's tensors."""
        compiled = launch.run()
        names = launch.kernel.arg_names
        slots = tuple(
            (names.index(name), index)
            for name, index in tensor_indices.items()
            if launch.args.get(name) is not None
        )
        args = list(launch.ordered_args())
        for index, _ in slots:
            args[index] = None
        if not isinstance(compiled, CompiledKernel):
            return cls(launch.kernel, launch.grid, launch.options, tuple(args), slots, None, ())
        # what Triton's dispatch ends with, once it has found the kernel
        start = compiled[launch.grid]
        held = tuple(arg for arg in args if isinstance(arg, torch.Tensor))
        args = tuple(arg.data_ptr() if isinstance(arg, torch.Tensor) else arg for arg in args)
        return cls(launch.kernel, launch.grid, launch.options, args, slots, start, held)

    def run_with(self, tensors: tuple, addresses: list, stream: int | None = None) -> None:
        """Launches with a repeat's ``tensors`` (their device ``addresses``,
        see ``_tensors_key``) on ``stream`` (None: the current one, looked up
        by the launcher)."""
        args = list(self.args)
        if self.start is None:
            for index, tensor_index in self.tensor_slots:
                args[index] = tensors[tensor_index]
            self.kernel[self.grid](*args, **self.options)
        else:
            for index, tensor_index in self.tensor_slots:
                args[index] = addresses[tensor_index]
            self.start(*args, stream=stream)


def _current_stream() -> int:
    """The stream a Triton launch would use now (a graph's capture stream
    included): looked up once for a call's several launches."""
    return driver.active.get_current_stream(driver.active.get_current_device())


def _tensors_key(tensors: tuple, key: list) -> tuple[tuple, list]:
    """``key`` extended with what checks and Triton's specialisation read from
    ``tensors``: shapes, strides, dtypes, devices and the address modulo 16
    (Triton specialises pointers on 16-byte alignment, the checks read 4-byte
    alignment); and the tensors' device addresses (None, or the value itself,
    for what is not a tensor: the checks refuse a bad one)."""
    addresses = []
    for t in tensors:
        if isinstance(t, torch.Tensor):
            address = t.data_ptr()
            key += (t.shape, t.stride(), t.dtype, t.device, address % 16)
        else:
            address = t
            key.append(t)
        addresses.append(address)
    return tuple(key), addresses


class BatchLaunches:
    """:func:`paged_attention` for every layer of one batch, the batch's side
    (lengths, block table, plan, workspace, causal flags, multimodal ranges, R-SWA prefixes)
    bound once; vLLM's metadata builder makes one per batch.

    The first call of each layer configuration (its tensors' ``_tensors_key``
    and its scalars) checks it and
    builds its launches as ``paged_attention`` does. Later calls with that
    configuration, the other layers, only put their own tensors into those
    launches and start the compiled kernels directly: no checks, no argument
    building, none of Triton's per-launch dispatch (binding, specialisation,
    cache lookup), which together cost more host time than the launch itself.
    Their key holds everything the checks and the specialisation read, so a
    reused launch is the one those would have built."""

    def __init__(
        self,
        *,
        query_start_loc: torch.Tensor,
        seq_lens: torch.Tensor,
        block_table: torch.Tensor,
        max_query_len: int,
        plan: AttentionPlan | MixedBatchPlan,
        workspace: SplitKVWorkspace | None = None,
        causal: bool | torch.Tensor = True,
        mm_prefix_ranges: torch.Tensor | None = None,
        rswa_prefix_lens: torch.Tensor | None = None,
    ):
        self._batch = dict(
            query_start_loc=query_start_loc,
            seq_lens=seq_lens,
            block_table=block_table,
            causal=causal,
            mm_prefix_ranges=mm_prefix_ranges,
            rswa_prefix_lens=rswa_prefix_lens,
        )
        self._max_query_len = max_query_len
        self._plan = plan
        self._workspace = workspace
        self._layers: dict[tuple, list[_BoundLaunch]] = {}

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        out: torch.Tensor,
        *,
        scale: float,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
        alibi_slopes: torch.Tensor | None = None,
        sinks: torch.Tensor | None = None,
        k_scale: torch.Tensor | None = None,
        v_scale: torch.Tensor | None = None,
        mm_prefix_clamp_sliding_window: bool = False,
        alibi_sqrt: bool = False,
        chunk_lookback: int | None = None,
        q_scale: torch.Tensor | None = None,
        out_scale: torch.Tensor | None = None,
        lse: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As :func:`paged_attention` with this batch's tensors; returns ``out``."""
        layer = _LayerTensors(
            q, out, k_cache, v_cache, alibi_slopes, sinks, k_scale, v_scale, q_scale, out_scale, lse
        )
        scalars = [
            scale,
            sliding_window,
            logits_soft_cap,
            alibi_sqrt,
            chunk_lookback,
            mm_prefix_clamp_sliding_window,
        ]
        key, addresses = _tensors_key(layer, scalars)
        bound = self._layers.get(key)
        if bound is not None:
            stream = _current_stream() if bound[0].start is not None else None
            for launch in bound:
                launch.run_with(layer, addresses, stream)
            return out
        call = AttentionCall(
            scale=scale,
            sliding_window=sliding_window,
            logits_soft_cap=logits_soft_cap,
            mm_prefix_clamp_sliding_window=mm_prefix_clamp_sliding_window,
            alibi_sqrt=alibi_sqrt,
            chunk_lookback=chunk_lookback,
            **layer._asdict(),
            **self._batch,
        )
        self._layers[key] = self._first_launches(call)
        return out

    def _first_launches(self, call: AttentionCall) -> list[_BoundLaunch]:
        launches = _checked_launches(
            call, self._max_query_len, self._plan, self._workspace, arch=None
        )
        return [_BoundLaunch.of_first_run(launch, _LAYER_TENSORS) for launch in launches]


def _checked_launches(
    call: AttentionCall,
    max_query_len: int,
    plan: AttentionPlan | MixedBatchPlan | None,
    workspace: SplitKVWorkspace | None,
    arch: GpuArch | None,
) -> list[KernelLaunch]:
    """``call``'s launches in launch order, after its checks (planned here
    when ``plan`` is None); none for an empty batch."""
    if isinstance(plan, MixedBatchPlan):
        return _mixed_batch_launches(call, max_query_len, plan, workspace)
    q, k_cache = call.q, call.k_cache
    arch = arch or (plan.arch if plan is not None else GpuArch.of_device(q.device))
    check_paged_attention_inputs(call, max_query_len, plan, arch)
    num_tokens, num_q_heads, head_size = q.shape
    num_seqs = call.seq_lens.shape[0]
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
            features=call.features(),
            layout=call.layout(),
        )
    if num_tokens == 0 or num_seqs == 0:
        return []
    return kernel_launches(call, plan, workspace)


def _mixed_batch_launches(
    call: AttentionCall,
    max_query_len: int,
    plan: MixedBatchPlan,
    workspace: SplitKVWorkspace | None,
) -> list[KernelLaunch]:
    """Decodes (the first sequences and tokens) on split-KV, the rest on long-query.

    The long queries launch right after the split-KV kernel and before its
    merge, so that with programmatic launch they fill the SMs the decode
    leaves idle instead of waiting for it.
    """
    decodes, decode_tokens = plan.num_decodes, plan.num_decode_tokens
    per_seq_causal = isinstance(call.causal, torch.Tensor)
    mm_ranges, prefix_lens = call.mm_prefix_ranges, call.rswa_prefix_lens
    decode = call._replace(
        q=call.q[:decode_tokens],
        out=call.out[:decode_tokens],
        lse=call.lse[:decode_tokens] if call.lse is not None else None,
        query_start_loc=call.query_start_loc[: decodes + 1],
        seq_lens=call.seq_lens[:decodes],
        block_table=call.block_table[:decodes],
        causal=call.causal[:decodes] if per_seq_causal else call.causal,
        mm_prefix_ranges=mm_ranges[:decodes] if mm_ranges is not None else None,
        rswa_prefix_lens=prefix_lens[:decodes] if prefix_lens is not None else None,
    )
    # Full q, out and lse: the long queries' offsets in query_start_loc are absolute.
    prefill = call._replace(
        query_start_loc=call.query_start_loc[decodes:],
        seq_lens=call.seq_lens[decodes:],
        block_table=call.block_table[decodes:],
        causal=call.causal[decodes:] if per_seq_causal else call.causal,
        mm_prefix_ranges=mm_ranges[decodes:] if mm_ranges is not None else None,
        rswa_prefix_lens=prefix_lens[decodes:] if prefix_lens is not None else None,
    )
    check_paged_attention_inputs(decode, plan.max_decode_query_len, plan.decode, plan.arch)
    check_paged_attention_inputs(prefill, max_query_len, plan.prefill, plan.arch)
    if call.q.shape[0] == 0:
        return []
    split_kv, *merge = kernel_launches(decode, plan.decode, workspace, early_dependents=True)
    (long_query,) = kernel_launches(prefill, plan.prefill, beside_split_kv=True)
    return [split_kv, long_query, *merge]


class CacheWrite(NamedTuple):
    key: torch.Tensor
    value: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor
    k_scale: torch.Tensor | None
    v_scale: torch.Tensor | None
    query: torch.Tensor | None = None  # with positions and cos_sin_cache: rotated with the keys
    positions: torch.Tensor | None = None
    cos_sin_cache: torch.Tensor | None = None


_WRITE_TENSORS = {f"{field}_ptr": index for index, field in enumerate(CacheWrite._fields)}
# The cache write's launches by what its checks and Triton's specialisation
# read (_tensors_key): every layer of a step writes tensors of the same
# shapes, and the next steps mostly repeat those. Emptied when it reaches
# MAX_REUSED_WRITES entries (one per token count a run sees, and per layout).
_write_launches: dict[tuple, _BoundLaunch] = {}
MAX_REUSED_WRITES = 512


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
    A call like an earlier one in everything but the tensors' addresses (the
    other layers of a step) repeats that one's launch: no checks, no argument
    building, the compiled kernel started directly.
    """
    _write(CacheWrite(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale))


def rope_and_write_kv_cache(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """vLLM's rotary embedding of ``query`` ``[num_tokens, num_q_heads,
    head_size]`` and ``key``, in place, then :func:`write_kv_cache` of the
    rotated keys, in one launch (vLLM's RoPE + KV-cache fusion).

    Token ``t`` turns by row ``positions[t]`` of ``cos_sin_cache``
    ``[max_position, rotary_dim]`` (the cosines, then the sines): the pairs
    of its first ``rotary_dim`` dimensions, ``(d, d + rotary_dim / 2)`` if
    ``is_neox``, else ``(2i, 2i + 1)``, become ``(x cos - y sin, y cos + x
    sin)``, computed in float32 and rounded once to the input's dtype. Every
    token turns, whatever its slot. Positions must lie inside the table
    (they are on the device: not checked, as vLLM's own rotary embedding).
    """
    write = CacheWrite(
        key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale,
        query=query, positions=positions, cos_sin_cache=cos_sin_cache,
    )  # fmt: skip
    _write(write, is_neox)


def _write(write: CacheWrite, rope_neox: bool = True) -> None:
    signature, addresses = _tensors_key(write, [rope_neox])
    bound = _write_launches.get(signature)
    if bound is not None:
        bound.run_with(write, addresses)
        return
    check_write_kv_cache_inputs(*write)
    if write.key.shape[0] == 0:
        return
    if len(_write_launches) >= MAX_REUSED_WRITES:
        _write_launches.clear()
    launch = write_launch(write, rope_neox, GpuArch.of_device(write.key.device))
    _write_launches[signature] = _BoundLaunch.of_first_run(launch, _WRITE_TENSORS)


def write_launch(write: CacheWrite, rope_neox: bool, arch: GpuArch) -> KernelLaunch:
    key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale = write[:7]
    query, positions, cos_sin_cache = write.query, write.positions, write.cos_sin_cache
    num_tokens, num_kv_heads, head_size = key.shape
    num_q_heads = query.shape[1] if query is not None else 0
    tokens, q_heads_block = plan_cache_write(arch, num_tokens, num_q_heads, head_size)
    token_head = k_cache.dtype in QUANTISED_KV_DTYPES and token_head_scaled(k_scale)
    kv_is_fp8 = k_cache.dtype in FP8_DTYPES and not token_head
    key_strides, value_strides = key.stride(), value.stride()
    k_strides, v_strides = k_cache.stride(), v_cache.stride()
    args = dict(
        key_ptr=key,
        value_ptr=value,
        k_cache_ptr=k_cache,
        v_cache_ptr=v_cache,
        slot_mapping_ptr=slot_mapping,
        **_scale_args(k_cache, k_scale, v_scale, kv_is_fp8, token_head),
        **_rope_args(query, positions, cos_sin_cache, rope_neox, q_heads_block),
        num_tokens=num_tokens,
        stride_key_token=key_strides[0],
        stride_key_head=key_strides[1],
        stride_value_token=value_strides[0],
        stride_value_head=value_strides[1],
        stride_k_block=k_strides[0],
        stride_k_slot=k_strides[1],
        stride_k_head=k_strides[2],
        stride_v_block=v_strides[0],
        stride_v_slot=v_strides[1],
        stride_v_head=v_strides[2],
        STRIDE_KEY_DIM=key_strides[2],
        STRIDE_VALUE_DIM=value_strides[2],
        STRIDE_K_DIM=k_strides[3],
        STRIDE_V_DIM=v_strides[3],
        NUM_KV_HEADS=num_kv_heads,
        HEADS_PAD=next_power_of_2(num_kv_heads),
        HEAD_SIZE=head_size,
        HEAD_PAD=next_power_of_2(head_size),
        BLOCK_SIZE=k_cache.shape[1],
        QUANT_MAX=QUANT_MAX.get(k_cache.dtype, 0.0),
        TOKENS=tokens,
    )
    grid = (-(-num_tokens // tokens), 1, 1)
    return KernelLaunch(write_kv_cache_kernel, grid, args, dict(num_warps=4))


def _rope_args(query, positions, cos_sin_cache, rope_neox: bool, q_heads_block: int) -> dict:
    """The rotary embedding's inputs to the cache write (none without ``query``)."""
    if query is None:
        return dict(
            query_ptr=None,
            positions_ptr=None,
            cos_sin_cache_ptr=None,
            stride_query_token=0,
            stride_query_head=0,
            stride_cos_sin_position=0,
            STRIDE_QUERY_DIM=0,
            ROTARY_DIM=0,
            ROPE_NEOX=False,
            NUM_Q_HEADS=0,
            Q_HEADS_BLOCK=1,
        )
    return dict(
        query_ptr=query,
        positions_ptr=positions,
        cos_sin_cache_ptr=cos_sin_cache,
        stride_query_token=query.stride(0),
        stride_query_head=query.stride(1),
        stride_cos_sin_position=cos_sin_cache.stride(0),
        STRIDE_QUERY_DIM=query.stride(2),
        ROTARY_DIM=cos_sin_cache.shape[1],
        ROPE_NEOX=rope_neox,
        NUM_Q_HEADS=query.shape[1],
        Q_HEADS_BLOCK=q_heads_block,
    )
