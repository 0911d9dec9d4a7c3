# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""TRITON_ATTN: portable Triton-only attention for NVIDIA and AMD GPUs.

The kernels live in ``vllm.v1.attention.ops.triton_attention`` (torch + triton
only). This module declares what the backend supports, plans each batch once
in the metadata builder (kernel, tiles, KV splits, grid: host facts only, no
device sync) and launches in ``forward``.

Kernel choice per batch (``TritonAttentionMetadataBuilder.build``):

* every query at most ``max_decode_query_len`` tokens (decode, speculative
  verification): split-KV decode, with the number of splits set by the batch
  size and the GPU, never by context lengths;
* prefill and chunked prefill: the long-query kernel;
* mixed batches (decodes first, then longer queries; vLLM reorders them so):
  the decodes on split-KV and the rest on long-query (``MixedBatchPlan``);
* under decode context parallelism, two such plans: the context on the
  rank's cache shard and the step's new tokens, merged (``DcpBatch``).

Under full CUDA/HIP graphs a captured graph replays one plan for every batch
of its size, so that plan may only depend on what is fixed for the size. With
``FULL_AND_PIECEWISE`` (the default) and ``FULL_DECODE_ONLY`` only uniform
decode batches are captured, whose plan is fixed. When mixed batches are
captured too (``FULL``), a small mixed batch can replay a graph captured from
decodes, so every batch then takes the long-query kernel, which is correct
for every query length. Multimodal prefix-LM ranges come per batch and are
not in a captured launch: such models capture single-token decodes only
(``get_cudagraph_support``).

The class names, attributes and metadata fields that upstream subclasses read
(``triton_attn_diffkv``, the ``TRITON_FLASH_ATTN``/``TRITON_FLASHINFER``
composites, whisper, the ROCm drafting allow-list) are kept.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, NamedTuple

import torch

from vllm import envs
from vllm.config import CUDAGraphMode, VllmConfig, get_layers_from_vllm_config
from vllm.config.cache import CacheDType
from vllm.distributed.parallel_state import get_dcp_group, get_dcp_world_size_and_rank
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.model_executor.layers.quantization.utils.quant_utils import (
    QuantKey,
    kFp8StaticTensorSym,
)
from vllm.platforms import current_platform
from vllm.platforms.interface import DeviceCapability
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionLayer,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
    max_decode_query_len,
)
from vllm.v1.attention.backends.utils import (
    compute_mm_prefix_range_tensor,
    get_dcp_local_seq_lens,
    get_num_attention_heads_from_layers,
    set_triton_ptr_range,
    split_decodes_and_prefills,
)
from vllm.v1.attention.ops.triton_attention import (
    AttentionFeatures,
    AttentionPlan,
    BatchLaunches,
    GpuArch,
    MixedBatchPlan,
    SplitKVWorkspace,
    TensorLayout,
    paged_attention,
    plan_batch,
    rope_and_write_kv_cache,
    write_kv_cache,
)
from vllm.v1.attention.ops.triton_attention.arch import INT4_KV_DTYPE, rht_signs
from vllm.v1.attention.ops.triton_attention.plan import (
    MAX_HEAD_SIZE,
    MIN_HEAD_SIZE,
    SPLIT_KV_MAX_QUERY_LEN,
    next_power_of_2,
)
from vllm.v1.kv_cache_interface import AttentionSpec, KVQuantMode, is_quantized_kv_cache

# The two attentions of a layer under decode context parallelism (DcpBatch).
DCP_PARTS = ("context", "new_tokens")

# Kept for upstream subclasses (triton_attn_diffkv runs upstream's unified
# kernel on these scratch buffers): its 3D path and its segment count.
MIN_LAUNCH_GRID_SIZE_2D = 128
NUM_PAR_SOFTMAX_SEGMENTS = 16


@dataclass
class DcpBatch:
    """One batch under decode context parallelism (DCP) over W ranks.

    Each rank's cache holds every W-th run of ``cp_kv_cache_interleave_size``
    tokens of each sequence, so a layer attends in two parts whose softmax
    states are then merged by their log-sum-exps (LSEs):

    * the context (the keys before the step's new tokens), sharded: the
      queries of all W ranks' heads, all-gathered, over this rank's part of
      the cache, every key visible, with LSEs; vLLM's DCP combine then
      reduces the W partial results and scatters each rank's heads back;
    * the new tokens, which every rank has whole: this rank's queries over
      the step's K/V read straight from the layer inputs (a "cache" of
      one-token blocks, as encoder self-attention), causal, with LSEs.

    The buffers are the builder's (slices of persistent ones, which full
    CUDA graphs replay with)."""

    context: BatchLaunches | None  # None: no request has a context yet
    combine: Callable  # vLLM's cp_lse_ag_out_rs or dcp_a2a_lse_reduce
    merge: Callable  # vLLM's merge_attn_states
    new_tokens: BatchLaunches
    context_out: torch.Tensor  # [tokens, W * heads, head_size]
    context_lse: torch.Tensor  # [tokens, W * heads]
    new_tokens_lse: torch.Tensor  # [heads, tokens]: merge_attn_states' layout


@dataclass
class TritonAttentionMetadata:
    # |---------- N-1 iteration --------|
    # |---------------- N iteration ---------------------|
    # |- tokenA -|......................|-- newTokens ---|
    # |---------- context_len ----------|
    # |-------------------- seq_len ---------------------|
    #                                   |-- query_len ---|
    num_actual_tokens: int  # may include CUDA-graph padding
    max_query_len: int
    query_start_loc: torch.Tensor
    max_seq_len: int
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor  # writable: the cross-attention wrapper replaces it

    # The plan made once for this batch, and the split-KV scratch it uses.
    plan: AttentionPlan | MixedBatchPlan | None
    workspace: SplitKVWorkspace | None

    # Read by upstream's triton_attn_diffkv, which runs upstream's kernel.
    seq_threshold_3D: int
    num_par_softmax_segments: int
    softmax_segm_output: torch.Tensor
    softmax_segm_max: torch.Tensor
    softmax_segm_expsum: torch.Tensor

    causal: bool | torch.Tensor = True

    # Multimodal prefix-LM ranges per request (vLLM's dict and its padded
    # [num_reqs, ranges, 2] int32 tensor), None when the batch has none.
    mm_prefix_range: dict[int, list[tuple[int, int]]] | None = None
    mm_prefix_range_tensor: torch.Tensor | None = None

    # The decoder layers' attention with this batch bound (made by the builder):
    # layers after the first launch without re-checking and re-binding.
    launches: BatchLaunches | None = None

    # R-SWA: each request's prompt prefix stays visible beside a causal
    # window of rswa_window keys (the builder's persistent copy), else None.
    rswa_prefix_lens: torch.Tensor | None = None
    rswa_window: int | None = None

    # Upstream field kept for subclasses.
    scheduler_metadata: torch.Tensor | None = None

    # Encoder self-attention reads K/V straight from the layer inputs, as a
    # "cache" of one-token blocks: block j of sequence b is token qsl[b] + j,
    # and each sequence's keys are its queries (seq_lens may count more).
    encoder_block_table: torch.Tensor | None = None
    encoder_seq_lens: torch.Tensor | None = None

    # Decode context parallelism: the batch's two attentions, see DcpBatch.
    dcp: DcpBatch | None = None


class TritonAttentionMetadataBuilder(AttentionMetadataBuilder[TritonAttentionMetadata]):
    # ALWAYS: see the module docstring for why every captured plan is right.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.ALWAYS
    # Nothing in the metadata is restaged per drafting step (R-SWA aside, see __init__).
    supports_draft_decode_metadata_update = True

    @classmethod
    def get_cudagraph_support(
        cls, vllm_config: VllmConfig, kv_cache_spec: AttentionSpec
    ) -> AttentionCGSupport:
        """A captured graph replays its launch without the batch's multimodal
        ranges. For one-token decodes that is exact: the query is the last key
        (nothing in its range lies ahead) and vLLM drops ranges longer than an
        unclamped window (the range keys behind it are visible anyway). So a
        prefix-LM model captures those alone."""
        model_config = vllm_config.model_config
        if model_config is not None and model_config.is_mm_prefix_lm:
            return AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
        return cls._cudagraph_support

    def __init__(
        self,
        kv_cache_spec: AttentionSpec,
        layer_names: list[str],
        vllm_config: VllmConfig,
        device: torch.device,
    ):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        model_config = vllm_config.model_config
        parallel_config = vllm_config.parallel_config
        self.block_size = kv_cache_spec.block_size
        self.num_heads_q = get_num_attention_heads_from_layers(
            vllm_config, layer_names
        ) or model_config.get_num_attention_heads(parallel_config)
        # The cache spec, not the model config: a group's layers may differ from
        # the model-wide shape.
        self.num_heads_kv = kv_cache_spec.num_kv_heads
        self.headdim = kv_cache_spec.head_size
        self.dtype = model_config.dtype  # of the queries: the plan's tiles depend on its width
        # Decode context parallelism (see DcpBatch): this rank's place in its group.
        self.dcp_world_size, self.dcp_rank = get_dcp_world_size_and_rank(kv_cache_spec.dcp_sharded)
        # (the group's, as the impls read it: a replicated draft cache's layers too)
        dcp_group_size = get_dcp_world_size_and_rank(
            vllm_config.parallel_config.decode_context_parallel_size > 1
        )[0]
        if quantises_queries(vllm_config.cache_config.cache_dtype, dcp_group_size):
            self.dtype = current_platform.fp8_dtype()
        self.arch = GpuArch.of_device(device)
        self.features, encoder = _layer_features(vllm_config, layer_names)
        # R-SWA (model-wide): the runner sends each request's prompt length;
        # build() stages it in a persistent buffer that graphs replay from.
        self.rswa_window = model_config.rswa_window
        self.rswa_prefix_lens = None
        if self.rswa_window is not None:
            self.features = self.features._replace(rswa=True)
            self.rswa_prefix_lens = torch.zeros(
                vllm_config.scheduler_config.max_num_seqs, dtype=torch.int32, device=device
            )
            # update_draft_decode_metadata() would not restage the prefixes
            self.supports_draft_decode_metadata_update = False
        cache_dtype = vllm_config.cache_config.cache_dtype
        kv_dtype = kv_dtype_of(cache_dtype, kv_cache_spec.dtype)
        if kv_dtype == INT4_KV_DTYPE:  # its rotation signs, made now rather than in a capture
            rht_signs(self.headdim, device)
        # K/V straight from the layer's inputs as one-token blocks: encoder
        # self-attention (TritonAttentionImpl._encoder_kv) and DCP's new tokens
        self.inputs_layout = TensorLayout(self.dtype, 1, kv_same_strides=True, vector_copies=False)
        if encoder:
            self.layout = self.inputs_layout
        else:
            self.layout = TensorLayout.of_packed_kv_cache(self.headdim, kv_dtype, self.block_size)
        if self.dcp_world_size > 1:  # persistent lengths, block table and buffers
            self._init_dcp(vllm_config, device)

        # Decodes and speculative verifications (1 + k tokens) first, so that a
        # batch of them is recognised by its max_query_len alone.
        self._init_reorder_batch_threshold(1, supports_spec_as_decode=True)
        self.max_decode_query_len = min(max_decode_query_len(vllm_config), SPLIT_KV_MAX_QUERY_LEN)
        mode = vllm_config.compilation_config.cudagraph_mode
        self.mixed_batches_in_full_graphs = (
            mode is not None and mode.mixed_mode() == CUDAGraphMode.FULL
        )
        # VLLM_BATCH_INVARIANT=1: every request's output bitwise independent of
        # its batch (the plan fixes each sequence's split-KV reduction order).
        self.batch_invariant = envs.VLLM_BATCH_INVARIANT

        # One persistent split-KV scratch, sized for the largest plan that the
        # decodes of a batch the scheduler can form (graph capture sizes
        # included) get: alone, or beside a long query (their split counts
        # differ, see plan.num_kv_splits_for), with the features a batch may
        # add to the layers' own.
        max_num_seqs = vllm_config.scheduler_config.max_num_seqs
        decode_len = self.max_decode_query_len
        long_len = SPLIT_KV_MAX_QUERY_LEN + 1
        self.workspace = SplitKVWorkspace.for_plans(
            [
                self.plan_for(
                    seqs * decode_len + long_len * mixed,
                    seqs + mixed,
                    long_len if mixed else decode_len,
                    seqs,
                    seqs * decode_len,
                    per_seq_causal=per_seq_causal,
                    mm_prefix=mm_prefix,
                    dcp_part=dcp_part,
                )
                for seqs in range(1, max_num_seqs + 1)
                for mixed in (0, 1)
                for per_seq_causal, mm_prefix in ((False, False), (True, False), (False, True))
                for dcp_part in ((None,) if self.dcp_world_size == 1 else DCP_PARTS)
            ],
            device,
        )

        # Upstream-compatible scratch for subclasses that run upstream's kernel.
        self.seq_threshold_3D = MIN_LAUNCH_GRID_SIZE_2D // self.num_heads_kv
        self.num_par_softmax_segments = NUM_PAR_SOFTMAX_SEGMENTS
        legacy_tokens = min(self.seq_threshold_3D, max_num_seqs) * self.max_decode_query_len
        legacy_shape = (legacy_tokens, self.num_heads_q, NUM_PAR_SOFTMAX_SEGMENTS)
        self.softmax_segm_output = torch.empty(
            (*legacy_shape, next_power_of_2(self.headdim)), dtype=torch.float32, device=device
        )
        self.softmax_segm_max = torch.empty(legacy_shape, dtype=torch.float32, device=device)
        self.softmax_segm_expsum = torch.empty(legacy_shape, dtype=torch.float32, device=device)

    def _init_dcp(self, vllm_config: VllmConfig, device: torch.device) -> None:
        # vLLM's DCP collectives and merge, imported where DCP runs only
        from vllm.v1.attention.ops.dcp import cp_lse_ag_out_rs, dcp_a2a_lse_reduce
        from vllm.v1.attention.ops.merge_attn_states import merge_attn_states

        self.dcp_merge = merge_attn_states
        w, heads = self.dcp_world_size, self.num_heads_q
        self.dcp_interleave = vllm_config.parallel_config.cp_kv_cache_interleave_size
        self.dcp_combine = (
            dcp_a2a_lse_reduce
            if vllm_config.parallel_config.dcp_comm_backend == "a2a"
            else cp_lse_ag_out_rs
        )
        max_num_seqs = vllm_config.scheduler_config.max_num_seqs
        max_tokens = vllm_config.scheduler_config.max_num_batched_tokens
        self.dcp_context_lens = torch.zeros(max_num_seqs, dtype=torch.int32, device=device)
        self.dcp_new_token_lens = torch.zeros(max_num_seqs, dtype=torch.int32, device=device)
        self.dcp_new_token_blocks = torch.zeros(
            max_num_seqs, max_tokens, dtype=torch.int32, device=device
        )
        self.dcp_positions = torch.arange(max_tokens, dtype=torch.int32, device=device)
        # flat, so that each batch's views are contiguous
        self.dcp_context_out = torch.empty(
            max_tokens * w * heads * self.headdim,
            dtype=vllm_config.model_config.dtype,
            device=device,
        )
        self.dcp_context_lse = torch.empty(
            max_tokens * w * heads, dtype=torch.float32, device=device
        )
        self.dcp_new_tokens_lse = torch.empty(
            max_tokens * heads, dtype=torch.float32, device=device
        )

    def plan_for(
        self,
        num_tokens: int,
        num_seqs: int,
        max_query_len: int,
        num_decodes: int,
        num_decode_tokens: int,
        per_seq_causal: bool = False,
        mm_prefix: bool = False,
        dcp_part: str | None = None,
    ) -> AttentionPlan | MixedBatchPlan:
        """The plan of a batch whose first ``num_decodes`` sequences are decodes
        (host facts only, see the module docstring); ``per_seq_causal``: the
        batch carries a causal flag per request; ``mm_prefix``: multimodal
        ranges; ``dcp_part``: ``"context"`` or ``"new_tokens"`` under decode
        context parallelism (DcpBatch)."""
        num_q_heads, layout = self.num_heads_q, self.layout
        features = self.features._replace(per_seq_causal=per_seq_causal, mm_prefix=mm_prefix)
        if dcp_part is not None:
            features = features._replace(returns_lse=True)
        if dcp_part == "context":
            num_q_heads *= self.dcp_world_size
        elif dcp_part == "new_tokens":
            layout = self.inputs_layout
        return plan_batch(
            num_tokens=num_tokens,
            num_seqs=num_seqs,
            num_decodes=num_decodes,
            num_decode_tokens=num_decode_tokens,
            max_decode_query_len=self.max_decode_query_len,
            max_query_len=max_query_len,
            num_q_heads=num_q_heads,
            num_kv_heads=self.num_heads_kv,
            head_size=self.headdim,
            arch=self.arch,
            dtype=self.dtype,
            features=features,
            layout=layout,
            long_query_only=self.mixed_batches_in_full_graphs,
            batch_invariant=self.batch_invariant,
        )

    def build_for_cudagraph_capture(
        self, common_attn_metadata: CommonAttentionMetadata
    ) -> TritonAttentionMetadata:
        # Without host lengths: a captured graph must keep DCP's context attention,
        # which build() skips when no request has a context yet.
        common_attn_metadata = replace(common_attn_metadata, seq_lens_cpu_upper_bound=None)
        attn_metadata = self.build(0, common_attn_metadata)
        # Capture with max_model_len-long sequences would take very long; the
        # launch does not depend on lengths, so length 1 captures the same graph.
        attn_metadata.seq_lens.fill_(1)
        return attn_metadata

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> TritonAttentionMetadata:
        md = common_attn_metadata
        per_seq_causal = isinstance(md.causal, torch.Tensor)
        if per_seq_causal and md.causal.dtype != torch.int32:
            # Converting here would make a new tensor per batch, which a
            # captured graph would not see.
            raise ValueError(
                f"TRITON_ATTN: per-request causal flags must be an int32 tensor, got "
                f"{md.causal.dtype}"
            )
        # vLLM's padded tensor of the batch's ranges, None if no request has one.
        mm_ranges = compute_mm_prefix_range_tensor(md.mm_req_doc_ranges, md.num_reqs, self.device)
        # Reads query_start_loc_cpu only (no device sync); returns at once for
        # a batch of decodes.
        num_decodes, _, num_decode_tokens, _ = split_decodes_and_prefills(
            md, decode_threshold=self.max_decode_query_len
        )
        prefix_lens = None
        if self.rswa_prefix_lens is not None and md.rswa_prefix_lens is not None:
            prefix_lens = self.rswa_prefix_lens[: md.num_reqs]
            prefix_lens.copy_(md.rswa_prefix_lens[: md.num_reqs], non_blocking=True)
        batch_facts = (
            md.num_actual_tokens, md.num_reqs, md.max_query_len, num_decodes, num_decode_tokens
        )  # fmt: skip
        if self.dcp_world_size > 1:
            plan, launches = None, None
            dcp = self._build_dcp(md, batch_facts, per_seq_causal)
        else:
            plan = self.plan_for(
                *batch_facts, per_seq_causal=per_seq_causal, mm_prefix=mm_ranges is not None
            )
            dcp = None
            launches = BatchLaunches(
                query_start_loc=md.query_start_loc,
                seq_lens=md.seq_lens,
                block_table=md.block_table_tensor,
                max_query_len=md.max_query_len,
                plan=plan,
                workspace=self.workspace,
                causal=md.causal,
                mm_prefix_ranges=mm_ranges,
                rswa_prefix_lens=prefix_lens,
            )
        return TritonAttentionMetadata(
            num_actual_tokens=md.num_actual_tokens,
            max_query_len=md.max_query_len,
            query_start_loc=md.query_start_loc,
            max_seq_len=md.max_seq_len,
            seq_lens=md.seq_lens,
            block_table=md.block_table_tensor,
            slot_mapping=md.slot_mapping,
            plan=plan,
            workspace=self.workspace,
            seq_threshold_3D=self.seq_threshold_3D,
            num_par_softmax_segments=self.num_par_softmax_segments,
            softmax_segm_output=self.softmax_segm_output,
            softmax_segm_max=self.softmax_segm_max,
            softmax_segm_expsum=self.softmax_segm_expsum,
            causal=md.causal,
            mm_prefix_range=md.mm_req_doc_ranges if mm_ranges is not None else None,
            mm_prefix_range_tensor=mm_ranges,
            rswa_prefix_lens=prefix_lens,
            rswa_window=self.rswa_window if prefix_lens is not None else None,
            launches=launches,
            dcp=dcp,
        )

    def _build_dcp(
        self, md: CommonAttentionMetadata, batch_facts: tuple, per_seq_causal: bool
    ) -> DcpBatch:
        """The two attentions of a DCP batch (DcpBatch), on device tensors only."""
        num_tokens, num_reqs, max_query_len = batch_facts[:3]
        qsl = md.query_start_loc
        new_token_lens = self.dcp_new_token_lens[:num_reqs]
        torch.sub(qsl[1 : num_reqs + 1], qsl[:num_reqs], out=new_token_lens)
        blocks = self.dcp_new_token_blocks[:num_reqs, :max_query_len]
        torch.add(qsl[:num_reqs, None], self.dcp_positions[None, :max_query_len], out=blocks)
        new_tokens = BatchLaunches(
            query_start_loc=qsl,
            seq_lens=new_token_lens,
            block_table=self.dcp_new_token_blocks[:num_reqs],
            max_query_len=max_query_len,
            plan=self.plan_for(*batch_facts, per_seq_causal=per_seq_causal, dcp_part="new_tokens"),
            workspace=self.workspace,
            causal=md.causal,
        )
        # Staged even when skipped below: a graph captured with it replays it.
        context_lens = self.dcp_context_lens[:num_reqs]
        context_lens.copy_(
            get_dcp_local_seq_lens(
                md.seq_lens[:num_reqs] - new_token_lens,
                self.dcp_world_size,
                self.dcp_rank,
                self.dcp_interleave,
            )
        )
        # Context attention is skipped (on every rank alike: the host's bound
        # is the whole group's) when no request has keys before the step.
        context = None
        seq_lens_bound = md.seq_lens_cpu_upper_bound
        query_lens = md.query_start_loc_cpu[1 : num_reqs + 1] - md.query_start_loc_cpu[:num_reqs]
        if seq_lens_bound is None or bool((seq_lens_bound[:num_reqs] > query_lens).any()):
            context = BatchLaunches(
                query_start_loc=qsl,
                seq_lens=context_lens,
                block_table=md.block_table_tensor,
                max_query_len=max_query_len,
                plan=self.plan_for(*batch_facts, dcp_part="context"),
                workspace=self.workspace,
                causal=False,  # every key of the context precedes the step's queries
            )
        heads, shards = self.num_heads_q, self.dcp_world_size
        return DcpBatch(
            context=context,
            combine=self.dcp_combine,
            merge=self.dcp_merge,
            new_tokens=new_tokens,
            context_out=self.dcp_context_out[: num_tokens * shards * heads * self.headdim].view(
                num_tokens, shards * heads, self.headdim
            ),
            context_lse=self.dcp_context_lse[: num_tokens * shards * heads].view(
                num_tokens, shards * heads
            ),
            new_tokens_lse=self.dcp_new_tokens_lse[: heads * num_tokens].view(heads, num_tokens),
        )

    def update_draft_decode_metadata(self, _metadata: TritonAttentionMetadata) -> None:
        pass  # every field references the runner's persistent buffers


class TritonAttentionBackend(AttentionBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = [
        torch.float16,
        torch.bfloat16,
        torch.float32,
    ]
    supported_kv_cache_dtypes: ClassVar[list[CacheDType]] = [
        "auto",
        "float16",
        "bfloat16",
        "fp8",
        "fp8_e4m3",
        "fp8_e5m2",
        "int8_per_token_head",
        "fp8_per_token_head",
        "int4_per_token_head",
    ]
    forward_includes_kv_cache_update: bool = False

    @classmethod
    def customize_spec(cls, spec: AttentionSpec) -> AttentionSpec:
        """Per-token-head caches keep each (head, slot)'s float32 scale after its
        values, ``[K | K scale | V | V scale]``: the page vLLM's other readers of
        these modes expect (int4: two values per byte)."""
        if spec.state_content_bytes is not None or spec.kv_quant_mode not in TOKEN_HEAD_MODES:
            return spec
        scale_bytes = torch.finfo(torch.float32).bits // 8
        values = spec.head_size + spec.head_size_v
        if spec.kv_quant_mode == KVQuantMode.INT4_PER_TOKEN_HEAD:
            values //= 2
        content = values * spec.dtype.itemsize + 2 * scale_bytes
        return replace(spec, state_content_bytes=content)

    @staticmethod
    def get_name() -> str:
        return "TRITON_ATTN"

    @staticmethod
    def get_impl_cls() -> type["TritonAttentionImpl"]:
        return TritonAttentionImpl

    @staticmethod
    def get_builder_cls() -> type["TritonAttentionMetadataBuilder"]:
        return TritonAttentionMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return [MultipleOf(16)]

    @classmethod
    def supports_block_size(cls, block_size: int | None) -> bool:
        return block_size is None or block_size % 16 == 0

    @classmethod
    def supports_head_size(cls, head_size: int) -> bool:
        return MIN_HEAD_SIZE <= head_size <= MAX_HEAD_SIZE

    @classmethod
    def supports_sink(cls) -> bool:
        return True

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_non_causal(cls) -> bool:
        return True

    @classmethod
    def supports_rswa(cls) -> bool:
        return True

    @classmethod
    def supports_mm_prefix(cls) -> bool:
        return True

    @classmethod
    def supports_batch_invariance(cls) -> bool:
        return True

    @classmethod
    def supports_alibi_sqrt(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type in (
            AttentionType.DECODER,
            AttentionType.ENCODER,
            AttentionType.ENCODER_ONLY,
            AttentionType.ENCODER_DECODER,
        )

    @classmethod
    def supports_compute_capability(cls, capability: DeviceCapability) -> bool:
        return True

    @classmethod
    def validate_configuration(cls, **config) -> list[str]:
        """vLLM's checks (it passes every fact by name), and what decode
        context parallelism cannot carry: masks that need each key's position,
        which a rank's cache shard does not keep (DcpBatch)."""
        reasons = super().validate_configuration(**config)
        if config.get("use_dcp"):
            positional = {
                "has_sliding_window": "a sliding window",
                "use_rswa": "R-SWA",
                "use_mm_prefix": "multimodal prefix ranges",
            }
            for fact, feature in positional.items():
                if config.get(fact):
                    reasons.append(
                        f"DCP with {feature} not supported (needs key positions, which a "
                        "rank's cache shard does not keep)"
                    )
        return reasons

    @classmethod
    def supports_combination(
        cls,
        head_size: int,
        dtype: torch.dtype,
        kv_cache_dtype: CacheDType | None,
        block_size: int | None,
        use_mla: bool,
        has_sink: bool,
        use_sparse: bool,
        use_mm_prefix: bool,
        device_capability: DeviceCapability,
    ) -> str | None:
        if kv_cache_dtype == "int4_per_token_head" and head_size % 8:
            return (
                "int4_per_token_head needs a head size divisible by 8 (float32 scales "
                "follow its head_size / 2 bytes)"
            )
        if kv_cache_dtype in TOKEN_HEAD_CACHE_DTYPES and head_size % 4:
            return f"{kv_cache_dtype} needs a head size divisible by 4 (float32 scales follow it)"
        if kv_cache_dtype is not None and kv_cache_dtype.startswith("fp8"):
            fp8_dtype = fp8_cache_dtype(kv_cache_dtype)
            arch = _arch_of(device_capability)
            if not arch.supports_kv_dtype(fp8_dtype):
                return (
                    f"an fp8 KV cache ({fp8_dtype}) needs native fp8 conversions, which "
                    f"{arch.vendor} {arch.name} lacks (NVIDIA needs compute capability 8.9+; "
                    "AMD: e4m3 on gfx942, gfx950 and gfx12, e5m2 on gfx950 and gfx12)"
                )
        return None


# vLLM's caches with a scale per token and KV head (int4's vectors also rotated).
TOKEN_HEAD_CACHE_DTYPES = ("int8_per_token_head", "fp8_per_token_head", "int4_per_token_head")
TOKEN_HEAD_MODES = (
    KVQuantMode.INT8_PER_TOKEN_HEAD,
    KVQuantMode.FP8_PER_TOKEN_HEAD,
    KVQuantMode.INT4_PER_TOKEN_HEAD,
)


def converts_platform_fp8() -> bool:
    """Whether the GPU converts and multiplies the platform's e4m3 format
    natively (NVIDIA sm_89+, AMD gfx942, gfx950, gfx12; the CPU interpreter in
    software)."""
    arch = _arch_of(current_platform.get_device_capability() or DeviceCapability(0, 0))
    return arch.supports_kv_dtype(current_platform.fp8_dtype())


def quantises_queries(cache_dtype: str, dcp_world_size: int = 1) -> bool:
    """Whether vLLM hands this cache's layers fp8 queries: it does for an fp8
    cache with per-tensor scales in the platform's e4m3 format where an
    implementation takes them (``supports_quant_query_input``), and ours does
    wherever the GPU reads that cache (``converts_platform_fp8``), except
    under decode context parallelism, whose new tokens are attended from the
    layer's 16-bit K/V (DcpBatch)."""
    return cache_dtype in ("fp8", "fp8_e4m3") and converts_platform_fp8() and dcp_world_size == 1


def kv_dtype_of(cache_dtype: str, spec_dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels read a cache of vLLM's ``cache_dtype`` as."""
    if cache_dtype == "int8_per_token_head":
        return torch.int8
    if cache_dtype == "int4_per_token_head":
        return INT4_KV_DTYPE  # two codes per byte
    if is_quantized_kv_cache(cache_dtype):
        return fp8_cache_dtype(cache_dtype)
    return spec_dtype


def fp8_cache_dtype(cache_dtype: str) -> torch.dtype:
    """The fp8 format of a quantised KV cache (vLLM allocates its bytes as uint8):
    e5m2 when named, else the platform's e4m3 (the fnuz variant on MI300)."""
    return torch.float8_e5m2 if cache_dtype == "fp8_e5m2" else current_platform.fp8_dtype()


def _arch_of(capability: DeviceCapability) -> GpuArch:
    vendor = (
        "cuda"
        if current_platform.is_cuda()
        else "hip"
        if current_platform.is_rocm()
        else "interpreter"  # the CPU interpreter and other platforms convert in software
    )
    return GpuArch.of_capability(vendor, capability.major, capability.minor)


def _layer_features(
    vllm_config: VllmConfig, layer_names: list[str]
) -> tuple[AttentionFeatures, bool]:
    """The features any of these layers uses (one plan serves them all), and
    whether they are encoder layers (no KV cache). Without the layers (a
    builder made outside a model), every feature, so that the plan picks
    kernels that run any call."""
    layers = get_layers_from_vllm_config(vllm_config, AttentionLayerBase, layer_names)
    impls = [getattr(layer, "impl", None) for layer in layers.values()]
    impls = [impl for impl in impls if impl is not None]
    if not impls:
        every = dict(sliding_window=True, softcap=True, alibi=True, sinks=True, chunked_window=True)
        return AttentionFeatures(**every), False
    features = AttentionFeatures(
        sliding_window=any(
            tuple(getattr(i, "sliding_window", (-1, -1))) != (-1, -1) for i in impls
        ),
        softcap=any(bool(getattr(i, "logits_soft_cap", 0)) for i in impls),
        alibi=any(getattr(i, "alibi_slopes", None) is not None for i in impls),
        sinks=any(getattr(i, "sinks", None) is not None for i in impls),
        chunked_window=any(getattr(i, "chunk_lookback", -1) > -1 for i in impls),
        token_head_scales=any(getattr(i, "_token_head_scales", False) for i in impls),
    )
    encoder = any(
        getattr(i, "attn_type", AttentionType.DECODER)
        in (AttentionType.ENCODER, AttentionType.ENCODER_ONLY)
        for i in impls
    )
    return features, encoder


class CacheViews(NamedTuple):
    """What the kernels read of one layer's packed cache."""

    key: torch.Tensor
    value: torch.Tensor
    k_scale: torch.Tensor | None  # per-token-head quantisation: [num_blocks, block_size, H]
    v_scale: torch.Tensor | None


class TritonAttentionImpl(AttentionImpl):
    # Decode context parallelism: the kernels return log-sum-exps (DcpBatch)
    can_return_lse_for_decode: bool = True
    supports_dcp: bool = True

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        logits_soft_cap: float | None = None,
        attn_type: AttentionType = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
        use_alibi_sqrt: bool = False,
        chunk_lookback: int = -1,
    ) -> None:
        if use_alibi_sqrt and alibi_slopes is None:
            raise ValueError("TRITON_ATTN: use_alibi_sqrt needs alibi_slopes")
        if chunk_lookback > -1 and (sliding_window is None or chunk_lookback >= sliding_window):
            raise ValueError(
                f"TRITON_ATTN: chunk_lookback={chunk_lookback} needs a sliding window of more "
                f"than {chunk_lookback} keys (chunks of window // (lookback + 1)), got "
                f"{sliding_window}"
            )
        if kv_cache_dtype not in TritonAttentionBackend.supported_kv_cache_dtypes:
            raise NotImplementedError(
                f"TRITON_ATTN does not support kv_cache_dtype={kv_cache_dtype!r}; supported: "
                f"{TritonAttentionBackend.supported_kv_cache_dtypes}"
            )
        if not TritonAttentionBackend.supports_head_size(head_size):
            raise NotImplementedError(
                f"TRITON_ATTN supports head sizes {MIN_HEAD_SIZE}..{MAX_HEAD_SIZE}, got {head_size}"
            )
        if self.dcp_world_size > 1 and (alibi_slopes is not None or sliding_window is not None):
            # a rank's cache shard holds every W-th run of keys: their distances are not local
            raise NotImplementedError(
                "TRITON_ATTN: decode context parallelism with ALiBi or a sliding window is not "
                "supported (both need each key's position, which the rank's cache shard does "
                "not keep)"
            )
        if sinks is not None and sinks.shape != (num_heads,):
            raise ValueError(
                f"TRITON_ATTN: sinks must have shape ({num_heads},), got {tuple(sinks.shape)}"
            )
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.num_queries_per_kv = num_heads // num_kv_heads
        self.alibi_slopes = (
            None if alibi_slopes is None else torch.tensor(alibi_slopes, dtype=torch.float32)
        )
        self.window = sliding_window  # our kernels take the window length W
        # FlashAttention-style (left, right) form, read by upstream subclasses.
        if sliding_window is None:
            self.sliding_window = (-1, -1)
        elif attn_type in (AttentionType.ENCODER, AttentionType.ENCODER_ONLY):
            self.sliding_window = (sliding_window - 1, sliding_window - 1)
        else:
            self.sliding_window = (sliding_window - 1, 0)
        self.soft_cap = logits_soft_cap or None
        self.logits_soft_cap = logits_soft_cap or 0  # 0 = off, for upstream subclasses
        self.kv_cache_dtype = kv_cache_dtype
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.attn_type = attn_type
        self.sinks = sinks
        self.use_alibi_sqrt = use_alibi_sqrt
        self.chunk_lookback = chunk_lookback  # upstream's form (-1 = off), for subclasses
        self._chunk_lookback = chunk_lookback if chunk_lookback > -1 else None  # the kernels'
        self.fp8_dtype = fp8_cache_dtype(kv_cache_dtype)
        # vLLM then quantises each layer's queries to fp8 (its _q_scale) and q.k runs in fp8
        self.supports_quant_query_input = quantises_queries(kv_cache_dtype, self.dcp_world_size)
        # int8, fp8 or int4 values with a float32 scale per token and KV head, inside the page
        self._token_head_scales = kv_cache_dtype in TOKEN_HEAD_CACHE_DTYPES
        self._kv_dtype = kv_dtype_of(kv_cache_dtype, torch.uint8)
        self._is_fp8 = is_quantized_kv_cache(kv_cache_dtype) and not self._token_head_scales
        self._set_kv_ptr_range = current_platform.is_rocm()
        self._kv_views: tuple[torch.Tensor, CacheViews] | None = None

    def fused_output_quant_supported(self, quant_key: QuantKey):
        """Static per-tensor fp8 quantisation of the output (the next GEMM's
        input) in the attention's epilogue, where the GPU stores e4m3: vLLM's
        fusion pass then hands ``forward`` an fp8 ``output`` and its scale."""
        # (under DCP the output is the merge of two attentions, see DcpBatch)
        return (
            quant_key == kFp8StaticTensorSym
            and converts_platform_fp8()
            and self.dcp_world_size == 1
        )

    def _cache_views(self, kv_cache: torch.Tensor) -> CacheViews:
        """K and V ``[num_blocks, block_size, H, D]`` views of the packed cache,
        and with per-token-head quantisation its scales ``[num_blocks,
        block_size, H]``.

        vLLM hands every layer a logical ``[num_blocks, H, block_size, C]``
        tensor whose strides follow the model-wide layout; views keep them.
        ``C`` is ``2*D``, or ``2*(D + 4)`` bytes of ``[K | K scale | V | V scale]``
        (``TritonAttentionBackend.customize_spec``). They are made once per
        cache tensor (a layer's stays the same object across steps): the cache
        write and ``forward`` run per layer and step, and making them costs
        ~5 us on the host each time.
        """
        if self._kv_views is not None and self._kv_views[0] is kv_cache:
            return self._kv_views[1]
        cells = kv_cache.transpose(1, 2)
        k_scale = v_scale = None
        if self._token_head_scales:
            # half: D values (int4: D / 2 bytes) and a float32
            d, half = self.head_size, cells.shape[-1] // 2
            if self._kv_dtype == INT4_KV_DTYPE:
                d //= 2
            key_cache = cells[..., :d].view(self._kv_dtype)
            value_cache = cells[..., half : half + d].view(self._kv_dtype)
            scales = cells.view(torch.float32)  # 4 bytes per element: the scales' offsets / 4
            k_scale, v_scale = scales[..., d // 4], scales[..., (half + d) // 4]
        else:
            key_cache, value_cache = cells.split(self.head_size, dim=-1)
        if self._is_fp8:
            key_cache = key_cache.view(self.fp8_dtype)
            value_cache = value_cache.view(self.fp8_dtype)
        views = CacheViews(key_cache, value_cache, k_scale, v_scale)
        if self._set_kv_ptr_range:  # keeps AMD's 32-bit buffer addressing
            set_triton_ptr_range(kv_cache, *(view for view in views if view is not None))
        self._kv_views = (kv_cache, views)
        return views

    def do_kv_cache_update(
        self,
        layer: AttentionLayer,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        if self.attn_type in (AttentionType.ENCODER, AttentionType.ENCODER_ONLY):
            return  # encoder self-attention keeps no cache
        views = self._cache_views(kv_cache)
        write_kv_cache(
            key,
            value,
            views.key,
            views.value,
            slot_mapping,
            **self._scales(layer, views),
        )

    def fused_rope_kvcache_supported(self) -> bool:
        """vLLM's RoPE + KV-cache fusion pass (``fuse_rope_kvcache``, on by
        default on ROCm with AITER) may hand this layer's rotary embedding to
        ``do_rope_and_kv_cache_update``: our cache write turns the queries and
        keys first, for every cache dtype, in Triton. Not for layers that
        write no cache (encoder self-attention, a layer reading another's)."""
        return self.attn_type == AttentionType.DECODER and self.kv_sharing_target_layer_name is None

    def do_rope_and_kv_cache_update(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        positions: torch.Tensor,
        cos_sin_cache: torch.Tensor,
        is_neox: bool,
        kv_cache: torch.Tensor,
        layer_slot_mapping: torch.Tensor,
    ) -> None:
        """The rotary embedding of ``query`` and ``key`` (in place) and
        ``do_kv_cache_update`` of the turned keys, in one launch."""
        views = self._cache_views(kv_cache)
        rope_and_write_kv_cache(
            query,
            key,
            value,
            views.key,
            views.value,
            layer_slot_mapping,
            positions=positions,
            cos_sin_cache=cos_sin_cache,
            is_neox=is_neox,
            **self._scales(layer, views),
        )

    def _scales(self, layer: AttentionLayer, views: CacheViews) -> dict:
        """The cache's dequantisation scales: the layer's per-tensor ones (fp8),
        the page's per token and head, or none."""
        if self._token_head_scales:
            return dict(k_scale=views.k_scale, v_scale=views.v_scale)
        if self._is_fp8:
            return dict(k_scale=layer._k_scale, v_scale=layer._v_scale)
        return {}

    def forward(
        self,
        layer: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: TritonAttentionMetadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query/output ``[num_tokens, num_heads, head_size]``; returns ``output``.

        Under piecewise CUDA graphs this runs eagerly for every layer, so it
        only slices views and launches: the plan and the batch's launches
        (``BatchLaunches``) were made in ``build``.
        """
        if output_block_scale is not None:
            raise NotImplementedError(
                "TRITON_ATTN fuses static per-tensor fp8 output quantization only, "
                "not block-scaled (fused_output_quant_supported)"
            )
        if attn_metadata is None:  # the memory-profiling run
            return output.fill_(0)

        md = attn_metadata
        num_tokens = md.num_actual_tokens
        decoder = self.attn_type == AttentionType.DECODER
        layer_args = dict(
            scale=self.scale,
            sliding_window=self.window,
            logits_soft_cap=self.soft_cap,
            alibi_slopes=self.alibi_slopes,
            alibi_sqrt=self.use_alibi_sqrt,
            chunk_lookback=self._chunk_lookback,
            sinks=self.sinks,
            # Gemma 4's sliding layers keep their window on the ranges too
            mm_prefix_clamp_sliding_window=getattr(layer, "mm_prefix_clamp_sliding_window", False),
        )
        if output_scale is not None:  # fused static fp8 quantisation: output is fp8
            layer_args["out_scale"] = output_scale
        if decoder and md.rswa_prefix_lens is not None:  # R-SWA's window replaces the layer's
            layer_args["sliding_window"] = md.rswa_window
        if self.attn_type in (AttentionType.ENCODER, AttentionType.ENCODER_ONLY):
            key_cache, value_cache, block_table, seq_lens = self._encoder_kv(key, value, md)
            max_seq_len = md.max_query_len
        else:
            views = self._cache_views(kv_cache)
            key_cache, value_cache = views.key, views.value
            block_table, seq_lens, max_seq_len = md.block_table, md.seq_lens, md.max_seq_len
            layer_args.update(self._scales(layer, views))
            if query.dtype == self.fp8_dtype:  # vLLM quantised the queries (quantises_queries)
                layer_args["q_scale"] = layer._q_scale
        q, out = query[:num_tokens], output[:num_tokens]
        if decoder and md.dcp is not None:
            self._forward_dcp(
                q,
                key[:num_tokens],
                value[:num_tokens],
                key_cache,
                value_cache,
                out,
                md.dcp,
                layer_args,
            )
            return output
        if decoder and md.launches is not None:  # the batch's side, bound by the builder
            md.launches(q, key_cache, value_cache, out, **layer_args)
            return output
        paged_attention(
            q,
            key_cache,
            value_cache,
            out,
            query_start_loc=md.query_start_loc,
            seq_lens=seq_lens,
            block_table=block_table,
            max_query_len=md.max_query_len,
            max_seq_len=max_seq_len,
            # per-request flags (a tensor) or one for the batch; encoders see everything
            causal=md.causal if decoder else False,
            mm_prefix_ranges=md.mm_prefix_range_tensor if decoder else None,
            rswa_prefix_lens=md.rswa_prefix_lens if decoder else None,
            plan=md.plan,
            workspace=md.workspace,
            **layer_args,
        )
        return output

    def _forward_dcp(self, q, key, value, key_cache, value_cache, out, dcp, layer_args):
        """Decode context parallelism: the context shard's and the new tokens'
        attentions, merged by their log-sum-exps (DcpBatch)."""
        # sinks counted once, in the new tokens' part: each rank has all of its heads' tokens
        sinks = layer_args.pop("sinks")
        cache_scales = {
            name: layer_args.pop(name) for name in ("k_scale", "v_scale") if name in layer_args
        }
        if dcp.context is not None:
            group = get_dcp_group()
            queries = group.all_gather(q.contiguous(), dim=1)  # the whole group's heads
            dcp.context(
                queries,
                key_cache,
                value_cache,
                dcp.context_out,
                lse=dcp.context_lse,
                **layer_args,
                **cache_scales,
            )
            context_out, context_lse = dcp.combine(
                dcp.context_out, dcp.context_lse, group, return_lse=True
            )
        dcp.new_tokens(
            q,
            key[:, None],
            value[:, None],
            out,
            lse=dcp.new_tokens_lse.t(),
            sinks=sinks,
            **layer_args,
        )
        if dcp.context is not None:
            lse = context_lse.t().contiguous()  # merge_attn_states' [heads, tokens]
            dcp.merge(out, context_out, lse, out, dcp.new_tokens_lse)

    def _encoder_kv(self, key, value, md):
        """K/V of encoder self-attention as a cache of one-token blocks, its
        block table and its key lengths (the query lengths)."""
        if md.encoder_block_table is None:  # once per batch, shared by its layers
            qsl = md.query_start_loc
            positions = torch.arange(md.max_query_len, device=key.device, dtype=torch.int32)
            md.encoder_block_table = qsl[:-1, None] + positions[None, :]
            md.encoder_seq_lens = qsl[1:] - qsl[:-1]
        return key[:, None], value[:, None], md.encoder_block_table, md.encoder_seq_lens
