# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""``BatchLaunches``: one batch, many layers, each layer's output against the
reference. Layers of one configuration reuse the first one's launches (on a
GPU without Triton's dispatch); a layer that differs in anything the checks or
the kernels' specialisation read gets launches of its own."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from conftest import HAS_GPU
from triton.compiler import CompiledKernel
from triton.runtime.jit import JITFunction

from devtools.batches import TOLERANCES, make_batch, plan_for_batch, small_gpu
from vllm.v1.attention.ops.triton_attention import (
    BatchLaunches,
    MixedBatchPlan,
    SplitKVWorkspace,
    reference_paged_attention,
)
from vllm.v1.attention.ops.triton_attention.launch import (
    _LAYER_TENSORS,
    KernelLaunch,
    _BoundLaunch,
    _LayerTensors,
    _tensors_key,
)

HEADS, KV_HEADS, HEAD_SIZE = 8, 2, 64
# decodes of one and two tokens, then chunks on cached prefixes: a mixed plan
PATTERNS = {"mixed": ([1, 2, 40, 7], [60, 33, 90, 7]), "decode": ([1, 1, 1], [17, 80, 3])}


def _layer(batch, generator, offset: int = 0):
    """A layer's q, caches and output for ``batch`` (same shapes, new values);
    ``offset``: q starts that many elements into its storage."""
    q = torch.randn(batch.q.numel() + offset, generator=generator)
    q = q.to(device=batch.q.device, dtype=batch.q.dtype)[offset:].view(batch.q.shape)
    k_cache = torch.randn(batch.k_cache.shape, generator=generator).to(batch.k_cache)
    v_cache = torch.randn(batch.v_cache.shape, generator=generator).to(batch.v_cache)
    return q, k_cache, v_cache, torch.full_like(q, float("nan"))


def _dispatches(launches, layer, **layer_args) -> int:
    """Launches that went through Triton's JIT dispatch during one layer's call."""
    count = 0
    run = JITFunction.run

    def counted(self, *args, **kwargs):
        nonlocal count
        count += 1
        return run(self, *args, **kwargs)

    JITFunction.run = counted
    try:
        launches(*layer, **layer_args)
    finally:
        JITFunction.run = run
    return count


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_layers_of_one_batch_match_reference(pattern, device):
    q_lens, seq_lens = PATTERNS[pattern]
    dtype = torch.float16
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=HEADS,
        num_kv_heads=KV_HEADS,
        head_size=HEAD_SIZE,
        block_size=16,
        dtype=dtype,
        device=device,
        padding_tokens=2,
    )
    plan = plan_for_batch(
        q_lens,
        num_tokens=batch.q.shape[0],
        num_q_heads=HEADS,
        num_kv_heads=KV_HEADS,
        head_size=HEAD_SIZE,
        device=device,
        dtype=dtype,
        arch=None if HAS_GPU else small_gpu(),
        **batch.plan_facts(sliding_window=24, logits_soft_cap=5.0),
    )
    assert isinstance(plan, MixedBatchPlan) == (pattern == "mixed")
    launches = BatchLaunches(
        query_start_loc=batch.query_start_loc,
        seq_lens=batch.seq_lens,
        block_table=batch.block_table,
        max_query_len=batch.max_query_len,
        plan=plan,
        workspace=SplitKVWorkspace.allocate(plan, device),
    )
    generator = torch.Generator().manual_seed(0)
    # (layer arguments, q offset): two layers of one configuration, one with a
    # window and softcap, one whose q is not 16-byte aligned, then the first
    # configuration again.
    layers = [({}, 0), ({}, 0), (dict(sliding_window=24, logits_soft_cap=5.0), 0), ({}, 1), ({}, 0)]
    rows = batch.num_actual_tokens
    first_layer = []
    for i, (layer_args, offset) in enumerate(layers):
        layer = _layer(batch, generator, offset)
        if i == 0:
            first_layer = [weakref.ref(t) for t in layer]
        dispatched = _dispatches(launches, layer, scale=0.125, **layer_args)
        if HAS_GPU and i in (1, 4):  # same key as layer 0: the compiled kernels directly
            assert dispatched == 0
        q, k_cache, v_cache, out = layer
        expected = reference_paged_attention(
            q, k_cache, v_cache, scale=0.125, **batch.kernel_args(), **layer_args
        )
        assert not out[:rows].isnan().any(), f"layer {i}: a valid row was never written"
        torch.testing.assert_close(out[:rows], expected[:rows], **TOLERANCES[dtype])
        assert out[rows:].isnan().all(), f"layer {i}: a padding row was written"
    # The launches kept for later layers hold none of the first layer's tensors.
    del layer, q, k_cache, v_cache, out
    gc.collect()
    assert all(ref() is None for ref in first_layer)


def test_a_compiled_launch_repeats_with_device_addresses():
    """With a compiled kernel (any GPU) a bound launch hands Triton's launcher
    device addresses: the batch's tensors bound once (and kept alive), each
    repeat's own tensors by their addresses, None where the first call had none."""
    started = []

    class Compiled(CompiledKernel):
        def __init__(self):  # what the launcher sees is all this test needs
            pass

        def __del__(self):
            pass

        def __getitem__(self, grid):
            return lambda *args, stream=None: started.append((args, stream))

    class Kernel:
        arg_names = ["q_ptr", "block_table_ptr", "num_tokens", "out_ptr", "sinks_ptr"]

        def __getitem__(self, grid):
            return lambda *args, **options: Compiled()

    block_table = torch.arange(8, dtype=torch.int32)
    first = torch.zeros(4), torch.zeros(4)
    args = dict(q_ptr=first[0], block_table_ptr=block_table, num_tokens=3, out_ptr=first[1])
    launch = KernelLaunch(Kernel(), (2, 1, 1), dict(args, sinks_ptr=None), {})
    bound = _BoundLaunch.of_first_run(launch, _LAYER_TENSORS)
    assert bound.args == (None, block_table.data_ptr(), 3, None, None)
    assert bound.held == (block_table,)

    q, out = torch.ones(4), torch.ones(4)
    layer = _LayerTensors(q, out, *[torch.ones(2)] * 2, *[None] * 7)
    _, addresses = _tensors_key(layer, [])
    bound.run_with(layer, addresses, stream=7)
    assert started == [((q.data_ptr(), block_table.data_ptr(), 3, out.data_ptr(), None), 7)]
