# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Every tool starts: the developer tools (``python -m devtools.<tool>``), the
packaging tool and the model makers (``scripts/``) answer ``--help``,
which imports all they import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVTOOLS = sorted(
    path.stem
    for path in (REPO / "devtools").glob("*.py")
    if path.stem not in ("__init__", "batches")  # the package, and a library module
)
SHELL_TOOLS = sorted((REPO / "devtools").glob("*.sh"))
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))


def _help(command: list[str]) -> str:
    # Without TRITON_INTERPRET: a tool runs as a user starts it.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [*command, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_tool_is_listed():
    assert "bench_attention" in DEVTOOLS and "compile_matrix" in DEVTOOLS
    assert {path.name for path in SCRIPTS} == {
        "patchset.py",
        "make_tiny_model.py",
        "prepare_smollm2.py",
    }


@pytest.mark.parametrize("tool", DEVTOOLS)
def test_devtool_answers_help(tool):
    assert "usage:" in _help([sys.executable, "-m", f"devtools.{tool}"])


@pytest.mark.parametrize("script", SHELL_TOOLS, ids=lambda path: path.name)
def test_shell_tool_answers_help(script):
    assert _help(["bash", str(script)]).strip()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_script_answers_help(script):
    assert "usage:" in _help([sys.executable, str(script)])
