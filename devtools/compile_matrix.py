# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Compile every kernel specialisation the plan chooses, for NVIDIA and AMD targets,
on a machine without a GPU: the portability proof.

Each variant goes through the runtime's own code: ``plan_attention`` with the
target's ``GpuArch`` and the variant's features and tensor layout, then
``launch.kernel_launches`` (the function ``paged_attention`` launches from),
so the compiled constexprs, warps and stages are the ones that would run.
Per target and kernel it records: compiled, registers, spills, shared memory
/ LDS, warps, stages and the matrix-instruction family.

    python -m devtools.compile_matrix --out benchmarks/results/portability/compile_matrix.json
    python -m devtools.compile_matrix --subset hot --targets sm_90 gfx942   # quick

``--ptx DIR`` also writes each NVIDIA kernel's PTX there, without its debug
lines: two runs (two commits, or two Triton versions) can then be compared with
``diff -r``, e.g. to show that a host-side refactor leaves the kernels as they were.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# name: (backend, arch, warp size, SMs/CUs for the plan, shared-memory/LDS bytes per block)
TARGETS = {
    "sm_80": ("cuda", 80, 32, 108, 166912),
    "sm_90": ("cuda", 90, 32, 132, 232448),
    "sm_100": ("cuda", 100, 32, 148, 232448),
    "gfx90a": ("hip", "gfx90a", 64, 104, 65536),
    "gfx942": ("hip", "gfx942", 64, 304, 65536),
    "gfx950": ("hip", "gfx950", 64, 256, 163840),
    "gfx1100": ("hip", "gfx1100", 32, 48, 65536),  # RDNA3 (RX 7900 XTX: 48 WGPs)
    "gfx1201": ("hip", "gfx1201", 32, 32, 65536),  # RDNA4 (RX 9070 XT: 32 WGPs)
}
# Spills here fail the gate (the decode and prefill paths of common head sizes).
HOT_TARGETS = ("sm_80", "sm_90", "gfx942", "gfx950")
HOT_HEAD_SIZES = (64, 128)
PHASES = {"decode": 1, "specdecode": 4, "prefill": 512, "decode_batch": 1}  # query lengths
# Sequences per batch: 2, or enough to give each sequence one split (the plan
# tiles such launches differently; on sm_90 they take pipelined_decode.py).
NUM_SEQS = {"decode_batch": 256}
# Each switch that changes the kernels' constexprs, alone, and all together.
FEATURES = (
    "non_causal",
    "per_seq_causal",
    "mm_prefix",
    "sliding_window",
    "chunked_window",
    "softcap",
    "alibi",
    "alibi_sqrt",
    "sinks",
    "batch_invariant",  # a plan mode, not a call argument
    "rswa",  # alone: it combines with none of per-sequence causal, ranges, chunks
    "all",
    "fp8_output",  # alone (only the epilogue's store changes): e4m3 where the target has it
    "lse",  # alone: each row's log-sum-exp stored beside its output
    # decode context parallelism's two attentions (the backend's DcpBatch): the
    # context shard, every key visible, and the new tokens' K/V straight from
    # the layer inputs as one-token blocks; both store log-sum-exps
    "dcp_context",
    "dcp_new_tokens",
)
# The cache write: alone, and with the rotary embedding of vLLM's RoPE +
# KV-cache fusion (queries and keys turned in place first).
CACHE_WRITE = "cache_write"
CACHE_WRITE_FEATURES = ("plain", "rope")
KV_DTYPES = (
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    # vLLM's *_per_token_head pages: values, then a float32 scale per token and head
    "int8_per_token_head",
    "float8_e4m3fn_per_token_head",
    "int4_per_token_head",  # two codes per byte, rotated vectors
)


@dataclasses.dataclass(frozen=True)
class Variant:
    phase: str
    head_size: int
    queries_per_kv: int
    dtype: str = "bfloat16"
    kv_dtype: str | None = None
    features: str = "plain"  # one of FEATURES: a single switch, or "all" of them

    @property
    def hot(self) -> bool:
        # fp32 is not a serving path: exact fp32 products take no MMA unit on
        # NVIDIA, and their spills are reported, not gated.
        return (
            self.phase != "specdecode"
            and self.head_size in HOT_HEAD_SIZES
            and self.features in ("plain", "rope")
            and self.kv_dtype is None
            and self.dtype != "float32"
        )


def variants(subset: str) -> list[Variant]:
    if subset == "hot":
        return [
            Variant(phase, head, 4)
            for phase in ("decode", "decode_batch", "prefill")
            for head in HOT_HEAD_SIZES
        ] + [Variant(CACHE_WRITE, 128, 4, features="rope")]
    out = [
        Variant(phase, head, group)
        for phase, head, group in itertools.product(PHASES, (64, 80, 128, 256, 512), (1, 4, 8))
    ]
    out += [Variant(phase, head, 4, dtype="float16") for phase in PHASES for head in (64, 128)]
    # 4-byte queries: the plan halves the tuned 2-byte tiles, shared memory must still fit
    out += [
        Variant(phase, head, 4, dtype="float32") for phase in PHASES for head in (64, 128, 256, 512)
    ]
    out += [
        Variant(phase, head, 4, features=f)
        for phase in PHASES
        for head in (64, 128, 256, 512)
        for f in FEATURES
    ]
    out += [
        Variant(phase, head, 4, kv_dtype=kv)
        for phase in PHASES
        for head in (64, 128, 512)
        for kv in KV_DTYPES
    ]
    # fp8 queries (vLLM's for an fp8 cache): q.k in fp8
    out += [
        Variant(phase, head, 4, dtype=fp8, kv_dtype=fp8)
        for phase in PHASES
        for head in (64, 128, 512)
        for fp8 in ("float8_e4m3fn", "float8_e4m3fnuz")
    ]
    out += [
        Variant(CACHE_WRITE, head, 4, kv_dtype=kv, features=f)
        for head in (64, 80, 128, 256, 512)
        for kv in (None, *KV_DTYPES)
        for f in CACHE_WRITE_FEATURES
    ]
    return out


def _launches(variant: Variant, target: str):
    """The runtime's launches for this variant on this target (tiny CPU tensors)."""
    import torch

    from vllm.v1.attention.ops.triton_attention import GpuArch, SplitKVWorkspace, plan_attention
    from vllm.v1.attention.ops.triton_attention.arch import INT4_KV_DTYPE
    from vllm.v1.attention.ops.triton_attention.checks import AttentionCall
    from vllm.v1.attention.ops.triton_attention.launch import kernel_launches

    backend, arch_name, _, units, _ = TARGETS[target]
    arch = GpuArch(backend, arch_name if backend == "hip" else f"sm_{arch_name}", units)
    kv_name, per_token_head, _ = (variant.kv_dtype or variant.dtype).partition("_per_token_head")
    dtype = getattr(torch, variant.dtype)
    kv_dtype = INT4_KV_DTYPE if kv_name == "int4" else getattr(torch, kv_name)
    if not arch.supports_kv_dtype(kv_dtype):
        return None
    if variant.phase == CACHE_WRITE:
        return [_cache_write_launch(variant, arch, kv_dtype, bool(per_token_head))]
    q_len, num_seqs, num_kv_heads = PHASES[variant.phase], NUM_SEQS.get(variant.phase, 2), 2
    num_q_heads = num_kv_heads * variant.queries_per_kv
    q = torch.empty(num_seqs * q_len, num_q_heads, variant.head_size, dtype=dtype)
    d = variant.head_size
    scale = torch.tensor(1.0)
    k_cache, v_cache, k_scale, v_scale = _kv_cache(
        variant, kv_dtype, bool(per_token_head), num_kv_heads
    )
    one_token_blocks = variant.features == "dcp_new_tokens"
    if one_token_blocks:  # the layer's K and V, [tokens, 1, heads, d]
        k_cache = torch.empty(q.shape[0], num_kv_heads, d, dtype=kv_dtype)[:, None]
        v_cache = torch.empty_like(k_cache)

    def on(switch):
        return variant.features in (switch, "all")

    rswa = variant.features == "rswa"
    out_dtype = torch.bfloat16 if dtype.itemsize == 1 else dtype
    if variant.features == "fp8_output":  # vLLM's fused static quantisation
        out_dtype = torch.float8_e4m3fnuz if arch.name == "gfx942" else torch.float8_e4m3fn
        if not arch.supports_kv_dtype(out_dtype):
            return None
    call = AttentionCall(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        out=torch.empty_like(q, dtype=out_dtype),
        query_start_loc=torch.arange(num_seqs + 1, dtype=torch.int32) * q_len,
        seq_lens=torch.full((num_seqs,), q_len, dtype=torch.int32),
        block_table=torch.zeros(num_seqs, q_len if one_token_blocks else 4, dtype=torch.int32),
        scale=0.1,
        causal=torch.ones(num_seqs, dtype=torch.int32)
        if on("per_seq_causal")
        else variant.features not in ("non_causal", "dcp_context"),
        sliding_window=64 if on("sliding_window") or on("chunked_window") or rswa else None,
        chunk_lookback=1 if on("chunked_window") and not on("mm_prefix") else None,
        logits_soft_cap=30.0 if on("softcap") else None,
        alibi_slopes=torch.empty(num_q_heads) if on("alibi") or on("alibi_sqrt") else None,
        alibi_sqrt=on("alibi_sqrt"),
        sinks=torch.empty(num_q_heads) if on("sinks") else None,
        k_scale=k_scale,
        v_scale=v_scale,
        mm_prefix_ranges=torch.zeros(num_seqs, 2, 2, dtype=torch.int32)
        if on("mm_prefix")
        else None,
        mm_prefix_clamp_sliding_window=on("mm_prefix") and on("sliding_window"),
        rswa_prefix_lens=torch.zeros(num_seqs, dtype=torch.int32) if rswa else None,
        q_scale=scale if dtype.itemsize == 1 else None,  # fp8 queries, as vLLM quantises them
        out_scale=scale if out_dtype.itemsize == 1 else None,
        lse=torch.empty(q.shape[:2])
        if variant.features in ("lse", "dcp_context", "dcp_new_tokens")
        else None,
    )
    plan = plan_attention(
        num_tokens=q.shape[0],
        num_seqs=num_seqs,
        max_query_len=q_len,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_size=variant.head_size,
        arch=arch,
        dtype=dtype,
        features=call.features(),
        layout=call.layout(),
        batch_invariant=on("batch_invariant"),
    )
    return kernel_launches(call, plan, SplitKVWorkspace.allocate(plan, "cpu"))


def _kv_cache(variant: Variant, kv_dtype, per_token_head: bool, num_kv_heads: int):
    """K and V caches of 8 blocks of 16 slots and their scales: vLLM's
    per-token-head page (values, then a float32 scale per token and head), or
    its packed cache with per-tensor scales when the variant quantises."""
    import torch

    from devtools.batches import token_head_page

    d = variant.head_size
    if per_token_head:
        return token_head_page(8, 16, num_kv_heads, d, kv_dtype, "cpu")
    packed = torch.empty(8, 16, num_kv_heads, 2 * d, dtype=kv_dtype)
    scale = torch.tensor(1.0) if variant.kv_dtype is not None else None
    return packed[..., :d], packed[..., d:], scale, scale


def _cache_write_launch(variant: Variant, arch, kv_dtype, per_token_head: bool):
    """The cache write of a few tokens of a model with 8 KV heads, its query,
    key and value views of one QKV buffer (as vLLM splits it)."""
    import torch

    from vllm.v1.attention.ops.triton_attention.launch import CacheWrite, write_launch

    num_tokens, num_kv_heads, d = 4, 8, variant.head_size
    num_q_heads = num_kv_heads * variant.queries_per_kv
    dtype = getattr(torch, variant.dtype)
    sizes = [num_q_heads * d, num_kv_heads * d, num_kv_heads * d]
    qkv = torch.empty(num_tokens, sum(sizes), dtype=dtype)
    query, key, value = (x.view(num_tokens, -1, d) for x in qkv.split(sizes, dim=-1))
    k_cache, v_cache, k_scale, v_scale = _kv_cache(variant, kv_dtype, per_token_head, num_kv_heads)
    slots = torch.empty(num_tokens, dtype=torch.int64)
    write = CacheWrite(key, value, k_cache, v_cache, slots, k_scale, v_scale)
    if variant.features == "rope":
        write = write._replace(
            query=query,
            positions=torch.empty(num_tokens, dtype=torch.int64),
            cos_sin_cache=torch.empty(4096, d, dtype=dtype),
        )
    return write_launch(write, rope_neox=True, arch=arch)


def _specialisation(launch, backend: str):
    """(signature, constexprs, attrs) exactly as Triton's launcher derives them at run
    time: 16-byte-aligned pointers and multiples of 16 get ``tt.divisibility`` (which
    decides load vectorisation and so registers), and integers equal to 1 become
    constants."""
    import torch
    from triton._C.libtriton import native_specialize_impl

    if backend == "cuda":
        from triton.backends.nvidia.compiler import CUDABackend as Backend
    else:
        from triton.backends.amd.compiler import HIPBackend as Backend
    fn = launch.kernel
    signature, constexprs, attrs = {}, {}, {}
    for index, (name, param) in enumerate(zip(fn.arg_names, fn.params, strict=True)):
        value = launch.args[name]
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[(index,)] = value
            continue
        kind, attr = native_specialize_impl(Backend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[(index,)] = attr
        elif attr:
            if isinstance(value, torch.Tensor) and name in ("k_cache_ptr", "v_cache_ptr"):
                attr = attr.replace("S", "")  # real caches exceed 2 GiB: no AMD buffer ops
            attrs[(index,)] = Backend.parse_attr(attr)
    return signature, constexprs, attrs


def _resources(kernel, backend: str, arch) -> dict:
    if backend == "cuda":
        from triton.backends.nvidia.compiler import get_ptxas

        ptx = kernel.asm["ptx"]
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(ptx)
            f.flush()
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            log = subprocess.run(
                [get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                capture_output=True,
                text=True,
            ).stderr
        regs = re.search(r"Used (\d+) registers", log)
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
        mma = (
            "wgmma"
            if "wgmma" in ptx
            else "mma.sync"
            if "mma.sync" in ptx
            else "tcgen05"
            if "tcgen05" in ptx
            else "none"
        )
        return dict(registers=int(regs.group(1)) if regs else None, spills=sum(spills), mma=mma)
    gcn = kernel.asm["amdgcn"]

    def field(name):
        match = re.search(rf"\.{name}:\s+(\d+)", gcn)
        return int(match.group(1)) if match else 0

    mma = "mfma" if "v_mfma" in gcn else "wmma" if "v_wmma" in gcn else "none"
    spills = field("vgpr_spill_count") + field("sgpr_spill_count")
    return dict(registers=field("vgpr_count"), spills=spills, mma=mma)


def _write_ptx(ptx: str, path: Path) -> None:
    lines = [line for line in ptx.splitlines() if not line.lstrip().startswith((".loc", ".file"))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(re.sub(r"\.section\s+\.debug.*", "", "\n".join(lines), flags=re.S))


def compile_variant(job: tuple[Variant, str, Path | None]) -> list[dict]:
    variant, target, ptx_dir = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource

    backend, arch, warp_size, _, shared_limit = TARGETS[target]
    launches = _launches(variant, target)
    if launches is None:
        return []  # the plan refuses this KV dtype on this target (GpuArch)
    records = []
    for launch in launches:
        signature, constexprs, attrs = _specialisation(launch, backend)
        options = {k: launch.options[k] for k in ("num_warps", "num_stages") if k in launch.options}
        record = dict(
            target=target,
            kernel=launch.kernel.__name__,
            variant=dataclasses.asdict(variant),
            constexprs={k: str(launch.args[k]) for k in signature if signature[k] == "constexpr"},
            num_warps=options.get("num_warps", 4),
            num_stages=options.get("num_stages", 3),
            hot=variant.hot,
            shared_limit=shared_limit,
        )
        start = time.time()
        try:
            # Gluon kernels (pipelined_decode.py) have their own front end.
            is_gluon = getattr(launch.kernel, "is_gluon", lambda: False)()
            source = (GluonASTSource if is_gluon else ASTSource)(
                launch.kernel, signature, constexprs, attrs
            )
            target_spec = GPUTarget(backend, arch, warp_size)
            kernel = triton.compile(source, target=target_spec, options=options)
            record.update(
                compiled=True,
                shared_bytes=kernel.metadata.shared,
                **_resources(kernel, backend, arch),
            )
            if ptx_dir is not None and backend == "cuda":
                name = "_".join(str(value) for value in dataclasses.astuple(variant))
                path = ptx_dir / target / f"{launch.kernel.__name__}_{name}.ptx"
                _write_ptx(kernel.asm["ptx"], path)
        except Exception as error:
            record.update(
                compiled=False,
                error=str(error).splitlines()[-1][:300],
                registers=None,
                spills=None,
                shared_bytes=None,
                mma=None,
            )
        record["seconds"] = round(time.time() - start, 2)
        records.append(record)
    return records


def gate_failures(records: list[dict]) -> list[str]:
    """Why the matrix fails: compile errors, gated spills, shared memory over the limit."""
    failures = []
    for r in records:
        where = f"{r['target']} {r['kernel']} {r['variant']}"
        if not r["compiled"]:
            failures.append(f"does not compile: {where}: {r['error']}")
        elif r["hot"] and r["target"] in HOT_TARGETS and r["spills"]:
            failures.append(f"spills {r['spills']} on a hot variant: {where}")
        elif r["shared_bytes"] > r["shared_limit"]:
            failures.append(f"shared {r['shared_bytes']} > {r['shared_limit']}: {where}")
    return failures


def run(
    subset: str,
    targets: list[str],
    workers: int,
    ptx_dir: Path | None = None,
    head_sizes: list[int] | None = None,
) -> list[dict]:
    chosen = [v for v in variants(subset) if head_sizes is None or v.head_size in head_sizes]
    jobs = [(v, t, ptx_dir) for t in targets for v in chosen]
    records = []
    with ProcessPoolExecutor(workers) as pool:
        for done, result in enumerate(pool.map(compile_variant, jobs), 1):
            records.extend(result)
            print(f"\r{done}/{len(jobs)} variants compiled", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return records


def markdown(records: list[dict]) -> str:
    lines = [
        "| target | kernel | phase | head | group | dtype | kv | features | ok | regs | "
        "spills | shared | warps | stages | mma |",
        "|" + "---|" * 15,
    ]
    for r in records:
        v = r["variant"]
        lines.append(
            f"| {r['target']} | {r['kernel']} | {v['phase']} | {v['head_size']} | "
            f"{v['queries_per_kv']} | {v['dtype']} | {v['kv_dtype'] or '-'} | "
            f"{v['features']} | {'yes' if r['compiled'] else 'NO'} | {r['registers']} | "
            f"{r['spills']} | {r['shared_bytes']} | {r['num_warps']} | "
            f"{r['num_stages']} | {r['mma']} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=("full", "hot"), default="full")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument(
        "--head-sizes", nargs="+", type=int, help="only the subset's variants of these head sizes"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="compile_matrix.json")
    parser.add_argument("--ptx", type=Path, help="also write each NVIDIA kernel's PTX here")
    args = parser.parse_args()
    records = run(args.subset, args.targets, args.workers, args.ptx, args.head_sizes)
    out = Path(args.out)
    out.write_text(json.dumps(records, indent=1))
    out.with_suffix(".md").write_text(markdown(records))
    failures = gate_failures(records)
    print(
        f"{len(records)} kernels compiled for {len(args.targets)} targets; "
        f"{len(failures)} gate failures"
    )
    for failure in failures:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
