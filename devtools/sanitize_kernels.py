# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Every kernel on a small representative matrix, checked against the reference:
the program that ``devtools/run_sanitizer.sh`` runs under compute-sanitizer.

Covers split-KV decode with and without its merge (one split per sequence is
the Gluon pipelined kernel on sm_90), speculative decode, the
long-query kernel, a mixed batch (both), fp8 and 16-bit caches, every feature
switch and the cache write. Exits non-zero on a wrong result.

    python -m devtools.sanitize_kernels            # plain run (fills Triton's cache)
    python -m devtools.sanitize_kernels mixed      # named cases only
"""

import argparse
import sys

import torch

from devtools.batches import TOLERANCES, make_batch, plan_for_batch
from vllm.v1.attention.ops.triton_attention import (
    GpuArch,
    paged_attention,
    reference_paged_attention,
    write_kv_cache,
)

# (name, q_lens, seq_lens, head_size, group, kv_dtype, features)
ALL_FEATURES = dict(sliding_window=40, logits_soft_cap=5.0, alibi=True, sinks=True)
WINDOW_SOFTCAP = dict(sliding_window=100, logits_soft_cap=30.0)  # Gemma-2's features
CASES = [
    ("decode", [1, 1, 0, 1], [300, 17, 0, 1000], 128, 4, None, {}),
    ("decode_one_split", [1] * 300, [50] * 300, 128, 4, None, {}),
    ("decode_d64_gqa7_all", [1, 1], [300, 90], 64, 7, None, ALL_FEATURES),
    ("specdecode", [4, 4, 3], [40, 300, 3], 128, 8, None, {}),
    # head 256 on sm_90: the Hopper long-query kernel with Q in shared memory
    ("prefill_d256", [130, 64], [130, 200], 256, 2, None, {}),
    ("prefill_all", [90, 33], [200, 33], 80, 4, None, ALL_FEATURES),
    ("non_causal", [50, 1], [50, 70], 64, 4, None, dict(causal=False)),
    ("mixed", [1, 1, 70, 3], [90, 300, 200, 40], 128, 4, None, {}),
    # head 128 on sm_90: the Hopper long-query kernel, its buffer ring wrapping
    ("prefill_d128", [300, 40], [700, 40], 128, 4, None, {}),
    # ... with sliding window and softcap: key tiles before the window skipped
    ("prefill_d128_window", [300, 40], [700, 40], 128, 4, None, WINDOW_SOFTCAP),
    ("fp8_decode", [1, 1], [300, 17], 128, 4, torch.float8_e4m3fn, {}),
    ("fp8_prefill", [60], [100], 128, 4, torch.float8_e4m3fn, {}),
]


def run_case(name, q_lens, seq_lens, head_size, group, kv_dtype, features) -> None:
    arch = GpuArch.of_device("cuda")
    if kv_dtype is not None and not arch.supports_kv_dtype(kv_dtype):
        print(f"{name}: skipped ({kv_dtype} not on {arch.name})")
        return
    num_kv_heads, num_q_heads = 2, 2 * group
    gen = torch.Generator().manual_seed(0)
    batch = make_batch(
        q_lens,
        seq_lens,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=16,
        dtype=torch.bfloat16,
        kv_dtype=kv_dtype,
        device="cuda",
        padding_tokens=2,
        sliding_window=features.get("sliding_window"),
        generator=gen,
    )
    extra = dict(features)
    if extra.pop("alibi", False):
        extra["alibi_slopes"] = torch.rand(num_q_heads, generator=gen).cuda()
    if extra.pop("sinks", False):
        extra["sinks"] = torch.randn(num_q_heads, generator=gen).cuda()
    plan = plan_for_batch(
        q_lens,
        num_tokens=batch.q.shape[0],
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        device="cuda",
        max_decode_query_len=4,
        **batch.plan_facts(**extra),
    )
    out = torch.full_like(batch.q, float("nan"))
    paged_attention(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        out,
        scale=head_size**-0.5,
        plan=plan,
        **batch.kernel_args(),
        **extra,
    )
    expected = reference_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, scale=head_size**-0.5, **batch.kernel_args(), **extra
    )
    rows = batch.num_actual_tokens
    torch.testing.assert_close(
        out[:rows].float(), expected[:rows].float(), **TOLERANCES[torch.bfloat16]
    )

    # The cache write of this batch's new tokens (slot -1 rows skipped).
    num_tokens = batch.q.shape[0]
    key = torch.randn(num_tokens, num_kv_heads, head_size, device="cuda", dtype=torch.bfloat16)
    slots = torch.randperm(batch.k_cache.shape[0] * 16, device="cuda")[:num_tokens]
    slots[-1] = -1
    scales = {}
    if kv_dtype is not None:
        scales = dict(k_scale=batch.k_scale, v_scale=batch.v_scale)
    write_kv_cache(key, key, batch.k_cache, batch.v_cache, slots, **scales)
    torch.cuda.synchronize()
    print(f"{name}: ok ({plan.__class__.__name__})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    known = [case[0] for case in CASES]
    parser.add_argument(
        "cases",
        nargs="*",
        metavar="CASE",
        help=f"run only these (racecheck is slow); default: all of {known}",
    )
    names = parser.parse_args().cases
    if set(names) - set(known):
        parser.error(f"unknown cases {sorted(set(names) - set(known))}")
    for case in CASES:
        if not names or case[0] in names:
            run_case(*case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
