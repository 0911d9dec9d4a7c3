# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The README's commands as the Makefile spells them."""

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("model", ["", "org/some-model"])
def test_serve_prints_a_curl_that_pastes(model):
    """``make serve`` prints a curl command; pasted into a shell it sends valid
    JSON naming the served model (its quotes survive the printing)."""
    dry_run = subprocess.run(
        ["make", "-n", "serve", f"MODEL={model}", "PORT=8123"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    (printer,) = [line for line in dry_run.stdout.splitlines() if line.startswith("printf")]
    printed = subprocess.run(["bash", "-c", printer], capture_output=True, text=True, check=True)
    command = printed.stdout.strip().removeprefix("try: ")
    words = shlex.split(command)
    assert words[:2] == ["curl", "http://127.0.0.1:8123/v1/chat/completions"]
    body = json.loads(words[words.index("-d") + 1])
    assert body["model"] == (model or "models/smollm2-135m-instruct")
    assert body["messages"][0]["role"] == "user" and body["max_tokens"] > 0
    assert body["temperature"] == 0  # greedy: the answer, not a sample of a small model
