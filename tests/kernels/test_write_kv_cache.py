# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""write_kv_cache against plain indexing: any layout, skipped slots, fp8;
rope_and_write_kv_cache against the reference rotary embedding."""

import gc
import weakref

import pytest
import torch
from conftest import HAS_GPU
from triton.runtime.jit import JITFunction

from devtools.batches import (
    int4_scale_words,
    kv_cache_views,
    quantise_int4,
    quantise_per_token_head,
)
from vllm.v1.attention.ops.triton_attention import (
    GpuArch,
    reference_rotary_embedding,
    rope_and_write_kv_cache,
    write_kv_cache,
)
from vllm.v1.attention.ops.triton_attention.arch import INT4_KV_DTYPE
from vllm.v1.attention.ops.triton_attention.reference import int4_vectors

FP8_RANGE = {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 240.0, torch.float8_e5m2: 57344.0}


@pytest.mark.parametrize(
    "cache_dtype,layout,head_size",
    [
        (torch.float16, "packed_nhd", 64),
        (torch.float32, "packed_hnd", 80),
        (torch.float16, "separate", 128),
        (torch.float8_e4m3fn, "packed_nhd", 64),
        (torch.float8_e4m3fnuz, "packed_hnd", 96),
        (torch.float8_e5m2, "separate", 80),
    ],
)
def test_write_kv_cache(cache_dtype, layout, head_size, device):
    arch = GpuArch.of_device(device)
    if not arch.supports_kv_dtype(cache_dtype):
        pytest.skip(f"{cache_dtype} has no hardware support on {arch.name} (see GpuArch)")
    if cache_dtype in FP8_RANGE and not HAS_GPU:
        pytest.skip(
            "the Triton interpreter's fp32->fp8 cast loses the exponent carry when "
            "rounding up (-127.8 -> -64 for e4m3fn); fp8 stores are checked exactly on the GPU"
        )
    gen = torch.Generator().manual_seed(0)
    num_blocks, block_size, num_kv_heads, num_tokens = 6, 16, 3, 40
    key_dtype = torch.float32 if cache_dtype == torch.float32 else torch.float16
    key = (torch.randn(num_tokens, num_kv_heads, head_size, generator=gen) * 8).to(key_dtype)
    value = (torch.randn(num_tokens, num_kv_heads, head_size, generator=gen) * 8).to(key_dtype)
    key[0, 0, 0] = 1e4  # beyond the fp8 range: must saturate, never become NaN
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[::7] = -1  # padding tokens: skipped
    key, value, slots = key.to(device), value.to(device), slots.to(device)

    k_cache, v_cache = kv_cache_views(
        num_blocks, block_size, num_kv_heads, head_size, cache_dtype, device, layout
    )
    k_cache.fill_(-3.0)
    v_cache.fill_(-3.0)
    scales = {}
    if cache_dtype in FP8_RANGE:
        scales = dict(
            k_scale=torch.tensor(0.1, device=device), v_scale=torch.tensor(0.05, device=device)
        )
    write_kv_cache(key, value, k_cache, v_cache, slots, **scales)

    def expected(x, cache, scale):
        ref = cache.clone()
        x = x.float()
        if scale is not None:
            limit = FP8_RANGE[cache_dtype]
            x = (x / scale.float()).clamp(-limit, limit)
        keep = slots >= 0
        for token in torch.nonzero(keep).flatten().tolist():
            slot = int(slots[token])
            ref[slot // block_size, slot % block_size] = x[token].to(cache_dtype)
        return ref

    for x, cache, name in ((key, k_cache, "k_scale"), (value, v_cache, "v_scale")):
        want = expected(x, cache, scales.get(name))
        assert not cache.float().isnan().any()
        torch.testing.assert_close(cache.float(), want.float(), atol=0, rtol=0)


@pytest.mark.parametrize(
    "cache_dtype,layout,head_size",
    [
        (torch.int8, "packed_nhd", 64),
        (torch.int8, "packed_hnd", 80),
        (torch.int8, "separate", 128),
        (torch.float8_e4m3fn, "packed_nhd", 64),
        (torch.float8_e4m3fnuz, "packed_hnd", 96),
        (torch.float8_e5m2, "separate", 80),
    ],
)
def test_write_kv_cache_per_token_head(cache_dtype, layout, head_size, device):
    """Values and a float32 scale per token and KV head (vLLM's
    int8/fp8_per_token_head), byte for byte against ``quantise_per_token_head``;
    the scales live in strided views, as inside vLLM's page; slots not written
    keep their NaN scales."""
    arch = GpuArch.of_device(device)
    if not arch.supports_kv_dtype(cache_dtype):
        pytest.skip(f"{cache_dtype} has no hardware support on {arch.name} (see GpuArch)")
    if cache_dtype != torch.int8 and not HAS_GPU:
        pytest.skip("the Triton interpreter's fp32->fp8 cast rounds wrongly (see above)")
    gen = torch.Generator().manual_seed(2)
    num_blocks, block_size, num_kv_heads, num_tokens = 5, 16, 3, 30
    key = (torch.randn(num_tokens, num_kv_heads, head_size, generator=gen) * 4).half()
    value = torch.randn(num_tokens, num_kv_heads, head_size, generator=gen).half()
    key[3, 1] = 0.0  # an all-zero head: the 1e-6 floor
    value[4, 0] = 0.0  # scale 1: halves, which int8 rounds away from zero
    value[4, 0, :5] = torch.tensor([127.0, 0.5, -0.5, 1.5, -2.5])
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[::5] = -1
    key, value, slots = key.to(device), value.to(device), slots.to(device)
    k_cache, v_cache = kv_cache_views(
        num_blocks, block_size, num_kv_heads, head_size, cache_dtype, device, layout
    )
    pages = torch.full((num_blocks, block_size, num_kv_heads, 2, 3), float("nan"), device=device)
    k_scale, v_scale = pages[..., 0, 1], pages[..., 1, 1]  # strided, like the page's scales
    write_kv_cache(key, value, k_cache, v_cache, slots, k_scale=k_scale, v_scale=v_scale)

    written = slots >= 0
    blocks, offsets = slots[written] // block_size, slots[written] % block_size
    for x, cache, scale in ((key, k_cache, k_scale), (value, v_cache, v_scale)):
        want, want_scale = quantise_per_token_head(x[written], cache_dtype)
        assert torch.equal(cache[blocks, offsets].view(torch.uint8), want.view(torch.uint8))
        assert torch.equal(scale[blocks, offsets], want_scale)
        untouched = torch.ones(num_blocks, block_size, dtype=torch.bool, device=device)
        untouched[blocks, offsets] = False
        assert scale[untouched].isnan().all()


def _int4_write_inputs(head_size, dtype, device, seed=3):
    """Keys and values on a grid of eighths (their rotation is exact in fp32,
    so only the stated roundings decide the bytes), with an all-zero head and
    a constant one; a third of the tokens skipped."""
    gen = torch.Generator().manual_seed(seed)
    num_tokens, num_kv_heads = 24, 2
    key = (torch.randn(num_tokens, num_kv_heads, head_size, generator=gen) * 16).round() / 8
    value = (torch.randn(num_tokens, num_kv_heads, head_size, generator=gen) * 8).round() / 8
    key[4, 1] = 0.0  # zero range: the 1e-6 scale floor, zero point 0
    slots = torch.randperm(4 * 16, generator=gen)[:num_tokens]
    slots[::3] = -1
    return key.to(dtype).to(device), value.to(dtype).to(device), slots.to(device)


@pytest.mark.parametrize(
    "dtype,layout,head_size",
    [
        (torch.float16, "packed_nhd", 64),
        (torch.float32, "packed_hnd", 80),  # Hadamard blocks of 16
        (torch.bfloat16, "separate", 128),
        (torch.float16, "separate", 512),
    ],
)
def test_write_kv_cache_int4(dtype, layout, head_size, device):
    """vLLM's int4_per_token_head: rotated vectors in 4-bit codes around a zero
    point, two per byte, byte for byte against ``devtools.batches.quantise_int4``
    (an independent float64 rotation), scale words included; slots not
    written keep their NaN scale words."""
    if dtype == torch.bfloat16 and not HAS_GPU:
        pytest.skip(
            "the Triton interpreter's fp32->bf16 cast does not round to nearest "
            "(544 of 1024 N(0, 1) values differ from torch's); checked on the GPU"
        )
    key, value, slots = _int4_write_inputs(head_size, dtype, device)
    num_blocks, block_size, num_kv_heads = 4, 16, key.shape[1]
    k_cache, v_cache = kv_cache_views(
        num_blocks, block_size, num_kv_heads, head_size // 2, INT4_KV_DTYPE, device, layout
    )
    k_cache.fill_(0)
    v_cache.fill_(0)
    pages = torch.full((num_blocks, block_size, num_kv_heads, 2, 3), float("nan"), device=device)
    k_scale, v_scale = pages[..., 0, 1], pages[..., 1, 1]  # strided, like the page's scales
    write_kv_cache(key, value, k_cache, v_cache, slots, k_scale=k_scale, v_scale=v_scale)

    written = slots >= 0
    blocks, offsets = slots[written] // block_size, slots[written] % block_size
    for x, cache, words in ((key, k_cache, k_scale), (value, v_cache, v_scale)):
        want, want_words = quantise_int4(x[written])
        assert torch.equal(cache[blocks, offsets], want)
        got_bits = words[blocks, offsets].contiguous().view(torch.int32)
        assert torch.equal(got_bits, want_words.view(torch.int32))
        untouched = torch.ones(num_blocks, block_size, dtype=torch.bool, device=device)
        untouched[blocks, offsets] = False
        assert words[untouched].isnan().all()
    # the all-zero head: scale 1e-6 with zero point 0 in its low bits, every code 0
    slot = slots[4].item()
    word = k_scale[slot // block_size, slot % block_size, 1].reshape(1).cpu()
    assert torch.equal(word, int4_scale_words(torch.tensor([1e-6]), torch.tensor([0])))
    assert not k_cache[slot // block_size, slot % block_size, 1].any()


def test_write_kv_cache_int4_matches_vllm(device, vllm_int4):
    """The bytes vLLM 0.34.0's own int4_per_token_head writer stores for the
    same inputs (its ``reshape_and_cache_int4``; where vLLM is installed):
    its other readers of the cache see what they expect."""
    upstream = vllm_int4
    key, value, slots = _int4_write_inputs(96, torch.float16, device, seed=4)
    key, value = key * 3, value  # not on the grid after rotation: real rounding
    written = []
    for write in ("ours", "vllm"):
        k_cache = torch.zeros(4, 16, 2, 48, dtype=torch.uint8, device=device)
        v_cache = torch.zeros_like(k_cache)
        k_scale = torch.zeros(4, 16, 2, device=device)
        v_scale = torch.zeros_like(k_scale)
        if write == "ours":
            write_kv_cache(key, value, k_cache, v_cache, slots, k_scale=k_scale, v_scale=v_scale)
        else:
            upstream.reshape_and_cache_int4(
                key, value, k_cache, v_cache, slots, k_scale_cache=k_scale, v_scale_cache=v_scale
            )
        written.append([t.view(torch.uint8) for t in (k_cache, v_cache, k_scale, v_scale)])
    for ours, theirs in zip(*written, strict=True):
        assert torch.equal(ours, theirs)


def _cos_sin_cache(rotary_dim, max_position, dtype, base=10000.0):
    """Cosines then sines of ``position * base ** (-2i / rotary_dim)``, as
    vLLM's rotary embeddings tabulate them."""
    inverse_frequency = base ** -(torch.arange(0, rotary_dim, 2).double() / rotary_dim)
    angles = torch.arange(max_position).double()[:, None] * inverse_frequency[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)


ROPE_CASES = [
    # dtype, is_neox, head size, rotary dim, cache dtype, its scales, layout; five run on the CPU
    (torch.bfloat16, True, 128, 128, torch.bfloat16, None, "packed_nhd"),
    (torch.float16, False, 80, 80, torch.float16, None, "separate"),  # NeoX pairs 40 apart
    (torch.float32, True, 96, 32, torch.float32, None, "packed_hnd"),  # partial rotary
    (torch.float16, True, 64, 64, torch.int8, "token_head", "packed_nhd"),
    (torch.float16, False, 64, 32, INT4_KV_DTYPE, "token_head", "separate"),
    (torch.bfloat16, True, 256, 256, torch.float8_e4m3fn, "tensor", "packed_nhd"),
    (torch.bfloat16, False, 128, 64, torch.float8_e4m3fn, "token_head", "separate"),
    (torch.bfloat16, True, 512, 512, torch.bfloat16, None, "packed_hnd"),
]


@pytest.mark.parametrize(
    "dtype,is_neox,head_size,rotary_dim,cache_dtype,scaled,layout",
    ROPE_CASES if HAS_GPU else ROPE_CASES[:5],
)
def test_rope_and_write_kv_cache(
    dtype, is_neox, head_size, rotary_dim, cache_dtype, scaled, layout, device
):
    arch = GpuArch.of_device(device)
    if not arch.supports_kv_dtype(cache_dtype):
        pytest.skip(f"{cache_dtype} has no hardware support on {arch.name} (see GpuArch)")
    check_rope_and_write(
        dtype=dtype,
        is_neox=is_neox,
        head_size=head_size,
        rotary_dim=rotary_dim,
        cache_dtype=cache_dtype,
        scaled=scaled,
        layout=layout,
        device=device,
    )


def check_rope_and_write(
    *,
    dtype,
    is_neox,
    head_size,
    rotary_dim,
    cache_dtype,
    scaled,
    layout,
    device,
    num_tokens=21,
    num_q_heads=6,
    num_kv_heads=2,
    block_size=16,
    seed=5,
):
    """vLLM's RoPE + KV-cache fusion: queries and keys, strided views of one
    QKV buffer as vLLM splits it, turn in place to the reference rotary
    embedding within one rounding of their dtype (every token, also those
    whose slot is skipped); values stay; the cache holds exactly what
    ``write_kv_cache`` stores for the turned keys, written independently
    (plain indexing, ``quantise_per_token_head``; an int4 cache within one
    code step). ``scaled``: the cache's scales, None, ``"tensor"`` or ``"token_head"``."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = -(-num_tokens // block_size) + 2
    sizes = [num_q_heads * head_size, num_kv_heads * head_size, num_kv_heads * head_size]
    qkv = (torch.randn(num_tokens, sum(sizes), generator=gen) * 3).to(dtype).to(device)
    query, key, value = (x.view(num_tokens, -1, head_size) for x in qkv.split(sizes, dim=-1))
    before = qkv.clone()
    cos_sin_cache = _cos_sin_cache(rotary_dim, 4096, dtype).to(device)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen).to(device)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[::4] = -1  # padding, or another rank's token: turned, not written
    slots = slots.to(device)
    cache_head_size = head_size // 2 if cache_dtype == INT4_KV_DTYPE else head_size
    k_cache, v_cache = kv_cache_views(
        num_blocks, block_size, num_kv_heads, cache_head_size, cache_dtype, device, layout
    )
    k_cache.view(torch.uint8).fill_(0)
    v_cache.view(torch.uint8).fill_(0)
    scales = {}
    if scaled == "tensor":
        scales = dict(k_scale=torch.tensor(0.05), v_scale=torch.tensor(0.02))
    elif scaled == "token_head":
        pages = torch.zeros(num_blocks, block_size, num_kv_heads, 2)
        scales = dict(k_scale=pages[..., 0], v_scale=pages[..., 1])
    scales = {name: scale.to(device) for name, scale in scales.items()}
    rope_and_write_kv_cache(
        query, key, value, k_cache, v_cache, slots,
        positions=positions, cos_sin_cache=cos_sin_cache, is_neox=is_neox, **scales,
    )  # fmt: skip

    q_before, k_before, v_before = (
        x.view(num_tokens, -1, head_size) for x in before.split(sizes, dim=-1)
    )  # fmt: skip
    for turned, original in ((query, q_before), (key, k_before)):
        want = reference_rotary_embedding(original, positions, cos_sin_cache, is_neox)
        # one rounding to the dtype, after float32 products and a sum (where they cancel)
        float32_error = 4 * torch.finfo(torch.float32).eps * original.abs().max().item()
        rounding = torch.finfo(dtype).eps
        torch.testing.assert_close(turned.double(), want, rtol=rounding, atol=float32_error)
        if rotary_dim < head_size:
            assert torch.equal(turned[..., rotary_dim:], original[..., rotary_dim:])
    assert torch.equal(value, v_before)

    written = slots >= 0
    blocks, offsets = slots[written] // block_size, slots[written] % block_size
    for x, cache, name in ((key, k_cache, "k_scale"), (value, v_cache, "v_scale")):
        got = cache[blocks, offsets]
        if cache_dtype == INT4_KV_DTYPE:
            # Off the grid of test_write_kv_cache_int4 the rotation's float32
            # sums may round a code the other way: within one code step of
            # the turned keys (the inverse rotation averages codes' errors).
            words = scales[name][blocks, offsets]
            step = (words.contiguous().view(torch.int32) & -16).view(torch.float32)
            error = (int4_vectors(got, words) - x[written].double()).abs()
            assert (error <= step.double()[..., None] * 1.001).all()
            continue
        if scaled == "token_head":
            want, want_scale = quantise_per_token_head(x[written], cache_dtype)
            assert torch.equal(scales[name][blocks, offsets], want_scale)
        elif scaled == "tensor":
            limit = FP8_RANGE[cache_dtype]
            want = (x[written].float() / scales[name]).clamp(-limit, limit).to(cache_dtype)
        else:
            want = x[written].to(cache_dtype)
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_rope_and_write_kv_cache_rejects_bad_inputs(device):
    k_cache, v_cache = kv_cache_views(2, 16, 2, 64, torch.float16, device, "separate")
    key = torch.zeros(4, 2, 64, dtype=torch.float16, device=device)
    query = torch.zeros(4, 4, 64, dtype=torch.float16, device=device)
    slots = torch.zeros(4, dtype=torch.int64, device=device)
    rope = dict(
        positions=torch.zeros(4, dtype=torch.int64, device=device),
        cos_sin_cache=torch.zeros(32, 64, dtype=torch.float16, device=device),
        is_neox=True,
    )
    with pytest.raises(ValueError, match=r"query must be \[4, num_q_heads, 64\]"):
        rope_and_write_kv_cache(query[:, :, :32], key, key, k_cache, v_cache, slots, **rope)
    with pytest.raises(ValueError, match="positions must be 1-D with at least 4 entries"):
        bad = dict(rope, positions=rope["positions"][:3])
        rope_and_write_kv_cache(query, key, key, k_cache, v_cache, slots, **bad)
    with pytest.raises(TypeError, match="positions.dtype must be int32 or int64"):
        bad = dict(rope, positions=rope["positions"].float())
        rope_and_write_kv_cache(query, key, key, k_cache, v_cache, slots, **bad)
    with pytest.raises(ValueError, match="rotary_dim even and at most 64"):
        bad = dict(rope, cos_sin_cache=torch.zeros(32, 66, dtype=torch.float16, device=device))
        rope_and_write_kv_cache(query, key, key, k_cache, v_cache, slots, **bad)
    with pytest.raises(ValueError, match=r"cos_sin_cache.stride\(1\) must be 1"):
        bad = dict(rope, cos_sin_cache=rope["cos_sin_cache"].t())
        rope_and_write_kv_cache(query, key, key, k_cache, v_cache, slots, **bad)


def test_write_kv_cache_rejects_bad_shapes(device):
    k_cache, v_cache = kv_cache_views(2, 16, 2, 64, torch.float16, device, "separate")
    key = torch.zeros(4, 3, 64, dtype=torch.float16, device=device)
    slots = torch.zeros(4, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="3 KV heads, the cache 2"):
        write_kv_cache(key, key, k_cache, v_cache, slots)
    fp8_k, fp8_v = kv_cache_views(2, 16, 3, 64, torch.float8_e4m3fn, device, "separate")
    with pytest.raises(ValueError, match="k_scale must be a one-element float32 tensor"):
        write_kv_cache(key, key, fp8_k, fp8_v, slots)
    int8_k, int8_v = kv_cache_views(2, 16, 3, 64, torch.int8, device, "separate")
    with pytest.raises(ValueError, match=r"k_scale must be \[num_blocks, block_size, num_kv"):
        write_kv_cache(key, key, int8_k, int8_v, slots, k_scale=torch.tensor(1.0))
    scales = torch.ones(2, 16, 3, device=device)
    with pytest.raises(ValueError, match=r"v_scale.shape must be \(2, 16, 3\)"):
        write_kv_cache(key, key, int8_k, int8_v, slots, k_scale=scales, v_scale=scales[:1])


def test_repeated_writes_reuse_the_first_launch(device):
    """Layers of a step write same-shaped tensors: each write lands in its own
    cache, and on a GPU the repeats start the compiled kernel without Triton's
    dispatch; a key that is not 16-byte aligned (specialised differently) gets
    a launch of its own."""
    gen = torch.Generator().manual_seed(1)
    num_tokens, num_kv_heads, head_size, block_size = 9, 2, 64, 16
    slots = torch.randperm(4 * block_size, generator=gen)[:num_tokens].to(device)
    dispatches, written = [], []
    run = JITFunction.run

    def counted(self, *args, **kwargs):
        dispatches[-1] += 1
        return run(self, *args, **kwargs)

    for offset in (0, 0, 1, 0):
        shape = (num_tokens, num_kv_heads, head_size)
        storage = torch.randn(num_tokens * num_kv_heads * head_size + offset, generator=gen)
        key = storage.half().to(device)[offset:].view(shape)  # offset 1: 2 bytes into it
        value = torch.randn(key.shape, generator=gen).half().to(device)
        written.append(weakref.ref(key))
        k_cache, v_cache = kv_cache_views(
            4, block_size, num_kv_heads, head_size, torch.float16, device, "packed_nhd"
        )
        dispatches.append(0)
        JITFunction.run = counted
        try:
            write_kv_cache(key, value, k_cache, v_cache, slots)
        finally:
            JITFunction.run = run
        for x, cache in ((key, k_cache), (value, v_cache)):
            stored = cache[slots // block_size, slots % block_size]
            torch.testing.assert_close(stored, x, atol=0, rtol=0)
    if HAS_GPU:
        assert dispatches[1] == 0 and dispatches[3] == 0
        assert dispatches[2] == 1  # misaligned: its own launch, through Triton's dispatch
    # The kept launches hold none of the tensors they were built with.
    del key, value, x, k_cache, v_cache, cache, stored
    gc.collect()
    assert all(ref() is None for ref in written)
