# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Our TRITON_ATTN on a GPU through vLLM's own classes, the engine's path for a layer.

vLLM's ``Attention`` layer (with our impl, selected by vLLM), its KV-cache spec
and allocator, ``CommonAttentionMetadata``, our builder, the forward context
and the layer's call (vLLM's cache-update and attention ops) run on the GPU
for decode, speculative-decode, prefill, chunked-prefill and mixed batches, in
bf16, fp8 and per-token-head int8/fp8/int4 KV, in both cache layouts, under
full CUDA graphs captured once and replayed with new lengths and block tables,
with the output quantised to fp8 as vLLM's fusion pass asks, and with the
rotary embedding fused into the cache write. Every output
is checked against the reference, every written cache slot against an
independent copy or quantisation.

GPU only, with the patched vLLM's Python layers importable (see DEVELOPING.md,
"The glue on a GPU": ``devtools/gpu_glue_check.sh`` runs this file on a GPU
machine that has no vLLM). The engine itself (scheduler, model runner, model
weights) is not driven here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_GPU

pytestmark = pytest.mark.skipif(not HAS_GPU, reason="drives the backend on a GPU")
pytest.importorskip("vllm.config", reason="needs the patched vLLM's Python layers")

from transformers import LlamaConfig  # noqa: E402

from devtools.batches import (  # noqa: E402
    TOLERANCES,
    assert_fp8_output_close,
    quantise_int4,
    quantise_per_token_head,
    token_head_page_views,
)
from vllm.config import (  # noqa: E402
    AttentionConfig,
    CacheConfig,
    CompilationConfig,
    CUDAGraphMode,
    DeviceConfig,
    ModelConfig,
    SpeculativeConfig,
    VllmConfig,
    set_current_vllm_config,
)
from vllm.forward_context import set_forward_context  # noqa: E402
from vllm.model_executor.layers.attention import Attention  # noqa: E402
from vllm.model_executor.layers.quantization.utils.quant_utils import (  # noqa: E402
    kFp8StaticTensorSym,
)
from vllm.platforms import current_platform  # noqa: E402
from vllm.v1.attention.backend import CommonAttentionMetadata  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402
from vllm.v1.attention.backends.triton_attn import (  # noqa: E402
    TritonAttentionImpl,
    TritonAttentionMetadataBuilder,
)
from vllm.v1.attention.ops.triton_attention import (  # noqa: E402
    MixedBatchPlan,
    reference_paged_attention,
)
from vllm.v1.kv_cache_interface import KVCacheTensor, create_kv_cache_views  # noqa: E402
from vllm.v1.kv_cache_layout import KVCacheLayout  # noqa: E402
from vllm.v1.worker.utils import bind_kv_cache_to_layers  # noqa: E402

HEADS, KV_HEADS, HEAD_SIZE, BLOCK = 32, 8, 128, 16
NUM_BLOCKS = 1024
MAX_REQS, MAX_TOKENS, MAX_BLOCKS_PER_REQ = 16, 1024, 4096 // BLOCK
LAYER = "model.layers.0.self_attn.attn"
FP8_SCALE = 0.05  # the layer's K and V scales in fp8 runs: |x| <= 4 stays in e4m3's range
LAYOUTS = {"NHD": KVCacheLayout.LBNHC, "HND": KVCacheLayout.LBHNC}
# (query lengths, sequence lengths) of a decode, a prefill and a mixed batch
DECODE_PREFILL_MIXED = (
    ([1] * 5, [17, 255, 1000, 2048, 4096]),
    ([300, 77, 1], [300, 77, 1]),
    ([1, 1, 1, 150, 40], [500, 1200, 33, 700, 40]),
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("llama-shaped")
    LlamaConfig(
        hidden_size=HEADS * HEAD_SIZE,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_SIZE,
        vocab_size=256,
        max_position_embeddings=4096,
    ).save_pretrained(model_dir)
    return model_dir


class LayerOnGpu:
    """One vLLM attention layer with its cache, metadata buffers and builder, as a
    model runner keeps them: every step writes into the same persistent tensors."""

    def __init__(self, model_dir, cache_dtype="auto", layout="NHD", mode=None, spec_tokens=0):
        speculative = (
            SpeculativeConfig(
                method="ngram",
                num_speculative_tokens=spec_tokens,
                prompt_lookup_max=3,
                prompt_lookup_min=1,
            )
            if spec_tokens
            else None
        )
        self.config = VllmConfig(
            model_config=ModelConfig(
                model=str(model_dir),
                skip_tokenizer_init=True,
                dtype="bfloat16",
                max_model_len=4096,
            ),
            device_config=DeviceConfig(device="cuda"),
            cache_config=CacheConfig(block_size=BLOCK, cache_dtype=cache_dtype),
            attention_config=AttentionConfig(backend=AttentionBackendEnum.TRITON_ATTN),
            compilation_config=CompilationConfig(cudagraph_mode=mode or "FULL_AND_PIECEWISE"),
            speculative_config=speculative,
        )
        with set_current_vllm_config(self.config), torch.device("cuda"):  # as the loader does
            self.layer = Attention(
                HEADS,
                HEAD_SIZE,
                HEAD_SIZE**-0.5,
                KV_HEADS,
                cache_config=self.config.cache_config,
                prefix=LAYER,
            )
        assert isinstance(self.layer.impl, TritonAttentionImpl)  # vLLM picked ours
        self.layer.process_weights_after_loading()  # the default scales, as after loading
        self.token_head = cache_dtype.endswith("_per_token_head")  # scales in the page
        self.fp8 = cache_dtype != "auto" and not self.token_head
        if self.fp8:
            for scale in (self.layer._k_scale, self.layer._v_scale):
                scale.fill_(FP8_SCALE)
            self.layer._k_scale_float = self.layer._v_scale_float = FP8_SCALE

        spec = self.layer.get_kv_cache_spec(self.config)
        page = spec.page_size_bytes
        raw = torch.zeros(page * NUM_BLOCKS, dtype=torch.int8, device="cuda")
        placement = KVCacheTensor(
            size=raw.numel(), layers=[LAYER], layer_stride=page * NUM_BLOCKS, block_stride=page
        )
        (self.kv_cache,) = create_kv_cache_views(raw, spec, NUM_BLOCKS, LAYOUTS[layout], placement)
        layers = self.config.compilation_config.static_forward_context
        bind_kv_cache_to_layers({LAYER: self.kv_cache}, layers)
        builder_cls = self.layer.get_attn_backend().get_builder_cls()
        self.builder = builder_cls(spec, [LAYER], self.config, torch.device("cuda"))
        assert isinstance(self.builder, TritonAttentionMetadataBuilder)

        # The runner's persistent inputs.
        cuda = dict(device="cuda")
        self.qsl = torch.zeros(MAX_REQS + 1, dtype=torch.int32, **cuda)
        self.qsl_cpu = torch.zeros(MAX_REQS + 1, dtype=torch.int32)
        self.seq_lens = torch.zeros(MAX_REQS, dtype=torch.int32, **cuda)
        self.block_table = torch.zeros(MAX_REQS, MAX_BLOCKS_PER_REQ, dtype=torch.int32, **cuda)
        self.slot_mapping = torch.full((MAX_TOKENS,), -1, dtype=torch.int64, **cuda)
        self.query = torch.zeros(MAX_TOKENS, HEADS, HEAD_SIZE, dtype=torch.bfloat16, **cuda)
        self.key = torch.zeros(MAX_TOKENS, KV_HEADS, HEAD_SIZE, dtype=torch.bfloat16, **cuda)
        self.value = torch.zeros_like(self.key)
        self.gen = torch.Generator(device="cuda").manual_seed(0)

    def stage(self, q_lens, seq_lens, num_reqs=None, num_tokens=None):
        """Write a batch into the persistent inputs: fresh random blocks per request
        (block 0 is vLLM's null block), new queries, keys and values; requests past
        ``len(q_lens)`` up to ``num_reqs`` and tokens up to ``num_tokens`` are
        padding, as a captured graph's size makes them."""
        num_reqs = num_reqs or len(q_lens)
        real_tokens = sum(q_lens)
        num_tokens = num_tokens or real_tokens
        q_lens = list(q_lens) + [0] * (num_reqs - len(q_lens))
        seq_lens = list(seq_lens) + [0] * (num_reqs - len(seq_lens))
        blocks = (
            torch.randperm(
                NUM_BLOCKS - 1, generator=torch.Generator().manual_seed(sum(seq_lens) + num_reqs)
            )
            + 1
        ).tolist()
        table = torch.zeros(num_reqs, MAX_BLOCKS_PER_REQ, dtype=torch.int32)
        slots = []
        for req, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens, strict=True)):
            count = -(-seq_len // BLOCK)
            table[req, :count] = torch.tensor(blocks[:count], dtype=torch.int32)
            blocks = blocks[count:]
            for pos in range(seq_len - q_len, seq_len):
                slots.append(int(table[req, pos // BLOCK]) * BLOCK + pos % BLOCK)
        qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
        self.qsl_cpu[: num_reqs + 1] = qsl
        self.qsl[: num_reqs + 1].copy_(qsl)
        self.seq_lens[:num_reqs].copy_(torch.tensor(seq_lens, dtype=torch.int32))
        self.block_table[:num_reqs].copy_(table)
        self.slot_mapping[:num_tokens].fill_(-1)
        self.slot_mapping[:real_tokens].copy_(torch.tensor(slots, dtype=torch.int64))
        for tensor in (self.query, self.key, self.value):
            tensor.normal_(generator=self.gen)
        return CommonAttentionMetadata(
            query_start_loc=self.qsl[: num_reqs + 1],
            query_start_loc_cpu=self.qsl_cpu[: num_reqs + 1],
            seq_lens=self.seq_lens[:num_reqs],
            num_reqs=num_reqs,
            num_actual_tokens=num_tokens,
            max_query_len=max(q_lens),
            max_seq_len=max(seq_lens),
            block_table_tensor=self.block_table[:num_reqs],
            slot_mapping=self.slot_mapping[:num_tokens],
        )

    def forward(self, common, metadata):
        """The layer's call as the model makes it inside vLLM's forward context."""
        tokens = common.num_actual_tokens
        with set_forward_context(
            {LAYER: metadata}, self.config, slot_mapping={LAYER: common.slot_mapping}
        ):
            return self.layer(self.query[:tokens], self.key[:tokens], self.value[:tokens])

    def check(self, common, output):
        """The written slots against the new keys and values, the output against the
        reference over the whole cache."""
        tokens = int(self.qsl_cpu[common.num_reqs])
        slots = common.slot_mapping[:tokens]
        blocks, offsets = slots // BLOCK, slots % BLOCK
        if self.token_head:  # values, then a float32 scale, per (head, slot), read on their own
            values = self.layer.impl._kv_dtype
            int4 = values == torch.uint8  # two codes per byte, rotated vectors
            k_view, v_view, k_scale, v_scale = token_head_page_views(
                self.kv_cache, HEAD_SIZE // 2 if int4 else HEAD_SIZE, values
            )
            for view, scale, new in ((k_view, k_scale, self.key), (v_view, v_scale, self.value)):
                if int4:
                    expected, expected_scale = quantise_int4(new[:tokens])
                else:
                    expected, expected_scale = quantise_per_token_head(new[:tokens], values)
                assert torch.equal(
                    view[blocks, offsets].view(torch.uint8), expected.view(torch.uint8)
                )
                got_scale = scale[blocks, offsets].contiguous().view(torch.int32)
                assert torch.equal(got_scale, expected_scale.view(torch.int32))
            return self._check_output(
                common, output, k_view, v_view, k_scale=k_scale, v_scale=v_scale
            )
        k_view, v_view = self.kv_cache.transpose(1, 2).split(HEAD_SIZE, dim=-1)
        scales = {}
        if self.fp8:
            fp8 = self.layer.impl.fp8_dtype
            k_view, v_view = k_view.view(fp8), v_view.view(fp8)
            scales = dict(k_scale=self.layer._k_scale, v_scale=self.layer._v_scale)
        for view, new in ((k_view, self.key), (v_view, self.value)):
            written = view[blocks, offsets]
            if self.fp8:  # an independent quantisation: divide by the scale, round to fp8
                expected = (new[:tokens].float() / FP8_SCALE).to(view.dtype)
                assert torch.equal(written.view(torch.uint8), expected.view(torch.uint8))
            else:
                assert torch.equal(written, new[:tokens])
        self._check_output(common, output, k_view, v_view, **scales)

    def _check_output(self, common, output, k_view, v_view, **scales):
        tokens = int(self.qsl_cpu[common.num_reqs])
        query = self.query[:tokens]
        if self.fp8 and self.layer.impl.supports_quant_query_input:
            # vLLM's layer quantised the queries to the cache's format (its q scale)
            fp8, q_scale = self.layer.impl.fp8_dtype, self.layer._q_scale
            fp8_max = torch.finfo(fp8).max
            query = (query.float() / q_scale).clamp(-fp8_max, fp8_max).to(fp8)
            scales = dict(scales, q_scale=q_scale.float().reshape(-1))
        expected = reference_paged_attention(
            query,
            k_view,
            v_view,
            out=self.query[:tokens],  # the output's dtype: the model's
            query_start_loc=common.query_start_loc,
            seq_lens=common.seq_lens,
            block_table=common.block_table_tensor,
            scale=HEAD_SIZE**-0.5,
            **scales,
        )
        got = output.view(-1, HEADS, HEAD_SIZE)[:tokens]
        torch.testing.assert_close(got, expected, **TOLERANCES[torch.bfloat16])


def _eager_step(gpu: LayerOnGpu, q_lens, seq_lens):
    common = gpu.stage(q_lens, seq_lens)
    metadata = gpu.builder.build(0, common)
    gpu.check(common, gpu.forward(common, metadata))
    return metadata.plan


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize(
    "cache_dtype",
    ["auto", "fp8", "int8_per_token_head", "fp8_per_token_head", "int4_per_token_head"],
)
def test_eager_batches(model_dir, cache_dtype, layout):
    """Decode, prefill, chunked prefill and mixed batches through one layer."""
    gpu = LayerOnGpu(model_dir, cache_dtype, layout)
    decode = _eager_step(gpu, [1] * 9, [1, 17, 255, 256, 257, 1000, 2048, 3000, 4096])
    assert decode.kernel.startswith("split_kv_decode")
    prefill = _eager_step(gpu, [300, 77, 1], [300, 77, 1])
    assert prefill.kernel.startswith("long_query")
    chunked = _eager_step(gpu, [200, 512], [900, 3000])
    assert chunked.kernel.startswith("long_query")
    mixed = _eager_step(gpu, [1, 1, 1, 150, 40], [500, 1200, 33, 700, 40])
    assert isinstance(mixed, MixedBatchPlan) and mixed.num_decodes == 3


def test_fused_fp8_output(model_dir):
    """vLLM's attention + static fp8 quantisation fusion: its compiled graph
    hands ``forward`` an e4m3 output and the quantisation's scale, and the
    impl writes ``attention / scale`` there (decode, prefill, mixed)."""
    gpu = LayerOnGpu(model_dir, "auto")
    impl = gpu.layer.impl
    assert impl.fused_output_quant_supported(kFp8StaticTensorSym)
    scale = torch.tensor([0.3], device="cuda")
    for q_lens, seq_lens in DECODE_PREFILL_MIXED:
        common = gpu.stage(q_lens, seq_lens)
        metadata = gpu.builder.build(0, common)
        tokens = common.num_actual_tokens
        query, key, value = gpu.query[:tokens], gpu.key[:tokens], gpu.value[:tokens]
        fp8 = current_platform.fp8_dtype()
        output = torch.full_like(query, float("nan"), dtype=fp8)
        impl.do_kv_cache_update(gpu.layer, key, value, gpu.kv_cache, common.slot_mapping)
        impl.forward(gpu.layer, query, key, value, gpu.kv_cache, metadata, output, scale)
        k_view, v_view = gpu.kv_cache.transpose(1, 2).split(HEAD_SIZE, dim=-1)
        expected = reference_paged_attention(
            query,
            k_view,
            v_view,
            out=output,
            query_start_loc=common.query_start_loc,
            seq_lens=common.seq_lens,
            block_table=common.block_table_tensor,
            scale=HEAD_SIZE**-0.5,
            out_scale=scale,
        )
        assert_fp8_output_close(output, expected)


@pytest.mark.parametrize("cache_dtype", ["auto", "int8_per_token_head"])
def test_rope_and_cache_write_then_attention(model_dir, cache_dtype):
    """vLLM's RoPE + KV-cache fusion: ``do_rope_and_kv_cache_update`` turns the
    layer's queries and keys in place as vLLM's own rotary embedding does and
    stores the turned keys; ``forward`` (which the fused graph calls without a
    cache update of its own) then attends over them (decode, prefill and
    mixed batches)."""
    from vllm.model_executor.layers.rotary_embedding import get_rope

    gpu = LayerOnGpu(model_dir, cache_dtype)
    impl = gpu.layer.impl
    assert impl.fused_rope_kvcache_supported()
    with set_current_vllm_config(gpu.config):
        rope = get_rope(
            HEAD_SIZE, 4096, is_neox_style=True, rope_parameters={"rope_theta": 500000.0},
            dtype=torch.bfloat16,
        ).cuda()  # fmt: skip
    for q_lens, seq_lens in DECODE_PREFILL_MIXED:
        common = gpu.stage(q_lens, seq_lens)
        metadata = gpu.builder.build(0, common)
        tokens = common.num_actual_tokens
        positions = torch.cat(
            [torch.arange(s - q, s) for q, s in zip(q_lens, seq_lens, strict=True)]
        ).cuda()
        query, key, value = gpu.query[:tokens], gpu.key[:tokens], gpu.value[:tokens]
        want_q, want_k = rope.forward_native(
            positions, query.reshape(tokens, -1).clone(), key.reshape(tokens, -1).clone()
        )
        impl.do_rope_and_kv_cache_update(
            gpu.layer, query, key, value, positions, rope.cos_sin_cache, True, gpu.kv_cache,
            common.slot_mapping,
        )  # fmt: skip
        # vLLM's native path rounds each product and sum to bf16, ours once
        for turned, want in ((query, want_q), (key, want_k)):
            torch.testing.assert_close(turned.reshape(tokens, -1), want, atol=2e-2, rtol=2 * 2**-8)
        output = torch.full_like(query, float("nan"))
        impl.forward(gpu.layer, query, key, value, gpu.kv_cache, metadata, output)
        gpu.check(common, output)  # the written slots and the output, from the turned ones


@pytest.mark.parametrize("cache_dtype", ["auto", "fp8"])
def test_spec_decode_verification(model_dir, cache_dtype):
    gpu = LayerOnGpu(model_dir, cache_dtype, spec_tokens=3)
    assert gpu.builder.max_decode_query_len == 4
    plan = _eager_step(gpu, [4] * 6, [4, 64, 300, 1023, 2049, 4000])
    assert plan.kernel.startswith("split_kv_decode")
    mixed = _eager_step(gpu, [4, 4, 2, 100], [50, 1500, 70, 600])
    assert isinstance(mixed, MixedBatchPlan) and mixed.num_decodes == 3


def _capture(gpu: LayerOnGpu, common):
    """vLLM's capture: the builder's capture metadata, a warm-up call, then the
    layer's call recorded into a graph. Returns the graph and its output."""
    metadata = gpu.builder.build_for_cudagraph_capture(common)
    gpu.forward(common, metadata)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = gpu.forward(common, metadata)
    return graph, output, metadata.plan


def _replay(gpu: LayerOnGpu, graph, output, captured_plan, q_lens, seq_lens, num_reqs, tokens):
    common = gpu.stage(q_lens, seq_lens, num_reqs=num_reqs, num_tokens=tokens)
    # vLLM builds every step's metadata, graph or not; the graph's plan must be it.
    assert gpu.builder.build(0, common).plan == captured_plan
    graph.replay()
    gpu.check(common, output)


@pytest.mark.parametrize(
    "cache_dtype", ["auto", "fp8", "int8_per_token_head", "int4_per_token_head"]
)
def test_full_graph_of_decodes(model_dir, cache_dtype):
    """FULL_AND_PIECEWISE captures uniform decode batches: one graph per size
    replays every batch of that size, padded ones included."""
    gpu = LayerOnGpu(model_dir, cache_dtype)
    size = 8
    graph, output, plan = _capture(gpu, gpu.stage([1] * size, [1] * size))
    _replay(gpu, graph, output, plan, [1] * size, [40, 1, 700, 2048, 33, 4096, 16, 17], size, size)
    _replay(gpu, graph, output, plan, [1] * 5, [3000, 5, 129, 64, 1024], size, size)
    _replay(gpu, graph, output, plan, [1] * size, [17, 4000, 2, 300, 301, 999, 1, 2500], size, size)


def test_full_graph_of_mixed_batches(model_dir):
    """FULL captures mixed batches too: a graph captured from one mix replays
    another of the same token count, with new lengths and block tables."""
    gpu = LayerOnGpu(model_dir, mode="FULL")
    assert gpu.config.compilation_config.cudagraph_mode == CUDAGraphMode.FULL
    reqs, tokens = 4, 64
    graph, output, plan = _capture(gpu, gpu.stage([1, 1, 1, 61], [1, 1, 1, 61]))
    _replay(gpu, graph, output, plan, [1, 1, 1, 61], [900, 33, 2047, 1300], reqs, tokens)
    _replay(gpu, graph, output, plan, [1, 30, 20], [4000, 30, 500], reqs, tokens)
    _replay(gpu, graph, output, plan, [16, 16, 16, 16], [16, 700, 3000, 1000], reqs, tokens)
    _replay(gpu, graph, output, plan, [1, 1], [1, 2], reqs, tokens)
