# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The plan's decisions, the layering rule, and clear errors for bad input."""

import ast
from pathlib import Path

import pytest
import torch

from devtools.batches import make_batch
from vllm.v1.attention.ops.triton_attention import (
    AttentionFeatures,
    GpuArch,
    TensorLayout,
    paged_attention,
    plan_attention,
)
from vllm.v1.attention.ops.triton_attention.checks import AttentionCall
from vllm.v1.attention.ops.triton_attention.launch import kernel_launches
from vllm.v1.attention.ops.triton_attention.plan import (
    LONG_QUERY,
    LONG_QUERY_PIPELINED,
    MAX_KV_SPLITS,
    MERGE_TILE_ELEMENTS,
    PIPELINED_DECODE_TILES,
    PIPELINED_LONG_QUERY_TILES,
    SPLIT_KV_DECODE,
    SPLIT_KV_DECODE_PIPELINED,
    long_query_grid_size,
    next_power_of_2,
)

H100 = GpuArch("cuda", "sm_90", 132)
# Features no pipelined kernel covers: the portable kernels' plan.
PORTABLE_ONLY = AttentionFeatures(alibi=True)
PACKAGE = Path(__file__).resolve().parents[2] / "vllm/v1/attention/ops/triton_attention"


def plan(**overrides):
    args = dict(
        num_tokens=8,
        num_seqs=8,
        max_query_len=1,
        num_q_heads=32,
        num_kv_heads=8,
        head_size=128,
        arch=H100,
    )
    args.update(overrides)
    return plan_attention(**args)


def plan_d64(**overrides):
    """The split count as ``num_kv_splits_for`` makes it: at head 128 on sm_90 the
    pipelined kernel may take fewer (test_pipelined_decode_only_where_measured_and_covered)."""
    return plan(**{"head_size": 64, **overrides})


def test_kernel_choice_by_query_length():
    assert plan(max_query_len=1).kernel == SPLIT_KV_DECODE_PIPELINED  # 8 splits on sm_90
    assert plan(max_query_len=1, features=PORTABLE_ONLY).kernel == SPLIT_KV_DECODE
    per_seq_causal = AttentionFeatures(per_seq_causal=True)
    assert plan(max_query_len=1, features=per_seq_causal).kernel == SPLIT_KV_DECODE
    assert plan(max_query_len=8, num_tokens=64, features=PORTABLE_ONLY).kernel == SPLIT_KV_DECODE
    assert plan(max_query_len=9, num_tokens=72).kernel == LONG_QUERY_PIPELINED
    assert plan(max_query_len=9, num_tokens=72, features=PORTABLE_ONLY).kernel == LONG_QUERY


def test_split_count_fills_the_gpu_and_never_grows_with_batch():
    splits = [
        plan_d64(num_seqs=b, num_tokens=b).num_kv_splits for b in (1, 2, 4, 8, 16, 32, 64, 256)
    ]
    assert splits[0] == 66  # 4 programs per SM: ceil(528 / 8 KV heads)
    one_seq = dict(num_seqs=1, num_tokens=1, num_kv_heads=2, num_q_heads=8)
    assert plan_d64(**one_seq).num_kv_splits == MAX_KV_SPLITS  # ceil(528 / 2) = 264, capped
    assert splits == sorted(splits, reverse=True) and splits[-1] == 1
    assert plan_d64(num_seqs=4, num_tokens=4).num_kv_splits == 17  # ceil(528 / 32)
    # 512 programs unsplit are within 2/3 of the 528 aimed at: no 2-way split.
    assert splits[-2] == 1 and plan_d64(num_seqs=32, num_tokens=32).num_kv_splits == 3
    # Bigger GPUs get more splits; the plan reads the SM count, not a constant.
    assert (
        plan_d64(num_seqs=4, num_tokens=4, arch=GpuArch("cuda", "sm_90", 200)).num_kv_splits == 25
    )
    # Programs with more rows (spec decode x GQA group) aim at 2 per SM and
    # round down, so that no SM holds a third (on sm_90 some then take fewer:
    # test_pipelined_decode_only_where_measured_and_covered).
    spec = dict(num_seqs=4, num_tokens=16, max_query_len=4, num_q_heads=64)
    assert plan_d64(**spec, arch=GpuArch("cuda", "sm_80", 132)).num_kv_splits == 8  # 264 // 32
    # The merge reads splits x rows partials: 32-row programs stop at half the splits.
    spec_one_seq = dict(one_seq, num_tokens=4, max_query_len=4, num_q_heads=16)  # 32 rows
    assert plan_d64(**spec_one_seq).num_kv_splits == MAX_KV_SPLITS // 2


def test_head_512_splits_fit_one_wave_of_two_programs_per_sm():
    """Head-512 programs fill an SM's shared memory two at a time (one with a
    64-key tile): their launches stay within one such wave."""
    gemma4_global = dict(num_q_heads=32, num_kv_heads=4, head_size=512)
    for q_len, batch, splits in ((1, 1, 66), (1, 4, 16), (1, 32, 2), (1, 128, 1), (4, 8, 8)):
        p = plan(num_seqs=batch, num_tokens=q_len * batch, max_query_len=q_len, **gemma4_global)
        assert p.num_kv_splits == splits
        per_sm = 1 if p.kv_tile_size >= 64 else 2
        if p.num_kv_splits > 1:  # one split can be more than a wave
            assert batch * 4 * p.num_kv_splits <= per_sm * H100.num_compute_units
    spec_batch_32 = plan(num_seqs=32, num_tokens=128, max_query_len=4, **gemma4_global)
    assert (spec_batch_32.kv_tile_size, spec_batch_32.num_kv_splits) == (64, 1)


def test_merge_programs_cover_every_head_and_dimension_once():
    for batch in (1, 4, 16, 32):
        for heads, kv_heads, head_size in ((32, 8, 128), (28, 4, 128), (14, 2, 80), (8, 2, 256)):
            p = plan(
                num_seqs=batch,
                num_tokens=batch,
                num_q_heads=heads,
                num_kv_heads=kv_heads,
                head_size=head_size,
            )
            if p.num_kv_splits == 1:
                assert p.merge_grid is None
                continue
            per_head, dims = p.merge_tile
            tokens, head_blocks, dim_blocks = p.merge_grid
            assert tokens == batch and dim_blocks * dims == p.head_pad
            assert head_blocks * per_head >= heads > (head_blocks - 1) * per_head
            assert per_head * next_power_of_2(p.num_kv_splits) * dims <= MERGE_TILE_ELEMENTS
    # batch 1 (66 splits): parts of one head; batch 16 (4 splits): 8 whole heads
    assert plan(num_seqs=1, num_tokens=1).merge_tile == (1, 32)
    assert plan(num_seqs=16, num_tokens=16).merge_grid == (16, 4, 1)


def test_four_byte_queries_get_tiles_of_the_same_shared_memory():
    for head_size in (64, 128, 256):
        for max_query_len in (1, 64):
            args = dict(
                max_query_len=max_query_len, num_tokens=8 * max_query_len, head_size=head_size
            )
            half = plan(**args, features=PORTABLE_ONLY)
            full = plan(**args, dtype=torch.float32)
            assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
            assert full.kv_tile_size == max(half.kv_tile_size // 2, 16)
            if full.kernel == LONG_QUERY:  # its Q tile lives in shared memory too
                assert full.block_m == half.block_m // 2


def test_decode_tile_holds_every_query_row():
    for q_len in range(1, 9):
        for group in (1, 4, 7, 16):
            p = plan(max_query_len=q_len, num_tokens=8 * q_len, num_q_heads=8 * group)
            assert p.tokens_per_q_block >= q_len
            assert p.block_m >= 16 and p.block_m & (p.block_m - 1) == 0


@pytest.mark.parametrize("tokens_per_block", [1, 3, 16, 32])
def test_long_query_grid_bound_covers_every_sequence(tokens_per_block):
    gen = torch.Generator().manual_seed(tokens_per_block)
    for _ in range(200):
        q_lens = torch.randint(
            0, 70, (int(torch.randint(1, 9, (1,), generator=gen)),), generator=gen
        ).tolist()
        needed = sum(-(-q // tokens_per_block) for q in q_lens)
        # the same first-program rule as the kernel's find_q_tile
        starts = [0]
        for q in q_lens:
            starts.append(starts[-1] + q)
        last_needed = max(
            (
                starts[b] // tokens_per_block + b + -(-q // tokens_per_block)
                for b, q in enumerate(q_lens)
                if q
            ),
            default=0,
        )
        grid = long_query_grid_size(sum(q_lens), len(q_lens), tokens_per_block)
        assert grid >= needed and grid >= last_needed


def test_plan_ignores_lengths():
    """Graph safety: nothing in the plan may depend on per-batch lengths."""
    assert "max_seq_len" not in plan_attention.__code__.co_varnames


def bf16_batch(q_lens, seq_lens, heads=(32, 8), **kwargs):
    """A CPU batch of head size 128 in bf16, 16-token blocks (plans and launches only)."""
    return make_batch(
        q_lens,
        seq_lens,
        num_q_heads=heads[0],
        num_kv_heads=heads[1],
        head_size=128,
        block_size=16,
        dtype=torch.bfloat16,
        device="cpu",
        **kwargs,
    )


def _call(batch, **overrides) -> AttentionCall:
    args = dict(
        q=batch.q,
        k_cache=batch.k_cache,
        v_cache=batch.v_cache,
        out=torch.empty_like(batch.q),
        query_start_loc=batch.query_start_loc,
        seq_lens=batch.seq_lens,
        block_table=batch.block_table,
        scale=0.1,
    )
    return AttentionCall(**{**args, **overrides})


def _launch_switches(arch, q_lens, context=64, heads=(32, 8), **kwargs):
    """(kernel name, constexprs and options) of each launch ``paged_attention``
    would make."""
    batch = bf16_batch(q_lens, [context] * len(q_lens), heads)
    p = plan_attention(
        num_tokens=batch.q.shape[0],
        num_seqs=len(q_lens),
        max_query_len=max(q_lens),
        num_q_heads=heads[0],
        num_kv_heads=heads[1],
        head_size=128,
        arch=arch,
    )
    launches = kernel_launches(_call(batch), p, **kwargs)
    return [(launch.kernel.__name__, {**launch.args, **launch.options}) for launch in launches]


def test_every_launch_names_every_kernel_parameter():
    """Each kernel's host function builds its arguments by name: exactly the
    kernel's parameters, whatever the kernel (portable or pipelined, with and
    without a merge, mixed)."""
    seen = set()
    for arch in (H100, GpuArch("cuda", "sm_80", 108), GpuArch("hip", "gfx942", 304)):
        for q_lens in ([1], [1] * 128, [4] * 4, [64]):
            p = plan_attention(
                num_tokens=sum(q_lens),
                num_seqs=len(q_lens),
                max_query_len=max(q_lens),
                num_q_heads=32,
                num_kv_heads=8,
                head_size=128,
                arch=arch,
            )
            for launch in kernel_launches(_call(bf16_batch(q_lens, [64] * len(q_lens))), p):
                assert set(launch.args) == set(launch.kernel.arg_names), launch.kernel.__name__
                seen.add(launch.kernel.__name__)
    assert len(seen) == 5  # both split-KV kernels, the merge, both long-query kernels


def test_programmatic_launch_only_on_hopper_and_later():
    # Hopper: the merge launches early and waits in-kernel; a small merge (32
    # programs) is released as the split-KV programs start, a large one not.
    (_, split), (merge_name, merge) = _launch_switches(H100, [1])
    assert merge_name == "merge_kv_splits_kernel"
    assert merge["PDL"] and merge["launch_pdl"] and split["EARLY_DEPENDENTS"]
    (_, split), _ = _launch_switches(H100, [4] * 2)  # 33 splits: 512 merge programs
    assert not split["EARLY_DEPENDENTS"]
    # 32-row programs (28/4 heads x 4 tokens) never release their merge early,
    # small as it is (batch 4: 16 splits, 224 programs).
    (_, split), (_, merge) = _launch_switches(H100, [4] * 4, heads=(28, 4))
    assert not split["EARLY_DEPENDENTS"] and merge["PDL"] and merge["launch_pdl"]
    (_, split), _ = _launch_switches(H100, [1] * 4, heads=(28, 4))  # the same batch decoding
    assert split["EARLY_DEPENDENTS"]
    # A mixed batch's long queries start beside the decodes and wait at exit.
    ((_, long_query),) = _launch_switches(H100, [64], beside_split_kv=True)
    assert long_query["PDL"] and long_query["launch_pdl"]
    ((_, long_query),) = _launch_switches(H100, [64])
    assert not long_query["PDL"] and "launch_pdl" not in long_query
    # Ampere, AMD and the interpreter have no programmatic launch.
    for arch in (
        GpuArch("cuda", "sm_80", 108),
        GpuArch("hip", "gfx942", 304),
        GpuArch("interpreter", "cpu", 4),
    ):
        for _, switches in _launch_switches(arch, [1], early_dependents=True):
            assert "launch_pdl" not in switches
            assert not switches.get("PDL") and not switches.get("EARLY_DEPENDENTS")


def test_pipelined_decode_only_where_measured_and_covered():
    # Planned where it was measured faster on sm_90 at head 128: 16-row
    # programs unsplit or split 2-9 ways (then into as many ranges as fit one
    # wave at 4 programs per SM); 32-row programs (GQA 7 x 4 spec tokens)
    # unless split as finely as at batch 1.
    def pipelined(p):
        return (p.kv_tile_size, p.kv_buffers) if p.kernel == SPLIT_KV_DECODE_PIPELINED else None

    assert pipelined(plan(num_tokens=128, num_seqs=128)) == PIPELINED_DECODE_TILES[16]
    for batch, splits in ((8, 8), (16, 4), (32, 2), (64, 1)):
        p = plan(num_tokens=batch, num_seqs=batch)  # 8 KV heads, 132 SMs
        assert (pipelined(p), p.num_kv_splits, p.grid[2]) == ((32, 2), splits, splits)
        # Where it cannot run the call, the portable kernel keeps the split
        # count, with its fine-split tiles.
        portable = plan(num_tokens=batch, num_seqs=batch, features=PORTABLE_ONLY)
        assert (portable.kernel, portable.num_kv_splits) == (SPLIT_KV_DECODE, splits)
        assert portable.kv_tile_size == (64 if splits > 1 else 128)
    assert pipelined(plan(num_tokens=4, num_seqs=4)) is None  # 17 splits
    assert pipelined(plan(num_tokens=1, num_seqs=1)) is None  # finely split
    # Beside a long query the decodes keep the portable kernel and the plan's splits.
    beside = plan(num_tokens=32, num_seqs=32, beside_long_query=True)
    assert (pipelined(beside), beside.num_kv_splits) == (None, 3)
    spec = dict(max_query_len=4, num_q_heads=28, num_kv_heads=4)
    assert pipelined(plan(num_tokens=16, num_seqs=4, **spec)) == PIPELINED_DECODE_TILES[32]
    assert pipelined(plan(num_tokens=4, num_seqs=1, **spec)) is None
    # Split 2-3 ways, 32-row programs take 4-buffer rings in one wave of fewer
    # splits; every 32-row launch is at most one wave at 2 programs per SM.
    for batch, tiles, splits in ((8, (64, 2), 8), (16, (64, 2), 4), (32, (32, 4), 2)):
        p = plan(num_tokens=4 * batch, num_seqs=batch, **spec)
        assert (pipelined(p), p.num_kv_splits, p.grid[2]) == (tiles, splits, splits)
    assert pipelined(plan(num_tokens=128, num_seqs=128, head_size=64)) is None
    assert pipelined(plan(num_tokens=128, num_seqs=128, dtype=torch.float32)) is None
    for arch in (GpuArch("cuda", "sm_80", 108), GpuArch("hip", "gfx942", 304)):
        assert pipelined(plan(num_tokens=128, num_seqs=128, arch=arch)) is None
    # Features and layouts it does not cover take the portable kernel: sliding
    # window, softcap, ALiBi, sinks, an fp8 cache, and a cache whose copies
    # cannot be 16-byte vectors.
    uncovered = [
        dict(features=AttentionFeatures(**{name: True}))
        for name in ("sliding_window", "softcap", "alibi", "sinks")
    ]
    uncovered += [
        dict(layout=TensorLayout(kv_dtype=torch.float8_e4m3fn)),
        dict(layout=TensorLayout(vector_copies=False)),
    ]
    for facts in uncovered:
        assert plan(num_tokens=128, num_seqs=128, **facts).kernel == SPLIT_KV_DECODE
    ((name, switches),) = _launch_switches(H100, [1] * 128)
    assert name == "split_kv_decode_pipelined_kernel"
    assert (switches["TILE_N"], switches["KV_BUFFERS"]) == PIPELINED_DECODE_TILES[16]


def test_layout_of_tensors():
    batch = bf16_batch([1], [64], heads=(8, 2), layout="packed_hnd")
    out = torch.empty_like(batch.q)
    assert TensorLayout.of(batch.q, batch.k_cache, batch.v_cache, out) == TensorLayout(
        torch.bfloat16, 16, kv_same_strides=True, vector_copies=True
    )
    assert TensorLayout.of_packed_kv_cache(128, torch.bfloat16, 16) == TensorLayout(torch.bfloat16)
    # A cache whose slot stride (2 heads x 136) is not a multiple of 16
    # elements: the pipelined kernels' 16-byte copies would not compile.
    odd = torch.zeros(*batch.k_cache.shape[:3], 136, dtype=torch.bfloat16)[..., :128]
    assert not TensorLayout.of(batch.q, odd, odd, out).vector_copies
    assert not TensorLayout.of(batch.q, batch.k_cache, odd, out).kv_same_strides
    assert not TensorLayout.of_packed_kv_cache(36, torch.float16, 16).vector_copies


def test_a_plan_refuses_calls_its_pipelined_kernel_cannot_run():
    batch = bf16_batch([64], [64])
    p = plan(num_tokens=64, num_seqs=1, max_query_len=64)
    assert p.kernel == LONG_QUERY_PIPELINED
    lse = torch.zeros(64, 32)  # the rows' log-sum-exps: the portable kernels store them
    for overrides in (
        dict(alibi_slopes=torch.zeros(32)),
        dict(sinks=torch.zeros(32)),
        dict(lse=lse),
    ):
        with pytest.raises(ValueError, match="long_query_pipelined kernel cannot run this call"):
            paged_attention(
                **_call(batch, **overrides)._asdict(), max_query_len=64, max_seq_len=64, plan=p
            )


def test_pipelined_long_query_only_where_measured_and_covered():
    # Planned on sm_90 at heads 64, 128 and 256 (2-byte queries), with 128-row
    # programs of 8 warps; other head sizes and GPUs were not measured.
    prefill = dict(num_tokens=512, num_seqs=1, max_query_len=512)
    for head_size in (64, 128, 256):
        p = plan(**prefill, head_size=head_size)
        assert p.kernel == LONG_QUERY_PIPELINED
        tiles = (p.kv_tile_size, p.kv_buffers, p.fma_exp2_every)
        assert tiles == PIPELINED_LONG_QUERY_TILES[head_size]
        assert (p.block_m, p.num_warps) == (128, 8)
    assert plan(**prefill, head_size=32).kernel == LONG_QUERY
    assert plan(**prefill, dtype=torch.float32).kernel == LONG_QUERY
    # A GQA group wider than its 128 rows takes the portable kernel's larger Q tile.
    wide = plan(**prefill, num_q_heads=256, num_kv_heads=1)
    assert wide.kernel == LONG_QUERY and wide.block_m == 256
    for arch in (
        GpuArch("cuda", "sm_80", 108),
        GpuArch("cuda", "sm_100", 148),
        GpuArch("hip", "gfx942", 304),
    ):
        assert plan(**prefill, arch=arch).kernel == LONG_QUERY
    # It covers sliding window and softcap (Gemma-2's layers), per-sequence
    # causal flags and multimodal ranges (Gemma 3's); ALiBi, sinks, chunked
    # windows, block sizes that are not powers of two and K and V caches of
    # different strides take the portable kernel.
    covered = [
        AttentionFeatures(sliding_window=True),
        AttentionFeatures(softcap=True),
        AttentionFeatures(sliding_window=True, softcap=True),
        AttentionFeatures(per_seq_causal=True, sliding_window=True),
        AttentionFeatures(mm_prefix=True, sliding_window=True, softcap=True),
    ]
    for features in covered:
        assert plan(**prefill, features=features).kernel == LONG_QUERY_PIPELINED
    for facts in (
        dict(features=AttentionFeatures(alibi=True)),
        dict(features=AttentionFeatures(sinks=True)),
        dict(features=AttentionFeatures(sliding_window=True, chunked_window=True)),
        dict(layout=TensorLayout(block_size=24)),
        dict(layout=TensorLayout(kv_same_strides=False)),
    ):
        assert plan(**prefill, **facts).kernel == LONG_QUERY
    ((name, switches),) = _launch_switches(H100, [64])
    assert name == "long_query_pipelined_kernel"
    assert (switches["TILE_N"], switches["KV_BUFFERS"], switches["FMA_EXP2_EVERY"]) == (
        PIPELINED_LONG_QUERY_TILES[128]
    )
    batch = bf16_batch([64], [64])
    p = plan(
        **prefill | dict(num_tokens=64, max_query_len=64),
        features=AttentionFeatures(sliding_window=True, softcap=True),
    )
    (launch,) = kernel_launches(_call(batch, sliding_window=16, logits_soft_cap=30.0), p)
    assert launch.kernel.__name__ == "long_query_pipelined_kernel"
    assert launch.args["HAS_SLIDING_WINDOW"] and launch.args["HAS_SOFTCAP"]
    ranges = torch.tensor([[[3, 40], [0, 0]]], dtype=torch.int32)
    flags = torch.ones(1, dtype=torch.int32)
    call = _call(batch, causal=flags, mm_prefix_ranges=ranges, sliding_window=16)
    p = plan(
        **prefill | dict(num_tokens=64, max_query_len=64),
        features=AttentionFeatures(sliding_window=True, per_seq_causal=True, mm_prefix=True),
    )
    (launch,) = kernel_launches(call, p)
    assert launch.kernel.__name__ == "long_query_pipelined_kernel"
    assert launch.args["PER_SEQ_CAUSAL"] and launch.args["HAS_MM_PREFIX"]
    assert (launch.args["num_mm_ranges"], launch.args["stride_mm_seq"]) == (2, 4)


def test_kernel_package_imports_only_torch_triton_stdlib():
    allowed = {"torch", "triton", "__future__", "dataclasses", "math", "functools", "typing"}
    allowed |= {"json", "pathlib"}  # the plan's tuned tables
    allowed |= {"types", "operator", "collections"}  # read-only mappings, argument order, types
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


# The package's layers, each importing only those before it.
LAYERS = [
    {"arch"},
    {"jit_helpers", "gluon_helpers"},
    {"split_kv_decode", "long_query", "pipelined_decode", "pipelined_long_query", "cache_write"},
    {"plan", "reference"},
    {"checks"},
    {"launch"},
    {"__init__"},
]


def test_kernel_package_imports_only_downward():
    level = {module: depth for depth, layer in enumerate(LAYERS) for module in layer}
    assert set(level) == {path.stem for path in PACKAGE.glob("*.py")}
    kernels = LAYERS[2]
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported = node.module
                assert level[imported] < level[path.stem], f"{path.name} imports .{imported}"
                if path.stem in kernels:  # kernel files share helpers, not each other
                    assert imported not in kernels, f"{path.name} imports .{imported}"


@pytest.fixture
def batch(device):
    return make_batch(
        [1, 3],
        [20, 40],
        num_q_heads=8,
        num_kv_heads=2,
        head_size=64,
        block_size=16,
        dtype=torch.float16,
        device=device,
    )


def call(batch, **overrides):
    args = dict(
        q=batch.q,
        k_cache=batch.k_cache,
        v_cache=batch.v_cache,
        out=torch.empty_like(batch.q),
        scale=0.125,
        **batch.kernel_args(),
    )
    args.update(overrides)
    return paged_attention(
        args.pop("q"), args.pop("k_cache"), args.pop("v_cache"), args.pop("out"), **args
    )


def test_bad_inputs_get_clear_errors(batch, device):
    q = batch.q
    with pytest.raises(NotImplementedError, match=r"head_size must be in \[32, 512\], got 576"):
        big = torch.zeros(q.shape[0], 8, 576, dtype=q.dtype, device=device)
        call(batch, q=big, out=big.clone())
    with pytest.raises(TypeError, match="q.dtype must be float16, bfloat16, float32 or an fp8"):
        call(batch, q=q.to(torch.float64), out=q.to(torch.float64))
    with pytest.raises(ValueError, match="num_q_heads must be a multiple of num_kv_heads"):
        odd = q[:, :7].contiguous()
        call(batch, q=odd, out=odd.clone())
    with pytest.raises(ValueError, match="out.shape must be q.shape"):
        call(batch, out=q[:, :4])
    with pytest.raises(TypeError, match="k_cache.dtype must be q.dtype"):
        call(batch, k_cache=batch.k_cache.float(), v_cache=batch.v_cache.float())
    with pytest.raises(ValueError, match="seq_lens must be an int32 tensor of shape"):
        call(batch, seq_lens=batch.seq_lens.long())
    with pytest.raises(ValueError, match="query_start_loc must be a 1-D int32 tensor"):
        call(batch, query_start_loc=batch.query_start_loc.long())
    with pytest.raises(ValueError, match="sliding_window must be None or a positive int"):
        call(batch, sliding_window=0)
    with pytest.raises(ValueError, match=r"sinks.shape must be \(8,\)"):
        call(batch, sinks=torch.zeros(4, device=device))
    prefixes = torch.zeros(2, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="sliding_window must be R-SWA's window W"):
        call(batch, rswa_prefix_lens=prefixes)
    with pytest.raises(ValueError, match="rswa_prefix_lens must be a 1-D int32 tensor of at least"):
        call(batch, sliding_window=8, rswa_prefix_lens=prefixes.long())
    with pytest.raises(NotImplementedError, match="causal must be True with rswa_prefix_lens"):
        call(batch, sliding_window=8, rswa_prefix_lens=prefixes, causal=False)
    fp8 = batch.k_cache.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="k_scale must be a one-element float32 tensor"):
        call(batch, k_cache=fp8, v_cache=fp8)
    int8 = batch.k_cache.to(torch.int8)
    scales = torch.ones(int8.shape[:3], device=device)
    with pytest.raises(ValueError, match=r"k_scale must be \[num_blocks, block_size, num_kv_heads"):
        call(batch, k_cache=int8, v_cache=int8, k_scale=torch.tensor(1.0), v_scale=scales)
    with pytest.raises(TypeError, match="v_scale.dtype must be torch.float32"):
        call(batch, k_cache=int8, v_cache=int8, k_scale=scales, v_scale=scales.half())
    with pytest.raises(ValueError, match=r"v_scale.stride\(\) must be k_scale.stride\(\)"):
        call(batch, k_cache=int8, v_cache=int8, k_scale=scales, v_scale=scales.mT.contiguous().mT)
    shifted = torch.empty(int8.numel() + 2, dtype=torch.int8, device=device)[2:].view(int8.shape)
    with pytest.raises(ValueError, match="k_cache must be rows at multiples of 4 bytes"):
        call(batch, k_cache=shifted, v_cache=int8, k_scale=scales, v_scale=scales)
    fp8_q = batch.q.to(torch.float8_e4m3fn)
    one = torch.tensor([0.5], device=device)
    with pytest.raises(TypeError, match="k_cache must be torch.float8_e4m3fn with per-tensor"):
        call(batch, q=fp8_q, q_scale=one)  # a 16-bit cache
    with pytest.raises(ValueError, match="q_scale must be a float32 tensor of 1 or 2"):
        call(batch, q=fp8_q, k_cache=fp8, v_cache=fp8, k_scale=one, v_scale=one)
    with pytest.raises(ValueError, match="q_scale must be None for torch.float16 queries"):
        call(batch, q_scale=one)
    fp8_out = torch.empty_like(batch.q, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="out_scale must be a one-element float32 tensor"):
        call(batch, out=fp8_out)
    with pytest.raises(ValueError, match="out_scale must be a one-element float32 tensor"):
        call(batch, out=fp8_out, out_scale=torch.ones(2, device=device))
    with pytest.raises(TypeError, match="out.dtype must be one of"):
        call(batch, out_scale=one)  # a 16-bit output
    with pytest.raises(TypeError, match="out.dtype must be one of"):
        call(batch, out=fp8_out.view(torch.float8_e5m2), out_scale=one)
    with pytest.raises(ValueError, match=r"lse must be a float32 tensor \(\d+, 8\)"):
        call(batch, lse=torch.empty(batch.q.shape[0], device=device))
    with pytest.raises(ValueError, match=r"lse must be a float32 tensor"):
        call(batch, lse=torch.empty(batch.q.shape[:2], device=device, dtype=torch.float16))
    int4 = int8.view(torch.uint8)  # a full head of bytes: int4 holds two codes in each
    expected = r"k_cache.shape\[3\] \(int4 cache\) must be head_size // 2"
    with pytest.raises(ValueError, match=expected):
        call(batch, k_cache=int4, v_cache=int4, k_scale=scales, v_scale=scales)
    int4 = int4[..., : int4.shape[3] // 2]
    with pytest.raises(ValueError, match=r"k_scale must be \[num_blocks, block_size, num_kv_heads"):
        call(batch, k_cache=int4, v_cache=int4, k_scale=torch.tensor(1.0), v_scale=scales)
    arch = GpuArch.of_device(device)
    wrong_plan = plan_attention(
        num_tokens=99,
        num_seqs=2,
        max_query_len=3,
        num_q_heads=8,
        num_kv_heads=2,
        head_size=64,
        arch=arch,
    )
    with pytest.raises(ValueError, match="plan .* must be"):
        call(batch, plan=wrong_plan)
    other_width = plan_attention(
        num_tokens=batch.q.shape[0],
        num_seqs=2,
        max_query_len=3,
        num_q_heads=8,
        num_kv_heads=2,
        head_size=64,
        arch=arch,
        dtype=torch.float32,
    )
    with pytest.raises(ValueError, match="plan.dtype must be as wide as q.dtype"):
        call(batch, plan=other_width)


def test_fp8_refused_where_the_gpu_has_none(batch):
    a100 = GpuArch("cuda", "sm_80", 108)
    fp8 = batch.k_cache.to(torch.float8_e4m3fn)
    scale = torch.tensor(1.0, device=batch.q.device)
    with pytest.raises(NotImplementedError, match="not supported on cuda sm_80"):
        call(batch, k_cache=fp8, v_cache=fp8, k_scale=scale, v_scale=scale, arch=a100)
    assert not H100.supports_kv_dtype(torch.float8_e4m3fnuz)
    assert GpuArch("hip", "gfx942", 304).supports_kv_dtype(torch.float8_e4m3fnuz)
    assert not GpuArch("hip", "gfx942", 304).supports_kv_dtype(torch.float8_e4m3fn)
    # e5m2, an OCP format: Ada/Hopper/Blackwell, MI350 and RDNA4; not MI300 (fnuz only)
    assert H100.supports_kv_dtype(torch.float8_e5m2) and not a100.supports_kv_dtype(
        torch.float8_e5m2
    )
    assert not GpuArch("hip", "gfx942", 304).supports_kv_dtype(torch.float8_e5m2)
    assert GpuArch("hip", "gfx950", 256).supports_kv_dtype(torch.float8_e5m2)
    fp8_out = torch.empty_like(batch.q, dtype=torch.float8_e4m3fn)
    with pytest.raises(NotImplementedError, match="output is not supported on sm_80"):
        call(batch, out=fp8_out, out_scale=scale.reshape(1), arch=a100)
