# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Markdown summary of bench_attention JSON files: ratios against the copy
roofline, upstream (the pinned vLLM) and torch SDPA, per cell (CUDA-graph timings; for
decode and spec-decode also the ratio to upstream timed eagerly, where the
host's launch cost shows).

    python -m devtools.summarize_bench benchmarks/results/nvidia-h100/bench_full.json

Writes SUMMARY.md beside the first JSON, or ``--out`` (rooflines come from the
first). Records of ``bench_attention --features`` get a table of their own: each
feature cell against the same cell without it and against upstream.
"""

import argparse
import json
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("--out", help="the markdown file (default: SUMMARY.md beside the JSON)")
    args = parser.parse_args()
    records = [r for path in args.json for r in json.loads(Path(path).read_text())]
    features = [r for r in records if "feature" in r]
    records = [r for r in records if "feature" not in r]
    copy = next(r["gbps"] for r in records if r["impl"] == "copy")
    gemm = next(r["tflops"] for r in records if r["impl"] == "gemm")
    cells = {
        (r["kind"], r["impl"], r.get("model"), r["batch"], r["context"], r["graphs"]): r
        for r in records
        if r["kind"] != "roofline" and "cached_prefix" not in r
    }
    chunks = [r for r in records if "cached_prefix" in r]
    models = sorted({r.get("model") for r in records if r["kind"] != "roofline"})
    source = ", ".join(f"`{Path(path).name}`" for path in args.json)
    lines = [
        f"# {records[0]['card']}: copy {copy:.0f} GB/s, bf16 GEMM {gemm:.0f} TFLOP/s",
        "",
        f"Source: {source} (CUDA-graph timings, medians; the eager column times both "
        "without graphs).",
        "",
    ]
    for model in models:
        has_decode = any(key[0] == "decode" and key[2] == model for key in cells)
        lines += (
            [
                f"## {model}: decode and spec-decode (q_len 4)",
                "",
                "| kind | batch | context | ours us | x copy | upstream / ours | "
                "eager: upstream / ours | best SDPA / ours | spec / decode |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            if has_decode
            else []
        )
        for kind in ("decode", "specdecode"):
            for key, ours in sorted(cells.items(), key=lambda kv: (kv[0][3], kv[0][4])):
                if key[:3] != (kind, "ours", model) or not key[5]:
                    continue
                batch, context = key[3], key[4]
                upstream = cells.get((kind, "upstream", model, batch, context, True))
                sdpa = [
                    cells.get(("decode", f"sdpa_{b}", model, batch, context, True))
                    for b in ("flash", "cudnn")
                ]
                sdpa = min((s["us"] for s in sdpa if s), default=None)
                decode = cells.get(("decode", "ours", model, batch, context, True))
                eager = [
                    cells.get((kind, impl, model, batch, context, False))
                    for impl in ("upstream", "ours")
                ]
                lines.append(
                    f"| {kind} | {batch} | {context} | {ours['us']:.1f} | {ours['ratio_copy']:.2f} "
                    f"| {upstream['us'] / ours['us'] if upstream else float('nan'):.2f} "
                    f"| {eager[0]['us'] / eager[1]['us'] if all(eager) else float('nan'):.2f} "
                    f"| {sdpa / ours['us'] if sdpa and kind == 'decode' else float('nan'):.2f} "
                    f"| {ours['us'] / decode['us'] if kind == 'specdecode' else float('nan'):.2f} |"
                )
        lines += [
            "",
            f"## {model}: causal prefill (TFLOP/s)",
            "",
            "| batch | seq | ours | upstream | flash | cuDNN | x upstream | x flash | x cuDNN |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, ours in sorted(cells.items(), key=lambda kv: (kv[0][3], kv[0][4])):
            if key[:3] != ("prefill", "ours", model):
                continue
            other = {
                impl: cells.get(("prefill", impl, model, key[3], key[4], True))
                for impl in ("upstream", "sdpa_flash", "sdpa_cudnn")
            }
            rate = {impl: (r["tflops"] if r else float("nan")) for impl, r in other.items()}
            lines.append(
                f"| {key[3]} | {key[4]} | {ours['tflops']:.0f} | {rate['upstream']:.0f} | "
                f"{rate['sdpa_flash']:.0f} | {rate['sdpa_cudnn']:.0f} | "
                f"{ours['tflops'] / rate['upstream']:.2f} | "
                f"{ours['tflops'] / rate['sdpa_flash']:.2f} | "
                f"{ours['tflops'] / rate['sdpa_cudnn']:.2f} |"
            )
        lines.append("")
    lines += [
        "## Prefix-cached chunk and mixed batch",
        "",
        "2048 new tokens on 8192 cached; mixed: that chunk after 64 decodes on 4096. "
        "`one launch`: the same mixed batch on the long-query kernel alone.",
        "",
        "| model | kind | ours us | chunk TFLOP/s | upstream us | x upstream | one launch us |",
        "|---|---|---|---|---|---|---|",
    ]
    for ours in (r for r in chunks if r["impl"] == "ours"):
        upstream = next(
            (
                r
                for r in chunks
                if r["impl"] == "upstream"
                and r["model"] == ours["model"]
                and r["kind"] == ours["kind"]
            ),
            None,
        )
        lines.append(
            f"| {ours['model']} | {ours['kind']} | {ours['us']:.0f} | {ours['tflops']:.0f} | "
            f"{upstream['us'] if upstream else float('nan'):.0f} | "
            f"{upstream['us'] / ours['us'] if upstream else float('nan'):.2f} | "
            f"{ours.get('one_launch_us', float('nan')):.0f} |"
        )
    lines += feature_table(features)
    out = Path(args.out) if args.out else Path(args.json[0]).with_name("SUMMARY.md")
    out.write_text("\n".join(lines) + "\n")
    print(out)


def feature_table(records: list[dict]) -> list[str]:
    if not records:
        return []
    lines = [
        "",
        "## Feature cells",
        "",
        "Prefill: `mm_ranges` one 256-token image every 1024 tokens; `causal_flags` a causal "
        "flag per sequence, all set (the plain cell's work through the flag path); "
        "`mixed_flags` every other sequence bidirectional; `alibi`, `alibi_sqrt` the two "
        "ALiBi biases; `window`, `chunked_window` a 1024-key window, plain and in chunks "
        "of 512 (chunk_lookback 1); `rswa` that window with a quarter of the sequence as "
        "prompt prefix; `kv_float8_e4m3fn` an fp8 cache, `fp8_queries` that cache with the "
        "queries in fp8 too (q.k in fp8); `fp8_output` the output quantised to fp8 in the "
        "epilogue. Decode: `batch_invariant` plans against the default ones, upstream in "
        "the same mode (VLLM_BATCH_INVARIANT); `rswa` a 2k prompt and a 4k window of a "
        "long generation (x copy over the keys read); `kv_float8_*` an fp8 cache "
        "(per-tensor scales) against the 16-bit one, upstream in its FP8_PER_TENSOR mode; "
        "`kv_*_per_token_head` vLLM's per-token-head int8, fp8 and int4 pages (a float32 "
        "scale per token and KV head), upstream in the same mode; `fp8_output` as in "
        "prefill; `lse` each row's log-sum-exp stored as well (upstream has no such mode); "
        "`dcp2_context` one rank's context attention under decode context parallelism over "
        "two ranks (both ranks' query heads, half of each context, log-sum-exps stored) "
        "against the whole plain decode. Cache write (batch: tokens): `rope` the write with "
        "vLLM's rotary embedding fused in (queries and keys turned in place) against the "
        "write alone; x copy over the bytes each moves.",
        "",
        "| model | kind | feature | batch | context | ours us | / same cell plain | "
        "upstream / ours | x copy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["impl"] != "ours":
            continue
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['feature']} | {r['batch']} | {r['context']} | "
            f"{r['us']:.1f} | {r['ratio_plain']:.3f} | "
            f"{r.get('ratio_upstream', float('nan')):.2f} | "
            f"{r.get('ratio_copy', float('nan')):.2f} |"
        )
    return lines


if __name__ == "__main__":
    main()
