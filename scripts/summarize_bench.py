# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Markdown summary of a bench_attention.py JSON: ratios against the copy
roofline, upstream 0.33.0 and torch SDPA, per cell (CUDA-graph timings).

    python3 scripts/summarize_bench.py benchmarks/results/nvidia-h200/bench_full.json
"""

import argparse
import json
from pathlib import Path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("json")
    args = parser.parse_args()
    records = json.loads(Path(args.json).read_text())
    copy = next(r["gbps"] for r in records if r["impl"] == "copy")
    gemm = next(r["tflops"] for r in records if r["impl"] == "gemm")
    cells = {(r["kind"], r["impl"], r.get("model"), r["batch"], r["context"], r["graphs"]): r
             for r in records if r["kind"] != "roofline"}  # fmt: skip
    models = sorted({r.get("model") for r in records if r["kind"] != "roofline"})
    source = Path(args.json).name
    lines = [f"# {records[0]['card']}: copy {copy:.0f} GB/s, bf16 GEMM {gemm:.0f} TFLOP/s", "",
             f"Source: `{source}` (CUDA-graph timings, medians).", ""]  # fmt: skip
    for model in models:
        lines += [f"## {model}: decode and spec-decode (q_len 4)", "",
                  "| kind | batch | context | ours us | x copy | upstream / ours | "
                  "best SDPA / ours | spec / decode |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for kind in ("decode", "specdecode"):
            for key, ours in sorted(cells.items(), key=lambda kv: (kv[0][3], kv[0][4])):
                if key[:3] != (kind, "ours", model) or not key[5]:
                    continue
                batch, context = key[3], key[4]
                upstream = cells.get((kind, "upstream", model, batch, context, True))
                sdpa = [cells.get(("decode", f"sdpa_{b}", model, batch, context, True))
                        for b in ("flash", "cudnn")]  # fmt: skip
                sdpa = min((s["us"] for s in sdpa if s), default=None)
                decode = cells.get(("decode", "ours", model, batch, context, True))
                lines.append(
                    f"| {kind} | {batch} | {context} | {ours['us']:.1f} | {ours['ratio_copy']:.2f} "
                    f"| {upstream['us'] / ours['us'] if upstream else float('nan'):.2f} "
                    f"| {sdpa / ours['us'] if sdpa and kind == 'decode' else float('nan'):.2f} "
                    f"| {ours['us'] / decode['us'] if kind == 'specdecode' else float('nan'):.2f} |"
                )
        lines += ["", f"## {model}: causal prefill (TFLOP/s)", "",
                  "| batch | seq | ours | upstream | flash | cuDNN | x upstream | x flash "
                  "| x cuDNN |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for key, ours in sorted(cells.items(), key=lambda kv: (kv[0][3], kv[0][4])):
            if key[:3] != ("prefill", "ours", model):
                continue
            other = {impl: cells.get(("prefill", impl, model, key[3], key[4], True))
                     for impl in ("upstream", "sdpa_flash", "sdpa_cudnn")}  # fmt: skip
            rate = {impl: (r["tflops"] if r else float("nan")) for impl, r in other.items()}
            lines.append(
                f"| {key[3]} | {key[4]} | {ours['tflops']:.0f} | {rate['upstream']:.0f} | "
                f"{rate['sdpa_flash']:.0f} | {rate['sdpa_cudnn']:.0f} | "
                f"{ours['tflops'] / rate['upstream']:.2f} | "
                f"{ours['tflops'] / rate['sdpa_flash']:.2f} | "
                f"{ours['tflops'] / rate['sdpa_cudnn']:.2f} |"
            )
        lines.append("")
    out = Path(args.json).with_name("SUMMARY.md")
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
