# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Our TRITON_ATTN inside the real pinned vLLM: selection, builder + impl, subclasses.

Runs on a CPU-only machine (kernels in the Triton interpreter) against the installed,
patched vLLM. Platform facts vLLM reads from a GPU (capability, gfx name) are
answered by stand-ins; everything else is vLLM's own code.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("vllm.config", reason="needs the installed vLLM (make test installs it)")

from transformers import LlamaConfig  # noqa: E402

from devtools.batches import (  # noqa: E402
    TOLERANCES,
    assert_fp8_output_close,
    token_head_page_views,
)
from vllm.config import (  # noqa: E402
    CUDAGraphMode,
    DeviceConfig,
    ModelConfig,
    SpeculativeConfig,
    VllmConfig,
)
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase  # noqa: E402
from vllm.model_executor.layers.quantization.utils.quant_utils import (  # noqa: E402
    kFp8DynamicTensorSym,
    kFp8StaticTensorSym,
    kFp8StaticTokenSym,
    kNvfp4Dynamic,
)
from vllm.platforms import current_platform  # noqa: E402
from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE  # noqa: E402
from vllm.v1.attention.backend import AttentionType, CommonAttentionMetadata  # noqa: E402
from vllm.v1.attention.backends.triton_attn import (  # noqa: E402
    TritonAttentionBackend,
    TritonAttentionImpl,
    TritonAttentionMetadataBuilder,
)
from vllm.v1.attention.ops.triton_attention import (  # noqa: E402
    AttentionFeatures,
    GpuArch,
    MixedBatchPlan,
    TensorLayout,
    reference_paged_attention,
)
from vllm.v1.kv_cache_interface import FullAttentionSpec, get_kv_quant_mode  # noqa: E402

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 8, 2, 32, 16
OUR_CLASS = "vllm.v1.attention.backends.triton_attn.TritonAttentionBackend"


def _vllm_config(model_dir, **extra):
    model = ModelConfig(
        model=str(model_dir), skip_tokenizer_init=True, dtype="float32", max_model_len=512
    )
    return VllmConfig(model_config=model, device_config=DeviceConfig(device="cpu"), **extra)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    LlamaConfig(
        hidden_size=NUM_Q_HEADS * HEAD_SIZE,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=NUM_Q_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_SIZE,
        vocab_size=256,
        max_position_embeddings=512,
    ).save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def vllm_config(model_dir):
    return _vllm_config(model_dir)


def make_builder(vllm_config):
    spec = FullAttentionSpec(
        block_size=BLOCK_SIZE, num_kv_heads=NUM_KV_HEADS, head_size=HEAD_SIZE, dtype=torch.float32
    )
    return TritonAttentionMetadataBuilder(spec, ["layer.0"], vllm_config, torch.device("cpu"))


class Layer(torch.nn.Module):
    """The scale attributes vLLM's Attention layer carries (AttentionLayer protocol)."""

    def __init__(self):
        super().__init__()
        self._k_scale = self._v_scale = self._q_scale = torch.tensor(1.0)
        self._k_scale_float = self._v_scale_float = self._q_scale_float = 1.0


def run_step(
    builder,
    impl,
    kv_cache,
    q_lens,
    seq_lens,
    padded_reqs=0,
    padded_tokens=0,
    causal=True,
    mm_ranges=None,
    mm_clamp=False,
    fp8_dtype=None,
    rswa_prefix_lens=None,
    token_head_dtype=None,
    q_scale=None,
    output_scale=None,
):
    """One model step the way vLLM drives a layer: metadata, cache write, forward.
    ``causal``: one flag, or a list of per-request flags (vLLM's int32 tensor).
    ``mm_ranges``: vLLM's ``mm_req_doc_ranges`` (request index -> inclusive
    ranges); ``mm_clamp``: the layer's ``mm_prefix_clamp_sliding_window``;
    ``fp8_dtype``: what an fp8 cache's bytes hold (the layer's scales 0.05);
    ``rswa_prefix_lens``: each request's prompt length, as vLLM's runner sends
    it for R-SWA (the slots between it and the window are then poisoned);
    ``token_head_dtype``: the values' type in a per-token-head page, whose
    ``[K | K scale | V | V scale]`` bytes the reference reads on its own;
    ``q_scale``: the layer's query scale, by which vLLM quantises the queries
    to the fp8 cache's format (its static per-tensor QuantFP8) when the impl
    takes fp8 queries; ``output_scale``: the scale of the output's static fp8
    quantisation, which vLLM's fusion pass hands ``forward`` with an fp8
    ``output`` when the impl fuses it."""
    gen = torch.Generator().manual_seed(sum(seq_lens) + len(q_lens))
    num_tokens = sum(q_lens)
    q_lens = q_lens + [0] * padded_reqs  # graph padding: empty requests
    seq_lens = seq_lens + [0] * padded_reqs
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    blocks_per_req = max(-(-s // BLOCK_SIZE) for s in seq_lens)
    block_table = torch.zeros(len(q_lens), blocks_per_req, dtype=torch.int32)
    next_block = 1  # block 0 is vLLM's null block
    slots = []
    for req, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens, strict=True)):
        count = -(-seq_len // BLOCK_SIZE)
        block_table[req, :count] = torch.arange(next_block, next_block + count)
        next_block += count
        for pos in range(seq_len - q_len, seq_len):
            slots.append(int(block_table[req, pos // BLOCK_SIZE]) * BLOCK_SIZE + pos % BLOCK_SIZE)
    slot_mapping = torch.tensor(slots + [-1] * padded_tokens, dtype=torch.int64)
    total = num_tokens + padded_tokens
    common = CommonAttentionMetadata(
        query_start_loc=qsl,
        query_start_loc_cpu=qsl.clone(),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        num_reqs=len(q_lens),
        num_actual_tokens=total,
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        block_table_tensor=block_table,
        slot_mapping=slot_mapping,
        causal=causal
        if isinstance(causal, bool)
        else torch.tensor(causal + [1] * padded_reqs, dtype=torch.int32),
        mm_req_doc_ranges=mm_ranges,
        rswa_prefix_lens=None
        if rswa_prefix_lens is None
        else torch.tensor(rswa_prefix_lens + [0] * padded_reqs, dtype=torch.int32),
    )
    metadata = builder.build(0, common)
    reference_ranges = None
    if mm_ranges:  # padded with (0, 0) to one count, built here independently
        count = max(len(r) for r in mm_ranges.values())
        padded = [mm_ranges.get(req, []) for req in range(len(q_lens))]
        padded = [r + [(0, 0)] * (count - len(r)) for r in padded]
        reference_ranges = torch.tensor(padded, dtype=torch.int32)

    query = torch.randn(total, NUM_Q_HEADS, HEAD_SIZE, generator=gen)
    key = torch.randn(total, NUM_KV_HEADS, HEAD_SIZE, generator=gen)
    value = torch.randn(total, NUM_KV_HEADS, HEAD_SIZE, generator=gen)
    layer = Layer()
    layer.mm_prefix_clamp_sliding_window = mm_clamp
    scales = {}
    if fp8_dtype is not None:
        layer._k_scale = layer._v_scale = torch.tensor(0.05)
        scales = dict(k_scale=layer._k_scale, v_scale=layer._v_scale)
    if q_scale is not None:
        assert impl.supports_quant_query_input
        layer._q_scale = torch.tensor(q_scale)
        fp8_max = torch.finfo(fp8_dtype).max
        query = (query / q_scale).clamp(-fp8_max, fp8_max).to(fp8_dtype)
        scales["q_scale"] = layer._q_scale
    impl.do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
    window = impl.window
    if rswa_prefix_lens is not None:  # R-SWA's evicted gap: never read
        window = metadata.rswa_window
        for req, prefix in enumerate(rswa_prefix_lens):
            for pos in range(prefix, seq_lens[req] - q_lens[req] - window + 1):
                block = block_table[req, pos // BLOCK_SIZE]
                kv_cache[block, :, pos % BLOCK_SIZE] = float("nan")
    output = torch.full(query.shape, float("nan"))  # the model's dtype, fp8 queries or not
    fused = {}
    if output_scale is not None:
        fused = dict(output_scale=torch.tensor([output_scale]))
        output = output.to(current_platform.fp8_dtype())
        scales = dict(scales, out_scale=fused["output_scale"])
    impl.forward(layer, query, key, value, kv_cache, metadata, output, **fused)

    cells = kv_cache.transpose(1, 2)
    if token_head_dtype is None:
        k_view, v_view = cells.split(HEAD_SIZE, dim=-1)
        if fp8_dtype is not None:  # the reference reads the bytes the write stored
            k_view, v_view = k_view.view(fp8_dtype), v_view.view(fp8_dtype)
    else:
        int4 = token_head_dtype == torch.uint8  # two codes per byte
        k_view, v_view, k_scale, v_scale = token_head_page_views(
            kv_cache, HEAD_SIZE // 2 if int4 else HEAD_SIZE, token_head_dtype
        )
        scales = dict(k_scale=k_scale, v_scale=v_scale)
    expected = reference_paged_attention(
        query,
        k_view,
        v_view,
        out=output,
        query_start_loc=qsl,
        seq_lens=common.seq_lens,
        block_table=block_table,
        scale=impl.scale,
        sliding_window=window,
        sinks=impl.sinks,
        logits_soft_cap=impl.soft_cap,
        alibi_slopes=impl.alibi_slopes,
        alibi_sqrt=impl.use_alibi_sqrt,
        chunk_lookback=impl.chunk_lookback if impl.chunk_lookback > -1 else None,
        causal=common.causal,
        mm_prefix_ranges=reference_ranges,
        mm_prefix_clamp_sliding_window=mm_clamp,
        rswa_prefix_lens=common.rswa_prefix_lens,
        **scales,
    )
    if output_scale is not None:
        assert_fp8_output_close(output[:num_tokens], expected[:num_tokens])
        return metadata
    # fp8 queries: probabilities and values meet in fp16 (jit_helpers.load_kv_tile)
    tolerance = TOLERANCES[torch.float32 if q_scale is None else torch.float16]
    torch.testing.assert_close(output[:num_tokens], expected[:num_tokens], **tolerance)
    return metadata


def packed_cache(num_blocks=64, layout="NHD"):
    """vLLM's logical [num_blocks, H, block_size, 2*D] cache over a physical layout."""
    if layout == "NHD":  # the default: token-major inside a block
        physical = torch.randn(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, 2 * HEAD_SIZE)
        return physical.permute(0, 2, 1, 3)
    return torch.randn(num_blocks, NUM_KV_HEADS, BLOCK_SIZE, 2 * HEAD_SIZE)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_builder_and_impl_across_batches(vllm_config, layout):
    """One builder reused across batch shapes, as under CUDA graphs."""
    builder = make_builder(vllm_config)
    impl = TritonAttentionImpl(
        NUM_Q_HEADS, HEAD_SIZE, HEAD_SIZE**-0.5, NUM_KV_HEADS, None, None, "auto"
    )
    kv_cache = packed_cache(layout=layout)
    decode = run_step(builder, impl, kv_cache, [1, 1, 1], [17, 40, 5])
    assert decode.plan.kernel == "split_kv_decode"
    prefill = run_step(builder, impl, kv_cache, [30, 12], [30, 12])
    assert prefill.plan.kernel == "long_query"
    mixed = run_step(builder, impl, kv_cache, [1, 1, 20], [33, 9, 50])
    # decodes on split-KV, the chunk on long-query
    assert isinstance(mixed.plan, MixedBatchPlan)
    assert (mixed.plan.num_decodes, mixed.plan.num_decode_tokens) == (2, 2)
    assert mixed.plan.decode.kernel == "split_kv_decode"
    assert mixed.plan.prefill.kernel == "long_query" and mixed.plan.prefill.num_seqs == 1
    padded = run_step(builder, impl, kv_cache, [1, 1], [70, 3], padded_reqs=2, padded_tokens=2)
    assert padded.plan.kernel == "split_kv_decode" and padded.plan.num_seqs == 4


def test_features_through_the_impl(vllm_config):
    builder = make_builder(vllm_config)
    sinks = torch.randn(NUM_Q_HEADS)
    impl = TritonAttentionImpl(
        NUM_Q_HEADS,
        HEAD_SIZE,
        0.2,
        NUM_KV_HEADS,
        None,
        24,
        "auto",
        None,
        AttentionType.DECODER,
        None,
        sinks=sinks,
    )
    assert impl.sliding_window == (23, 0)  # upstream's tuple form, for subclasses
    run_step(builder, impl, packed_cache(), [1, 37], [80, 37])
    run_step(builder, impl, packed_cache(), [1, 1], [80, 37])


def test_alibi_sqrt_through_the_impl(vllm_config):
    """StepFun Step1's layers (use_alibi_sqrt): -slope * sqrt(distance) on past keys."""
    assert TritonAttentionBackend.supports_alibi_sqrt()
    builder = make_builder(vllm_config)
    slopes = [2.0 ** (-h) for h in range(1, NUM_Q_HEADS + 1)]
    impl = TritonAttentionImpl(
        NUM_Q_HEADS, HEAD_SIZE, 0.2, NUM_KV_HEADS, slopes, None, "auto", use_alibi_sqrt=True
    )
    run_step(builder, impl, packed_cache(), [1, 1, 30], [80, 37, 50])


def test_chunked_window_through_the_impl(vllm_config):
    """rnj1's chunked layers (chunk_lookback=1 on a 32-key window): chunks of
    16 keys, the query's own and the one before it."""
    builder = make_builder(vllm_config)
    impl = TritonAttentionImpl(
        NUM_Q_HEADS, HEAD_SIZE, 0.2, NUM_KV_HEADS, None, 32, "auto", chunk_lookback=1
    )
    run_step(builder, impl, packed_cache(), [1, 1, 30], [80, 37, 50])


def test_fp8_e5m2_cache_through_the_impl(vllm_config):
    """vLLM allocates an fp8 cache as bytes; with ``--kv-cache-dtype fp8_e5m2`` the
    builder plans for, the write stores and the kernels read e5m2 (not the
    platform's e4m3): the reference reads the written bytes as e5m2."""
    config = copy.deepcopy(vllm_config)
    config.cache_config.cache_dtype = "fp8_e5m2"
    builder = make_builder(config)
    assert builder.layout.kv_dtype == torch.float8_e5m2
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "fp8_e5m2")
    assert impl.fp8_dtype == torch.float8_e5m2
    physical = torch.zeros(64, BLOCK_SIZE, NUM_KV_HEADS, 2 * HEAD_SIZE, dtype=torch.uint8)
    kv_cache = physical.permute(0, 2, 1, 3)
    for q_lens, seq_lens in (([1, 5, 9], [20, 33, 9]), ([1, 1], [21, 34])):
        run_step(builder, impl, kv_cache, q_lens, seq_lens, fp8_dtype=torch.float8_e5m2)
    stored = kv_cache.transpose(1, 2)[..., :HEAD_SIZE].view(torch.float8_e5m2).float()
    assert stored.abs().max() > 0 and not stored.isnan().any()


def test_fp8_queries_through_the_impl(vllm_config):
    """With ``--kv-cache-dtype fp8`` vLLM quantises each layer's queries to the
    cache's fp8 format (``supports_quant_query_input``, which the impl
    declares): the builder plans for 1-byte queries, and attention takes the
    layer's ``_q_scale``; output in the model's dtype."""
    config = copy.deepcopy(vllm_config)
    config.cache_config.cache_dtype = "fp8"
    builder = make_builder(config)
    fp8 = current_platform.fp8_dtype()
    assert builder.dtype == fp8
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "fp8")
    physical = torch.zeros(64, BLOCK_SIZE, NUM_KV_HEADS, 2 * HEAD_SIZE, dtype=torch.uint8)
    kv_cache = physical.permute(0, 2, 1, 3)
    for q_lens, seq_lens in (([1, 5, 9], [20, 33, 9]), ([1, 1], [21, 34])):
        run_step(builder, impl, kv_cache, q_lens, seq_lens, fp8_dtype=fp8, q_scale=0.02)
    e5m2 = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "fp8_e5m2")
    assert not e5m2.supports_quant_query_input  # vLLM quantises queries to e4m3 only


def test_fused_fp8_output_through_the_impl(vllm_config):
    """vLLM's attention + quant fusion: the impl declares static per-tensor fp8
    (``kFp8StaticTensorSym``) and nothing else; ``forward`` then gets an fp8
    ``output`` and its scale and writes ``attention / scale`` in fp8, on a
    16-bit and on an fp8 cache, in decode, prefill and mixed batches."""
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "auto")
    assert impl.fused_output_quant_supported(kFp8StaticTensorSym)
    for other in (kFp8DynamicTensorSym, kFp8StaticTokenSym, kNvfp4Dynamic):
        assert not impl.fused_output_quant_supported(other)
    builder = make_builder(vllm_config)
    kv_cache = packed_cache()
    for q_lens, seq_lens in (([1, 1], [40, 7]), ([20], [20]), ([1, 1, 9], [33, 60, 30])):
        run_step(builder, impl, kv_cache, q_lens, seq_lens, output_scale=0.3)
    config = copy.deepcopy(vllm_config)
    config.cache_config.cache_dtype = "fp8"
    fp8_impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "fp8")
    physical = torch.zeros(64, BLOCK_SIZE, NUM_KV_HEADS, 2 * HEAD_SIZE, dtype=torch.uint8)
    fp8 = current_platform.fp8_dtype()
    run_step(make_builder(config), fp8_impl, physical.permute(0, 2, 1, 3), [1, 7], [30, 7],
             fp8_dtype=fp8, q_scale=0.02, output_scale=0.3)  # fmt: skip
    with pytest.raises(NotImplementedError, match="block-scaled"):
        impl.forward(
            Layer(), *[torch.zeros(1, NUM_Q_HEADS, HEAD_SIZE)] * 3, kv_cache, None,
            torch.zeros(1, NUM_Q_HEADS, HEAD_SIZE), output_block_scale=torch.ones(1),
        )  # fmt: skip


@pytest.mark.parametrize(
    "cache_dtype,values",
    [
        ("int8_per_token_head", torch.int8),
        ("fp8_per_token_head", None),
        ("int4_per_token_head", torch.uint8),
    ],
)
def test_per_token_head_caches_through_the_impl(vllm_config, cache_dtype, values):
    """vLLM's per-token-head caches: the spec our backend customises (a float32
    scale after each head's values; int4: two values per byte), a page of
    those bytes, the write storing values and scales, and attention reading
    them back; the reference reads the page's bytes on its own (int4: codes,
    zero points and the rotation too). Slots never written hold NaN scales."""
    config = copy.deepcopy(vllm_config)
    config.cache_config.cache_dtype = cache_dtype
    values = values or current_platform.fp8_dtype()
    spec = TritonAttentionBackend.customize_spec(
        FullAttentionSpec(
            block_size=BLOCK_SIZE,
            num_kv_heads=NUM_KV_HEADS,
            head_size=HEAD_SIZE,
            dtype=STR_DTYPE_TO_TORCH_DTYPE[cache_dtype],
            kv_quant_mode=get_kv_quant_mode(cache_dtype),
        )
    )
    value_bytes = HEAD_SIZE // 2 if cache_dtype == "int4_per_token_head" else HEAD_SIZE
    content = 2 * (value_bytes + 4)  # the values, then a 4-byte scale, for K and V
    assert spec.state_content_bytes == content
    assert spec.page_size_bytes == BLOCK_SIZE * NUM_KV_HEADS * content
    builder = TritonAttentionMetadataBuilder(spec, ["layer.0"], config, torch.device("cpu"))
    assert builder.layout.kv_dtype == values
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, 24, cache_dtype)
    physical = torch.zeros(64, BLOCK_SIZE, NUM_KV_HEADS, content, dtype=spec.dtype)
    scale_bytes = physical.view(torch.uint8).view(64, BLOCK_SIZE, NUM_KV_HEADS, 2, -1)[..., -4:]
    scale_bytes.view(torch.float32).fill_(float("nan"))
    kv_cache = physical.permute(0, 2, 1, 3)
    for q_lens, seq_lens in (([1, 5, 30], [1, 5, 30]), ([1, 1, 4, 9], [2, 6, 34, 9])):
        # each step writes its new tokens: the first lays down every key the second reads
        run_step(builder, impl, kv_cache, q_lens, seq_lens, token_head_dtype=values)


def test_cache_views_are_made_once_per_cache_tensor():
    """The views are kept per cache tensor (made per layer and step they cost
    host time); a new cache tensor, e.g. after a KV-cache re-allocation, gets
    its own."""
    impl = TritonAttentionImpl(
        NUM_Q_HEADS, HEAD_SIZE, HEAD_SIZE**-0.5, NUM_KV_HEADS, None, None, "auto"
    )
    kv_cache, other = packed_cache(), packed_cache()
    key_cache, value_cache, *scales = impl._cache_views(kv_cache)
    assert scales == [None, None]  # a 16-bit cache has no scales
    again = impl._cache_views(kv_cache)
    assert again.key is key_cache and again.value is value_cache
    other_key, other_value, *_ = impl._cache_views(other)
    assert other_key.data_ptr() == other.data_ptr() != key_cache.data_ptr()
    assert torch.equal(other_value, other.transpose(1, 2)[..., HEAD_SIZE:])


def test_spec_decode_verification_goes_to_split_kv(model_dir):
    speculative = SpeculativeConfig(
        method="ngram", num_speculative_tokens=3, prompt_lookup_max=3, prompt_lookup_min=1
    )
    builder = make_builder(_vllm_config(model_dir, speculative_config=speculative))
    assert builder.max_decode_query_len == 4 and builder.reorder_batch_threshold == 4
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "auto")
    md = run_step(builder, impl, packed_cache(), [4, 4, 4], [20, 61, 4])
    assert md.plan.kernel == "split_kv_decode" and md.plan.tokens_per_q_block >= 4


def test_workspace_holds_the_decodes_of_every_batch(vllm_config, monkeypatch):
    """Decodes beside a long query can take more splits than alone (see
    plan.num_kv_splits_for): the one scratch must hold both, at every batch size."""
    gpu = GpuArch("cuda", "sm_90", 16)  # few SMs: the scheduler's batches fill it
    monkeypatch.setattr(GpuArch, "of_device", classmethod(lambda cls, device: gpu))
    builder = make_builder(vllm_config)
    more_splits_beside = 0
    for seqs in range(1, vllm_config.scheduler_config.max_num_seqs):
        alone = builder.plan_for(seqs, seqs, 1, seqs, seqs)
        beside = builder.plan_for(seqs + 9, seqs + 1, 9, seqs, seqs).decode
        for plan in (alone, beside):
            if plan.num_kv_splits > 1:
                builder.workspace.views(plan)  # raises if the scratch is too small
        more_splits_beside += beside.num_kv_splits > alone.num_kv_splits
    assert more_splits_beside > 0


def test_full_graphs_of_mixed_batches_use_long_query(vllm_config):
    builder = make_builder(vllm_config)
    builder.mixed_batches_in_full_graphs = True
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "auto")
    md = run_step(builder, impl, packed_cache(), [1, 1], [20, 61])
    assert md.plan.kernel == "long_query"
    assert CUDAGraphMode.FULL.mixed_mode() == CUDAGraphMode.FULL
    assert CUDAGraphMode.FULL_AND_PIECEWISE.mixed_mode() != CUDAGraphMode.FULL


def test_per_request_causal_flags(vllm_config):
    """DFlash-style drafters send a causal flag per request (vLLM's int32
    tensor): a non-causal request sees every key below its length, with a
    two-sided window. Decodes and chunks, so both kernels read the flags."""
    builder = make_builder(vllm_config)
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, 24, "auto")
    cache = packed_cache()
    for q_lens, seq_lens, flags in (
        ([4, 4, 4], [20, 61, 4], [0, 1, 0]),  # spec-decode verification shapes
        ([1, 3, 40, 17], [9, 50, 90, 17], [1, 0, 0, 1]),  # decodes, then chunks
    ):
        md = run_step(builder, impl, cache, q_lens, seq_lens, padded_reqs=1, causal=flags)
        assert md.causal.tolist() == flags + [1]
    qsl = torch.tensor([0, 1], dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=qsl,
        query_start_loc_cpu=qsl,
        seq_lens=torch.tensor([5], dtype=torch.int32),
        num_reqs=1,
        num_actual_tokens=1,
        max_query_len=1,
        max_seq_len=5,
        block_table_tensor=torch.zeros(1, 1, dtype=torch.int32),
        slot_mapping=torch.zeros(1, dtype=torch.int64),
        causal=torch.tensor([True]),
    )
    with pytest.raises(ValueError, match="causal flags must be an int32 tensor, got torch.bool"):
        builder.build(0, common)


def test_multimodal_prefix_ranges(vllm_config, monkeypatch):
    """Prefix-LM image ranges as vLLM's runner hands them to the builder
    (``mm_req_doc_ranges``): a range across the cached prefix and the new
    chunk, one inside a chunk, a decode whose range lies behind it, requests
    without ranges; on a windowed layer whose ranges reach past the window,
    with and without Gemma 4's clamp. Every kernel reads them: decodes, spec
    verifications, chunks and a mixed batch."""
    from vllm.utils import torch_utils

    # vLLM stages the ranges in pinned memory, which the stand-in platform of
    # this GPU-less process claims but cannot allocate.
    monkeypatch.setattr(torch_utils, "PIN_MEMORY", False)
    builder = make_builder(vllm_config)
    assert TritonAttentionBackend.supports_mm_prefix()
    full = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "auto")
    windowed = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, 8, "auto")
    cache = packed_cache()
    steps = (
        # decodes, then a chunk whose image starts in the cached prefix and one
        # with an image inside it
        ([1, 1, 40, 30], [50, 9, 90, 30], {0: [(20, 49)], 2: [(40, 70)], 3: [(3, 12), (15, 29)]}),
        ([4, 4], [40, 61], {1: [(50, 59)]}),  # verification tokens inside a range
        ([25], [60], {0: [(30, 44), (46, 58)]}),
    )
    for impl in (full, windowed):
        for clamp in (False, True):
            for q_lens, seq_lens, ranges in steps:
                md = run_step(
                    builder, impl, cache, q_lens, seq_lens, mm_ranges=ranges, mm_clamp=clamp
                )
                assert md.mm_prefix_range_tensor is not None and md.plan is not None
    no_ranges = run_step(builder, full, cache, [1, 20], [30, 20], mm_ranges={0: [], 1: []})
    assert no_ranges.mm_prefix_range_tensor is None


def test_rswa_through_the_builder_and_impl(vllm_config, monkeypatch):
    """R-SWA as vLLM runs it: the model's ``rswa_window`` replaces the layer's
    own window, each request's prompt length (the runner's
    ``rswa_prefix_lens``) is staged in the builder's persistent buffer, which
    graphs replay; the gap between prompt and window is poisoned. Decodes past
    their prompt, a chunk, spec verifications and a prompt's own prefill."""
    monkeypatch.setattr(type(vllm_config.model_config), "rswa_window", property(lambda _: 8))
    builder = make_builder(vllm_config)
    assert TritonAttentionBackend.supports_rswa()
    assert builder.features.rswa and not builder.supports_draft_decode_metadata_update
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, 16, "auto")
    for q_lens, seq_lens, prefixes in (
        ([1, 1, 30], [60, 9, 80], [20, 9, 40]),
        ([4, 4], [40, 61], [10, 30]),
        ([25], [25], [25]),
    ):
        md = run_step(builder, impl, packed_cache(), q_lens, seq_lens, rswa_prefix_lens=prefixes)
        assert md.rswa_window == 8
        assert md.rswa_prefix_lens.data_ptr() == builder.rswa_prefix_lens.data_ptr()
    assert run_step(builder, impl, packed_cache(), [1], [30]).rswa_prefix_lens is None


def test_prefix_lm_models_capture_single_token_decodes(vllm_config, monkeypatch):
    from vllm.v1.attention.backend import AttentionCGSupport

    spec = make_builder(vllm_config).kv_cache_spec
    support = TritonAttentionMetadataBuilder.get_cudagraph_support
    assert support(vllm_config, spec) == AttentionCGSupport.ALWAYS
    monkeypatch.setattr(type(vllm_config.model_config), "is_mm_prefix_lm", property(lambda _: True))
    assert support(vllm_config, spec) == AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE


def test_batch_invariant_mode(vllm_config, monkeypatch):
    """VLLM_BATCH_INVARIANT=1 reaches the plan: a request's output through the
    builder and impl is bitwise the same alone, among other decodes, behind
    graph padding and beside a prefill, and long sequences are still split."""
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    builder = make_builder(vllm_config)
    assert builder.batch_invariant and TritonAttentionBackend.supports_batch_invariance()
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "auto")
    cache = packed_cache(num_blocks=4 * 48 + 1)
    gen = torch.Generator().manual_seed(0)
    # (query length, keys): the request under test first, then its company
    requests = [(1, 700), (1, 90), (1, 333), (1, 5), (24, 60)]
    blocks = [torch.arange(48 * i + 1, 48 * i + 49, dtype=torch.int32) for i in range(4)]
    queries = [torch.randn(q, NUM_Q_HEADS, HEAD_SIZE, generator=gen) for q, _ in requests]

    def output_of_first(members, padded=0):
        """Request 0's output in a batch of ``members`` (decodes first)."""
        lens = [requests[m][0] for m in members] + [0] * padded
        qsl = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        common = CommonAttentionMetadata(
            query_start_loc=qsl,
            query_start_loc_cpu=qsl.clone(),
            seq_lens=torch.tensor([requests[m][1] for m in members] + [0] * padded),
            num_reqs=len(lens),
            num_actual_tokens=int(qsl[-1]),
            max_query_len=max(lens),
            max_seq_len=max(requests[m][1] for m in members),
            block_table_tensor=torch.stack([blocks[m % 4] for m in members + [0] * padded]),
            slot_mapping=torch.zeros(int(qsl[-1]), dtype=torch.int64),
        )
        common.seq_lens = common.seq_lens.to(torch.int32)
        metadata = builder.build(0, common)
        query = torch.cat([queries[m] for m in members])
        output = torch.full_like(query, float("nan"))
        impl.forward(Layer(), query, query, query, cache, metadata, output)
        row = int(qsl[members.index(0)])
        return output[row : row + 1], metadata.plan

    alone, plan = output_of_first([0])
    assert plan.min_split_keys > 0 and plan.num_kv_splits > 1
    for members, padded in (([1, 0, 2], 0), ([2, 3, 1, 0], 0), ([0, 1], 2), ([3, 0, 4], 0)):
        output, plan = output_of_first(members, padded)
        assert torch.equal(output, alone), members
    assert isinstance(plan, MixedBatchPlan)


def test_encoder_self_attention_without_cache(vllm_config):
    builder = make_builder(vllm_config)
    impl = TritonAttentionImpl(
        NUM_Q_HEADS,
        HEAD_SIZE,
        0.2,
        NUM_KV_HEADS,
        None,
        None,
        "auto",
        None,
        AttentionType.ENCODER_ONLY,
    )
    qsl = torch.tensor([0, 7, 26], dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=qsl,
        query_start_loc_cpu=qsl,
        # Without a cache the keys are the queries, whatever seq_lens says.
        seq_lens=torch.tensor([40, 3]).int(),
        num_reqs=2,
        num_actual_tokens=26,
        max_query_len=19,
        max_seq_len=40,
        block_table_tensor=torch.zeros(2, 2, dtype=torch.int32),
        slot_mapping=torch.full((26,), -1),
        causal=False,
    )
    md = builder.build(0, common)
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(26, NUM_Q_HEADS, HEAD_SIZE, generator=gen)
    key = torch.randn(26, NUM_KV_HEADS, HEAD_SIZE, generator=gen)
    value = torch.randn(26, NUM_KV_HEADS, HEAD_SIZE, generator=gen)
    output = torch.empty_like(query)
    impl.forward(Layer(), query, key, value, torch.empty(0), md, output)
    for start, end in ((0, 7), (7, 26)):
        scores = (
            torch.einsum("qhd,khd->hqk", query[start:end], key[start:end].repeat_interleave(4, 1))
            * 0.2
        )
        ref = torch.einsum(
            "hqk,khd->qhd", scores.softmax(-1), value[start:end].repeat_interleave(4, 1)
        )
        torch.testing.assert_close(output[start:end], ref, **TOLERANCES[torch.float32])


# Compiled vLLM ops that its fusion passes' modules look up at import.
FUSION_MODULE_OPS = (
    "rotary_embedding",
    "static_scaled_fp8_quant",
    "dynamic_scaled_fp8_quant",
    "dynamic_per_token_scaled_fp8_quant",
    "silu_and_mul",
    "fused_add_rms_norm",
    "rms_norm_static_fp8_quant",
    "fused_add_rms_norm_static_fp8_quant",
    "rms_norm_dynamic_per_token_quant",
)


@pytest.fixture(scope="module")
def fused_rope_and_cache_op():
    """vLLM's ``fused_rope_and_unified_kv_cache_update`` op (its Python body).
    Its module looks up compiled vLLM ops at import, which a box without
    vLLM's binaries lacks: those get schema-only placeholders, with no kernel
    (a call would fail), and only where they are missing."""
    library = torch.library.Library("_C", "FRAGMENT")
    for op in FUSION_MODULE_OPS:
        if not hasattr(torch.ops._C, op):
            library.define(f"{op}(Tensor placeholder) -> ()")
    from vllm.compilation.passes.fusion import rope_kvcache_fusion

    yield rope_kvcache_fusion.fused_rope_and_unified_kv_cache_update_impl


@pytest.mark.parametrize("is_neox,partial_rotary_factor", [(True, 1.0), (False, 0.5)])
def test_rope_and_cache_write_through_vllms_fused_op(
    model_dir, fused_rope_and_cache_op, is_neox, partial_rotary_factor
):
    """vLLM's RoPE + KV-cache fusion pass swaps a layer's rotary embedding and
    cache write for its ``fused_rope_and_unified_kv_cache_update`` op, which
    calls ``do_rope_and_kv_cache_update`` with the layer's cache and slots
    from the forward context: queries, keys (in place, strided views of one
    QKV buffer) and the cache match vLLM's own rotary embedding followed by
    the cache write. Layers writing no cache do not offer the fusion."""
    from vllm.config import set_current_vllm_config
    from vllm.forward_context import set_forward_context
    from vllm.model_executor.layers.rotary_embedding import get_rope

    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.2, NUM_KV_HEADS, None, None, "auto")
    assert impl.fused_rope_kvcache_supported()
    for refused in (
        dict(attn_type=AttentionType.ENCODER_ONLY),
        dict(kv_sharing_target_layer_name="layer.0"),
    ):
        other = TritonAttentionImpl(8, 64, 0.1, 2, None, None, "auto", **refused)
        assert not other.fused_rope_kvcache_supported()

    config = _vllm_config(model_dir)
    with set_current_vllm_config(config):
        rope = get_rope(
            HEAD_SIZE,
            512,
            is_neox_style=is_neox,
            rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": partial_rotary_factor},
            dtype=torch.float32,
        )
    gen = torch.Generator().manual_seed(11)
    num_tokens = 13
    sizes = [NUM_Q_HEADS * HEAD_SIZE, NUM_KV_HEADS * HEAD_SIZE, NUM_KV_HEADS * HEAD_SIZE]
    qkv = torch.randn(num_tokens, sum(sizes), generator=gen)
    positions = torch.randint(0, 512, (num_tokens,), generator=gen)
    slots = torch.randperm(32 * BLOCK_SIZE, generator=gen)[:num_tokens] + BLOCK_SIZE
    slots[[3, 8]] = -1  # padding: turned, not written

    q, k, v = qkv.clone().split(sizes, dim=-1)
    unfused_q, unfused_k = rope.forward_native(positions, q, k)
    unfused_cache = packed_cache(num_blocks=40)
    layer = Layer()
    impl.do_kv_cache_update(
        layer,
        unfused_k.reshape(num_tokens, NUM_KV_HEADS, HEAD_SIZE),
        v.reshape(num_tokens, NUM_KV_HEADS, HEAD_SIZE),
        unfused_cache,
        slots,
    )

    layer.impl, layer.kv_cache = impl, unfused_cache.clone().normal_()
    config.compilation_config.static_forward_context["layer.0"] = layer
    query, key, value = (
        x.view(num_tokens, -1, HEAD_SIZE) for x in qkv.split(sizes, dim=-1)
    )  # fmt: skip
    with set_forward_context(None, config, slot_mapping={"layer.0": slots}):
        fused_rope_and_cache_op(
            query, key, value, positions, rope.cos_sin_cache, is_neox, "layer.0"
        )
    tolerance = TOLERANCES[torch.float32]
    torch.testing.assert_close(query.reshape(num_tokens, -1), unfused_q, **tolerance)
    torch.testing.assert_close(key.reshape(num_tokens, -1), unfused_k, **tolerance)
    written = torch.zeros(40, BLOCK_SIZE, dtype=torch.bool)
    written.view(-1)[slots[slots >= 0]] = True
    cells = layer.kv_cache.transpose(1, 2)  # [blocks, slots, heads, K | V]
    torch.testing.assert_close(cells[written], unfused_cache.transpose(1, 2)[written], **tolerance)


def test_profiling_run_and_refusals(vllm_config):
    impl = TritonAttentionImpl(NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, None, "auto")
    out = torch.full((3, NUM_Q_HEADS, HEAD_SIZE), 5.0)
    assert impl.forward(Layer(), out, None, None, torch.empty(0), None, out).abs().sum() == 0
    with pytest.raises(ValueError, match="use_alibi_sqrt needs alibi_slopes"):
        TritonAttentionImpl(8, 64, 0.1, 2, None, None, "auto", use_alibi_sqrt=True)
    with pytest.raises(NotImplementedError, match="kv_cache_dtype='turboquant_4bit_nc'"):
        TritonAttentionImpl(8, 64, 0.1, 2, None, None, "turboquant_4bit_nc")
    with pytest.raises(NotImplementedError, match="head sizes 32..512, got 576"):
        TritonAttentionImpl(8, 576, 0.1, 2, None, None, "auto")
    with pytest.raises(ValueError, match="chunk_lookback=4 needs a sliding window"):
        TritonAttentionImpl(8, 64, 0.1, 2, None, None, "auto", chunk_lookback=4)


class RegisteredLayer(AttentionLayerBase, torch.nn.Module):
    """An attention layer as the model registers it (what the builder reads)."""

    def __init__(self, impl):
        torch.nn.Module.__init__(self)
        self.impl = impl

    def get_attn_backend(self):
        return TritonAttentionBackend

    def get_kv_cache_spec(self, vllm_config):
        return None


def test_builder_plans_for_its_layers_features(model_dir):
    """The plan's features are those of the layers the builder serves (any of
    them); without registered layers, every feature (kernels that run any call)."""
    config = _vllm_config(model_dir)
    every = AttentionFeatures(True, True, True, True)._replace(chunked_window=True)
    assert make_builder(config).features == every
    layers = config.compilation_config.static_forward_context
    layers["layer.0"] = RegisteredLayer(
        TritonAttentionImpl(
            NUM_Q_HEADS, HEAD_SIZE, 0.1, NUM_KV_HEADS, None, 64, "auto", logits_soft_cap=30.0
        )
    )
    builder = make_builder(config)
    assert builder.features == AttentionFeatures(sliding_window=True, softcap=True)
    assert builder.layout == TensorLayout(torch.float32, BLOCK_SIZE)
    layers["layer.0"] = RegisteredLayer(
        TritonAttentionImpl(
            NUM_Q_HEADS,
            HEAD_SIZE,
            0.1,
            NUM_KV_HEADS,
            None,
            None,
            "auto",
            attn_type=AttentionType.ENCODER_ONLY,
        )
    )
    builder = make_builder(config)
    assert builder.features == AttentionFeatures()
    assert not builder.layout.vector_copies and builder.layout.block_size == 1


def test_validate_configuration_gives_reasons(monkeypatch):
    from vllm.platforms.interface import DeviceCapability
    from vllm.v1.attention.backends import triton_attn

    def reasons(**overrides):
        config = dict(
            head_size=128,
            dtype=torch.bfloat16,
            kv_cache_dtype="auto",
            block_size=16,
            use_mla=False,
            has_sink=False,
            use_sparse=False,
            use_mm_prefix=False,
            use_per_head_quant_scales=False,
            device_capability=DeviceCapability(9, 0),
            attn_type=AttentionType.DECODER,
            has_sliding_window=False,
            use_non_causal=False,
            use_batch_invariant=False,
            use_kv_connector=False,
            use_pcp=False,
            use_adaptive_verification=False,
            use_dcp=False,
            use_rswa=False,
        )
        config.update(overrides)
        return TritonAttentionBackend.validate_configuration(**config)

    assert reasons() == []
    assert reasons(has_sink=True, has_sliding_window=True, kv_cache_dtype="fp8") == []
    assert reasons(head_size=512, has_sliding_window=True) == []  # Gemma 4's global layers
    assert "head_size not supported" in reasons(head_size=576)
    assert "head_size not supported" in reasons(head_size=16)
    assert reasons(kv_cache_dtype="int8_per_token_head") == []
    assert reasons(kv_cache_dtype="fp8_per_token_head") == []  # an e4m3 cache, as "fp8"
    assert reasons(kv_cache_dtype="int4_per_token_head") == []
    assert "int4_per_token_head needs a head size divisible by 8" in " ".join(
        reasons(kv_cache_dtype="int4_per_token_head", head_size=36)
    )
    assert "kv_cache_dtype not supported" in reasons(kv_cache_dtype="turboquant_4bit_nc")
    assert "block_size not supported" in reasons(block_size=8)
    assert reasons(use_mm_prefix=True, has_sliding_window=True) == []
    assert "MLA not supported" in reasons(use_mla=True)
    assert reasons(use_rswa=True, has_sliding_window=True) == []  # R-SWA is served
    assert reasons(use_batch_invariant=True) == []
    # decode context parallelism: served, but not with masks that need key positions
    assert reasons(use_dcp=True, has_sink=True, use_non_causal=True) == []
    for fact in ("has_sliding_window", "use_rswa", "use_mm_prefix"):
        refused = " ".join(reasons(use_dcp=True, **{fact: True}))
        assert "DCP with" in refused and "rank's cache shard does not keep" in refused, fact
    monkeypatch.setattr(triton_attn.current_platform, "is_cuda", lambda: True)
    assert reasons(kv_cache_dtype="fp8", device_capability=DeviceCapability(8, 9)) == []
    refused = reasons(kv_cache_dtype="fp8", device_capability=DeviceCapability(8, 0))
    assert any("needs native fp8 conversions, which cuda sm_80 lacks" in r for r in refused)
    assert reasons(kv_cache_dtype="fp8_e5m2", device_capability=DeviceCapability(9, 0)) == []
    refused = reasons(kv_cache_dtype="fp8_e5m2", device_capability=DeviceCapability(8, 6))
    assert any("(torch.float8_e5m2) needs native fp8 conversions" in r for r in refused)
    # ROCm: vLLM's fp8 is e4m3fnuz on MI300 (gfx942), e4m3fn on MI350 (gfx950).
    monkeypatch.setattr(triton_attn.current_platform, "is_cuda", lambda: False)
    monkeypatch.setattr(triton_attn.current_platform, "is_rocm", lambda: True)
    fnuz, fn = torch.float8_e4m3fnuz, torch.float8_e4m3fn
    monkeypatch.setattr(triton_attn.current_platform, "fp8_dtype", lambda: fnuz)
    assert reasons(kv_cache_dtype="fp8", device_capability=DeviceCapability(9, 4)) == []
    assert reasons(kv_cache_dtype="fp8", device_capability=DeviceCapability(9, 0))  # MI200
    refused = reasons(kv_cache_dtype="fp8_e5m2", device_capability=DeviceCapability(9, 4))
    assert any("which hip gfx942 lacks" in r for r in refused)  # MI300's fp8 is fnuz only
    monkeypatch.setattr(triton_attn.current_platform, "fp8_dtype", lambda: fn)
    assert reasons(kv_cache_dtype="fp8", device_capability=DeviceCapability(9, 5)) == []
    assert reasons(kv_cache_dtype="fp8_e5m2", device_capability=DeviceCapability(9, 5)) == []


_SELECT = """
import json, sys, types
from unittest import mock
import torch
result = {}
from vllm.platforms.interface import DeviceCapability
from vllm.v1.attention.selector import AttentionSelectorConfig
from vllm.v1.attention.backends.registry import AttentionBackendEnum
fields = AttentionSelectorConfig._fields
config = AttentionSelectorConfig(**{f: False for f in fields} | dict(
    head_size=128, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=None,
    attn_type="decoder"))
if sys.argv[1] == "rocm":
    gfx, major, minor = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with mock.patch.object(torch.cuda, "get_device_properties",
                           return_value=types.SimpleNamespace(gcnArchName=gfx)):
        from vllm.platforms.rocm import RocmPlatform
    import vllm.v1.attention.backends.triton_attn as ours
    ours.current_platform = RocmPlatform()  # our checks see an AMD machine
    import vllm._aiter_ops as aiter
    with mock.patch.object(RocmPlatform, "get_device_capability",
                           return_value=DeviceCapability(major, minor)):
        for found in (False, True):
            with mock.patch.object(aiter, "is_aiter_found_and_supported", return_value=found), \\
                 mock.patch.object(aiter.rocm_aiter_ops, "is_mha_enabled", return_value=found):
                result[f"aiter={found}"] = RocmPlatform.get_attn_backend_cls(None, config, 32)
        result["fp8_e5m2"] = RocmPlatform.get_attn_backend_cls(
            None, config._replace(kv_cache_dtype="fp8_e5m2"), 32)
        result["mm_prefix"] = RocmPlatform.get_attn_backend_cls(
            None, config._replace(use_mm_prefix=True), 32)
        result["head_512"] = RocmPlatform.get_attn_backend_cls(
            None, config._replace(head_size=512), 32)
        result["batch_invariant"] = RocmPlatform.get_attn_backend_cls(
            None, config._replace(use_batch_invariant=True), 32)
else:
    # its compiled ops need libcuda; nothing here calls them
    sys.modules["vllm._C_stable_libtorch"] = types.ModuleType("vllm._C_stable_libtorch")
    from vllm.platforms.cuda import CudaPlatform
    with mock.patch.object(CudaPlatform, "get_device_capability",
                           return_value=DeviceCapability(9, 0)):
        result["flag"] = CudaPlatform.get_attn_backend_cls(
            AttentionBackendEnum.TRITON_ATTN, config, 32)
        result["head_512"] = CudaPlatform.get_attn_backend_cls(
            AttentionBackendEnum.TRITON_ATTN, config._replace(head_size=512), 32)
        result["batch_invariant"] = CudaPlatform.get_attn_backend_cls(
            AttentionBackendEnum.TRITON_ATTN, config._replace(use_batch_invariant=True), 32)
        result["mm_prefix"] = CudaPlatform.get_attn_backend_cls(
            AttentionBackendEnum.TRITON_ATTN, config._replace(use_mm_prefix=True), 32)
        try:
            CudaPlatform.get_attn_backend_cls(AttentionBackendEnum.TRITON_ATTN,
                                              config._replace(head_size=576), 32)
        except Exception as error:
            result["refused"] = str(error)
print(json.dumps(result))
"""


def _select(*platform: str) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", _SELECT, *platform],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "gfx, capability", [("gfx942", "9 4"), ("gfx1100", "11 0"), ("gfx1201", "12 0")]
)
def test_rocm_selects_ours_by_default(gfx, capability):
    """First on every arch, also where upstream itself swaps TRITON_ATTN ahead of
    ROCM_ATTN (gfx1100, gfx1201). An fp8_e5m2 cache is ours where the GPU has OCP
    fp8 (RDNA4); elsewhere we decline it and it goes to ROCM_ATTN."""
    result = _select("rocm", gfx, *capability.split())
    e5m2 = result.pop("fp8_e5m2")
    if gfx == "gfx1201":
        assert e5m2 == OUR_CLASS
    else:
        assert e5m2 == "vllm.v1.attention.backends.rocm_attn.RocmAttentionBackend"
    assert result.pop("mm_prefix") == OUR_CLASS  # multimodal prefix-LMs (Gemma 3, PaliGemma...)
    assert result.pop("head_512") == OUR_CLASS  # Gemma 4's global layers
    assert result.pop("batch_invariant") == OUR_CLASS
    assert set(result) == {"aiter=False", "aiter=True"}
    for case, path in result.items():
        assert path == OUR_CLASS, case


def test_cuda_selects_ours_by_flag_and_says_why_it_refuses():
    result = _select("cuda")
    assert result["flag"] == OUR_CLASS
    assert result["mm_prefix"] == OUR_CLASS
    assert result["head_512"] == OUR_CLASS
    assert result["batch_invariant"] == OUR_CLASS
    assert "head_size not supported" in result["refused"]


def test_upstream_subclasses_still_import_and_construct(vllm_config):
    from vllm.v1.attention.backends import (
        triton_attn_diffkv,
        triton_flash_attn,  # noqa: F401
        triton_flashinfer,  # noqa: F401
    )

    spec = FullAttentionSpec(
        block_size=BLOCK_SIZE, num_kv_heads=NUM_KV_HEADS, head_size=HEAD_SIZE, dtype=torch.float32
    )
    triton_attn_diffkv.TritonAttentionDiffKVBackend.set_head_size_v(HEAD_SIZE)
    builder = triton_attn_diffkv.TritonAttentionDiffKVMetadataBuilder(
        spec, ["layer.0"], vllm_config, torch.device("cpu")
    )
    assert builder.softmax_segm_output.shape[2] == builder.num_par_softmax_segments
    assert issubclass(triton_attn_diffkv.TritonAttentionDiffKVImpl, TritonAttentionImpl)

    # DASH (Unlimited-OCR2's sparse attention) extends our metadata with its requests.
    from vllm.model_executor.layers.dash_attention import DASHAttentionMetadataBuilder

    dash = DASHAttentionMetadataBuilder(spec, ["layer.0"], vllm_config, torch.device("cpu"))
    qsl = torch.tensor([0, 1, 9], dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=qsl,
        query_start_loc_cpu=qsl,
        seq_lens=torch.tensor([30, 8], dtype=torch.int32),
        seq_lens_cpu_upper_bound=torch.tensor([30, 8], dtype=torch.int32),
        num_reqs=2,
        num_actual_tokens=9,
        max_query_len=8,
        max_seq_len=30,
        block_table_tensor=torch.zeros(2, 2, dtype=torch.int32),
        slot_mapping=torch.arange(9),
    )
    metadata = dash.build(0, common)
    assert metadata.requests == ((0, 0, 1, 30), (1, 1, 9, 8))
    assert metadata.plan is not None and metadata.seq_lens is common.seq_lens
