# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Host-side planning: which kernel, which tiles, how many KV splits, what grid.

The plan is the only place that chooses a kernel. Its inputs are host facts:
shapes, the GPU (:class:`GpuArch`), the query dtype, the features a call uses
(:class:`AttentionFeatures`) and the layout of its tensors
(:class:`TensorLayout`). It never reads tensor contents, syncs the device or
allocates. Under CUDA/HIP graphs those inputs are fixed for a captured size,
so a replayed graph always matches its plan. Nothing autotunes at run time.

Every measured threshold below names its record in ``benchmarks/DECISIONS.md``
(what was measured, with which command, on which card, in which result file).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import NamedTuple

import torch

from .arch import INT4_KV_DTYPE, GpuArch

# The kernels.
SPLIT_KV_DECODE = "split_kv_decode"  # split_kv_decode.py, portable
SPLIT_KV_DECODE_PIPELINED = "split_kv_decode_pipelined"  # pipelined_decode.py, NVIDIA
LONG_QUERY = "long_query"  # long_query.py, portable
LONG_QUERY_PIPELINED = "long_query_pipelined"  # pipelined_long_query.py, Hopper
SPLIT_KV_KERNELS = (SPLIT_KV_DECODE, SPLIT_KV_DECODE_PIPELINED)
PIPELINED_KERNELS = (SPLIT_KV_DECODE_PIPELINED, LONG_QUERY_PIPELINED)

# tl.dot needs every dimension to be at least 16.
MIN_DOT_SIZE = 16
# Head sizes the kernels serve (and the test matrix covers).
MIN_HEAD_SIZE = 32
MAX_HEAD_SIZE = 512

# Queries of at most this many tokens per sequence (decode, and speculative
# decode verification with up to 7 draft tokens) go to split-KV decode.
# Longer ones go to the long-query kernel.
SPLIT_KV_MAX_QUERY_LEN = 8

# Split-KV aims for this many programs per compute unit (SM/CU), so that each
# unit has other programs to switch to while one waits on memory: 4 for plain
# decode tiles (16 query rows), 2 when a program carries more rows (GQA groups
# times speculative tokens): 4 for 32 rows gained at long contexts but lost
# 15-26% at 1k (every split writes rows x head fp32 partials).
# DECISIONS.md: "Split-KV programs per compute unit".
SPLIT_KV_PROGRAMS_PER_COMPUTE_UNIT = {16: 4}
SPLIT_KV_PROGRAMS_PER_COMPUTE_UNIT_DEFAULT = 2
# Head 512: a split-KV program's K/V tiles take 64 KB of shared memory (128
# KB with a 64-key tile), so an SM holds two of them (one): such launches aim
# at that many and round down to one wave. Gemma 4's global layers on an H100
# took 0.70-0.93x the time of the rule above at batch 1-32.
# DECISIONS.md: "Head-512 split counts".
WIDE_HEAD_PAD = 512
WIDE_HEAD_PROGRAMS_PER_COMPUTE_UNIT = 2
# The Triton interpreter (the CPU development platform) runs programs one after
# another, and each tile step costs about the same whatever its size: it gets
# the fewest programs (no splits: GpuArch.of_device gives it one unit) and the
# largest tiles. 16-bit and fp32 tiles alike, as shared memory does not bind.
# DECISIONS.md: "Interpreter plan".
INTERPRETER_LONG_QUERY_TILES = (512, 256, 4, 1)  # block_m, kv_tile_size, warps, stages
INTERPRETER_SPLIT_KV_TILES = (512, 4, 1)  # kv_tile_size, warps, stages
INTERPRETER_WRITE_TOKENS = 256  # tokens per cache-write program
# A GPU cache-write program rotates its token's query heads this many
# elements at a time (RoPE + KV-cache fusion): 16 float32 per thread at 4
# warps. With 4096, ptxas spills at head 128 on sm_90 under Triton 3.6 (48 B)
# and at head 80 with fp8 (sm_90, sm_100); 2048 spills nowhere under 3.6, 3.8
# or 3.9 (python -m devtools.compile_matrix, cache_write rows).
WRITE_ROPE_ELEMENTS = 2048
# Upper bound on splits per sequence: 128 lets models with few KV heads fill
# the GPU at batch 1. It holds for 16-row programs; the merge reads splits x
# rows partials, so programs with more rows get proportionally fewer splits.
# DECISIONS.md: "Split cap".
MAX_KV_SPLITS = 128
MAX_KV_SPLIT_ROWS = MAX_KV_SPLITS * 16
# From this many splits on, each program streams only a few key tiles:
# "fine" splitting, tuned separately from "coarse" (few long ranges), and
# the block numbers of the next tile are loaded one iteration early.
# DECISIONS.md: "Block-number prefetch".
FINE_KV_SPLITS = 4
# Split-KV programs release their merge launch as they start (programmatic
# launch) when the merge has at most this many programs per SM/CU and the
# programs at most this many rows: the merge is then ready the moment the
# partials are. Larger merges launched early only sit in SM slots, and after
# 32-row programs (one wave of 2 per SM) an early merge cost up to a sixth of
# the call. DECISIONS.md: "Early merge release".
EARLY_MERGE_PROGRAMS_PER_COMPUTE_UNIT = 2
EARLY_MERGE_MAX_ROWS = 16

# Batch-invariant mode (a request's output bitwise the same in any batch):
# split-KV cuts each sequence into as many ranges of at least this many keys
# as its own length needs, at most this many ranges, and always combines them
# in split order (fold_split): the merge kernel does, or, when one program per
# sequence takes them all, that program. The grid's programs per sequence
# still follow the batch and take the ranges in turn. The tiles are those of
# a finely split launch, whatever the batch. DECISIONS.md: "Batch-invariant
# splits".
BATCH_INVARIANT_SPLIT_KEYS = 128
BATCH_INVARIANT_KV_SPLITS = 32

# Partial values (heads x splits x dims) one merge program combines: 4096 was
# 2% faster than 2048 and even with 8192. DECISIONS.md: "Merge tile".
MERGE_TILE_ELEMENTS = 4096

# Split-KV decode through pipelined_decode.py's kernel (explicit cp.async
# ring): (key tile, buffers) by rows per program, where it measured faster
# than the portable kernel at head 128 on sm_90: 16 rows with one split per
# sequence, 32 rows with up to 31 splits. DECISIONS.md: "Pipelined decode".
PIPELINED_DECODE_TILES = {16: (32, 2), 32: (64, 2)}
PIPELINED_DECODE_MAX_SPLITS = {16: 1, 32: 31}
# Split launches that do better with the pipelined kernel and as many splits
# as fit one wave: (largest plan split count, (tile, buffers), programs per
# SM). Where that kernel cannot run the call (fp8 cache, sliding window, ...),
# the portable kernel keeps the one-wave split count and, at 16 rows, its
# fine-split tiles. DECISIONS.md: "Pipelined decode at few splits".
PIPELINED_DECODE_FEW_SPLITS = {16: (9, (32, 2), 4), 32: (3, (32, 4), 2)}

# Long queries through pipelined_long_query.py's Hopper kernel (Q K^T and P V
# on the tensor cores during the softmax): (key tile, buffers, FMA exp2) by
# head size, where it measured faster than the portable kernel with its tuned
# tiles. FMA exp2: every how many 8-column groups of scores take their exp2
# on the FMA units instead of the MUFU (0: none). DECISIONS.md: "Pipelined
# long query".
PIPELINED_LONG_QUERY_TILES = {64: (64, 4, 4), 128: (64, 4, 0), 256: (64, 2, 0)}
PIPELINED_LONG_QUERY_BLOCK_M = 128  # two warpgroups of 64 rows
PIPELINED_LONG_QUERY_WARPS = 8


class AttentionFeatures(NamedTuple):  # made per call by the checks: cheaper than a dataclass
    """The optional features a call uses that decide which kernels can run it."""

    sliding_window: bool = False
    softcap: bool = False
    alibi: bool = False
    sinks: bool = False
    per_seq_causal: bool = False  # a causal flag per sequence (a tensor), not per call
    mm_prefix: bool = False  # multimodal bidirectional ranges per sequence
    chunked_window: bool = False  # the window in whole chunks (chunk_lookback)
    rswa: bool = False  # R-SWA: each sequence's prompt prefix visible beside the window
    token_head_scales: bool = False  # an int8/fp8 cache with a scale per token and KV head
    returns_lse: bool = False  # each row's log-sum-exp stored beside its output


NO_FEATURES = AttentionFeatures()


class TensorLayout(NamedTuple):  # made per call by the checks
    """What the kernels need to know of a call's tensors besides their shapes.

    ``vector_copies``: q, out and both caches have contiguous head dimensions,
    and the caches 16-byte aligned starts and strides that are multiples of 16
    elements: what the pipelined kernels' 16-byte copies need (Triton's
    launcher marks such arguments divisible; without that the copies do not
    compile). vLLM's packed cache has all of it whenever the head size is a
    multiple of 8 (:meth:`of_packed_kv_cache`).
    """

    kv_dtype: torch.dtype | None = None  # None: the queries' dtype
    block_size: int = 16
    kv_same_strides: bool = True  # K and V views share strides
    vector_copies: bool = True

    @classmethod
    def of(cls, q, k_cache, v_cache, out, strides=None) -> TensorLayout:
        """The layout of these tensors (metadata only); ``strides``: the strides
        of q, out, k_cache and v_cache, where the caller has read them."""
        q_strides, out_strides, k_strides, v_strides = strides or (
            q.stride(),
            out.stride(),
            k_cache.stride(),
            v_cache.stride(),
        )
        aligned = q_strides[2] == 1 and out_strides[2] == 1
        for cache, (block, slot, head, dim) in ((k_cache, k_strides), (v_cache, v_strides)):
            aligned &= dim == 1 and not (block % 16 or slot % 16 or head % 16)
            aligned &= cache.data_ptr() % 16 == 0
        return cls(
            k_cache.dtype,
            k_cache.shape[1],
            kv_same_strides=k_strides == v_strides,
            vector_copies=aligned,
        )

    @classmethod
    def of_packed_kv_cache(
        cls, head_size: int, kv_dtype: torch.dtype, block_size: int
    ) -> TensorLayout:
        """vLLM's cache: K and V are the two halves of the last dimension of one
        ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` tensor (any
        stride order), so they share strides, every stride is a multiple of
        ``2 * head_size`` and V starts ``head_size`` elements after K."""
        vector_copies = (2 * head_size) % 16 == 0 and (head_size * kv_dtype.itemsize) % 16 == 0
        return cls(kv_dtype, block_size, kv_same_strides=True, vector_copies=vector_copies)


# A 2-byte cache of the queries' dtype in 16-token blocks, laid out as vLLM's.
PACKED_LAYOUT = TensorLayout()


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def plan_cache_write(
    arch: GpuArch, num_tokens: int, num_q_heads: int, head_size: int
) -> tuple[int, int]:
    """The cache write's tiles: tokens per program (one on GPUs, many in the
    interpreter) and, with the rotary embedding, query heads turned at a time."""
    q_heads = next_power_of_2(max(num_q_heads, 1))
    if arch.vendor == "interpreter":
        return min(next_power_of_2(num_tokens), INTERPRETER_WRITE_TOKENS), q_heads
    return 1, min(q_heads, max(1, WRITE_ROPE_ELEMENTS // next_power_of_2(head_size)))


def head_pad_of(head_size: int) -> int:
    """Head size rounded up to a power of two that tl.dot takes."""
    return max(next_power_of_2(head_size), MIN_DOT_SIZE)


def pipelined_kernel_covers(
    kernel: str,
    head_size: int,
    dtype: torch.dtype,
    features: AttentionFeatures,
    layout: TensorLayout,
) -> bool:
    """Whether a Gluon kernel computes calls of these facts: 2-byte queries
    and cache of one dtype, a power-of-two head size, the 16-byte copies of
    :class:`TensorLayout`, and none of the features it lacks (ALiBi, sinks,
    chunked windows, R-SWA and log-sum-exps for both; sliding window, softcap,
    per-sequence causal flags and multimodal ranges for the decode one). The
    long-query kernel also needs a power-of-two block size and K and V of one
    stride."""
    if dtype.itemsize != 2 or layout.kv_dtype not in (None, dtype):
        return False
    if head_size != head_pad_of(head_size) or not layout.vector_copies:
        return False
    lacking = (
        features.alibi,
        features.sinks,
        features.chunked_window,
        features.rswa,
        features.returns_lse,
    )
    if any(lacking):
        return False
    if kernel == SPLIT_KV_DECODE_PIPELINED:
        masks = (features.sliding_window, features.softcap, features.per_seq_causal)
        return not (any(masks) or features.mm_prefix)
    block_size = layout.block_size
    return block_size & (block_size - 1) == 0 and layout.kv_same_strides


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    """Everything ``paged_attention`` needs to launch, decided once per batch.

    Frozen, and every derived value (grid, merge tile) is computed from the
    fields: ``dataclasses.replace`` gives a consistent plan."""

    kernel: str  # one of the kernel names above
    num_tokens: int
    num_seqs: int
    num_q_heads: int
    num_kv_heads: int
    head_size: int
    head_pad: int  # head size rounded up to a power of two (>= 16)
    block_m: int  # query rows per program: tokens x query heads of one KV head
    kv_tile_size: int  # keys per inner-loop step, independent of the cache block size
    num_kv_splits: int  # 1 for the long-query kernels
    num_warps: int
    num_stages: int  # the portable kernels' software pipelining depth
    arch: GpuArch
    dtype: torch.dtype = torch.bfloat16  # of q: 4-byte elements get smaller tiles
    # The pipelined kernels: shared-memory K/V buffers of their copy ring, and
    # for the long-query one the FMA exp2 share (PIPELINED_LONG_QUERY_TILES).
    kv_buffers: int = 0
    fma_exp2_every: int = 0
    # Batch-invariant split-KV: splits of at least this many keys, up to
    # num_kv_splits per sequence, taken in turn by split_programs programs
    # per (sequence, KV head). 0: one program per split, num_kv_splits of them.
    min_split_keys: int = 0
    split_programs: int = 0

    @property
    def is_split_kv(self) -> bool:
        return self.kernel in SPLIT_KV_KERNELS

    @property
    def queries_per_kv(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def tokens_per_q_block(self) -> int:
        return self.block_m // self.queries_per_kv

    @functools.cached_property  # read per launch, so derived once per plan
    def grid(self) -> tuple[int, int, int]:
        if self.is_split_kv:
            return self.num_seqs, self.num_kv_heads, self.split_programs or self.num_kv_splits
        q_blocks = long_query_grid_size(self.num_tokens, self.num_seqs, self.tokens_per_q_block)
        return q_blocks, self.num_kv_heads, 1

    @property
    def prefetch_blocks(self) -> bool:
        """Whether the portable split-KV kernel loads the next tile's block
        numbers one iteration early: finely split programs stream a few tiles
        each (DECISIONS.md: "Block-number prefetch")."""
        return self.num_kv_splits >= FINE_KV_SPLITS

    @property
    def folds_splits(self) -> bool:
        """Batch-invariant plans whose one program per (sequence, KV head) takes
        all of the sequence's splits: it folds each split's result into the
        output in the merge kernel's order, with no partials and no merge."""
        return self.min_split_keys > 0 and self.split_programs == 1

    @property
    def merges_splits(self) -> bool:
        return self.num_kv_splits > 1 and not self.folds_splits

    @functools.cached_property
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
        if not self.merges_splits:
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
        if not self.merges_splits:
            return 0, 0
        rows = self.num_tokens * self.num_q_heads * self.num_kv_splits
        return rows * self.head_pad, rows


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
    if arch.vendor == "interpreter":  # it runs one program at a time per unit
        per_unit = 1
    target = arch.num_compute_units * per_unit
    cap = max_kv_splits(block_m)
    if block_m > MIN_DOT_SIZE:
        # Programs of more rows run at the pace of their SM's issue slots, so
        # an SM holding one program more than the others sets the launch's
        # time: such launches round down, to at most one wave
        # (DECISIONS.md: "One wave for programs of more than 16 rows").
        splits = one_wave_splits(cap, programs_per_split, per_unit, arch)
    else:
        splits = max(1, min(cap, math.ceil(target / programs_per_split)))
    if splits == 2 and 3 * programs_per_split >= 2 * target and not beside_long_query:
        # Unsplit, the batch already fills 2/3 of the target: a second split
        # would not pay for its merge. Beside a long-query launch the decodes
        # do better split (DECISIONS.md: "No second split for full batches").
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


def long_query_grid_size(num_tokens: int, num_seqs: int, tokens_per_q_block: int) -> int:
    """Q-tile programs that surely cover every sequence, without knowing each length.

    Sequence b needs ceil(q_len_b / T) tiles <= q_len_b // T + 1; summed over the
    batch that is at most num_tokens // T + num_seqs. The kernel maps program
    ids to sequences with the same bound (``jit_helpers.find_q_tile``); programs
    past a sequence's last tile return at once.
    """
    return num_tokens // tokens_per_q_block + num_seqs


# Launch configurations measured by ``python -m devtools.tune_attention``, one
# JSON file per GPU architecture (``tuned/sm_90.json``, ...), each entry with
# its command line. A shape the table lacks, or an architecture without a
# table, falls back to the rules below.
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


def _long_query_tiles(head_pad: int, arch: GpuArch) -> tuple[int, int, int, int]:
    """(block_m, kv_tile_size, num_warps, num_stages) for the long-query kernel.

    The rules keep every target free of register spills for head sizes up to
    128 under Triton 3.6, 3.8 and 3.9 (``python -m devtools.compile_matrix``):
    RDNA3's WMMA layouts need small tiles and no pipelining, CDNA 32-key tiles.
    RDNA4's WMMA operands take fewer registers: 32-key tiles, vLLM's gfx1201
    choice, on 8 warps above head 64, where 4 warps spill with a window or fp8
    KV (DECISIONS.md: "RDNA4 tiles").
    """
    tuned = tuned_table(arch.name).get(long_query_table_key(head_pad))
    if tuned is not None:
        return tuple(tuned)
    if arch.vendor == "interpreter":
        return INTERPRETER_LONG_QUERY_TILES
    if head_pad > 256:
        return _long_query_tiles_512(arch)
    if arch.vendor == "cuda":
        if head_pad > 128:  # before Hopper 64-key tiles spill ~1 KB at head 256
            if arch.sm < 90:
                return 64, 32, 8, 2
            return (128, 32, 8, 2) if arch.sm >= 100 else (128, 64, 8, 2)
        if arch.sm >= 100 and head_pad <= 64:
            return 128, 128, 8, 2  # 64-key tiles spill on sm_100 at head 64
        return 128, 64, 8, 2
    if arch.is_rdna4:
        if head_pad <= 64:
            return 64, 32, 4, 1
        return (64, 32, 8, 1) if head_pad <= 128 else (32, 32, 8, 1)
    if arch.is_rdna:
        if head_pad <= 64:
            return 64, 32, 4, 1
        return (64, 16, 8, 1) if head_pad <= 128 else (32, 16, 4, 1)
    if arch.name == "gfx90a" and head_pad <= 64:
        return 128, 16, 8, 2  # 32-key tiles spill 15 bytes on MI200 at head 64
    return (128, 32, 8, 2) if head_pad <= 128 else (64, 32, 4, 2)


def _long_query_tiles_512(arch: GpuArch) -> tuple[int, int, int, int]:
    """Head sizes above 256 (Gemma 4's 512): 32-row Q tiles on 8 warps, the
    largest that compile without spills on sm_80/90/100 (32-key tiles) and
    gfx90a/942/950 (16-key tiles); 64 rows or 4 warps spill, on sm_90 by
    several KB. RDNA spills at any tile (RDNA4 least with 16 rows,
    RDNA3 ~0.9 KB). DECISIONS.md: "Head size 512"."""
    if arch.vendor == "cuda":
        return 32, 32, 8, 2
    if arch.is_rdna:
        return 16, 16, 8, 1
    return 32, 16, 8, 1


def _split_kv_tiles(
    head_pad: int, block_m: int, num_kv_splits: int, arch: GpuArch
) -> tuple[int, int, int]:
    """(kv_tile_size, num_warps, num_stages) for split-KV decode.

    64-key tiles won while sequences are split finely (small batches),
    128-key tiles once each program streams long ranges or carries more than
    16 rows; 4 warps always (the tuned table refines this). AMD takes 64-key
    tiles at head 64 and 16/32-key tiles above, RDNA 16-key tiles
    unpipelined: each the largest tile that compiles without spills
    (``python -m devtools.compile_matrix``). RDNA4 keeps RDNA3's rule: two
    warps, vLLM's gfx1201 choice, spill at head 256 with 32-row programs
    (DECISIONS.md: "RDNA4 tiles").
    """
    tuned = tuned_table(arch.name).get(split_kv_table_key(head_pad, block_m, num_kv_splits))
    if tuned is not None:
        return tuple(tuned)
    if arch.vendor == "interpreter":
        return INTERPRETER_SPLIT_KV_TILES
    if head_pad > 256:  # 8 warps: with 4, 16-row tiles already spill (DECISIONS.md)
        if arch.vendor == "cuda":
            return (32, 8, 2) if arch.sm >= 90 else (32, 8, 1)
        return 16, 8, 1
    if arch.is_rdna:
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


def _plan_split_kv(
    num_tokens,
    num_seqs,
    max_query_len,
    num_q_heads,
    num_kv_heads,
    head_size,
    arch,
    dtype,
    features,
    layout,
    beside_long_query,
    batch_invariant,
) -> AttentionPlan:
    head_pad = head_pad_of(head_size)
    wide = dtype.itemsize > 2 and arch.vendor != "interpreter"  # shared memory
    block_m = split_kv_block_m(max_query_len, num_q_heads // num_kv_heads)
    splits = num_kv_splits_for(num_seqs, num_kv_heads, block_m, arch, beside_long_query)
    if head_pad >= WIDE_HEAD_PAD and arch.vendor != "interpreter":
        kv_tile_size = _split_kv_tiles(head_pad, block_m, splits, arch)[0]
        # a 64-key tile takes twice the shared memory: one program per SM
        per_unit = 1 if kv_tile_size >= 64 else WIDE_HEAD_PROGRAMS_PER_COMPUTE_UNIT
        splits = one_wave_splits(splits, num_seqs * num_kv_heads, per_unit, arch)
    min_split_keys = split_programs = 0
    if batch_invariant:  # every batch gets the same splits and tiles
        split_programs = splits
        splits = min(BATCH_INVARIANT_KV_SPLITS, max_kv_splits(block_m))
        split_programs, min_split_keys = min(split_programs, splits), BATCH_INVARIANT_SPLIT_KEYS
    kv_tile_size, num_warps, num_stages = _split_kv_tiles(head_pad, block_m, splits, arch)
    if wide:
        kv_tile_size = max(kv_tile_size // 2, MIN_DOT_SIZE)
    elif _narrow_rows(features, arch):
        kv_tile_size = min(kv_tile_size, NARROW_ROW_SPLIT_KV_TILE.get(arch.vendor, 64))
        kv_tile_size = max(kv_tile_size // _int4_narrowing(layout), MIN_DOT_SIZE)
    kernel, kv_buffers = SPLIT_KV_DECODE, 0
    pipelined = None
    if batch_invariant:
        pass  # the pipelined kernels' split counts and tiles follow the batch
    elif arch.vendor == "cuda" and arch.sm == 90 and not wide and head_pad == 128:
        max_splits, tiles, per_unit = PIPELINED_DECODE_FEW_SPLITS.get(block_m, (0, None, 0))
        if 2 <= splits <= max_splits and not beside_long_query:
            pipelined = tiles
            splits = one_wave_splits(splits, num_seqs * num_kv_heads, per_unit, arch)
            if block_m == MIN_DOT_SIZE:  # the portable kernel's tiles, if it runs instead
                kv_tile_size, num_warps, num_stages = _split_kv_tiles(
                    head_pad, block_m, FINE_KV_SPLITS, arch
                )
        elif splits <= PIPELINED_DECODE_MAX_SPLITS.get(block_m, 0):
            pipelined = PIPELINED_DECODE_TILES[block_m]
    if pipelined is not None and pipelined_kernel_covers(
        SPLIT_KV_DECODE_PIPELINED, head_size, dtype, features, layout
    ):
        kernel = SPLIT_KV_DECODE_PIPELINED
        kv_tile_size, kv_buffers = pipelined
    return AttentionPlan(
        kernel=kernel,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        head_pad=head_pad,
        block_m=block_m,
        kv_tile_size=kv_tile_size,
        num_kv_splits=splits,
        num_warps=num_warps,
        num_stages=num_stages,
        arch=arch,
        dtype=dtype,
        kv_buffers=kv_buffers,
        min_split_keys=min_split_keys,
        split_programs=split_programs,
    )


NARROW_ROW_SPLIT_KV_TILE = {"cuda": 64, "hip": 32}


def _narrow_rows(features: AttentionFeatures, arch: GpuArch) -> bool:
    """Per-token-head pages start K and V rows only 4-byte aligned (``2 * D +
    8``-byte cells, V ``D + 4`` bytes in): tiles move in 4-byte copies, each
    with its own address registers, so split-KV tiles hold at most
    ``NARROW_ROW_SPLIT_KV_TILE`` keys and long-query tiles half the usual (the
    compile matrix, Triton 3.8: sm_90 split-KV head 128 spilled 1024 B at 128
    keys, none at 64; long-query 924 B at 128 keys, none at 64; gfx942 split-KV
    head 64 20 VGPRs at 64 keys, none at 32)."""
    return features.token_head_scales and arch.vendor != "interpreter"


def _int4_narrowing(layout: TensorLayout) -> int:
    """int4 caches halve the narrow-row tiles again: each tile's bytes become
    codes in registers (unpacked, minus zero points) and the queries and
    values are rotated once per program (the compile matrix, Triton 3.8:
    sm_90 split-KV head 128 spilled 20 B at 64 keys, none at 32; sm_80
    long-query head 128 204 B at half tiles, none at a quarter)."""
    return 2 if layout.kv_dtype == INT4_KV_DTYPE else 1


def _plan_long_query(
    num_tokens, num_seqs, num_q_heads, num_kv_heads, head_size, arch, dtype, features, layout
) -> AttentionPlan:
    head_pad = head_pad_of(head_size)
    queries_per_kv = num_q_heads // num_kv_heads
    wide = dtype.itemsize > 2 and arch.vendor != "interpreter"  # shared memory
    block_m, kv_tile_size, num_warps, num_stages = _long_query_tiles(head_pad, arch)
    if wide:
        block_m = max(block_m // 2, MIN_DOT_SIZE)
        kv_tile_size = max(kv_tile_size // 2, MIN_DOT_SIZE)
    elif _narrow_rows(features, arch):
        kv_tile_size = max(kv_tile_size // (2 * _int4_narrowing(layout)), MIN_DOT_SIZE)
    kernel, kv_buffers, fma_exp2_every = LONG_QUERY, 0, 0
    if (
        arch.vendor == "cuda"
        and arch.sm == 90
        and head_pad in PIPELINED_LONG_QUERY_TILES
        and queries_per_kv <= PIPELINED_LONG_QUERY_BLOCK_M
        and pipelined_kernel_covers(LONG_QUERY_PIPELINED, head_size, dtype, features, layout)
    ):
        kernel = LONG_QUERY_PIPELINED
        kv_tile_size, kv_buffers, fma_exp2_every = PIPELINED_LONG_QUERY_TILES[head_pad]
        block_m, num_warps = PIPELINED_LONG_QUERY_BLOCK_M, PIPELINED_LONG_QUERY_WARPS
    return AttentionPlan(
        kernel=kernel,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        head_pad=head_pad,
        block_m=max(block_m, next_power_of_2(queries_per_kv)),
        kv_tile_size=kv_tile_size,
        num_kv_splits=1,
        num_warps=num_warps,
        num_stages=num_stages,
        arch=arch,
        dtype=dtype,
        kv_buffers=kv_buffers,
        fma_exp2_every=fma_exp2_every,
    )


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
    features: AttentionFeatures = NO_FEATURES,
    layout: TensorLayout = PACKED_LAYOUT,
    beside_long_query: bool = False,
    batch_invariant: bool = False,
) -> AttentionPlan:
    """Choose the kernel and its launch for one batch of one kind (host facts only).

    ``dtype``: of the queries. The tuned tables and rules hold tiles for 2-byte
    types; with 4-byte ones a tile takes twice the shared memory, so key tiles
    (and long-query Q tiles) are halved to stay within what the 2-byte tile
    needs (e.g. 128 x 128 at head 128 would need 256 KB on an H200, which has
    227 KB). ``features`` and ``layout``: what the calls that run this plan
    use and pass (the pipelined kernels cover only part of it).
    ``beside_long_query``: see ``num_kv_splits_for``. ``batch_invariant``:
    every reduction of a sequence in an order that depends on that sequence
    alone (``BATCH_INVARIANT_*``); the long-query kernels' order already does."""
    if max_query_len <= SPLIT_KV_MAX_QUERY_LEN:
        return _plan_split_kv(
            num_tokens,
            num_seqs,
            max_query_len,
            num_q_heads,
            num_kv_heads,
            head_size,
            arch,
            dtype,
            features,
            layout,
            beside_long_query,
            batch_invariant,
        )
    return _plan_long_query(
        num_tokens, num_seqs, num_q_heads, num_kv_heads, head_size, arch, dtype, features, layout
    )


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


def plan_batch(
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
    features: AttentionFeatures = NO_FEATURES,
    layout: TensorLayout = PACKED_LAYOUT,
    long_query_only: bool = False,
    batch_invariant: bool = False,
) -> AttentionPlan | MixedBatchPlan:
    """The plan of a batch as vLLM forms it: its first ``num_decodes`` sequences
    have at most ``max_decode_query_len`` (<= ``SPLIT_KV_MAX_QUERY_LEN``)
    tokens each, the rest are longer.

    A batch of only decodes or only long queries gets one plan. Decodes are
    always planned for ``max_decode_query_len`` tokens, so that every decode
    batch of a size gets the same tiles and splits (one plan per captured
    graph size, and a workspace sized once covers them).
    ``long_query_only``: every sequence on the long-query kernel, which is
    correct for any query length (for graphs captured from mixed batches,
    which a batch of decodes may replay). ``batch_invariant``: see
    ``plan_attention``.
    """
    if not 0 <= num_decodes <= num_seqs or max_decode_query_len > SPLIT_KV_MAX_QUERY_LEN:
        raise ValueError(
            f"plan_batch: need 0 <= num_decodes ({num_decodes}) <= num_seqs "
            f"({num_seqs}) and max_decode_query_len ({max_decode_query_len}) <= "
            f"{SPLIT_KV_MAX_QUERY_LEN}"
        )
    facts = dict(
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        arch=arch,
        dtype=dtype,
        features=features,
        layout=layout,
        batch_invariant=batch_invariant,
    )
    long_query_len = max(max_query_len, SPLIT_KV_MAX_QUERY_LEN + 1)
    if long_query_only:
        return plan_attention(
            num_tokens=num_tokens, num_seqs=num_seqs, max_query_len=long_query_len, **facts
        )
    if num_decodes == num_seqs or max_query_len <= max_decode_query_len:
        return plan_attention(
            num_tokens=num_tokens, num_seqs=num_seqs, max_query_len=max_decode_query_len, **facts
        )
    long_query = plan_attention(
        num_tokens=num_tokens,
        num_seqs=num_seqs - num_decodes,
        max_query_len=long_query_len,
        **facts,
    )
    if num_decodes == 0:
        return long_query
    decode = plan_attention(
        num_tokens=num_decode_tokens,
        num_seqs=num_decodes,
        max_query_len=max_decode_query_len,
        beside_long_query=True,
        **facts,
    )
    return MixedBatchPlan(
        decode=decode,
        prefill=long_query,
        num_decodes=num_decodes,
        num_decode_tokens=num_decode_tokens,
        max_decode_query_len=max_decode_query_len,
    )
