# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The CPU development platform's interpreter speed-up: Triton's language is
swapped for the interpreter's once per launch (and once more for modules only
a helper brings), not on every helper call inside it."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_GPU

from devtools.batches import make_batch, small_gpu
from vllm.platforms.triton_interpreter import patch_language_once_per_launch
from vllm.v1.attention.ops.triton_attention import paged_attention, plan_attention

pytestmark = pytest.mark.skipif(HAS_GPU, reason="the Triton interpreter runs on CPU machines")


def test_language_is_swapped_once_per_launch(monkeypatch):
    from triton.runtime import interpreter

    patch_language_once_per_launch()  # the conftest did; a second call changes nothing
    patch_language_once_per_launch()
    assert interpreter._patch_lang.once_per_launch
    swaps = 0
    swap_core = interpreter._patch_lang_core

    def counted(*args, **kwargs):
        nonlocal swaps
        swaps += 1
        return swap_core(*args, **kwargs)

    monkeypatch.setattr(interpreter, "_patch_lang_core", counted)
    batch = make_batch(
        [1, 1],
        [50, 70],
        num_q_heads=8,
        num_kv_heads=2,
        head_size=64,
        block_size=16,
        dtype=torch.float32,
        device="cpu",
    )
    plan = plan_attention(
        num_tokens=2,
        num_seqs=2,
        max_query_len=1,
        num_q_heads=8,
        num_kv_heads=2,
        head_size=64,
        arch=small_gpu(),
        dtype=torch.float32,
    )
    out = torch.empty_like(batch.q)
    programs = plan.grid[0] * plan.grid[1] * plan.grid[2]
    paged_attention(
        batch.q, batch.k_cache, batch.v_cache, out, scale=0.125, plan=plan, **batch.kernel_args()
    )
    # Split-KV and merge: each swaps the language when it starts and once more for
    # each language module only its helpers bring (at most three swaps per launch),
    # where every helper call of each of its programs used to swap again.
    assert programs >= 64 and 0 < swaps <= 6
