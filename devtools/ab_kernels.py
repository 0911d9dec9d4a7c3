# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""A/B timing of kernel changes: an earlier commit's kernels against the working
tree's, with optional plan overrides, on the same inputs in one run; timed with CUDA
graphs or eagerly (``--timing``), optionally against upstream vLLM's kernel
(``--upstream``; ``python -m devtools.fetch_upstream_kernel`` fetches it).

Extract the base into an ignored folder (where git is), take it to the GPU
machine with the working tree, and time there:

    python -m devtools.ab_kernels --extract 12a0c5a .exp/base_ta
    python -m devtools.ab_kernels --base .exp/base_ta --cells decode spec \\
        --variant 'tile128={"kv_tile_size": 128}' --variant 'no_pdl={"no_pdl": true}' \\
        --out ab.json

Every variant's output is compared with the base's (max abs difference, ``err``).
``--timing`` takes one or more of: ``graphs`` (``do_bench_cudagraph``), ``eager``
(``do_bench``: each call follows a 256 MB cache-clearing memset), ``steady`` (eager
calls back to back, no memset: launches overlap the GPU's work), ``kernel`` (the
profiler's kernel durations in an eager loop like ``do_bench``'s; also records
``span``, from the memset's end to the call's last kernel end, so span - kernel is
the GPU's idle time inside the call).
``--features`` passes keyword arguments (sliding window, softcap) to every call.
Overrides are ``AttentionPlan`` fields, ``splits_factor`` (scales the plan's split
count), ``one_wave`` (N: as many splits as fit one wave at N programs per SM/CU, at
most the plan's; the working tree's kernels only), ``wave_splits`` (the same, up to
the plan's cap on splits instead of its count), ``early_merge`` (N: the split-KV
merge is launched early when it has at most N programs per SM/CU, whatever the rows
per program; 0: never), or ``no_pdl`` (the plan's GPU without programmatic launch).
In a mixed batch, field overrides go under ``"decode"`` or ``"prefill"``
(``{"prefill": {"num_stages": 2}}``), which a plain batch applies when they name its
kernel (split-KV decode or long-query).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "vllm/v1/attention/ops/triton_attention"
MODELS = {
    "llama": (32, 8, 128),
    "qwen": (28, 4, 128),
    "gemma": (16, 8, 256),
    "d64": (32, 8, 64),
    "d64mha": (16, 16, 64),
}
# preset: (model, batch, q_len, context); mixed cells are 64 decodes on 4k + a 2048 chunk on 8k
CELLS = {
    "prefill": [("llama", 1, 8192, 8192), ("llama", 4, 4096, 4096), ("llama", 1, 1024, 1024),
                ("qwen", 1, 4096, 4096), ("gemma", 1, 4096, 4096), ("d64", 1, 4096, 4096),
                ("llama", 1, 2048, 8192), ("llama", 1, 512, 512), ("llama", 2, 1024, 1024),
                ("llama", 1, 1536, 1536), ("qwen", 1, 1024, 1024), ("qwen", 1, 2048, 2048),
                ("llama", 4, 1024, 1024), ("qwen", 4, 1024, 1024), ("d64", 1, 16384, 16384),
                ("d64", 4, 4096, 4096), ("d64", 1, 1024, 1024)],
    "mixed": [(m, 65, 2048, 8192) for m in MODELS],
    "d256": [("gemma", b, s, s)
             for b, s in ((1, 1024), (1, 4096), (1, 16384), (4, 4096), (4, 16384))]
            + [("gemma", 65, 2048, 8192), ("gemma", 1, 2048, 8192), ("gemma", 64, 1, 4096)],
    "decode": [("llama", b, 1, c) for b, c in ((1, 1024), (1, 16384), (4, 4096), (8, 4096),
                                               (16, 1024), (32, 1024), (64, 1024), (128, 1024))]
              + [("qwen", b, 1, c) for b, c in ((1, 1024), (1, 16384), (1, 65536), (4, 16384),
                                              (8, 4096), (16, 4096), (32, 1024), (64, 1024),
                                              (128, 1024))],
    "spec": [("qwen", b, 4, c) for b, c in ((1, 1024), (4, 4096), (8, 1024), (8, 4096),
                                            (8, 16384), (8, 65536), (16, 1024), (16, 4096),
                                            (16, 65536), (32, 1024), (32, 4096), (32, 65536))]
            + [("llama", b, 4, 1024) for b in (8, 64)],
    # 16-row decodes the plan splits 2-9 ways, over context (graphs fix the
    # split count per batch size, so a rule must hold at every context)
    "few": [(m, b, q, c) for m, b, q in (("llama", 32, 1), ("qwen", 64, 1), ("llama", 32, 4),
                                          ("llama", 16, 1), ("qwen", 32, 1), ("llama", 8, 1),
                                          ("qwen", 16, 1))
            for c in (1024, 4096, 16384)],
    # head-64 decodes the plan leaves unsplit or splits 2-3 ways (the coarse tiles)
    "coarse64": [("d64", b, 1, c) for b, c in ((64, 4096), (128, 1024), (256, 1024))]
                + [("d64mha", b, 1, c) for b, c in ((32, 4096), (64, 1024), (128, 1024),
                                                    (256, 1024), (256, 4096))],
    # 32-row spec-decodes (qwen's 28 heads x 4 tokens) split 5-64 ways, over context
    "spec32": [("qwen", b, 4, c) for b in (1, 4, 8, 16) for c in (1024, 4096, 16384, 65536)],
    # eager timing: batches of 2M+ tokens (where per-implementation allocations once
    # made our eager call 1.14-1.19x its CUDA-graph time, DECISIONS.md: "Shared
    # bench inputs"), a 1M-token control of the same grid and work per program
    # (llama b64 x 16k), and host-bound calls
    "eager": [("llama", 128, 1, 16384), ("llama", 64, 1, 65536), ("qwen", 128, 1, 16384),
              ("qwen", 128, 1, 65536), ("llama", 64, 1, 16384), ("llama", 8, 1, 4096),
              ("llama", 4, 1, 16384), ("llama", 32, 4, 1024)],
}  # fmt: skip


def extract(commit: str, dest: Path) -> None:
    """The kernel package of ``commit``, importable as a top-level package at ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "base.tar"
        subprocess.run(
            ["git", "-C", str(REPO), "archive", commit, PACKAGE, "-o", str(archive)], check=True
        )
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["rm", "-rf", str(dest)], check=True)
        Path(tmp, PACKAGE).rename(dest)
    print(f"{commit}'s kernels in {dest}")


def load_package(name: str, folder: Path):
    """The kernel package in ``folder`` (from ``--extract``), imported as ``name``."""
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cell_lengths(batch, q_len, context):
    if batch == 65:  # the mixed cell
        return [1] * 64 + [2048], [4096] * 64 + [8192]
    return [q_len] * batch, [context] * batch


def make_plan(mod, model, q_lens, override, features=None):
    """``mod``'s plan as the backend makes it: the leading queries of up to 8 tokens
    on split-KV, the rest on long-query (``plan_batch`` covers all three kinds of
    batch; a package from before it has ``plan_mixed_attention``); then the
    overrides. ``features``: the calls' keyword arguments."""
    hq, hkv, d = model
    decode_len = max((q for q in q_lens if q <= mod.plan.SPLIT_KV_MAX_QUERY_LEN), default=1)
    num_decodes = next((i for i, q in enumerate(q_lens) if q > decode_len), len(q_lens))
    batch = dict(
        num_tokens=sum(q_lens),
        num_seqs=len(q_lens),
        num_decodes=num_decodes,
        num_decode_tokens=sum(q_lens[:num_decodes]),
        max_decode_query_len=decode_len,
        max_query_len=max(q_lens),
        num_q_heads=hq,
        num_kv_heads=hkv,
        head_size=d,
        arch=mod.GpuArch.of_device("cuda"),
    )
    if hasattr(mod, "plan_batch"):
        features = features or {}
        plan = mod.plan_batch(
            **batch,
            features=mod.AttentionFeatures(
                sliding_window=features.get("sliding_window") is not None,
                softcap=features.get("logits_soft_cap") is not None,
            ),
        )
    else:
        plan = mod.plan_mixed_attention(**batch)
    override = dict(override)
    if override.pop("no_pdl", False):
        plan = _without_pdl(mod, plan)
    if hasattr(plan, "decode"):  # a mixed batch: overrides name the part they change
        parts = {
            part: _override(mod, getattr(plan, part), override.pop(part, {}))
            for part in ("decode", "prefill")
        }
        return dataclasses.replace(plan, **parts)
    # a plain batch is one part: the overrides named for its kernel apply too
    own = override.pop("decode" if _is_split_kv(plan) else "prefill", {})
    override.pop("prefill", None)
    override.pop("decode", None)
    return _override(mod, plan, {**override, **own})


def _is_split_kv(plan) -> bool:
    return plan.kernel.startswith("split_kv_decode")


def _override(mod, plan, override):
    """``plan`` with AttentionPlan fields replaced; ``splits_factor`` scales the split
    count. A package whose plans store their grid gets it resized."""
    override = dict(override)
    factor = override.pop("splits_factor", None)
    if factor is not None and _is_split_kv(plan):
        override["num_kv_splits"] = max(1, round(plan.num_kv_splits * factor))
    per_unit = override.pop("one_wave", None)
    if per_unit is not None and _is_split_kv(plan):
        override["num_kv_splits"] = mod.plan.one_wave_splits(
            plan.num_kv_splits, plan.num_seqs * plan.num_kv_heads, per_unit, plan.arch
        )
    per_unit = override.pop("wave_splits", None)
    if per_unit is not None and _is_split_kv(plan):
        override["num_kv_splits"] = mod.plan.one_wave_splits(
            mod.plan.max_kv_splits(plan.block_m),
            plan.num_seqs * plan.num_kv_heads,
            per_unit,
            plan.arch,
        )
    plan = dataclasses.replace(plan, **override)
    if "grid" not in {field.name for field in dataclasses.fields(plan)}:
        return plan  # derived from the fields
    if _is_split_kv(plan):
        return dataclasses.replace(plan, grid=(*plan.grid[:2], plan.num_kv_splits))
    size = mod.plan.long_query_grid_size(plan.num_tokens, plan.num_seqs, plan.tokens_per_q_block)
    return dataclasses.replace(plan, grid=(size, *plan.grid[1:]))


def _without_pdl(mod, plan):
    class NoPdlArch(mod.GpuArch):
        @property
        def programmatic_launch(self):
            return False

    if hasattr(plan, "decode"):
        return dataclasses.replace(
            plan, decode=_without_pdl(mod, plan.decode), prefill=_without_pdl(mod, plan.prefill)
        )
    arch = plan.arch
    return dataclasses.replace(plan, arch=NoPdlArch(arch.vendor, arch.name, arch.num_compute_units))


TIMINGS = ("graphs", "eager", "steady", "kernel")


def steady_us(run) -> float:
    """Eager calls back to back with no memset between them, per call."""
    import torch

    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    calls = 5
    while True:
        events[0].record()
        for _ in range(calls):
            run()
        events[1].record()
        torch.cuda.synchronize()
        elapsed_ms = events[0].elapsed_time(events[1])
        if elapsed_ms >= 50 or calls >= 5000:
            return elapsed_ms * 1e3 / calls
        calls *= 4


def kernel_us(run, calls: int = 10) -> tuple[float, float]:
    """Per call, as the profiler sees it in ``do_bench``'s eager loop (a 256 MB
    memset before each call): the call's kernel durations summed, and its span,
    from the memset's end to the call's last kernel end."""
    import torch

    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    for _ in range(3):
        flush.zero_()
        run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            flush.zero_()
            run()
        torch.cuda.synchronize()
    device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    per_call = {}  # memset end -> the following kernels' (start, end)
    for event in sorted(device, key=lambda e: e.time_range.start):
        if any(word in event.name for word in ("Memset", "memset", "Fill", "elementwise")):
            flush_end = event.time_range.end
            per_call[flush_end] = []
        elif per_call:
            per_call[flush_end].append((event.time_range.start, event.time_range.end))
    if len(per_call) != calls or not all(per_call.values()):
        raise RuntimeError(f"the profiler saw {len(per_call)} memsets for {calls} calls")
    busy = sum(end - start for kernels in per_call.values() for start, end in kernels)
    span = sum(
        max(end for _, end in kernels) - flush_end for flush_end, kernels in per_call.items()
    )
    return busy / calls, span / calls


def run_cell(
    bench, name, cell, variants, records, features=None, timings=("graphs",), upstream=False
):
    import torch

    model = MODELS[cell[0]]
    q_lens, seq_lens = cell_lengths(*cell[1:])
    q, k_cache, v_cache, qsl, lens, block_table = bench.ragged_inputs(
        model, q_lens, seq_lens, torch.bfloat16
    )
    reference = base_us = None
    for variant, mod, override in variants + ([("upstream", None, {})] if upstream else []):
        override = dict(override)
        early_merge = override.pop("early_merge", None)
        out = torch.empty_like(q)
        if mod is None:
            run = bench.run_upstream(
                model, q, k_cache, v_cache, out, qsl, lens, block_table, max(q_lens), max(seq_lens)
            )
            parts = []
        else:
            plan = make_plan(mod, model, q_lens, override, features)
            workspace = mod.SplitKVWorkspace.allocate(plan, q.device)
            parts = [plan.decode, plan.prefill] if hasattr(plan, "decode") else [plan]

            def run(mod=mod, plan=plan, workspace=workspace, out=out):
                mod.paged_attention(
                    q,
                    k_cache,
                    v_cache,
                    out,
                    query_start_loc=qsl,
                    seq_lens=lens,
                    block_table=block_table,
                    max_query_len=max(q_lens),
                    max_seq_len=max(seq_lens),
                    scale=model[2] ** -0.5,
                    plan=plan,
                    workspace=workspace,
                    **(features or {}),
                )

        times = {}
        # the plan reads these thresholds at its first launch (releases_merge_early):
        # set for the variant's whole measurement, outside the timed calls
        with contextlib.ExitStack() as patches:
            if early_merge is not None:
                patches.enter_context(
                    mock.patch.multiple(
                        mod.plan,
                        EARLY_MERGE_PROGRAMS_PER_COMPUTE_UNIT=early_merge,
                        EARLY_MERGE_MAX_ROWS=1 << 30,
                    )
                )
            todo = timings
            try:
                run()
                torch.cuda.synchronize()
                reference = out.clone() if reference is None else reference
                err = (out.float() - reference.float()).abs().max().item()
            except Exception as error:  # a variant may not fit (shared memory): record why
                err, todo = str(error).splitlines()[-1][:200], ()
            for timing in todo:
                try:
                    if timing == "kernel":
                        times["kernel"], times["span"] = kernel_us(run)
                    elif timing == "steady":
                        times["steady"] = steady_us(run)
                    else:
                        times[timing] = bench.time_us(run, graphs=timing == "graphs")
                except Exception as error:  # e.g. no profiler on this machine: the others stand
                    print(f"{name} {variant}: {timing} failed: {error}", flush=True)
        us = times.get(timings[0], float("nan"))
        base_us = us if base_us is None else base_us
        records.append(
            dict(
                cell=name,
                variant=variant,
                us=us,
                timings=times,
                err=err,
                plan=[
                    dict(
                        kernel=part.kernel,
                        tile=part.kv_tile_size,
                        warps=part.num_warps,
                        stages=part.num_stages,
                        splits=part.num_kv_splits,
                        block_m=part.block_m,
                    )
                    for part in parts
                ],
            )
        )
        ratio = base_us / us if base_us else float("nan")
        others = "  ".join(f"{key} {value:.1f}" for key, value in times.items())
        print(
            f"{name:28s} {variant:16s} {us:10.1f} us  x base {ratio:5.2f}  err={err}  {others}",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--extract",
        nargs=2,
        metavar=("COMMIT", "DIR"),
        help="write COMMIT's kernel package to DIR and exit",
    )
    parser.add_argument("--base", type=Path, help="a kernel package made by --extract")
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=["decode"])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=JSON plan overrides on the working tree's kernels",
    )
    parser.add_argument(
        "--features",
        type=json.loads,
        default={},
        help="JSON keyword arguments for every call, e.g. "
        '\'{"sliding_window": 4096, "logits_soft_cap": 50.0}\'',
    )
    parser.add_argument(
        "--timing",
        nargs="+",
        choices=TIMINGS,
        default=["graphs"],
        help="how to time each variant (the first gives 'x base')",
    )
    parser.add_argument(
        "--upstream", action="store_true", help="also time upstream vLLM's own kernel"
    )
    parser.add_argument("--out", type=Path, default=Path("ab.json"))
    args = parser.parse_args()
    if args.extract:
        extract(args.extract[0], Path(args.extract[1]))
        return
    if args.base is None:
        parser.error("--base is required (make one with --extract)")

    import torch

    from devtools import bench_attention as bench

    base = load_package("base_triton_attention", args.base)
    new = importlib.import_module(PACKAGE.replace("/", "."))
    variants = [("base", base, {}), ("new", new, {})]
    for spec in args.variant:
        name, _, override = spec.partition("=")
        variants.append((name, new, json.loads(override)))
    records = []
    for preset in args.cells:
        for cell in CELLS[preset]:
            run_cell(
                bench,
                f"{preset} {cell[0]} b{cell[1]} q{cell[2]} c{cell[3]}",
                cell,
                variants,
                records,
                args.features,
                args.timing,
                args.upstream,
            )
            # after every cell: a run cut short by the device's time limit keeps its data
            args.out.write_text(
                json.dumps(
                    dict(
                        card=torch.cuda.get_device_name(),
                        features=args.features,
                        timing=args.timing,
                        records=records,
                    ),
                    indent=1,
                )
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
