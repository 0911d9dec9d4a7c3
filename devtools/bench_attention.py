# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Time our paged attention against torch SDPA and the card's rooflines.

Runs on a GPU machine (torch + triton; vLLM not needed). Every timed configuration is
first checked against the reference on a small copy of itself. Writes JSON
records (see ``--out``) and prints a markdown table.

    python -m devtools.bench_attention --sweep quick --out bench.json
"""

from __future__ import annotations

import argparse
import functools
import importlib
import itertools
import json
import math
import sys
import time
import types
from pathlib import Path

import torch
import triton
import triton.testing

from devtools.batches import (
    TOLERANCES,
    int4_scale_words,
    make_batch,
    plan_for_batch,
    token_head_page,
)
from vllm.v1.attention.ops.triton_attention import (
    GpuArch,
    SplitKVWorkspace,
    TensorLayout,
    paged_attention,
    plan_attention,
    reference_paged_attention,
    rope_and_write_kv_cache,
    write_kv_cache,
)
from vllm.v1.attention.ops.triton_attention.arch import INT4_KV_DTYPE

REPO = Path(__file__).resolve().parent.parent

MODELS = {  # name: (num_q_heads, num_kv_heads, head_size)
    "llama3-8b": (32, 8, 128),
    "qwen-7to1": (28, 4, 128),
    "gemma2-9b": (16, 8, 256),
    "gemma4-global": (32, 4, 512),  # Gemma 4's full-attention layers
    "d64-gqa4": (32, 8, 64),
}
SWEEPS = {
    "quick": dict(
        decode=[(b, c) for b in (1, 8, 32, 128) for c in (1024, 16384)],
        prefill=[(1, 4096), (1, 16384)],
    ),
    "decode": dict(
        decode=[(b, c) for b in (1, 4, 8, 16, 32, 64, 128) for c in (1024, 4096, 16384, 65536)],
        prefill=[],
    ),
    "full": dict(
        decode=[(b, c) for b in (1, 4, 8, 16, 32, 64, 128) for c in (1024, 4096, 16384, 65536)],
        prefill=[(b, s) for b in (1, 4) for s in (1024, 4096, 8192, 16384)],
    ),
    "prefill": dict(decode=[], prefill=[(b, s) for b in (1, 4) for s in (1024, 4096, 16384)]),
}
# Chunked prefill: (new tokens, cached tokens before them), and the mixed batch:
# that chunk after (number of decodes, their context).
PREFIX_CHUNK = (2048, 8192)
MIXED_DECODES = (64, 4096)


def mixed_batch_lengths() -> tuple[list[int], list[int]]:
    """(query lengths, sequence lengths) of the mixed batch: the decodes, then the chunk."""
    (chunk, cached), (decodes, decode_context) = PREFIX_CHUNK, MIXED_DECODES
    return [1] * decodes + [chunk], [decode_context] * decodes + [cached + chunk]


def time_us(fn, graphs: bool) -> float:
    # do_bench_cudagraph runs fn on a side stream: inputs made on the default
    # stream must be complete first.
    torch.cuda.synchronize()
    if graphs:
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3


def copy_bandwidth_gbps() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = time_us(lambda: dst.copy_(src), graphs=False)
    return 2 * src.numel() / us / 1e3


def gemm_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    us = time_us(lambda: a @ b, graphs=False)
    return 2 * 8192**3 / us / 1e6


def backend_plan(model, q_lens, num_tokens=None, arch=None, **plan_args):
    """Our plan for a batch, as the backend makes it: mixed when decodes (q_len 1)
    precede long queries; spec-decode cells (q_len <= 8) take split-KV. ``arch``:
    the GPU to plan for, when not this machine's; ``plan_args``: features, mode."""
    hq, hkv, d = model
    longest = max(q_lens)
    return plan_for_batch(
        q_lens,
        num_tokens=num_tokens or sum(q_lens),
        num_q_heads=hq,
        num_kv_heads=hkv,
        head_size=d,
        device="cuda",
        arch=arch,
        max_decode_query_len=longest if longest <= 8 else 1,
        **plan_args,
    )


def small_batch(model, q_lens, seq_lens, dtype):
    """A cell's lengths as a checkable batch (``make_batch``: NaN-poisoned padding)."""
    hq, hkv, d = model
    return make_batch(
        q_lens,
        seq_lens,
        num_q_heads=hq,
        num_kv_heads=hkv,
        head_size=d,
        block_size=16,
        dtype=dtype,
        device="cuda",
    )


def check_small(model, q_lens, seq_lens, dtype):
    d = model[2]
    batch = small_batch(model, q_lens, seq_lens, dtype)
    out = torch.empty_like(batch.q)
    paged_attention(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        out,
        scale=d**-0.5,
        plan=backend_plan(model, q_lens, batch.q.shape[0]),
        **batch.kernel_args(),
    )
    ref = reference_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, scale=d**-0.5, **batch.kernel_args()
    )
    rows = batch.num_actual_tokens
    torch.testing.assert_close(out[:rows].float(), ref[:rows].float(), **TOLERANCES[dtype])


def ragged_inputs(model, q_lens, seq_lens, dtype, block_size=16, distinct_blocks=None):
    """A paged batch in shuffled blocks: sequence b has seq_lens[b] keys, the last
    q_lens[b] of them queries.

    ``distinct_blocks``: allocate only this many blocks per sequence and repeat
    them across the block table, which keeps its real width (and stride): enough
    to compile the launches without the memory of a long context."""
    hq, hkv, d = model
    width = math.ceil(max(seq_lens) / block_size)
    used = min(distinct_blocks or width, width)
    num_blocks = len(q_lens) * used
    k_cache = torch.randn(num_blocks, block_size, hkv, d, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    block_table = torch.randperm(num_blocks, device="cuda", dtype=torch.int32)
    block_table = block_table.view(len(q_lens), used).repeat(1, math.ceil(width / used))
    block_table = block_table[:, :width]
    q = torch.randn(sum(q_lens), hq, d, device="cuda", dtype=dtype)
    qsl = torch.tensor([0, *itertools.accumulate(q_lens)], device="cuda", dtype=torch.int32)
    lens = torch.tensor(seq_lens, device="cuda", dtype=torch.int32)
    return q, k_cache, v_cache, qsl, lens, block_table


def bench_ours(model, q_lens, seq_lens, inputs, graphs, plan=None, **call_args):
    """Our call on ``inputs`` (``ragged_inputs``), planned as the backend plans it
    unless ``plan`` is given. Every implementation in a cell reads the same inputs:
    timed on separately allocated multi-GB caches, our eager calls at 2M+ tokens took
    1.14-1.19x their graph time, on shared ones 0.99-1.02x (benchmarks/DECISIONS.md:
    "Shared bench inputs")."""
    hq, hkv, d = model
    q, k_cache, v_cache, qsl, lens, block_table = inputs
    plan = plan or backend_plan(model, q_lens)
    workspace = SplitKVWorkspace.allocate(plan, "cuda")
    out = torch.empty_like(q, dtype=output_dtype(q, call_args.get("out_scale")))

    def run():
        paged_attention(
            q,
            k_cache,
            v_cache,
            out,
            query_start_loc=qsl,
            seq_lens=lens,
            block_table=block_table,
            max_query_len=max(q_lens),
            max_seq_len=max(seq_lens),
            scale=d**-0.5,
            plan=plan,
            workspace=workspace,
            **call_args,
        )

    return time_us(run, graphs), plan


UPSTREAM = REPO / "benchmarks" / "upstream"  # devtools/fetch_upstream_kernel.py fills it


@functools.cache
def upstream_module(name: str = "triton_unified_attention"):
    """the pinned vLLM's ``vllm.v1.attention.ops`` module ``name`` (by default its
    attention kernel with its own Triton launcher), with stand-ins for its vLLM
    imports, from the folder the fetch script fills; also where a vLLM package
    is installed: the imported ``vllm`` modules are set aside while it imports."""
    ours = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == "vllm" or name.startswith("vllm.")
    }
    package = types.ModuleType("vllm")
    package.__path__ = [str(UPSTREAM / "vllm")]
    sys.modules["vllm"] = package
    try:
        return importlib.import_module(f"vllm.v1.attention.ops.{name}")
    finally:
        for name in [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]:
            del sys.modules[name]
        sys.modules.update(ours)


def run_upstream(
    model,
    q,
    k_cache,
    v_cache,
    out,
    qsl,
    seq_lens,
    block_table,
    q_len,
    context,
    causal=True,
    mm_prefix_ranges=None,
    alibi_slopes=None,
    alibi_sqrt=False,
    sliding_window=None,
    chunk_lookback=None,
    batch_invariant=False,
    k_scale=None,
    v_scale=None,
    rswa_prefix_lens=None,
    q_scale=None,
    out_scale=None,
):
    """Call upstream the way its metadata builder sets it up (16 segments, 3D below
    128 // num_kv_heads sequences); ``batch_invariant``: as under
    VLLM_BATCH_INVARIANT=1 (which its module reads at import); ``k_scale`` and
    ``v_scale``: an fp8 cache's per-tensor scales (its FP8_PER_TENSOR mode), or
    per token and KV head (its INT8/FP8/INT4_PER_TOKEN_HEAD modes);
    ``rswa_prefix_lens`` with ``sliding_window``: R-SWA (its window then
    replaces the layer's, which is off); ``out_scale``: a fused fp8 output's
    scale (its ``output_scale``)."""
    hq, hkv, d = model
    threshold = 128 // hkv
    rows = min(threshold, seq_lens.shape[0]) * q_len
    scratch = torch.empty(rows, hq, 16, triton.next_power_of_2(d), device=q.device)
    segm_max = torch.empty(rows, hq, 16, device=q.device)
    segm_sum = torch.empty(rows, hq, 16, device=q.device)
    segments = dict(  # its 3D launch's scratch, as its builder sizes it
        seq_threshold_3D=threshold,
        num_par_softmax_segments=16,
        softmax_segm_output=scratch,
        softmax_segm_max=segm_max,
        softmax_segm_expsum=segm_sum,
    )
    module = upstream_module()
    modes = module.KVQuantMode
    quant = modes.FP8_PER_TENSOR if k_scale is not None else modes.NONE
    scale_caches = {}
    if k_scale is not None and k_scale.dim() == 3:  # a scale per token and KV head
        quant = modes.INT8_PER_TOKEN_HEAD
        if k_cache.dtype == INT4_KV_DTYPE:
            quant = modes.INT4_PER_TOKEN_HEAD
        elif k_cache.dtype != torch.int8:
            quant = modes.FP8_PER_TOKEN_HEAD
        scale_caches = dict(k_scale_cache=k_scale, v_scale_cache=v_scale)
        k_scale = v_scale = None
    if quant == modes.INT4_PER_TOKEN_HEAD:  # its own module, which its launcher imports lazily
        int4 = upstream_module("int4_per_token_head")

        def run_int4():
            int4.unified_attention_int4(
                q,
                k_cache,
                v_cache,
                out,
                cu_seqlens_q=qsl,
                max_seqlen_q=q_len,
                seqused_k=seq_lens,
                max_seqlen_k=context,
                softmax_scale=d**-0.5,
                window_size=(sliding_window - 1, 0) if sliding_window else (-1, -1),
                block_table=block_table,
                softcap=0,
                sinks=None,
                alibi_slopes=alibi_slopes,
                use_alibi_sqrt=alibi_sqrt,
                qq_bias=None,
                output_scale=out_scale,
                mm_prefix_range=mm_prefix_ranges,
                **segments,
                **scale_caches,
            )

        return run_int4

    def run():
        module.is_batch_invariant = batch_invariant
        module.unified_attention(
            q,
            k_cache,
            v_cache,
            out,
            qsl,
            q_len,
            seq_lens,
            context,
            d**-0.5,
            causal,
            (sliding_window - 1, 0) if sliding_window and rswa_prefix_lens is None else (-1, -1),
            block_table,
            0,
            q_scale,  # fp8 queries' scale (its q_descale)
            k_scale,
            v_scale,
            **segments,
            alibi_slopes=alibi_slopes,
            mm_prefix_range=mm_prefix_ranges,
            use_alibi_sqrt=alibi_sqrt,
            chunk_lookback=-1 if chunk_lookback is None else chunk_lookback,
            kv_quant_mode=quant,
            **scale_caches,
            rswa_prefix_lens=rswa_prefix_lens,
            rswa_window=sliding_window if rswa_prefix_lens is not None else None,
            output_scale=out_scale,
        )

    return run


def e4m3_dtype() -> torch.dtype:
    """This GPU's e4m3 format (vLLM's platform fp8: fnuz on MI300)."""
    if GpuArch.of_device("cuda").name == "gfx942":
        return torch.float8_e4m3fnuz
    return torch.float8_e4m3fn


def output_dtype(q: torch.Tensor, out_scale: torch.Tensor | None = None) -> torch.dtype:
    """The output's dtype: e4m3 with a fused output quantisation (``out_scale``),
    else the model's (bf16 here when the queries are fp8)."""
    if out_scale is not None:
        return e4m3_dtype()
    return torch.bfloat16 if q.dtype.itemsize == 1 else q.dtype


def bench_upstream(model, q_lens, seq_lens, inputs, graphs, **call_args):
    out = torch.empty_like(inputs[0], dtype=output_dtype(inputs[0], call_args.get("out_scale")))
    run = run_upstream(
        model, inputs[0], *inputs[1:3], out, *inputs[3:], max(q_lens), max(seq_lens), **call_args
    )
    return time_us(run, graphs)


def check_upstream_small(model, q_lens, seq_lens, dtype):
    d = model[2]
    batch = small_batch(model, q_lens, seq_lens, dtype)
    out = torch.zeros_like(batch.q)
    run_upstream(
        model,
        batch.q,
        batch.k_cache,
        batch.v_cache,
        out,
        batch.query_start_loc,
        batch.seq_lens,
        batch.block_table,
        max(q_lens),
        max(seq_lens),
    )()
    ref = reference_paged_attention(
        batch.q, batch.k_cache, batch.v_cache, scale=d**-0.5, **batch.kernel_args()
    )
    rows = batch.num_actual_tokens
    torch.testing.assert_close(out[:rows].float(), ref[:rows].float(), **TOLERANCES[dtype])


def bench_sdpa(model, batch_size, q_len, context, dtype, backend, graphs):
    hq, hkv, d = model
    q = torch.randn(batch_size, hq, q_len, d, device="cuda", dtype=dtype)
    k = torch.randn(batch_size, hkv, context, d, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    causal = q_len == context

    def run():
        with sdpa_kernel(backend):
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=causal, enable_gqa=k.shape[1] != hq
            )

    try:
        if backend == SDPBackend.CUDNN_ATTENTION and hq != hkv:  # cuDNN wants equal heads
            # hq / hkv times the cache: on an 80 GB card the largest cells do not fit
            k = k.repeat_interleave(hq // hkv, 1)
            v = v.repeat_interleave(hq // hkv, 1)
        run()
        return time_us(run, graphs), None
    except (RuntimeError, torch.OutOfMemoryError) as error:
        return None, str(error).splitlines()[0]


def ours_record(base, kind, name, model, batch, context, q_len, graphs, us, **fields) -> dict:
    """One timed cell of ours: the run's facts (``base``), the cell, the model's shape."""
    hq, hkv, d = model
    return dict(
        base,
        kind=kind,
        impl="ours",
        model=name,
        batch=batch,
        context=context,
        q_len=q_len,
        head_size=d,
        num_q_heads=hq,
        num_kv_heads=hkv,
        graphs=graphs,
        us=us,
        **fields,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", choices=SWEEPS, default="quick")
    parser.add_argument("--models", nargs="+", default=["llama3-8b"], choices=MODELS)
    parser.add_argument("--out", default="bench.json")
    parser.add_argument(
        "--upstream",
        action="store_true",
        help="also time the pinned vLLM's kernel (devtools/fetch_upstream_kernel.py)",
    )
    parser.add_argument(
        "--features",
        nargs="*",
        choices=FEATURE_PARTS,
        help="only the feature cells, all parts or those named: masks (masks and biases in "
        "prefills, batch-invariant and R-SWA decodes), quantised (quantised-cache decodes), "
        "fp8_queries (fp8-query prefills), epilogues (fused fp8 outputs, log-sum-exps and "
        "a context-parallel rank's decode), cache_writes (with and without the rotary "
        "embedding)",
    )
    args = parser.parse_args()
    if args.upstream and not UPSTREAM.exists():
        parser.error(f"{UPSTREAM} is missing: run devtools/fetch_upstream_kernel.py first")

    card = torch.cuda.get_device_name()
    dtype = torch.bfloat16
    records = []
    base = dict(
        card=card,
        torch=torch.__version__,
        triton=triton.__version__,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    copy = copy_bandwidth_gbps()
    gemm = gemm_tflops()
    records.append({**base, "kind": "roofline", "impl": "copy", "gbps": copy})
    records.append({**base, "kind": "roofline", "impl": "gemm", "tflops": gemm})
    print(f"| card {card} | copy {copy:.0f} GB/s | gemm {gemm:.0f} TFLOP/s |")
    print("| kind | impl | model | batch | ctx | q_len | graphs | us | GB/s or TFLOP/s | x copy |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)

    def emit(r):
        records.append(r)
        rate = r.get("gbps") or r.get("tflops")
        print(
            f"| {r['kind']} | {r['impl']} | {r['model']} | {r['batch']} | {r['context']} | "
            f"{r['q_len']} | {r['graphs']} | {r['us']:.1f} | {rate:.0f} | "
            f"{r.get('ratio_copy', float('nan')):.2f} |",
            flush=True,
        )
        Path(args.out).write_text(json.dumps(records, indent=1))

    if args.features is not None:
        for part in args.features or FEATURE_PARTS:
            for name in args.models:
                FEATURE_PARTS[part](MODELS[name], name, base, dtype, args.upstream, emit, copy)
        return

    sweep = SWEEPS[args.sweep]
    for name in args.models:
        model = MODELS[name]
        hq, hkv, d = model
        for q_lens, seq_lens in (
            ([1, 1], [300, 300]),
            ([4, 4], [300, 300]),
            ([200, 200], [300, 300]),
            ([1, 1, 1, 200], [300, 90, 5, 500]),
        ):
            check_small(model, q_lens, seq_lens, dtype)
            if args.upstream:
                check_upstream_small(model, q_lens, seq_lens, dtype)
        for kind, q_len, cells in (
            ("decode", 1, sweep["decode"]),
            ("specdecode", 4, sweep["decode"]),
        ):
            for batch_size, context in cells:
                kv_bytes = 2 * batch_size * context * hkv * d * 2
                if kv_bytes > 24e9:  # SDPA's contiguous copies must fit beside ours
                    continue
                torch.cuda.empty_cache()  # the last cell's inputs are garbage now
                cell = ([q_len] * batch_size, [context] * batch_size)
                inputs = ragged_inputs(model, *cell, dtype)
                for graphs in (True, False):
                    us, plan = bench_ours(model, *cell, inputs, graphs)
                    rec = ours_record(
                        base,
                        kind,
                        name,
                        model,
                        batch=batch_size,
                        context=context,
                        q_len=q_len,
                        graphs=graphs,
                        us=us,
                        gbps=kv_bytes / us / 1e3,
                        kv_splits=plan.num_kv_splits,
                    )
                    rec["ratio_copy"] = rec["gbps"] / copy
                    emit(rec)
                    if args.upstream:
                        uus = bench_upstream(model, *cell, inputs, graphs)
                        rec["ratio_upstream"] = uus / us
                        ugbps = kv_bytes / uus / 1e3
                        emit(
                            dict(
                                rec,
                                impl="upstream",
                                us=uus,
                                gbps=ugbps,
                                ratio_copy=ugbps / copy,
                                kv_splits=None,
                            )
                        )
                    if kind == "decode" and graphs:
                        for backend in ("flash", "cudnn"):
                            sus, err = bench_sdpa(
                                model, batch_size, q_len, context, dtype, backend, graphs
                            )
                            if sus is not None:
                                gbps = kv_bytes / sus / 1e3
                                emit(
                                    dict(
                                        rec,
                                        impl=f"sdpa_{backend}",
                                        us=sus,
                                        gbps=gbps,
                                        ratio_copy=gbps / copy,
                                    )
                                )
                            else:
                                print(
                                    f"sdpa_{backend} {name} b{batch_size} c{context} "
                                    f"not timed: {err}",
                                    flush=True,
                                )
                            rec[f"ratio_sdpa_{backend}"] = (sus / us) if sus else None
        for batch_size, seq in sweep["prefill"]:
            flops = 4 * batch_size * hq * d * seq * seq / 2  # causal
            cell = ([seq] * batch_size, [seq] * batch_size)
            inputs = ragged_inputs(model, *cell, dtype)
            us, plan = bench_ours(model, *cell, inputs, True)
            rec = ours_record(
                base,
                "prefill",
                name,
                model,
                batch=batch_size,
                context=seq,
                q_len=seq,
                graphs=True,
                us=us,
                tflops=flops / us / 1e6,
            )
            emit(rec)
            if args.upstream:
                uus = bench_upstream(model, *cell, inputs, True)
                rec["ratio_upstream"] = uus / us
                emit(dict(rec, impl="upstream", us=uus, tflops=flops / uus / 1e6))
            for backend in ("flash", "cudnn"):
                sus, err = bench_sdpa(model, batch_size, seq, seq, dtype, backend, True)
                if sus is not None:
                    emit(dict(rec, impl=f"sdpa_{backend}", us=sus, tflops=flops / sus / 1e6))

        bench_chunks(model, name, base, dtype, args.upstream, emit)

    Path(args.out).write_text(json.dumps(records, indent=1))


def bench_chunks(model, name, base, dtype, upstream, emit):
    """A prefix-cached chunk, and that chunk in a mixed batch after many decodes."""
    hq, hkv, d = model
    chunk, cached = PREFIX_CHUNK
    decodes, decode_context = MIXED_DECODES
    # causal FLOPs of the chunk: each new token sees the prefix and the chunk up to itself
    chunk_flops = 4 * hq * d * (chunk * cached + chunk * (chunk + 1) / 2)
    for kind, q_lens, seq_lens in (
        ("prefill", [chunk], [cached + chunk]),
        ("mixed", *mixed_batch_lengths()),
    ):
        inputs = ragged_inputs(model, q_lens, seq_lens, dtype)
        us, _ = bench_ours(model, q_lens, seq_lens, inputs, True)
        rec = ours_record(
            base,
            kind,
            name,
            model,
            batch=len(q_lens),
            context=max(seq_lens),
            q_len=chunk,
            graphs=True,
            us=us,
            cached_prefix=cached,
            decodes=decodes if kind == "mixed" else 0,
            decode_context=decode_context if kind == "mixed" else 0,
            tflops=chunk_flops / us / 1e6,
        )
        if kind == "mixed":  # the same batch on one long-query launch
            hq_plan = plan_attention(
                num_tokens=sum(q_lens),
                num_seqs=len(q_lens),
                max_query_len=chunk,
                num_q_heads=hq,
                num_kv_heads=hkv,
                head_size=d,
                arch=GpuArch.of_device("cuda"),
            )
            rec["one_launch_us"] = bench_ours(model, q_lens, seq_lens, inputs, True, hq_plan)[0]
        if upstream:
            uus = bench_upstream(model, q_lens, seq_lens, inputs, True)
            rec["ratio_upstream"] = uus / us
        emit(rec)
        if upstream:
            emit(dict(rec, impl="upstream", us=uus, tflops=chunk_flops / uus / 1e6))


# Feature cells. Prefills with multimodal ranges: one 256-token image (Gemma 3's
# size) every 1024 tokens; with per-sequence causal flags: every sequence
# causal (the plain cell's work through the flag path) and every other one
# bidirectional; with ALiBi and ALiBi-sqrt; with a 1024-key window, plain and in
# chunks of 512 (chunk_lookback 1). Batch-invariant decodes beside the default ones.
FEATURE_PREFILLS = [(1, 4096), (4, 4096), (1, 16384)]
IMAGE_TOKENS, IMAGE_EVERY = 256, 1024
INVARIANT_DECODES = [(b, c) for b in (1, 4, 32, 128) for c in (1024, 16384, 65536)]
FP8_DECODES = [(1, 16384), (32, 16384), (128, 4096)]
# R-SWA decodes: a 2k prompt and a 4k window of a long generation (the gap unread)
RSWA_DECODES, RSWA_PREFIX, RSWA_WINDOW = [(1, 32768), (32, 16384)], 2048, 4096


def image_ranges(batch_size: int, seq: int) -> torch.Tensor:
    starts = range(IMAGE_EVERY // 8, seq - IMAGE_TOKENS, IMAGE_EVERY)
    ranges = [(start, start + IMAGE_TOKENS - 1) for start in starts]
    return torch.tensor([ranges] * batch_size, dtype=torch.int32, device="cuda")


def bench_features(model, name, base, dtype, upstream, emit, copy):
    hq, hkv, d = model
    for batch_size, seq in FEATURE_PREFILLS:
        cell = ([seq] * batch_size, [seq] * batch_size)
        inputs = ragged_inputs(model, *cell, dtype)
        flops = 4 * batch_size * hq * d * seq * seq / 2  # causal; ranges add little
        alternating = torch.arange(batch_size, dtype=torch.int32, device="cuda") % 2 == 0
        slopes = 2.0 ** (-8.0 * torch.arange(1, hq + 1, device="cuda") / hq)
        variants = {
            "plain": {},
            "mm_ranges": dict(mm_prefix_ranges=image_ranges(batch_size, seq)),
            "causal_flags": dict(causal=torch.ones(batch_size, dtype=torch.int32, device="cuda")),
            "mixed_flags": dict(causal=alternating.to(torch.int32)),
            "alibi": dict(alibi_slopes=slopes),
            "alibi_sqrt": dict(alibi_slopes=slopes, alibi_sqrt=True),
            "window": dict(sliding_window=1024),
            "chunked_window": dict(sliding_window=1024, chunk_lookback=1),
            # R-SWA: a quarter of the sequence as prompt prefix, beside the window
            "rswa": dict(
                sliding_window=1024,
                rswa_prefix_lens=torch.full(
                    (batch_size,), seq // 4, dtype=torch.int32, device="cuda"
                ),
            ),
        }
        plain_us = None
        for variant, call_args in variants.items():
            plan = backend_plan(model, cell[0], features=_features(call_args))
            us = _prefill_variant(
                model, name, base, cell, inputs, plan, emit, flops=flops, plain_us=plain_us,
                upstream=upstream, feature=variant, call_args=call_args,
            )  # fmt: skip
            plain_us = plain_us or us
        del inputs
        torch.cuda.empty_cache()
    for batch_size, context in INVARIANT_DECODES:
        kv_bytes = 2 * batch_size * context * hkv * d * 2
        if kv_bytes > 24e9:  # as in the main sweep
            continue
        cell = ([1] * batch_size, [context] * batch_size)
        inputs = ragged_inputs(model, *cell, dtype)
        default_us = None
        for invariant in (False, True):
            plan = backend_plan(model, cell[0], batch_invariant=invariant)
            us = _decode_variant(
                model,
                name,
                base,
                cell,
                inputs,
                plan,
                emit,
                copy,
                kv_bytes=kv_bytes,
                plain_us=default_us,
                upstream=upstream,
                feature="batch_invariant" if invariant else "plain",
                upstream_args=dict(batch_invariant=invariant),
                kv_splits=plan.num_kv_splits,
            )
            default_us = default_us or us
        del inputs
        torch.cuda.empty_cache()
    for batch_size, context in RSWA_DECODES:
        cell = ([1] * batch_size, [context] * batch_size)
        inputs = ragged_inputs(model, *cell, dtype)
        prefixes = torch.full((batch_size,), RSWA_PREFIX, dtype=torch.int32, device="cuda")
        call_args = dict(sliding_window=RSWA_WINDOW, rswa_prefix_lens=prefixes)
        _decode_variant(
            model,
            name,
            base,
            cell,
            inputs,
            backend_plan(model, cell[0], features=_features(call_args)),
            emit,
            copy,
            kv_bytes=2 * batch_size * (RSWA_PREFIX + RSWA_WINDOW) * hkv * d * 2,  # keys read
            plain_us=None,
            upstream=upstream,
            feature="rswa",
            ours_args=call_args,
            upstream_args=call_args,
        )
        del inputs
        torch.cuda.empty_cache()


def bench_fp8_decodes(model, name, base, dtype, upstream, emit, copy):
    """Decodes on quantised caches against the same cell on the 16-bit cache:
    fp8 with per-tensor scales (e4m3 and e5m2 where this GPU reads them), and
    vLLM's per-token-head pages (int8, and e4m3 where readable: values then a
    float32 scale per token and KV head); half the bytes, plus the scales."""
    hq, hkv, d = model
    arch = GpuArch.of_device("cuda")
    fp8 = [t for t in (torch.float8_e4m3fn, torch.float8_e5m2) if arch.supports_kv_dtype(t)]
    token_head = [torch.int8] + fp8[:1] + [INT4_KV_DTYPE]
    variants = [(dtype, False)] + [(t, False) for t in fp8] + [(t, True) for t in token_head]
    for batch_size, context in FP8_DECODES:
        cell = ([1] * batch_size, [context] * batch_size)
        inputs = ragged_inputs(model, *cell, dtype)
        plain_us = None
        for kv_dtype, per_token_head in variants:
            call_args, cell_inputs = {}, inputs
            if per_token_head:
                k_cache, v_cache, k_scale, v_scale = quantised_page(*inputs[1:3], kv_dtype)
                call_args = dict(k_scale=k_scale, v_scale=v_scale)
                cell_inputs = (inputs[0], k_cache, v_cache, *inputs[3:])
            elif kv_dtype != dtype:  # N(0, 1) values: well inside both formats at scale 1
                scale = torch.ones(1, device=inputs[0].device)
                call_args = dict(k_scale=scale, v_scale=scale)
                cell_inputs = (
                    inputs[0],
                    inputs[1].to(kv_dtype),
                    inputs[2].to(kv_dtype),
                    *inputs[3:],
                )
            layout = TensorLayout.of_packed_kv_cache(d, kv_dtype, block_size=16)
            plan = backend_plan(model, cell[0], layout=layout)
            scale_bytes = 2 * batch_size * context * hkv * 4 if per_token_head else 0
            value_bytes = d // 2 if kv_dtype == INT4_KV_DTYPE else d * kv_dtype.itemsize
            us = _decode_variant(
                model,
                name,
                base,
                cell,
                cell_inputs,
                plan,
                emit,
                copy,
                kv_bytes=2 * batch_size * context * hkv * value_bytes + scale_bytes,
                plain_us=plain_us,
                upstream=upstream,
                feature=f"kv_{kv_name(kv_dtype)}" + ("_per_token_head" if per_token_head else ""),
                ours_args=call_args,
                upstream_args=call_args,
            )
            plain_us = plain_us or us
            del cell_inputs
        del inputs
        torch.cuda.empty_cache()


FP8_QUERY_PREFILLS = [(1, 4096), (1, 16384), (4, 4096)]


def bench_fp8_query_prefills(model, name, base, dtype, upstream, emit, copy):
    """Prefills on an fp8 cache (per-tensor scales) with the queries in 16 bits
    and quantised to the cache's format (vLLM's ``supports_quant_query_input``:
    q.k in fp8), against the same cell on the 16-bit cache."""
    hq, hkv, d = model
    fp8 = e4m3_dtype()
    if not GpuArch.of_device("cuda").supports_kv_dtype(fp8):
        return
    one = torch.ones(1, device="cuda")
    for batch_size, seq in FP8_QUERY_PREFILLS:
        cell = ([seq] * batch_size, [seq] * batch_size)
        inputs = ragged_inputs(model, *cell, dtype)
        fp8_cache = (inputs[1].to(fp8), inputs[2].to(fp8))
        flops = 4 * batch_size * hq * d * seq * seq / 2
        variants = {
            "plain": (inputs, {}),
            f"kv_{kv_name(fp8)}": (
                (inputs[0], *fp8_cache, *inputs[3:]),
                dict(k_scale=one, v_scale=one),
            ),
            "fp8_queries": (
                (inputs[0].to(fp8), *fp8_cache, *inputs[3:]),
                dict(k_scale=one, v_scale=one, q_scale=one),
            ),
        }
        plain_us = None
        for variant, (cell_inputs, call_args) in variants.items():
            layout = TensorLayout.of_packed_kv_cache(d, cell_inputs[1].dtype, block_size=16)
            plan = backend_plan(model, cell[0], layout=layout, dtype=cell_inputs[0].dtype)
            us = _prefill_variant(
                model, name, base, cell, cell_inputs, plan, emit, flops=flops,
                plain_us=plain_us, upstream=upstream, feature=variant, call_args=call_args,
            )  # fmt: skip
            plain_us = plain_us or us
        del inputs, fp8_cache, variants
        torch.cuda.empty_cache()


def bench_epilogues(model, name, base, dtype, upstream, emit, copy):
    """Decodes and prefills whose output is quantised to fp8 in the epilogue
    (vLLM's fused static per-tensor quantisation), and decodes that also store
    each row's log-sum-exp (what decode context parallelism merges; upstream
    has no such mode), against the same cells with the plain 16-bit output;
    and one rank's context attention of those decodes under decode context
    parallelism over two ranks (``dcp2_context``)."""
    hq, hkv, d = model
    if not GpuArch.of_device("cuda").supports_kv_dtype(e4m3_dtype()):
        return
    fused = dict(out_scale=torch.ones(1, device="cuda"))
    for batch_size, context in FP8_DECODES:
        cell = ([1] * batch_size, [context] * batch_size)
        inputs = ragged_inputs(model, *cell, dtype)
        lse = dict(lse=torch.empty(batch_size, hq, device="cuda"))
        plain_us = None
        for variant, call_args in (("plain", {}), ("fp8_output", fused), ("lse", lse)):
            us = _decode_variant(
                model, name, base, cell, inputs,
                backend_plan(model, cell[0], features=_features(call_args)), emit, copy,
                kv_bytes=2 * batch_size * context * hkv * d * dtype.itemsize, plain_us=plain_us,
                upstream=upstream and variant != "lse", feature=variant, ours_args=call_args,
                upstream_args=call_args,
            )  # fmt: skip
            plain_us = plain_us or us
        # A rank's context attention under decode context parallelism over two
        # ranks: both ranks' query heads over half of each context, every key
        # visible, log-sum-exps stored (vLLM's combine and merge, which are not
        # ours, come on top of it).
        rank_model = (2 * hq, hkv, d)
        shard = ([1] * batch_size, [context // 2] * batch_size)
        del inputs
        inputs = ragged_inputs(rank_model, *shard, dtype)
        call_args = dict(causal=False, lse=torch.empty(batch_size, 2 * hq, device="cuda"))
        plan = backend_plan(rank_model, shard[0], features=_features(call_args))
        _decode_variant(
            rank_model, name, base, shard, inputs, plan, emit, copy,
            kv_bytes=2 * batch_size * (context // 2) * hkv * d * dtype.itemsize,
            plain_us=plain_us, upstream=False, feature="dcp2_context", ours_args=call_args,
        )  # fmt: skip
        del inputs
        torch.cuda.empty_cache()
    for batch_size, seq in FP8_QUERY_PREFILLS:
        cell = ([seq] * batch_size, [seq] * batch_size)
        inputs = ragged_inputs(model, *cell, dtype)
        flops = 4 * batch_size * hq * d * seq * seq / 2
        plain_us = None
        for variant, call_args in (("plain", {}), ("fp8_output", fused)):
            us = _prefill_variant(
                model, name, base, cell, inputs, backend_plan(model, cell[0]), emit, flops=flops,
                plain_us=plain_us, upstream=upstream, feature=variant, call_args=call_args,
            )  # fmt: skip
            plain_us = plain_us or us
        del inputs
        torch.cuda.empty_cache()


CACHE_WRITE_TOKENS = (1, 8, 64, 256, 2048)


def bench_cache_writes(model, name, base, dtype, upstream, emit, copy):
    """The cache write of a step's tokens (CUDA graphs, as decode steps run),
    alone (``plain``) and with vLLM's rotary embedding fused in (``rope``:
    queries and keys turned in place first, ``rope_and_write_kv_cache``), its
    query, key and value views of one QKV buffer as vLLM splits it. Bytes:
    K and V read and stored in the cache, and with the rotary embedding the
    queries' and keys' read and write too."""
    hq, hkv, d = model
    num_blocks, block_size = 4096, 16
    packed = torch.empty(num_blocks, block_size, hkv, 2 * d, dtype=dtype, device="cuda")
    k_cache, v_cache = packed[..., :d], packed[..., d:]
    angles = torch.rand(8192, d // 2, device="cuda") * 2 * math.pi
    cos_sin_cache = torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)
    sizes = [hq * d, hkv * d, hkv * d]
    for num_tokens in CACHE_WRITE_TOKENS:
        qkv = torch.randn(num_tokens, sum(sizes), dtype=dtype, device="cuda")
        query, key, value = (x.view(num_tokens, -1, d) for x in qkv.split(sizes, dim=-1))
        slots = torch.randperm(num_blocks * block_size, device="cuda")[:num_tokens]
        positions = torch.randint(0, 8192, (num_tokens,), device="cuda")
        kv_bytes = 4 * num_tokens * hkv * d * dtype.itemsize
        rope = dict(positions=positions, cos_sin_cache=cos_sin_cache, is_neox=True)
        writes = {
            "plain": (functools.partial(write_kv_cache, key, value, k_cache, v_cache, slots),
                      kv_bytes),
            "rope": (functools.partial(rope_and_write_kv_cache, query, key, value, k_cache,
                                       v_cache, slots, **rope),
                     kv_bytes + 2 * num_tokens * (hq + hkv) * d * dtype.itemsize),
        }  # fmt: skip
        plain_us = None
        for feature, (write, moved) in writes.items():
            write()  # compiles and binds the launch outside the timed graph
            us = time_us(write, graphs=True)
            emit(
                ours_record(
                    base, "cache_write", name, model, batch=num_tokens, context=0, q_len=1,
                    graphs=True, us=us, feature=feature, gbps=moved / us / 1e3,
                    ratio_copy=moved / us / 1e3 / copy, ratio_plain=us / (plain_us or us),
                )
            )  # fmt: skip
            plain_us = plain_us or us


def kv_name(kv_dtype: torch.dtype) -> str:
    return "int4" if kv_dtype == INT4_KV_DTYPE else str(kv_dtype)[6:]


def quantised_page(k_cache, v_cache, kv_dtype):
    """``k_cache``/``v_cache`` ([blocks, block_size, heads, d]) in a per-token-head
    page as vLLM lays it out (``devtools.batches.token_head_page``): int8 at scale
    1/32, fp8 at scale 1; int4 as random codes (the timing does not depend on
    them) at scale 1/4 around zero point 8. Returns its K, V and scale views."""
    views = token_head_page(*k_cache.shape, kv_dtype, k_cache.device)
    if kv_dtype == INT4_KV_DTYPE:
        for view in views[:2]:
            view.copy_(torch.randint_like(view, 256))
        for words in views[2:]:
            words.copy_(int4_scale_words(torch.full_like(words, 0.25), torch.full_like(words, 8)))
        return views
    scale = 1 / 32 if kv_dtype == torch.int8 else 1.0
    for view, values in zip(views[:2], (k_cache, v_cache), strict=True):
        quantised = values.float() / scale
        if kv_dtype == torch.int8:
            quantised = quantised.round().clamp(-128, 127)
        view.copy_(quantised.to(kv_dtype))
    for scales in views[2:]:
        scales.fill_(scale)
    return views


def _prefill_variant(
    model, name, base, cell, inputs, plan, emit, *, flops, plain_us, upstream, feature, call_args
) -> float:
    """One prefill cell in one variant (``feature``): ours on ``plan`` and
    upstream, both with ``call_args``; emits both records against the cell's
    plain time (``plain_us``; None: this is the plain one). Our us."""
    q_lens, seq_lens = cell
    us, _ = bench_ours(model, *cell, inputs, True, plan, **call_args)
    rec = ours_record(
        base,
        "prefill",
        name,
        model,
        batch=len(q_lens),
        context=seq_lens[0],
        q_len=q_lens[0],
        graphs=True,
        us=us,
        feature=feature,
        tflops=flops / us / 1e6,
        ratio_plain=us / (plain_us or us),
    )
    if upstream:
        uus = bench_upstream(model, *cell, inputs, True, **call_args)
        rec["ratio_upstream"] = uus / us
    emit(rec)
    if upstream:
        emit(dict(rec, impl="upstream", us=uus, tflops=flops / uus / 1e6))
    return us


def _decode_variant(
    model,
    name,
    base,
    cell,
    inputs,
    plan,
    emit,
    copy,
    *,
    kv_bytes,
    plain_us,
    upstream,
    feature,
    ours_args=None,
    upstream_args=None,
    **fields,
) -> float:
    """One decode cell in one variant (``feature``): ours on ``plan`` with
    ``ours_args``, upstream with ``upstream_args``; emits both records against
    the cell's plain time (``plain_us``; None: this is the plain one). Our us."""
    q_lens, seq_lens = cell
    us, _ = bench_ours(model, *cell, inputs, True, plan, **(ours_args or {}))
    rec = ours_record(
        base,
        "decode",
        name,
        model,
        batch=len(q_lens),
        context=seq_lens[0],
        q_len=1,
        graphs=True,
        us=us,
        feature=feature,
        gbps=kv_bytes / us / 1e3,
        ratio_copy=kv_bytes / us / 1e3 / copy,
        ratio_plain=us / (plain_us or us),
        **fields,
    )
    if upstream:
        uus = bench_upstream(model, *cell, inputs, True, **(upstream_args or {}))
        rec["ratio_upstream"] = uus / us
    emit(rec)
    if upstream:
        ugbps = kv_bytes / uus / 1e3
        emit(dict(rec, impl="upstream", us=uus, gbps=ugbps, ratio_copy=ugbps / copy))
    return us


def _features(call_args):
    from vllm.v1.attention.ops.triton_attention import AttentionFeatures

    return AttentionFeatures(
        sliding_window="sliding_window" in call_args,
        chunked_window="chunk_lookback" in call_args,
        alibi="alibi_slopes" in call_args,
        per_seq_causal="causal" in call_args,
        mm_prefix="mm_prefix_ranges" in call_args,
        rswa="rswa_prefix_lens" in call_args,
        returns_lse="lse" in call_args,
    )


# --features: each part's cells, timed for one model (upstream where it has the mode)
FEATURE_PARTS = {
    "masks": bench_features,
    "quantised": bench_fp8_decodes,
    "fp8_queries": bench_fp8_query_prefills,
    "epilogues": bench_epilogues,
    "cache_writes": bench_cache_writes,
}


if __name__ == "__main__":
    main()
