# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Host time of one attention call: what eager mode and piecewise CUDA graphs pay
per layer, ours against the pinned vLLM's Triton launcher on the same batches.

On a GPU machine the calls launch for real: the GPU is first kept busy (a sleep
kernel), so the loop times the host alone, never the kernels. On a CPU-only
box each launch stops where Triton would call the driver: our checks and
launch building plus Triton's argument binding and cache lookup (for sm_90
with 132 SMs), the part of a launch that grows with a kernel's arguments.

With ``--steps`` (a GPU only) it also times whole eager steps: 32 layers,
each writing the new tokens' keys and values into its cache and attending,
the plan and launches of the batch made once per step as vLLM's builder
does; wall time, the GPU's work included.

    python -m devtools.fetch_upstream_kernel    # for --upstream
    python -m devtools.host_overhead --upstream --steps --out host.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path
from typing import NamedTuple

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

from devtools.bench_attention import (
    MODELS,
    backend_plan,
    mixed_batch_lengths,
    ragged_inputs,
    run_upstream,
    upstream_module,
)
from vllm.v1.attention.ops.triton_attention import (
    BatchLaunches,
    GpuArch,
    SplitKVWorkspace,
    write_kv_cache,
)

CPU_ARCH = GpuArch("cuda", "sm_90", 132)  # what a CPU-only run plans for (H100/H200)


def stop_launches_before_the_driver() -> None:
    """Make every ``kernel[grid](...)`` do Triton's host work up to the driver
    call (binding and specialising the arguments, the compiled-kernel lookup)
    and return: what a launch costs on the host, less the driver's part."""
    backend = make_backend(GPUTarget("cuda", 90, 32))
    caches = {}

    def run(self, *args, grid, warmup, **kwargs):
        kwargs["debug"] = kwargs.get("debug", self.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        if self not in caches:
            binder = create_function_from_signature(self.signature, self.params, backend)
            caches[self] = ({}, {}, binder)
        kernels, keys, binder = caches[self]
        bound_args, specialization, options = binder(*args, **kwargs)
        kernels.get(compute_cache_key(keys, specialization, options))
        if callable(grid):
            grid(bound_args)

    JITFunction.run = run


def batch_inputs(model, q_lens, seq_lens, device, block_size=16, used_blocks=4):
    """A paged batch whose block table has the longest sequence's real width (the
    host path never reads the cache, so few blocks are allocated)."""
    hq, hkv, d = model
    num_seqs = len(q_lens)
    k_cache = torch.randn(
        num_seqs * used_blocks, block_size, hkv, d, device=device, dtype=torch.bfloat16
    )
    v_cache = torch.randn_like(k_cache)
    width = max(seq_lens) // block_size
    blocks = torch.arange(num_seqs * used_blocks, device=device, dtype=torch.int32)
    block_table = blocks.view(num_seqs, used_blocks).repeat(1, width // used_blocks)
    q = torch.randn(sum(q_lens), hq, d, device=device, dtype=torch.bfloat16)
    query_start_loc = torch.tensor(
        [0, *itertools.accumulate(q_lens)], device=device, dtype=torch.int32
    )
    seq_lens = torch.tensor(seq_lens, device=device, dtype=torch.int32)
    return q, k_cache, v_cache, query_start_loc, seq_lens, block_table


def batch_launches(model, inputs, q_lens, arch, workspace=None):
    """What vLLM's metadata builder makes per batch: the plan, bound with the
    batch's tensors (and the builder's persistent workspace)."""
    _, _, _, query_start_loc, seq_lens, block_table = inputs
    plan = backend_plan(model, q_lens, arch=arch)
    return BatchLaunches(
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
        block_table=block_table,
        max_query_len=max(q_lens),
        plan=plan,
        workspace=workspace or SplitKVWorkspace.allocate(plan, query_start_loc.device),
    )


def ours(model, inputs, q_lens, arch):
    """The call vLLM's backend makes for every layer after a batch's first, and
    the kernels it launches."""
    q, k_cache, v_cache = inputs[:3]
    launches = batch_launches(model, inputs, q_lens, arch)
    out = torch.empty_like(q)

    def call():
        launches(q, k_cache, v_cache, out, scale=model[2] ** -0.5)

    names = launched(call)  # the batch's first layer: checks, builds and compiles
    return call, names


def upstream(model, inputs, q_lens, max_seq_len):
    """The call upstream's backend makes (see ``bench_attention.run_upstream``)."""
    q = inputs[0]
    return run_upstream(
        model, q, *inputs[1:3], torch.empty_like(q), *inputs[3:], max(q_lens), max_seq_len
    )


def launched(call) -> str:
    """The kernels one call launches, in order (watched, not inferred)."""
    names = []
    run = JITFunction.run

    def watched(self, *args, **kwargs):
        names.append(self.__name__.removesuffix("_kernel"))
        return run(self, *args, **kwargs)

    JITFunction.run = watched
    try:
        call()
    finally:
        JITFunction.run = run
    return " + ".join(names)


def cells(context: int, batches: list[int], q_lens: list[int]):
    """(kind, query lengths, sequence lengths): uniform decode and spec-decode
    batches, and bench_attention's mixed batch (decodes, then a prefix-cached chunk)."""
    for q_len in q_lens:
        for batch_size in batches:
            kind = "decode" if q_len == 1 else "specdecode"
            yield kind, [q_len] * batch_size, [context] * batch_size
    yield "mixed", *mixed_batch_lengths()


def host_us(call, on_gpu: bool, calls: int, repeats: int = 7) -> float:
    """The least over ``repeats`` of the mean host time of ``calls`` back-to-back
    calls: other work on the machine only ever adds time."""
    for _ in range(20):
        call()
    times = []
    for _ in range(repeats):
        if on_gpu:  # keep the GPU busy for longer than the loop: the queue never drains
            torch.cuda.synchronize()
            torch.cuda._sleep(200_000_000)
        start = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - start) / calls * 1e6)
        if on_gpu:
            torch.cuda.synchronize()
    return min(times)


# Whole steps: STEP_LAYERS eager layers, each writing the batch's new keys and
# values into its own cache and attending; decodes at 1k context, and eight of
# them beside a 128-token chunk.
STEP_LAYERS = 32
STEP_CELLS = {
    "decode": ([1], [1024]),
    "decode x8": ([1] * 8, [1024] * 8),
    "mixed 8 + 128": ([1] * 8 + [128], [1024] * 8 + [1024]),
}


class StepLayer(NamedTuple):
    q: torch.Tensor
    key: torch.Tensor  # the new tokens' keys and values
    value: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    out: torch.Tensor


def step_layers(model, inputs, num_layers: int) -> list[StepLayer]:
    """Each layer its own cache (the batch's block table), queries, new keys and values."""
    q, k_cache, v_cache = inputs[:3]
    num_tokens, hkv, d = q.shape[0], model[1], model[2]
    layers = []
    for _ in range(num_layers):
        key = torch.randn(num_tokens, hkv, d, device=q.device, dtype=q.dtype)
        layers.append(
            StepLayer(
                torch.randn_like(q),
                key,
                torch.randn_like(key),
                torch.randn_like(k_cache),
                torch.randn_like(v_cache),
                torch.empty_like(q),
            )
        )
    return layers


def new_token_slots(q_lens, seq_lens, block_table, block_size=16) -> torch.Tensor:
    """Cache slot of every query token: the last q_len positions of each sequence."""
    table = block_table.cpu()
    slots = [
        int(table[b, pos // block_size]) * block_size + pos % block_size
        for b, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens, strict=True))
        for pos in range(seq_len - q_len, seq_len)
    ]
    return torch.tensor(slots, device=block_table.device, dtype=torch.int64)


def step_ours(model, inputs, q_lens, layers, slots, arch):
    """One step as our backend runs it eagerly: the builder's plan and launches
    for the batch (its workspace persists), then every layer's cache write and
    attention."""
    workspace = SplitKVWorkspace.allocate(backend_plan(model, q_lens, arch=arch), slots.device)

    def step():
        launches = batch_launches(model, inputs, q_lens, arch, workspace)
        for layer in layers:
            write_kv_cache(layer.key, layer.value, layer.k_cache, layer.v_cache, slots)
            launches(layer.q, layer.k_cache, layer.v_cache, layer.out, scale=model[2] ** -0.5)

    return step


def step_upstream(model, inputs, q_lens, seq_lens, layers, slots):
    """One step through upstream's Triton cache write and attention launcher,
    each layer with its metadata's scratch."""
    write = upstream_module("triton_reshape_and_cache_flash").triton_reshape_and_cache_flash
    qsl, lens, block_table = inputs[3:]
    one = torch.ones((), device=slots.device)
    calls = [
        run_upstream(
            model,
            layer.q,
            layer.k_cache,
            layer.v_cache,
            layer.out,
            qsl,
            lens,
            block_table,
            max(q_lens),
            max(seq_lens),
        )
        for layer in layers
    ]

    def step():
        for layer, attend in zip(layers, calls, strict=True):
            write(layer.key, layer.value, layer.k_cache, layer.v_cache, slots, "auto", one, one)
            attend()

    return step


def step_ms(step, steps: int = 20, repeats: int = 5) -> float:
    """Wall time per step, the GPU's work included: the least mean over ``repeats``."""
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return min(times)


def time_steps(models: list[str], upstream: bool) -> list[dict]:
    """Whole-step wall times (GPU only), ours and upstream's on the same tensors."""
    arch = GpuArch.of_device("cuda")
    print(f"# {STEP_LAYERS}-layer eager steps, ms: {torch.cuda.get_device_name()}")
    print("| model | cell | ours ms | upstream ms | ours / upstream |")
    print("|---|---|---|---|---|")
    records = []
    for name in models:
        model = MODELS[name]
        for cell, (q_lens, seq_lens) in STEP_CELLS.items():
            inputs = ragged_inputs(model, q_lens, seq_lens, torch.bfloat16)
            layers = step_layers(model, inputs, STEP_LAYERS)
            slots = new_token_slots(q_lens, seq_lens, inputs[5])
            record = dict(
                machine=torch.cuda.get_device_name(),
                torch=torch.__version__,
                triton=triton.__version__,
                model=name,
                kind="step",
                cell=cell,
                layers=STEP_LAYERS,
                batch=len(q_lens),
                q_len=max(q_lens),
                context=max(seq_lens),
                step_ms=step_ms(step_ours(model, inputs, q_lens, layers, slots, arch)),
            )
            if upstream:
                step = step_upstream(model, inputs, q_lens, seq_lens, layers, slots)
                record["upstream_step_ms"] = step_ms(step)
            records.append(record)
            theirs = record.get("upstream_step_ms", float("nan"))
            print(
                f"| {name} | {cell} | {record['step_ms']:.3f} | {theirs:.3f} | "
                f"{record['step_ms'] / theirs:.2f} |",
                flush=True,
            )
            del inputs, layers
            torch.cuda.empty_cache()
    return records


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} x {len(names)}" if names else platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["llama3-8b", "qwen-7to1"], choices=list(MODELS)
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--q-lens", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--context", type=int, default=4096, help="of the decode batches")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--upstream", action="store_true", help="also time the pinned vLLM's")
    parser.add_argument(
        "--steps", action="store_true", help=f"also time {STEP_LAYERS}-layer steps (GPU only)"
    )
    parser.add_argument("--out", type=Path, help="JSON records")
    args = parser.parse_args()

    on_gpu = torch.cuda.is_available()
    if args.steps and not on_gpu:
        parser.error("--steps times whole steps on a GPU")
    if on_gpu:
        arch = GpuArch.of_device("cuda")
        machine = torch.cuda.get_device_name()
        launch = "real launches, GPU kept busy"
    else:
        stop_launches_before_the_driver()
        arch = CPU_ARCH
        machine = f"{cpu_model()}, no GPU"
        launch = f"stopped before the driver call, planned for {arch.name}"
    device = "cuda" if on_gpu else "cpu"
    if args.upstream and not on_gpu:  # its launcher asks the GPU for Blackwell: answer as sm_90
        upstream_module().current_platform.is_device_capability_family = lambda family: False
    print(
        f"# host us per call: {machine}; torch {torch.__version__}, triton "
        f"{triton.__version__}; launches {launch}"
    )
    print(
        "| model | kind | batch | ours us | launches | upstream us | launches | ours / upstream |"
    )
    print("|---|---|---|---|---|---|---|---|")
    records = []
    for name in args.models:
        model = MODELS[name]
        for kind, q_lens, seq_lens in cells(args.context, args.batches, args.q_lens):
            inputs = batch_inputs(model, q_lens, seq_lens, device)
            call, names = ours(model, inputs, q_lens, arch)
            record = dict(
                machine=machine,
                launch=launch,
                torch=torch.__version__,
                triton=triton.__version__,
                model=name,
                kind=kind,
                batch=len(q_lens),
                q_len=max(q_lens),
                context=max(seq_lens),
                launches=names,
                us=host_us(call, on_gpu, args.calls),
            )
            if args.upstream:
                call = upstream(model, inputs, q_lens, max(seq_lens))
                record.update(
                    upstream_us=host_us(call, on_gpu, args.calls), upstream_launches=launched(call)
                )
            records.append(record)
            theirs = record.get("upstream_us", float("nan"))
            print(
                f"| {name} | {kind} | {len(q_lens)} | {record['us']:.1f} | "
                f"{record['launches']} | {theirs:.1f} | "
                f"{record.get('upstream_launches', '')} | {record['us'] / theirs:.2f} |",
                flush=True,
            )
    if args.steps:
        records += time_steps(args.models, args.upstream)
    if args.out:
        args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
