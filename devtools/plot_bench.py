# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Plot a bench_attention JSON: decode KV-read bandwidth vs context, one line
per batch size and implementation, with the card's copy bandwidth as the roofline.
Needs matplotlib (``pip install matplotlib``).

    python -m devtools.plot_bench benchmarks/results/nvidia-h100/bench_full.json
"""

import argparse
import json
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="a bench_attention --out file; the PNG goes beside it")
    parser.add_argument("--model", default="llama3-8b")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = json.loads(Path(args.json).read_text())
    copy = next(r["gbps"] for r in records if r["impl"] == "copy")
    card = records[0]["card"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, kind in zip(axes, ("decode", "specdecode"), strict=True):
        batches = sorted({r["batch"] for r in records if r["kind"] == kind})
        colors = plt.cm.viridis([i / max(len(batches) - 1, 1) for i in range(len(batches))])
        for batch, color in zip(batches, colors, strict=True):
            for impl, style in (("ours", "-"), ("upstream", ":")):
                cells = sorted(
                    (r["context"], r["gbps"])
                    for r in records
                    if (r["kind"], r["impl"], r.get("batch")) == (kind, impl, batch)
                    and r["graphs"]
                    and r.get("model") == args.model
                )
                if cells:
                    label = f"b{batch} {impl}" if impl == "ours" or batch == batches[0] else None
                    ax.plot(*zip(*cells, strict=True), style, color=color, marker="o", label=label)
        ax.axhline(copy, color="red", linestyle="--", label=f"copy {copy:.0f} GB/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_title(f"{kind} ({args.model}, bf16, CUDA graphs) on {card}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("KV read bandwidth (GB/s)")
    axes[1].legend(fontsize=7, ncol=2)
    out = Path(args.json).with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
