# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The real pinned vLLM engine with our TRITON_ATTN, on a CPU through the Triton
interpreter (the project's development platform), against transformers.

Each test runs vLLM in a fresh subprocess: the platform is chosen once per
process, and ours must be active from the first import.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm.config", reason="needs the installed vLLM (make test installs it)")

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [
    "The quick brown fox jumps over the lazy dog, then keeps on running far away",  # 4+ blocks
    "Paged attention",
    "Triton kernels run on NVIDIA and AMD GPUs alike.",
]
MAX_TOKENS = 12
ENV = dict(
    os.environ,
    VLLM_TRITON_ATTN_CPU_DEV="1",
    TRITON_INTERPRET="1",
    CUDA_VISIBLE_DEVICES="",  # keeps vLLM from disabling Triton without a driver
)
ENGINE_ARGS = dict(
    enforce_eager=True,
    block_size=16,
    max_model_len=256,
    max_num_seqs=4,
    max_num_batched_tokens=32,  # the long prompt is prefilled in chunks beside decodes
    enable_chunked_prefill=True,
    enable_prefix_caching=False,
    kv_cache_memory_bytes=64 << 20,
    seed=0,
)


def _make_tiny_model(out: Path, arch: str) -> Path:
    script = REPO / "scripts" / "make_tiny_model.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--arch", arch],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return _make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, real weights (``make serve``'s model), prepared once
    into the ignored models/ folder."""
    out = REPO / "models" / "smollm2-135m-instruct"
    script = REPO / "scripts" / "prepare_smollm2.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True)
    return out


def transformers_greedy(
    model_dir: Path,
    dtype: str,
    prompts=PROMPTS,
    max_new_tokens: int = MAX_TOKENS,
    stop_at_eos: bool = False,
) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    outputs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        eos = model.generation_config.eos_token_id if stop_at_eos else None
        generated = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        )
        tokens = generated[0, ids.shape[1] :].tolist()
        outputs.append(tokens[:-1] if stop_at_eos and tokens[-1] == eos else tokens)
    return outputs


_OFFLINE = """
import json, sys
from vllm import LLM, SamplingParams

def backends(worker):
    worker = getattr(worker, "worker", worker)  # the wrapper, in some executors
    context = worker.vllm_config.compilation_config.static_forward_context
    return sorted({f"{type(layer.impl).__module__}.{type(layer.impl).__name__}"
                   for layer in context.values() if hasattr(layer, "impl")})

if __name__ == "__main__":
    model, dtype, engine_args, prompts, max_tokens = sys.argv[1:]
    llm = LLM(model=model, dtype=dtype, attention_config={"backend": "TRITON_ATTN"},
              **json.loads(engine_args))
    params = SamplingParams(temperature=0.0, max_tokens=int(max_tokens),
                            ignore_eos=True, logprobs=1)
    outputs = llm.generate(json.loads(prompts), params)
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "logprobs": [[max(step.values(), key=lambda lp: lp.logprob).logprob
                      for step in o.outputs[0].logprobs] for o in outputs],
        "impls": llm.collective_rpc(backends)[0],
    }
    print("RESULT " + json.dumps(result))
"""


def run_offline(model_dir: Path, dtype: str, prompts=PROMPTS, **engine_args) -> dict:
    """Greedy outputs of ``prompts`` through the real engine (``ENGINE_ARGS``
    updated with ``engine_args``)."""
    env = dict(ENV, VLLM_ENABLE_V1_MULTIPROCESSING="0")  # one process: rpc returns objects
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _OFFLINE,
            str(model_dir),
            dtype,
            json.dumps(dict(ENGINE_ARGS, **engine_args)),
            json.dumps(prompts),
            str(MAX_TOKENS),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_offline_engine_matches_transformers_fp32(tiny_model):
    result = run_offline(tiny_model, "float32")
    # the engine really ran our implementation in every attention layer
    assert result["impls"] == ["vllm.v1.attention.backends.triton_attn.TritonAttentionImpl"]
    assert result["tokens"] == transformers_greedy(tiny_model, "float32")


# A prompt of more than 256 tokens: prefilled in chunks while the others decode.
LONG_PROMPT = (
    " ".join(
        f"Step {n}: the scheduler splits every long prompt into chunks, and each chunk "
        "reads the keys cached by the chunks before it."
        for n in range(1, 16)
    )
    + " Summarise the steps above in one sentence:"
)


def test_real_model_matches_transformers(smollm2):
    """SmolLM2-135M with its real weights: greedy tokens through the engine equal
    transformers', for a short prompt, a chat prompt and a long one prefilled in
    64-token chunks beside the others' decodes."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompts = [
        "The three primary colours are",
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
        LONG_PROMPT,
    ]
    assert len(tokenizer(LONG_PROMPT).input_ids) > 256
    result = run_offline(smollm2, "float32", prompts, max_model_len=1024, max_num_batched_tokens=64)
    assert result["impls"] == ["vllm.v1.attention.backends.triton_attn.TritonAttentionImpl"]
    assert result["tokens"] == transformers_greedy(smollm2, "float32", prompts)


def test_gemma4_style_model_with_512_wide_heads(tmp_path):
    """Gemma 4's layout: a sliding-window layer of head size 64, then a global
    layer of head size 512 (which vLLM sends to TRITON_ATTN where FA4 is
    absent), through decodes and chunked prefills beside them."""
    model = _make_tiny_model(tmp_path / "tiny-gemma4", "gemma4")
    result = run_offline(model, "float32")
    assert result["impls"] == ["vllm.v1.attention.backends.triton_attn.TritonAttentionImpl"]
    assert result["tokens"] == transformers_greedy(model, "float32")


_MULTIMODAL = """
import json, sys
import numpy as np
from PIL import Image
from vllm import LLM, SamplingParams

if __name__ == "__main__":
    model, engine_args, prompts, max_tokens = sys.argv[1:]
    llm = LLM(model=model, dtype="float32", attention_config={"backend": "TRITON_ATTN"},
              limit_mm_per_prompt={"image": 1}, **json.loads(engine_args))
    pixels = (np.random.RandomState(0).rand(56, 56, 3) * 255).astype("uint8")
    image = Image.fromarray(pixels)
    requests = [{"prompt": p, "multi_modal_data": {"image": image}} if "<start_of_image>" in p
                else p for p in json.loads(prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=int(max_tokens), ignore_eos=True,
                            logprobs=0, prompt_logprobs=0)
    result = []
    for o in llm.generate(requests, params):
        ids = list(o.prompt_token_ids) + list(o.outputs[0].token_ids)
        steps = o.prompt_logprobs[1:] + o.outputs[0].logprobs
        result.append({"ids": ids, "prompt_len": len(o.prompt_token_ids),
                       "logprobs": [step[token].logprob for step, token in zip(steps, ids[1:])]})
    print("RESULT " + json.dumps(result))
"""
MULTIMODAL_PROMPTS = [
    "Here is a picture: <start_of_image> and what it shows, in a few words, is",
    "A text-only request runs beside it.",
]


def test_multimodal_prefix_lm_image_tokens_attend_both_ways(tmp_path):
    """Gemma 3 with a vision tower, a multimodal prefix-LM: vLLM hands our
    builder each request's image range, and the image tokens attend to each
    other both ways. Every log-probability (prompt and generated, through
    chunked prefill and decodes beside a text-only request) matches
    transformers, which masks the same way; with the image attending only
    causally they would be far off."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    model_dir = _make_tiny_model(tmp_path / "tiny-gemma3-vision", "gemma3-vision")
    engine_args = dict(ENGINE_ARGS, max_num_batched_tokens=48)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _MULTIMODAL,
            str(model_dir),
            json.dumps(engine_args),
            json.dumps(MULTIMODAL_PROMPTS),
            str(MAX_TOKENS),
        ],
        capture_output=True,
        text=True,
        env=dict(ENV, VLLM_ENABLE_V1_MULTIPROCESSING="0"),
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    outputs = json.loads(line[len("RESULT ") :])

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Gemma3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    image = Image.fromarray((np.random.RandomState(0).rand(56, 56, 3) * 255).astype("uint8"))
    for prompt, output in zip(MULTIMODAL_PROMPTS, outputs, strict=True):
        has_image = "<start_of_image>" in prompt
        inputs = processor(
            text=[prompt], images=[[image]] if has_image else None, return_tensors="pt"
        )
        assert inputs["input_ids"][0].tolist() == output["ids"][: output["prompt_len"]]
        ids = torch.tensor([output["ids"]])
        extra = {"token_type_ids": torch.zeros_like(ids)}
        if has_image:
            extra["pixel_values"] = inputs["pixel_values"]
            extra["token_type_ids"][0, : output["prompt_len"]] = inputs["token_type_ids"][0]
            assert extra["token_type_ids"].sum() == 16  # the image tokens

        expected = _teacher_forced_logprobs(model, ids, **extra)
        # fp32 on both sides: only summation order differs
        torch.testing.assert_close(torch.tensor(output["logprobs"]), expected, atol=2e-3, rtol=0)
        if has_image:  # the test can tell: image tokens seeing only the past score otherwise
            causal = _teacher_forced_logprobs(
                model, ids, **dict(extra, token_type_ids=torch.zeros_like(ids))
            )
            assert (causal - expected).abs().max() > 0.1


def _teacher_forced_logprobs(model, ids, **inputs):
    """Log-probability of each token after the first, given the ones before it."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids, **inputs).logits
    return logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]


def test_offline_engine_fp16_logprobs_match_transformers(tiny_model):
    """fp16 may break greedy ties differently; its log-probabilities must still
    agree with fp32 transformers scoring the same tokens (teacher forcing)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_offline(tiny_model, "float16")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    for prompt, tokens, logprobs in zip(PROMPTS, result["tokens"], result["logprobs"], strict=True):
        prompt_ids = tokenizer(prompt).input_ids
        ids = torch.tensor([prompt_ids + tokens])
        expected = _teacher_forced_logprobs(model, ids)[len(prompt_ids) - 1 :]
        # fp16 activations (11-bit mantissa) through 2 layers: ~1e-2 in log-probability
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=3e-2, rtol=0)


# The worst log-probability error each per-token-head cache may add, from its
# rounding (measured on these prompts, the CPU box): int8 rounds each value by
# at most 1/254 of its head's absmax; through 30 layers that moved a token's
# log-probability by up to 0.10 (V scales 10% off move it by 0.67).
TOKEN_HEAD_LOGPROB_ERROR = {"int8_per_token_head": 0.25}


@pytest.mark.parametrize("kv_cache_dtype", list(TOKEN_HEAD_LOGPROB_ERROR))
def test_per_token_head_cache_logprobs_match_transformers(smollm2, kv_cache_dtype):
    """SmolLM2-135M served with ``--kv-cache-dtype int8_per_token_head`` or
    ``int4_per_token_head`` (our cache write stores the values and a scale per
    token and KV head inside vLLM's page; our kernels dequantise them): each
    generated token's log-probability against fp32 transformers scoring the
    same tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = PROMPTS[:1] + ["The capital of France is"]
    result = run_offline(smollm2, "float32", prompts, kv_cache_dtype=kv_cache_dtype)
    assert result["impls"] == ["vllm.v1.attention.backends.triton_attn.TritonAttentionImpl"]
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    worst = 0.0
    for prompt, tokens, logprobs in zip(prompts, result["tokens"], result["logprobs"], strict=True):
        prompt_ids = tokenizer(prompt).input_ids
        expected = _teacher_forced_logprobs(model, torch.tensor([prompt_ids + tokens]))
        error = (torch.tensor(logprobs) - expected[len(prompt_ids) - 1 :]).abs().max().item()
        worst = max(worst, error)
    print(f"{kv_cache_dtype}: worst log-probability error {worst:.3f}")
    assert worst < TOKEN_HEAD_LOGPROB_ERROR[kv_cache_dtype], worst


def _int4_kv_logprobs(model, ids):
    """``_teacher_forced_logprobs`` with every layer's keys (after RoPE, as
    vLLM caches them) and values stored as int4_per_token_head holds them and
    read back (``devtools.batches``' own quantiser)."""
    import transformers.models.llama.modeling_llama as llama

    from devtools.batches import quantise_int4
    from vllm.v1.attention.ops.triton_attention.reference import int4_vectors

    def through_int4(x):  # [..., head_size] float32
        return int4_vectors(*quantise_int4(x)).to(x.dtype)

    rope = llama.apply_rotary_pos_emb

    def rope_then_int4(q, k, cos, sin, *args, **kwargs):
        q, k = rope(q, k, cos, sin, *args, **kwargs)
        return q, through_int4(k)

    def values_through_int4(module, inputs, output):
        return through_int4(output.unflatten(-1, (-1, model.config.head_dim))).flatten(-2)

    hooks = [
        layer.self_attn.v_proj.register_forward_hook(values_through_int4)
        for layer in model.model.layers
    ]
    llama.apply_rotary_pos_emb = rope_then_int4
    try:
        return _teacher_forced_logprobs(model, ids)
    finally:
        llama.apply_rotary_pos_emb = rope
        for hook in hooks:
            hook.remove()


def test_int4_per_token_head_cache_logprobs_match_transformers(smollm2):
    """SmolLM2-135M served with ``--kv-cache-dtype int4_per_token_head`` (keys
    and values rotated, in 4-bit codes around a zero point, two per byte):
    each token's log-probability against fp32 transformers whose keys and
    values go through the same int4 storage (an independent quantiser). int4
    moves log-probabilities by far more than int8 (up to 1.12 against plain
    fp32 on these prompts), so plain transformers would not tell a wrong read
    from the rounding; the same storage on both sides does. What remains is
    codes a summation-order difference moves by one step (a whole int4 step,
    1/15 of the range): 0.40 on these prompts, the CPU box; V scales 10% off
    give 0.78."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = PROMPTS[:1] + ["The capital of France is"]
    result = run_offline(smollm2, "float32", prompts, kv_cache_dtype="int4_per_token_head")
    assert result["impls"] == ["vllm.v1.attention.backends.triton_attn.TritonAttentionImpl"]
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    worst = worst_plain = 0.0
    for prompt, tokens, logprobs in zip(prompts, result["tokens"], result["logprobs"], strict=True):
        prompt_ids = tokenizer(prompt).input_ids
        ids = torch.tensor([prompt_ids + tokens])
        served = torch.tensor(logprobs)
        expected = _int4_kv_logprobs(model, ids)[len(prompt_ids) - 1 :]
        plain = _teacher_forced_logprobs(model, ids)[len(prompt_ids) - 1 :]
        worst = max(worst, (served - expected).abs().max().item())
        worst_plain = max(worst_plain, (served - plain).abs().max().item())
    print(f"int4: worst error {worst:.3f} against int4 storage, {worst_plain:.3f} against none")
    assert worst < 0.6, worst


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_vllm_serve_answers_a_chat_question(smollm2):
    """``make serve``'s job: vllm serve on SmolLM2 (the Makefile's arguments)
    answers a chat completion, with transformers' greedy tokens."""
    from transformers import AutoTokenizer

    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "vllm"),
        "serve",
        str(smollm2),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--attention-backend",
        "TRITON_ATTN",
        "--enforce-eager",
        "--block-size",
        "16",
        "--max-model-len",
        "1024",
        "--max-num-seqs",
        "4",
        "--kv-cache-memory-bytes",
        str(128 << 20),
    ]
    server = subprocess.Popen(
        command,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    question = [{"role": "user", "content": "What is the capital of France?"}]
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, server.stdout.read()[-6000:]
            assert time.monotonic() < deadline, "vllm serve did not come up in 10 minutes"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                time.sleep(2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(
                {"model": str(smollm2), "messages": question, "max_tokens": 16, "temperature": 0.0}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.load(response)["choices"][0]["message"]["content"]
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            code = server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert code in (0, -signal.SIGINT), f"vllm serve exited with {code}"
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
    (expected,) = transformers_greedy(
        smollm2, "float32", [prompt], max_new_tokens=16, stop_at_eos=True
    )
    assert answer == tokenizer.decode(expected, skip_special_tokens=True)
    assert "Paris" in answer
