# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Host-side planning: which kernel, which tiles, how many KV splits, what grid.

``plan_attention`` is a pure function of shapes and the GPU's description; it
never reads tensor contents, syncs the device or allocates. Under CUDA/HIP
graphs its inputs (token count, sequence count, whether the batch is a
uniform short-query batch) are fixed for a captured size, so a replayed graph
always matches its plan. Nothing autotunes at run time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import torch

# Queries of at most this many tokens per sequence (decode, and speculative
# decode verification with up to 7 draft tokens) go to split-KV decode.
# Longer ones go to the long-query kernel.
SPLIT_KV_MAX_QUERY_LEN = 8

# Split-KV aims for this many programs per compute unit (SM/CU), so that each
# unit has other programs to switch to while one waits on memory: 4 for plain
# decode tiles (16 query rows), 2 when a program carries more rows (GQA groups
# times speculative tokens). Measured on an H200 over 36 launch variants
# (programs per unit x tile x warps x stages, by the tuner's predecessor):
# benchmarks/results/nvidia-h200/tune_split_kv_*.json. 4 for 32 rows was
# measured too and lost (every split writes rows x head fp32 partials, which at
# short contexts outweigh the keys): 28/4 heads x 4 tokens gained 17-47% at
# batch 8-16 x 16-64k but lost 15-26% at 1k contexts
# (experiments/bench_full_32row_splits.json).
SPLIT_KV_PROGRAMS_PER_COMPUTE_UNIT = {16: 4}
SPLIT_KV_PROGRAMS_PER_COMPUTE_UNIT_DEFAULT = 2
# Upper bound on splits per sequence. 128 rather than 64 lets models with few
# KV heads fill the GPU at batch 1 (H100, 28/4 heads, d=128, batch 1: 16.9 ->
# 13.8 us at 16k context, 60.5 -> 54.9 us at 64k; no cell slower). It holds for
# 16-row programs; the merge reads splits x rows partials, so programs with
# more rows get proportionally fewer splits (H200, 28/4 heads, 4 tokens = 32
# rows, batch 1 x 16k: 128 splits 20.7 us, 66 splits 15.7 us).
MAX_KV_SPLITS = 128
MAX_KV_SPLIT_ROWS = MAX_KV_SPLITS * 16
# From this many splits on, each program streams only a few key tiles:
# "fine" splitting, tuned separately from "coarse" (few long ranges).
FINE_KV_SPLITS = 4
# Split-KV programs release their merge launch as they start (programmatic
# launch) when the merge has at most this many programs per SM/CU: the merge
# is then ready the moment the partials are. Larger merges launched early only
# sit in SM slots (H200, benchmarks/results/nvidia-h200/experiments/
# ab_session3_round{4,6}.json: merges of at most 256 programs gained 0-13%,
# those of 448 or more -11% to +2%; with the tiled merge, 4 per SM instead of 2
# was even: ab_session4_round4_early4.json).
EARLY_MERGE_PROGRAMS_PER_COMPUTE_UNIT = 2
# ... and only for programs of at most this many rows. The 32-row programs
# (qwen's 28/4 heads x 4 spec tokens) run at most one wave of 2 per SM, and
# their early merge (224-256 programs) cost up to a sixth of the call: launched
# after them it was 1.21 / 1.14x faster at batch 4 x 1k / 4k, 1.10-1.13x at
# batch 8 and 16 x 1k, 0.99-1.04x elsewhere (H100, benchmarks/results/
# nvidia-h100/experiments/ab_session15_spec32_early_merge.json; this rule:
# ab_session15_early_merge_rule.json). 16-row launches lose up to 8% without it.
EARLY_MERGE_MAX_ROWS = 16

# Partial values (heads x splits x dims) one merge program combines. One merge
# program per token and head spent 3.8 us of a 26.5 us decode at batch 16 x 1k
# (llama3-8b shapes, H200), and one program reading 128 splits x 128 dims 3.4 us
# of qwen's 13.3 us at batch 1 x 16k (scripts/decode_breakdown.py). Tiles of
# 2048, 4096 and 8192 values were measured; 4096 was 2% faster than 2048 and
# even with 8192 over 26 decode cells (H200, benchmarks/results/nvidia-h200/
# experiments/ab_session4_round3_merge_tile_*.json).
MERGE_TILE_ELEMENTS = 4096

# Split-KV decode through pipelined_decode.py's kernel (explicit cp.async ring):
# (key tile, buffers) by rows per program, where it was measured faster than
# the portable kernel on an H200 at head 128 (benchmarks/results/nvidia-h200/
# experiments/ab_session5_round{2,3,4}_*.json, bench_full_gluon_3_splits.json):
# - 16 rows, one split per sequence (batch 64-128, llama3-8b and qwen shapes,
#   decode and llama's spec-decode): 6-12% faster. With 3 splits it lost up to
#   13% at 4k-64k contexts; finely split launches vary from 0.89x to 1.12x.
# - 32 rows (qwen's 28 heads x 4 spec tokens), up to 31 splits (batch >= 4):
#   0.98-1.08x with 64-key tiles; at batch 1 (64 splits) it lost 19%.
# 64-key tiles lose at 16 rows (0.80-0.96) and deeper rings everywhere (fewer
# programs per SM).
PIPELINED_DECODE_TILES = {16: (32, 2), 32: (64, 2)}
PIPELINED_DECODE_MAX_SPLITS = {16: 1, 32: 31}
# Split launches that do better with the pipelined kernel and as many splits
# as fit one wave: (largest plan split count, tiles, programs per SM).
# - 16 rows split 2-9 ways: (32, 2) at 4 programs per SM. The plan's own
#   count rounds up, so its grid spilled into a second, partial wave (H100,
#   batch 32 x 1k: 768 programs in 1.94 waves under ncu). Against the portable
#   kernel at the plan's count (H100, benchmarks/results/nvidia-h100/
#   experiments/ab_session11_round2_few_splits.json):
#   3 -> 2 splits (llama batch 32, qwen batch 64) 1.09-1.11x at 1k, 1.04-1.05x
#   at 4k, 1.01-1.02x at 16k; 5 -> 4 and 9 -> 8 splits 1.02-1.10x. The same
#   kernel at the plan's 5 or 9 splits lost up to 16% at 16k. Finer splits
#   (batch 1-4) were not measured this way. Where the launch falls back to the
#   portable kernel (FP8 cache, sliding window, ...), that kernel takes its
#   64-key tiles: at 2 splits they measured 1.00-1.07x the plan's 3-split
#   launch, its 128-key tiles 0.88-0.98x.
# - 32 rows split 2-3 ways (batch 32 at 28/4 heads): 32-key tiles in rings of
#   4 (64 KB, three programs fit an SM) at 2 programs per SM. Against (64, 2)
#   at the plan's 3 splits (H200, experiments/ab_session10_round{3_one_wave_
#   rule,4_spec_rule}.json): 1.12-1.16x at batch 32 x 1k and 4k, 0.92x at
#   32 x 64k. 64-key tiles in rings of 4 (one program per SM) at half the
#   splits of batch 8-16 gained 1.07-1.10x at 8 x 16k, 8 x 64k and 16 x 4k but
#   lost 0.84-0.96x at 8 x 4k, 16 x 1k and 16 x 64k (round 4), so those
#   batches keep (64, 2).
PIPELINED_DECODE_FEW_SPLITS = {16: (9, (32, 2), 4), 32: (3, (32, 4), 2)}

# Long queries through pipelined_long_query.py's Hopper kernel (Q K^T and P V
# on the tensor cores during the softmax): (key tile, buffers, FMA exp2) by
# head size, where it measured faster than the portable kernel with its tuned
# tiles on an H200 (benchmarks/results/nvidia-h200/experiments/
# ab_session7_*.json; the rounds are in experiments/README.md). Head 128:
# 64-key tiles and 4 buffers (5, 6 or 8 were slower; 128-key tiles do not fit
# its registers). Head 64, the same: 1.05x prefill and 1.02x mixed over the
# portable kernel (6 buffers 1.00x, 32-key tiles 0.99x). Head 256, with Q in
# shared memory (its output takes 128 registers per thread): 64-key tiles in
# two buffers, the loop with one score tile in registers, 1.07-1.09x prefill
# and 1.03-1.04x mixed over 32-key tiles in 4 buffers (experiments/
# ab_session9_round2_one_score_tile.json), which were 1.00-1.12x over the
# portable kernel (ab_session8_round3_d256.json). That loop at heads 64 and
# 128 (64-key tiles): 0.83-1.03x; 128-key tiles there: 0.93-1.02x. With
# sliding window and softcap (Gemma-2's layers) the kernel measured
# 1.25-1.91x over the portable one at all three heads, softcap alone
# 1.24-1.62x (ab_session9_round7_features_*.json).
# FMA exp2: every how many 8-column groups of scores take their exp2 on the
# FMA units instead of the MUFU (0: none). At head 64 a tile's exponentials
# need as many MUFU cycles as its wgmmas tensor-core cycles: a quarter of them
# on the FMA units gained 1-3% there, half of them -1% to 0; at head 128 a
# quarter was even (0.99-1.01x), half lost 0-4% (experiments/
# ab_session8_round1_fma_exp2.json).
PIPELINED_LONG_QUERY_TILES = {64: (64, 4, 4), 128: (64, 4, 0), 256: (64, 2, 0)}

# tl.dot needs every dimension to be at least 16.
MIN_DOT_SIZE = 16
MAX_HEAD_SIZE = 256

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 240.0}


@dataclasses.dataclass(frozen=True)
class GpuArch:
    """What the plan needs to know about the GPU (or the CPU interpreter)."""

    vendor: str  # "cuda", "hip" or "interpreter"
    name: str  # "sm_90", "gfx942", ... or "cpu"
    num_compute_units: int  # SMs (NVIDIA) or CUs (AMD)

    @classmethod
    @functools.cache  # device properties do not change; keep it off the hot path
    def of_device(cls, device: torch.device | str) -> GpuArch:
        device = torch.device(device)
        if device.type != "cuda":  # tensors on the CPU: the Triton interpreter
            return cls("interpreter", "cpu", 4)
        props = torch.cuda.get_device_properties(device)
        if torch.version.hip is not None:
            return cls("hip", props.gcnArchName.split(":")[0], props.multi_processor_count)
        return cls("cuda", f"sm_{props.major}{props.minor}", props.multi_processor_count)

    @property
    def sm(self) -> int:
        """NVIDIA compute capability as one number (90 for ``sm_90``)."""
        if self.vendor != "cuda":
            raise ValueError(f"{self.vendor} {self.name} has no NVIDIA compute capability")
        return int(self.name[3:])

    @functools.cached_property  # read per launch
    def programmatic_launch(self) -> bool:
        """Programmatic dependent launch (Hopper+): a kernel may start while the
        one before it finishes, and waits for its results only where it says so
        (``griddepcontrol``)."""
        return self.vendor == "cuda" and self.sm >= 90

    def supports_kv_dtype(self, dtype: torch.dtype) -> bool:
        if dtype not in FP8_DTYPES:
            return True
        if self.vendor == "interpreter":
            return True
        if self.vendor == "cuda":  # e4m3fn needs sm_89+; NVIDIA has no fnuz format
            return dtype == torch.float8_e4m3fn and self.sm >= 89
        # AMD: MI300 (gfx942) has fnuz, MI350 (gfx950) and RDNA4 (gfx12) the OCP format.
        if dtype == torch.float8_e4m3fnuz:
            return self.name == "gfx942"
        return self.name == "gfx950" or self.name.startswith("gfx12")


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    """Everything ``paged_attention`` needs to launch, decided once per batch."""

    kernel: str  # "split_kv_decode" or "long_query"
    num_tokens: int
    num_seqs: int
    num_q_heads: int
    num_kv_heads: int
    head_size: int
    head_pad: int  # head size rounded up to a power of two (>= 16)
    block_m: int  # query rows per program: tokens x query heads of one KV head
    kv_tile_size: int  # keys per inner-loop step, independent of the cache block size
    num_kv_splits: int  # 1 for long_query
    num_warps: int
    num_stages: int
    grid: tuple[int, int, int]
    arch: GpuArch
    dtype: torch.dtype = torch.bfloat16  # of q: 4-byte elements get smaller tiles
    # Split-KV only: (key tile, shared-memory K/V buffers) of the pipelined
    # NVIDIA kernel (pipelined_decode.py), which runs where it covers the
    # launch's features; otherwise, or when None, the portable kernel.
    pipelined_decode: tuple[int, int] | None = None
    # Long-query only: (key tile, buffers, FMA exp2) of pipelined_long_query.py's
    # Hopper kernel (see PIPELINED_LONG_QUERY_TILES), which runs where it covers
    # the launch (and then takes 128-row programs of 8 warps); otherwise, or
    # when None, the portable kernel.
    pipelined_long_query: tuple[int, int, int] | None = None

    @property
    def queries_per_kv(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def tokens_per_q_block(self) -> int:
        return self.block_m // self.queries_per_kv

    @functools.cached_property  # read per launch, so derived once per plan
    def merge_tile(self) -> tuple[int, int]:
        """(heads, dims) one merge program combines, every split of each: at most
        ``MERGE_TILE_ELEMENTS`` partial values. Few splits: whole heads, several
        per program; many: part of one head's dimensions."""
        splits = next_power_of_2(self.num_kv_splits)
        dims = min(self.head_pad, max(MIN_DOT_SIZE, MERGE_TILE_ELEMENTS // splits))
        heads = max(
            1, min(next_power_of_2(self.num_q_heads), MERGE_TILE_ELEMENTS // (splits * dims))
        )
        return heads, dims

    @functools.cached_property
    def merge_grid(self) -> tuple[int, int, int] | None:
        if self.num_kv_splits == 1:
            return None
        heads, dims = self.merge_tile
        return (self.num_tokens, math.ceil(self.num_q_heads / heads), self.head_pad // dims)

    @functools.cached_property
    def releases_merge_early(self) -> bool:
        """Whether split-KV programs let their merge launch start as they start
        (with programmatic launch): a small merge after programs of few rows
        (``EARLY_MERGE_*``), or no merge at all."""
        per_unit = math.prod(self.merge_grid or (0,)) / self.arch.num_compute_units
        return (
            per_unit <= EARLY_MERGE_PROGRAMS_PER_COMPUTE_UNIT
            and self.block_m <= EARLY_MERGE_MAX_ROWS
        )

    def workspace_elements(self) -> tuple[int, int]:
        """float32 elements of (partial outputs, partial log-sum-exps) the plan needs."""
        if self.num_kv_splits == 1:
            return 0, 0
        rows = self.num_tokens * self.num_q_heads * self.num_kv_splits
        return rows * self.head_pad, rows


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def num_kv_splits_for(
    num_seqs: int, num_kv_heads: int, block_m: int, arch: GpuArch, beside_long_query: bool = False
) -> int:
    """Splits per sequence that fill the GPU: depends on the batch, never on lengths.

    ``beside_long_query``: the decodes of a mixed batch, whose long-query
    launch runs alongside them (``MixedBatchPlan``)."""
    programs_per_split = max(num_seqs * num_kv_heads, 1)
    per_unit = SPLIT_KV_PROGRAMS_PER_COMPUTE_UNIT.get(
        block_m, SPLIT_KV_PROGRAMS_PER_COMPUTE_UNIT_DEFAULT
    )
    target = arch.num_compute_units * per_unit
    cap = max_kv_splits(block_m)
    if block_m > MIN_DOT_SIZE:
        # Programs of more rows run at the pace of their SM's issue slots, so
        # an SM holding one program more than the others sets the launch's
        # time: such launches round down, to at most one wave. H100, 28/4
        # heads x 4 tokens (benchmarks/results/nvidia-h100/experiments/
        # ab_session14_round1_spec32.json): batch 8 and 16 at 8 and 4 splits
        # (not 9 and 5) 1.29-1.41x at 16k-64k, 1.01-1.23x at 4k, 1.05x at 1k;
        # batch 4 at 16 (not 17) 1.22x at 64k, 1.02x at 16k, but 0.92x at 4k
        # and 0.88x at 1k, where the 17th split was empty (same key work): its
        # merge had halved to 224 programs and launched early, which
        # EARLY_MERGE_MAX_ROWS now prevents.
        splits = one_wave_splits(cap, programs_per_split, per_unit, arch)
    else:
        splits = max(1, min(cap, math.ceil(target / programs_per_split)))
    if splits == 2 and 3 * programs_per_split >= 2 * target and not beside_long_query:
        # Unsplit, the batch already fills 2/3 of the target: a second split
        # would not pay for its merge (H200, llama3-8b and qwen shapes, batch
        # 64-128 x 1k: 8-17% faster unsplit). Beside a long-query launch the
        # decodes do better split (gemma2 shapes, 64 decodes + a 2048-token
        # chunk: 11% faster with 2). benchmarks/results/nvidia-h200/
        # experiments/ab_session4_round{2_merge,4,5}.json
        return 1
    return splits


def max_kv_splits(block_m: int) -> int:
    """Most splits per sequence for programs of ``block_m`` rows."""
    return max(1, min(MAX_KV_SPLITS, MAX_KV_SPLIT_ROWS // block_m))


def one_wave_splits(splits: int, programs_per_split: int, per_unit: int, arch: GpuArch) -> int:
    """At most ``splits``, and no more than fit one wave at ``per_unit`` programs per SM/CU."""
    return max(1, min(splits, arch.num_compute_units * per_unit // programs_per_split))


def split_kv_block_m(max_query_len: int, queries_per_kv: int) -> int:
    """Rows of a split-KV program: every query token of a sequence x its GQA group."""
    tokens = next_power_of_2(max(max_query_len, 1))
    return max(next_power_of_2(tokens * queries_per_kv), MIN_DOT_SIZE)


# Launch configurations measured by scripts/tune_attention.py, one JSON file
# per GPU architecture (``tuned/sm_90.json``, ...). A shape the table lacks,
# or an architecture without a table, falls back to the rules below.
TUNED_DIR = Path(__file__).resolve().parent / "tuned"


@functools.cache
def tuned_table(arch_name: str) -> dict:
    path = TUNED_DIR / f"{arch_name}.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["configs"]


def split_kv_table_key(head_pad: int, block_m: int, num_kv_splits: int) -> str:
    # Few splits means each program streams a long key range: tiles are chosen
    # for that separately from finely split (small-batch) launches.
    fine = num_kv_splits >= FINE_KV_SPLITS
    return f"split_kv_decode/d{head_pad}/m{block_m}/{'fine' if fine else 'coarse'}"


def long_query_table_key(head_pad: int) -> str:
    return f"long_query/d{head_pad}"


def _is_rdna(arch: GpuArch) -> bool:
    return arch.vendor == "hip" and arch.name.startswith(("gfx11", "gfx12"))


def _long_query_tiles(head_pad: int, arch: GpuArch) -> tuple[int, int, int, int]:
    """(block_m, kv_tile_size, num_warps, num_stages) for the long-query kernel.

    The rules keep every target free of register spills for head sizes up to
    128 under Triton 3.6 and 3.8 (``scripts/compile_matrix.py``): RDNA's WMMA
    layouts need small tiles and no pipelining, CDNA 32-key tiles.
    """
    tuned = tuned_table(arch.name).get(long_query_table_key(head_pad))
    if tuned is not None:
        return tuple(tuned)
    if arch.vendor == "interpreter":  # fewer, larger steps are faster to interpret
        return 64, 64, 4, 1
    if arch.vendor == "cuda":
        sm = arch.sm
        if head_pad > 128:  # before Hopper 64-key tiles spill ~1 KB at head 256
            return (64, 32, 8, 2) if sm < 90 else (128, 32, 8, 2) if sm >= 100 \
                else (128, 64, 8, 2)  # fmt: skip
        if sm >= 100 and head_pad <= 64:
            return 128, 128, 8, 2  # 64-key tiles spill on sm_100 at head 64
        return 128, 64, 8, 2
    if _is_rdna(arch):
        return (64, 32, 4, 1) if head_pad <= 64 else (64, 16, 8, 1) if head_pad <= 128 \
            else (32, 16, 4, 1)  # fmt: skip
    if arch.name == "gfx90a" and head_pad <= 64:
        return 128, 16, 8, 2  # 32-key tiles spill 15 bytes on MI200 at head 64
    return (128, 32, 8, 2) if head_pad <= 128 else (64, 32, 4, 2)


def _split_kv_tiles(
    head_pad: int, block_m: int, num_kv_splits: int, arch: GpuArch
) -> tuple[int, int, int]:
    """(kv_tile_size, num_warps, num_stages) for split-KV decode.

    On an H200 64-key tiles won while sequences are split finely (small
    batches), 128-key tiles once each program streams long ranges or carries
    more than 16 rows; 4 warps always (the tuned table refines this). AMD
    takes 64-key tiles at head 64 and 16/32-key tiles above, RDNA 16-key tiles
    unpipelined: each the largest tile that compiles without spills
    (``scripts/compile_matrix.py``).
    """
    tuned = tuned_table(arch.name).get(split_kv_table_key(head_pad, block_m, num_kv_splits))
    if tuned is not None:
        return tuple(tuned)
    if arch.vendor == "interpreter":
        return 64, 4, 1
    if _is_rdna(arch):
        return (32, 4, 1) if head_pad <= 64 else (16, 8, 1) if head_pad > 128 else (16, 4, 1)
    if arch.vendor == "hip":  # larger tiles spill on CDNA (gfx90a: 32-key tiles too)
        return (64, 4, 2) if head_pad <= 64 else (16, 4, 2) if block_m > 16 else (32, 4, 2)
    if head_pad > 128:
        return 32, 4, 2
    if block_m <= MIN_DOT_SIZE and num_kv_splits >= FINE_KV_SPLITS:
        if arch.vendor == "cuda" and head_pad <= 64:
            return 128, 4, 2  # 64-key tiles spill 32 bytes on sm_90 under Triton 3.8
        return 64, 4, 2
    return 128, 4, 3


def plan_attention(
    *,
    num_tokens: int,
    num_seqs: int,
    max_query_len: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_size: int,
    arch: GpuArch,
    dtype: torch.dtype = torch.bfloat16,
    beside_long_query: bool = False,
) -> AttentionPlan:
    """Choose the kernel and its launch for one batch (host facts only).

    ``dtype``: of the queries. The tuned tables and rules hold tiles for 2-byte
    types; with 4-byte ones a tile takes twice the shared memory, so key tiles
    (and long-query Q tiles) are halved to stay within what the 2-byte tile
    needs (e.g. 128 x 128 at head 128 would need 256 KB on an H200, which has
    227 KB). ``beside_long_query``: see ``num_kv_splits_for``."""
    queries_per_kv = num_q_heads // num_kv_heads
    head_pad = max(next_power_of_2(head_size), MIN_DOT_SIZE)
    wide = dtype.itemsize > 2
    if max_query_len <= SPLIT_KV_MAX_QUERY_LEN:
        block_m = split_kv_block_m(max_query_len, queries_per_kv)
        splits = num_kv_splits_for(num_seqs, num_kv_heads, block_m, arch, beside_long_query)
        kv_tile_size, num_warps, num_stages = _split_kv_tiles(head_pad, block_m, splits, arch)
        if wide:
            kv_tile_size = max(kv_tile_size // 2, MIN_DOT_SIZE)
        pipelined = None
        if arch.vendor == "cuda" and arch.sm == 90 and not wide and head_pad == 128:
            max_splits, tiles, per_unit = PIPELINED_DECODE_FEW_SPLITS.get(block_m, (0, None, 0))
            if 2 <= splits <= max_splits and not beside_long_query:
                pipelined = tiles
                splits = one_wave_splits(splits, num_seqs * num_kv_heads, per_unit, arch)
                if block_m == MIN_DOT_SIZE:  # the portable fallback's tiles, see above
                    kv_tile_size, num_warps, num_stages = _split_kv_tiles(
                        head_pad, block_m, FINE_KV_SPLITS, arch
                    )
            elif splits <= PIPELINED_DECODE_MAX_SPLITS.get(block_m, 0):
                pipelined = PIPELINED_DECODE_TILES[block_m]  # where it was measured faster
        return AttentionPlan(
            "split_kv_decode", num_tokens, num_seqs, num_q_heads, num_kv_heads, head_size,
            head_pad, block_m, kv_tile_size, splits, num_warps, num_stages,
            (num_seqs, num_kv_heads, splits), arch, dtype, pipelined,
        )  # fmt: skip

    block_m, kv_tile_size, num_warps, num_stages = _long_query_tiles(head_pad, arch)
    if wide:
        block_m, kv_tile_size = (
            max(block_m // 2, MIN_DOT_SIZE),
            max(kv_tile_size // 2, MIN_DOT_SIZE),
        )
    pipelined = None
    if (arch.vendor == "cuda" and arch.sm == 90 and not wide
            and head_pad in PIPELINED_LONG_QUERY_TILES and queries_per_kv <= 128):  # fmt: skip
        pipelined = PIPELINED_LONG_QUERY_TILES[head_pad]
        block_m, num_warps = 128, 8  # two warpgroups of 64 rows
    block_m = max(block_m, next_power_of_2(queries_per_kv))
    tokens_per_q_block = block_m // queries_per_kv
    return AttentionPlan(
        "long_query", num_tokens, num_seqs, num_q_heads, num_kv_heads, head_size,
        head_pad, block_m, kv_tile_size, 1, num_warps, num_stages,
        (long_query_grid_size(num_tokens, num_seqs, tokens_per_q_block), num_kv_heads, 1), arch,
        dtype, pipelined_long_query=pipelined,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class MixedBatchPlan:
    """A batch whose first ``num_decodes`` sequences (``num_decode_tokens``
    tokens) are short queries: those run split-KV decode, the rest the
    long-query kernel, each on the kernel that suits it (vLLM orders decodes
    first, see ``reorder_batch_threshold``)."""

    decode: AttentionPlan
    prefill: AttentionPlan
    num_decodes: int
    num_decode_tokens: int
    max_decode_query_len: int

    @property
    def arch(self) -> GpuArch:
        return self.decode.arch

    def workspace_elements(self) -> tuple[int, int]:
        return self.decode.workspace_elements()


def plan_mixed_attention(
    *,
    num_tokens: int,
    num_seqs: int,
    num_decodes: int,
    num_decode_tokens: int,
    max_decode_query_len: int,
    max_query_len: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_size: int,
    arch: GpuArch,
    dtype: torch.dtype = torch.bfloat16,
) -> AttentionPlan | MixedBatchPlan:
    """Plan a batch whose first ``num_decodes`` sequences have at most
    ``max_decode_query_len`` (<= ``SPLIT_KV_MAX_QUERY_LEN``) tokens each.

    A batch of only decodes or only long queries gets one plan. Decodes are
    always planned for ``max_decode_query_len`` tokens, so that every decode
    batch of a size gets the same tiles and splits (one plan per captured
    graph size, and a workspace sized once covers them).
    """
    if not 0 <= num_decodes <= num_seqs or max_decode_query_len > SPLIT_KV_MAX_QUERY_LEN:
        raise ValueError(
            f"plan_mixed_attention: need 0 <= num_decodes ({num_decodes}) <= num_seqs "
            f"({num_seqs}) and max_decode_query_len ({max_decode_query_len}) <= "
            f"{SPLIT_KV_MAX_QUERY_LEN}"
        )
    heads = dict(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_size=head_size,
                 arch=arch, dtype=dtype)  # fmt: skip
    if num_decodes == num_seqs or max_query_len <= max_decode_query_len:
        return plan_attention(num_tokens=num_tokens, num_seqs=num_seqs,
                              max_query_len=max_decode_query_len, **heads)  # fmt: skip
    long_query = plan_attention(num_tokens=num_tokens, num_seqs=num_seqs - num_decodes,
                                max_query_len=max(max_query_len, SPLIT_KV_MAX_QUERY_LEN + 1),
                                **heads)  # fmt: skip
    if num_decodes == 0:
        return long_query
    decode = plan_attention(num_tokens=num_decode_tokens, num_seqs=num_decodes,
                            max_query_len=max_decode_query_len, beside_long_query=True,
                            **heads)  # fmt: skip
    return MixedBatchPlan(decode, long_query, num_decodes, num_decode_tokens,
                          max_decode_query_len)  # fmt: skip


def long_query_grid_size(num_tokens: int, num_seqs: int, tokens_per_q_block: int) -> int:
    """Q-tile programs that surely cover every sequence, without knowing each length.

    Sequence b needs ceil(q_len_b / T) tiles <= q_len_b // T + 1; summed over the
    batch that is at most num_tokens // T + num_seqs. The kernel maps program
    ids to sequences with the same bound (``common.find_q_tile``); programs
    past a sequence's last tile return at once.
    """
    return num_tokens // tokens_per_q_block + num_seqs
