# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Decode context parallelism (DCP) through our builder and impl, on two CPU ranks.

Two processes form vLLM's own tensor- and DCP-parallel groups (gloo) and each
drives one layer the way vLLM's runner does under DCP: its cache holds every
second run of ``cp_kv_cache_interleave_size`` tokens of each sequence, the
runner's slot mapping writes only the new tokens it owns, and each rank has
half of the query heads. Both ranks' outputs are compared with the reference
over the whole, unsharded cache.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm.config", reason="needs the installed vLLM (make test installs it)")

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE, WORLD = 8, 1, 32, 16, 2
# (query length, sequence length) per request: decodes, a speculative
# verification, a prefill chunk after a context, a first prefill chunk
STEP = [(1, 37), (1, 70), (3, 50), (20, 61), (12, 12)]
FIRST_PREFILLS = [(9, 9), (17, 17)]  # no context anywhere: only the new tokens' part


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "interleave, combine, sinks",
    [(1, "ag_rs", False), (4, "a2a", True), (16, "ag_rs", True)],
)
def test_dcp_two_ranks_match_the_unsharded_reference(tmp_path, interleave, combine, sinks):
    port = _free_port()
    # the CPU development platform: vLLM on the CPU, our kernels in the interpreter
    # (an empty CUDA_VISIBLE_DEVICES keeps vLLM from disabling Triton without a driver)
    env = dict(
        os.environ, TRITON_INTERPRET="1", VLLM_TRITON_ATTN_CPU_DEV="1", CUDA_VISIBLE_DEVICES=""
    )
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(port), str(interleave), combine, str(sinks)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD)
    ]
    logs = [worker.communicate(timeout=600)[0] for worker in workers]
    for rank, (worker, log) in enumerate(zip(workers, logs, strict=True)):
        assert worker.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
        assert "matched 2 batches" in log, log[-2000:]


# ---------------------------------------------------------------- one rank


def _vllm_config(rank: int, interleave: int, combine: str):
    from transformers import LlamaConfig

    from vllm.config import (
        DeviceConfig,
        ModelConfig,
        ParallelConfig,
        SchedulerConfig,
        VllmConfig,
    )

    model_dir = Path(f"tiny-llama-rank{rank}")  # in the test's temporary directory
    LlamaConfig(
        hidden_size=NUM_Q_HEADS * HEAD_SIZE,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=NUM_Q_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_SIZE,
        vocab_size=128,
        max_position_embeddings=256,
    ).save_pretrained(model_dir)
    model = ModelConfig(
        model=str(model_dir), skip_tokenizer_init=True, dtype="float32", max_model_len=256
    )
    parallel = ParallelConfig(
        tensor_parallel_size=WORLD,
        decode_context_parallel_size=WORLD,
        cp_kv_cache_interleave_size=interleave,
        dcp_comm_backend=combine,
    )
    scheduler = SchedulerConfig(
        max_num_seqs=8, max_num_batched_tokens=256, max_model_len=256, is_encoder_decoder=False
    )
    return VllmConfig(
        model_config=model,
        parallel_config=parallel,
        scheduler_config=scheduler,
        device_config=DeviceConfig(device="cpu"),
    )


def _owner_and_local_index(position: int, rank_count: int, interleave: int) -> tuple[int, int]:
    """vLLM's DCP placement: runs of ``interleave`` tokens dealt round-robin."""
    run = position // interleave
    return run % rank_count, (run // rank_count) * interleave + position % interleave


def _run_batch(rank, interleave, builder, impl, layer, batch, sinks, gen):
    from devtools.batches import TOLERANCES
    from vllm.v1.attention.backend import CommonAttentionMetadata
    from vllm.v1.attention.ops.triton_attention import reference_paged_attention

    heads = NUM_Q_HEADS // WORLD
    q_lens = [q for q, _ in batch]
    seq_lens = [s for _, s in batch]
    num_tokens = sum(q_lens)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    # Every position's K/V (both ranks draw the same), the whole group's queries.
    keys = [torch.randn(s, NUM_KV_HEADS, HEAD_SIZE, generator=gen) for s in seq_lens]
    values = [torch.randn(s, NUM_KV_HEADS, HEAD_SIZE, generator=gen) for s in seq_lens]
    query = torch.randn(num_tokens, NUM_Q_HEADS, HEAD_SIZE, generator=gen)

    # This rank's cache: its share of each sequence, in blocks of its own.
    blocks_per_req = -(-max(seq_lens) // (BLOCK_SIZE * WORLD)) + 1
    num_blocks = 1 + len(batch) * blocks_per_req
    # vLLM's logical [num_blocks, H, block_size, 2 * D] cache over a token-major one;
    # NaN where no key of this rank's was written
    physical = torch.full((num_blocks, BLOCK_SIZE, NUM_KV_HEADS, 2 * HEAD_SIZE), float("nan"))
    packed = physical.permute(0, 2, 1, 3)
    key_cache, value_cache = physical[..., :HEAD_SIZE], physical[..., HEAD_SIZE:]
    block_table = torch.zeros(len(batch), blocks_per_req, dtype=torch.int32)
    slots = []
    for req, (q_len, seq_len) in enumerate(batch):
        block_table[req] = torch.arange(1 + req * blocks_per_req, 1 + (req + 1) * blocks_per_req)
        for pos in range(seq_len):
            owner, local = _owner_and_local_index(pos, WORLD, interleave)
            slot = int(block_table[req, local // BLOCK_SIZE]) * BLOCK_SIZE + local % BLOCK_SIZE
            new = pos >= seq_len - q_len
            if new:  # written by the layer's cache update, by its owner only
                slots.append(slot if owner == rank else -1)
            elif owner == rank:  # written by earlier steps
                block, offset = divmod(slot, BLOCK_SIZE)
                key_cache[block, offset] = keys[req][pos]
                value_cache[block, offset] = values[req][pos]
    new_keys = torch.cat([k[s - q :] for k, (q, s) in zip(keys, batch, strict=True)])
    new_values = torch.cat([v[s - q :] for v, (q, s) in zip(values, batch, strict=True)])
    slot_mapping = torch.tensor(slots, dtype=torch.int64)

    common = CommonAttentionMetadata(
        query_start_loc=qsl,
        query_start_loc_cpu=qsl.clone(),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        num_reqs=len(batch),
        num_actual_tokens=num_tokens,
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        block_table_tensor=block_table,
        slot_mapping=slot_mapping,
        seq_lens_cpu_upper_bound=torch.tensor(seq_lens, dtype=torch.int32),
    )
    metadata = builder.build(0, common)
    expect_context = any(s > q for q, s in batch)
    assert (metadata.dcp.context is not None) == expect_context
    impl.do_kv_cache_update(layer, new_keys, new_values, packed, slot_mapping)
    my_query = query[:, rank * heads : (rank + 1) * heads].contiguous()
    output = torch.full_like(my_query, float("nan"))
    impl.forward(layer, my_query, new_keys, new_values, packed, metadata, output)

    # The reference: every head over the whole, unsharded sequences.
    whole_k = torch.cat([k.unsqueeze(1) for k in keys])  # one-token blocks
    whole_v = torch.cat([v.unsqueeze(1) for v in values])
    starts = torch.tensor([0, *torch.tensor(seq_lens).cumsum(0).tolist()])
    table = torch.zeros(len(batch), max(seq_lens), dtype=torch.int32)
    for req, seq_len in enumerate(seq_lens):
        table[req, :seq_len] = torch.arange(starts[req], starts[req] + seq_len)
    all_sinks = sinks if sinks is None else torch.cat([sinks] * WORLD)  # only this rank's used
    expected = reference_paged_attention(
        query,
        whole_k,
        whole_v,
        out=torch.empty_like(query),
        query_start_loc=qsl,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_table=table,
        scale=impl.scale,
        sinks=all_sinks,
    )[:, rank * heads : (rank + 1) * heads]
    # float32 throughout: the two parts and their merge reorder the sums only
    torch.testing.assert_close(output, expected, **TOLERANCES[torch.float32])
    # a graph replays its capture's launches for every later batch: context included
    captured = builder.build_for_cudagraph_capture(replace(common, seq_lens=common.seq_lens * 1))
    assert captured.dcp.context is not None


def _combine_on_cpu(out, lse, group, return_lse):
    """vLLM's DCP combine (gather every rank's partial results, weigh them by
    their log-sum-exps, keep this rank's heads) through vLLM's own CPU
    reference of the weighting: its Triton kernels do not run on a CPU."""
    from vllm.v1.attention.ops.dcp import _lse_weighted_combine

    assert return_lse
    outs = group.all_gather(out.unsqueeze(0).contiguous(), dim=0)
    lses = group.all_gather(lse.unsqueeze(0).contiguous(), dim=0)
    combined, combined_lse = _lse_weighted_combine(outs, lses, return_lse=True)
    heads = combined.shape[1] // group.world_size
    mine = slice(group.rank_in_group * heads, (group.rank_in_group + 1) * heads)
    return combined[:, mine], combined_lse[:, mine]


def _rank_main(rank: int, port: int, interleave: int, combine: str, with_sinks: bool) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
    )
    from vllm.model_executor.layers.quantization.utils.quant_utils import kFp8StaticTensorSym
    from vllm.v1.attention.backends.triton_attn import (
        TritonAttentionImpl,
        TritonAttentionMetadataBuilder,
    )
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    config = _vllm_config(rank, interleave, combine)
    with set_current_vllm_config(config):
        init_distributed_environment(
            world_size=WORLD,
            rank=rank,
            distributed_init_method=f"tcp://127.0.0.1:{port}",
            local_rank=rank,
            backend="gloo",
        )
        initialize_model_parallel(
            tensor_model_parallel_size=WORLD, decode_context_model_parallel_size=WORLD
        )
        heads = NUM_Q_HEADS // WORLD
        gen = torch.Generator().manual_seed(1234)  # the same draws on both ranks
        sinks = torch.randn(heads, generator=torch.Generator().manual_seed(rank)) * 2
        impl = TritonAttentionImpl(
            heads,
            HEAD_SIZE,
            HEAD_SIZE**-0.5,
            NUM_KV_HEADS,
            alibi_slopes=None,
            sliding_window=None,
            kv_cache_dtype="auto",
            sinks=sinks if with_sinks else None,
        )
        assert impl.need_to_return_lse_for_decode
        # what DCP cannot carry is refused when the layer is made
        for refused in (dict(alibi_slopes=[0.5] * heads), dict(sliding_window=64)):
            layer_args = dict(alibi_slopes=None, sliding_window=None, kv_cache_dtype="auto")
            with pytest.raises(NotImplementedError, match="decode context parallelism"):
                TritonAttentionImpl(
                    heads, HEAD_SIZE, 1.0, NUM_KV_HEADS, **dict(layer_args, **refused)
                )
        # the output is a merge of two attentions; the new tokens' K/V are 16-bit
        fp8_impl = TritonAttentionImpl(heads, HEAD_SIZE, 1.0, NUM_KV_HEADS, None, None, "fp8")
        assert not fp8_impl.supports_quant_query_input
        assert not fp8_impl.fused_output_quant_supported(kFp8StaticTensorSym)
        spec = FullAttentionSpec(
            block_size=BLOCK_SIZE,
            num_kv_heads=NUM_KV_HEADS,
            head_size=HEAD_SIZE,
            dtype=torch.float32,
        )
        builder = TritonAttentionMetadataBuilder(spec, ["layer.0"], config, torch.device("cpu"))
        assert (builder.dcp_world_size, builder.dcp_rank) == (WORLD, rank)
        from vllm.v1.attention.ops.dcp import cp_lse_ag_out_rs, dcp_a2a_lse_reduce

        assert (
            builder.dcp_combine is {"ag_rs": cp_lse_ag_out_rs, "a2a": dcp_a2a_lse_reduce}[combine]
        )
        if combine == "ag_rs":
            builder.dcp_combine = _combine_on_cpu

        class Layer(torch.nn.Module):
            _k_scale = _v_scale = _q_scale = torch.tensor(1.0)

        for batch in (STEP, FIRST_PREFILLS):
            _run_batch(
                rank,
                interleave,
                builder,
                impl,
                Layer(),
                batch,
                sinks if with_sinks else None,
                gen,
            )
    print("matched 2 batches")


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).parents[2]))  # devtools; after the installed vllm
    rank, port, interleave, combine, with_sinks = sys.argv[1:]
    _rank_main(int(rank), int(port), int(interleave), combine, with_sinks == "True")
