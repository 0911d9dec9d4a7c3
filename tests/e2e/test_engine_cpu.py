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


def transformers_greedy(model_dir: Path, dtype: str) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    outputs = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        generated = model.generate(
            ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        outputs.append(generated[0, ids.shape[1] :].tolist())
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


def run_offline(model_dir: Path, dtype: str) -> dict:
    env = dict(ENV, VLLM_ENABLE_V1_MULTIPROCESSING="0")  # one process: rpc returns objects
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _OFFLINE,
            str(model_dir),
            dtype,
            json.dumps(ENGINE_ARGS),
            json.dumps(PROMPTS),
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


def test_gemma4_style_model_with_512_wide_heads(tmp_path):
    """Gemma 4's layout: a sliding-window layer of head size 64, then a global
    layer of head size 512 (which vLLM sends to TRITON_ATTN where FA4 is
    absent), through decodes and chunked prefills beside them."""
    model = _make_tiny_model(tmp_path / "tiny-gemma4", "gemma4")
    result = run_offline(model, "float32")
    assert result["impls"] == ["vllm.v1.attention.backends.triton_attn.TritonAttentionImpl"]
    assert result["tokens"] == transformers_greedy(model, "float32")


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
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
        expected = logits.gather(-1, torch.tensor(tokens)[:, None])[:, 0]
        # fp16 activations (11-bit mantissa) through 2 layers: ~1e-2 in log-probability
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=3e-2, rtol=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_vllm_serve_answers_a_completion(tiny_model):
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "vllm"),
        "serve",
        str(tiny_model),
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
        "256",
        "--max-num-seqs",
        "4",
        "--kv-cache-memory-bytes",
        str(64 << 20),
    ]
    server = subprocess.Popen(
        command,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
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
            f"http://127.0.0.1:{port}/v1/completions",
            data=json.dumps(
                {
                    "model": str(tiny_model),
                    "prompt": PROMPTS[0],
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0.0,
                    "ignore_eos": True,
                    "return_token_ids": True,
                }
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            body = json.load(response)
        choice = body["choices"][0]
        expected = transformers_greedy(tiny_model, "float32")[0]
        assert choice["token_ids"] == expected, (choice, expected)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            code = server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert code in (0, -signal.SIGINT), f"vllm serve exited with {code}"
