# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Offline tuning: sweep launch configurations on this GPU, write the plan's table.

For each shape group the plan looks up (``plan.split_kv_table_key`` and
``plan.long_query_table_key``) it times every candidate (tile, warps, stages)
with CUDA graphs on representative cells, checks each candidate's output
against the current plan's, drops any that spill registers, and writes the
fastest per group (geometric mean over the group's cells) to
``vllm/v1/attention/ops/triton_attention/tuned/<arch>.json``. The serving path
only reads that file: nothing autotunes at run time.

Every timing is appended to ``--results`` (JSON lines) as it is made; a rerun
with the same file skips what is done, so a sweep cut short by a time limit
resumes where it stopped. Kernels compile in parallel worker processes first
(into Triton's cache), then time one by one.

    python -m devtools.tune_attention --results tune.jsonl --budget-s 300
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from devtools.bench_attention import ragged_inputs
from vllm.v1.attention.ops.triton_attention import (
    GpuArch,
    SplitKVWorkspace,
    paged_attention,
    plan_attention,
)
from vllm.v1.attention.ops.triton_attention.checks import AttentionCall
from vllm.v1.attention.ops.triton_attention.launch import kernel_launches
from vllm.v1.attention.ops.triton_attention.plan import (
    LONG_QUERY,
    MIN_DOT_SIZE,
    SPLIT_KV_DECODE,
    TUNED_DIR,
    long_query_table_key,
    next_power_of_2,
    split_kv_table_key,
)

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Cell:
    """One timed shape: a model's heads, a batch, a query length and a context."""

    num_q_heads: int
    num_kv_heads: int
    head_size: int
    batch: int
    q_len: int
    context: int


def _cells() -> dict[str, list[Cell]]:
    """Table key -> the cells whose mean time decides it."""
    groups: dict[str, list[Cell]] = {}
    arch = GpuArch.of_device("cuda")
    decode_shapes = [(32, 8, 64, 1), (32, 8, 128, 1), (28, 4, 128, 4), (16, 8, 256, 1)]
    # Gemma 4's global layers: head 512, GQA 8, decode and 4-token speculative decode
    decode_shapes += [(32, 4, 512, 1), (32, 4, 512, 4)]
    # Finely split (batch <= 16) and coarsely split cells, short and long contexts:
    # a configuration that wins on few cells can lose badly elsewhere (e.g. 4
    # stages fill shared memory and cut occupancy on long contexts).
    decode_cells = [
        (1, 16384),
        (4, 16384),
        (8, 4096),
        (16, 16384),
        (32, 4096),
        (64, 4096),
        (128, 1024),
    ]
    for (hq, hkv, d, q_len), (batch, context) in itertools.product(decode_shapes, decode_cells):
        plan = _plan(Cell(hq, hkv, d, batch, q_len, context), arch)
        key = split_kv_table_key(plan.head_pad, plan.block_m, plan.num_kv_splits)
        groups.setdefault(key, []).append(Cell(hq, hkv, d, batch, q_len, context))
    for hq, hkv, d in ((32, 8, 64), (32, 8, 128), (16, 8, 256), (32, 4, 512)):
        key = long_query_table_key(max(MIN_DOT_SIZE, next_power_of_2(d)))
        groups[key] = [Cell(hq, hkv, d, 1, 8192, 8192), Cell(hq, hkv, d, 4, 2048, 2048)]
    return groups


def _head_pad(cells: list[Cell]) -> int:
    """The padded head size of a table group (every cell of a group shares it)."""
    return max(MIN_DOT_SIZE, next_power_of_2(cells[0].head_size))


def _candidates(key: str, cells: list[Cell]) -> list[tuple[int, ...]]:
    """(block_m, tile, warps, stages) for long-query groups, (tile, warps, stages)
    for split-KV ones; heads above 128 leave out the tiles that cannot fit, and head
    512 tries the smaller Q tiles and single-stage pipelines it needs."""
    wide = _head_pad(cells) > 128
    if _head_pad(cells) > 256:
        if key == long_query_table_key(_head_pad(cells)):
            return list(itertools.product((16, 32, 64), (16, 32, 64), (4, 8), (1, 2)))
        return list(itertools.product((16, 32, 64), (4, 8), (1, 2, 3)))
    if key == long_query_table_key(_head_pad(cells)):
        tiles = (32, 64) if wide else (32, 64, 128)
        return list(itertools.product((64, 128), tiles, (4, 8), (2, 3)))
    tiles = (16, 32, 64) if wide else (32, 64, 128)
    return list(itertools.product(tiles, (4, 8), (2, 3)))


def _plan(cell: Cell, arch: GpuArch, config: tuple[int, ...] | None = None):
    """The plan of ``cell``; with ``config``, the portable kernel's with that
    configuration (the tables tune the portable kernels)."""
    plan = plan_attention(
        num_tokens=cell.batch * cell.q_len,
        num_seqs=cell.batch,
        max_query_len=cell.q_len,
        num_q_heads=cell.num_q_heads,
        num_kv_heads=cell.num_kv_heads,
        head_size=cell.head_size,
        arch=arch,
    )
    if config is None:
        return plan
    if not plan.is_split_kv:
        block_m, tile, warps, stages = config
        return dataclasses.replace(
            plan,
            kernel=LONG_QUERY,
            block_m=block_m,
            kv_tile_size=tile,
            num_warps=warps,
            num_stages=stages,
            kv_buffers=0,
            fma_exp2_every=0,
        )
    tile, warps, stages = config
    return dataclasses.replace(
        plan,
        kernel=SPLIT_KV_DECODE,
        kv_tile_size=tile,
        num_warps=warps,
        num_stages=stages,
        kv_buffers=0,
    )


def _inputs(cell: Cell, distinct_blocks: int | None = None):
    """The benchmark's paged inputs for ``cell`` (bf16, shuffled 16-token blocks)."""
    return ragged_inputs(
        (cell.num_q_heads, cell.num_kv_heads, cell.head_size),
        [cell.q_len] * cell.batch,
        [cell.context] * cell.batch,
        torch.bfloat16,
        distinct_blocks=distinct_blocks,
    )


def _launches(cell: Cell, plan, inputs):
    q, k_cache, v_cache, qsl, seq_lens, block_table = inputs
    workspace = SplitKVWorkspace.allocate(plan, "cuda")
    call = AttentionCall(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        out=torch.empty_like(q),
        query_start_loc=qsl,
        seq_lens=seq_lens,
        block_table=block_table,
        scale=cell.head_size**-0.5,
    )
    return kernel_launches(call, plan, workspace)


def compile_job(job: tuple[Cell, tuple[int, ...]]) -> int | None:
    """Compile one candidate into Triton's cache (worker process); its spill bytes."""
    cell, config = job
    arch = GpuArch.of_device("cuda")
    plan = _plan(cell, arch, config)
    spills = 0
    try:
        for launch in _launches(cell, plan, _inputs(cell, distinct_blocks=1)):
            kernel = launch.kernel.warmup(grid=launch.grid, **launch.args, **launch.options)
            kernel._init_handles()
            spills += getattr(kernel, "n_spills", 0) or 0
    except Exception:  # e.g. out of shared memory: the timing pass records why
        return None
    return spills


def time_candidate(cell: Cell, config, inputs, expected) -> dict:
    import triton.testing

    arch = GpuArch.of_device("cuda")
    plan = _plan(cell, arch, config)
    q, k_cache, v_cache, qsl, seq_lens, block_table = inputs
    workspace = SplitKVWorkspace.allocate(plan, "cuda")
    out = torch.empty_like(q)

    def run():
        paged_attention(
            q,
            k_cache,
            v_cache,
            out,
            query_start_loc=qsl,
            seq_lens=seq_lens,
            block_table=block_table,
            max_query_len=cell.q_len,
            max_seq_len=cell.context,
            scale=cell.head_size**-0.5,
            plan=plan,
            workspace=workspace,
            arch=arch,
        )

    try:
        run()
        torch.cuda.synchronize()
    except Exception as error:
        return dict(error=str(error).splitlines()[0][:200])
    if expected is not None and not torch.allclose(out.float(), expected, atol=2e-2, rtol=2e-2):
        return dict(error="output differs from the current plan's")
    us = triton.testing.do_bench_cudagraph(run, rep=20, return_mode="median") * 1e3
    return dict(us=us, output=out.float())


class Progress:
    def __init__(self, total: int, what: str):
        self.total, self.done, self.what, self.start = total, 0, what, time.time()
        self.shown = 0.0

    def step(self, n: int = 1):
        self.done += n
        if self.done < self.total and time.time() - self.shown < 5:
            return  # a line every few seconds is enough in a captured log
        self.shown = time.time()
        elapsed = time.time() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0
        bar = "#" * (30 * self.done // max(self.total, 1))
        print(
            f"\r{self.what} [{bar:<30}] {self.done}/{self.total} eta {eta:4.0f}s",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if self.done == self.total:
            print(file=sys.stderr)


def _record_id(key: str, cell: Cell, config) -> str:
    return json.dumps([key, dataclasses.astuple(cell), list(config)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="JSON lines, appended and resumed")
    parser.add_argument("--table", help=f"default: {TUNED_DIR}/<arch>.json")
    parser.add_argument("--only", nargs="*", default=[], help="table keys starting with these")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=float("inf"),
        help="stop timing after this long (rerun to resume)",
    )
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    args = parser.parse_args()
    start = time.time()
    arch = GpuArch.of_device("cuda")
    groups = {k: v for k, v in _cells().items() if not args.only or k.startswith(tuple(args.only))}
    results_path = Path(args.results)
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            record = json.loads(line)
            done[record["id"]] = record
    jobs = [
        (key, cell, config)
        for key, cells in groups.items()
        for cell in cells
        for config in _candidates(key, cells)
    ]
    todo = [job for job in jobs if _record_id(*job) not in done]
    print(
        f"{len(jobs)} timings in {len(groups)} table entries, {len(done)} already done",
        file=sys.stderr,
    )

    spills = {}
    if todo:
        progress = Progress(len(todo), "compiling")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            for (key, cell, config), spill in zip(
                todo, pool.map(compile_job, [(c, k) for _, c, k in todo]), strict=True
            ):
                spills[_record_id(key, cell, config)] = spill
                progress.step()

    progress = Progress(len(todo), "timing")
    with results_path.open("a") as log:
        for cell, jobs_of_cell in itertools.groupby(todo, key=lambda job: job[1]):
            jobs_of_cell = list(jobs_of_cell)
            if time.time() - start > args.budget_s:
                print(
                    f"\nbudget reached: rerun with --results {results_path} to resume",
                    file=sys.stderr,
                )
                break
            inputs = _inputs(cell)
            reference = time_candidate(cell, None, inputs, None)
            expected = reference.get("output")
            for key, _, config in jobs_of_cell:
                record_id = _record_id(key, cell, config)
                result = time_candidate(cell, config, inputs, expected)
                result.pop("output", None)
                record = dict(
                    id=record_id,
                    key=key,
                    cell=dataclasses.asdict(cell),
                    config=list(config),
                    spills=spills.get(record_id),
                    current_us=reference.get("us"),
                    **result,
                )
                log.write(json.dumps(record) + "\n")
                log.flush()
                done[record_id] = record
                progress.step()
            del inputs, expected
            torch.cuda.empty_cache()

    write_table(args, arch, groups, done)


def write_table(args, arch: GpuArch, groups, done: dict) -> None:
    """Per table key: the candidate with the best geometric-mean time over every
    cell of the group, among those timed on all cells, correct, and (head sizes
    up to 128) free of register spills."""
    table_path = Path(args.table or TUNED_DIR / f"{arch.name}.json")
    table = json.loads(table_path.read_text()) if table_path.exists() else {"configs": {}}
    summary = {}
    # Each entry names the command that measured it: a table is often built by
    # several runs (e.g. --only long_query, then --only split_kv_decode).
    command = "python -m devtools.tune_attention " + shlex.join(sys.argv[1:])
    for key, cells in groups.items():
        scores = {}
        for config in _candidates(key, cells):
            records = [done.get(_record_id(key, cell, config)) for cell in cells]
            if any(r is None or "us" not in r for r in records):
                continue
            # Spills fail the compile-matrix gate for head sizes up to 128; for
            # larger heads a few spilled bytes can still be the fastest choice.
            if any(r.get("spills") for r in records) and _head_pad(cells) <= 128:
                continue
            scores[tuple(config)] = math.exp(sum(math.log(r["us"]) for r in records) / len(cells))
        if not scores:
            continue
        best = min(scores, key=scores.get)
        rule = math.exp(
            sum(math.log(done[_record_id(key, c, best)]["current_us"]) for c in cells) / len(cells)
        )
        table["configs"][key] = list(best)
        summary[key] = dict(
            config=list(best),
            mean_us=round(scores[best], 2),
            current_us=round(rule, 2),
            speedup=round(rule / scores[best], 3),
            command=command,
            date=time.strftime("%Y-%m-%d"),
            card=torch.cuda.get_device_name(),
            triton=__import__("triton").__version__,
        )
        print(f"{key}: {best} {scores[best]:.1f} us (plan before tuning: {rule:.1f} us)")
    table.update(
        arch=arch.name,
        card=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=__import__("triton").__version__,
        command=command,  # the latest run; each "measured" entry names its own
        date=time.strftime("%Y-%m-%d"),
    )
    table.setdefault("measured", {}).update(summary)
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {table_path}")


if __name__ == "__main__":
    main()
