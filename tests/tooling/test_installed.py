# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""`pip install .` gave the patched vLLM: right version, our files, ROCm picks TRITON_ATTN."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import patchset  # noqa: E402


def test_installed_distribution_is_the_patched_build():
    import vllm

    site = Path(vllm.__file__).resolve().parent.parent
    dist = importlib.metadata.distribution("vllm")
    # the metadata must be the installed one, beside the package we import
    assert Path(dist.locate_file("vllm/__init__.py")).resolve() == site / "vllm" / "__init__.py"
    assert dist.version == patchset.patchset_version()
    for rel, data in patchset.overlay_files().items():
        assert (site / rel).read_bytes() == data, f"{rel} differs from the repo"
    assert "vllm" in importlib.metadata.entry_points(group="console_scripts").names
    requires = importlib.metadata.requires("vllm")
    for old, entry in patchset.load_pin()["requirement_overrides"].items():
        if old != "comment":
            assert old not in requires and entry["use"] in requires


# Runs in a fresh interpreter: vllm.platforms.rocm reads the GPU's gfx name at
# import, so a stand-in answers for torch.cuda there (no AMD GPU on this box).
_PRIORITIES = """
import json, sys, types
from unittest import mock
import torch
gfx = sys.argv[1]
with mock.patch.object(torch.cuda, "get_device_properties",
                       return_value=types.SimpleNamespace(gcnArchName=gfx)):
    import vllm.platforms.rocm as rocm
import vllm._aiter_ops as aiter
results = {}
for name, found, mha, rdna in [("plain", False, False, False), ("aiter", True, True, False),
                               ("rdna_aiter", False, False, True)]:
    with mock.patch.object(aiter, "is_aiter_found_and_supported", return_value=found), \\
         mock.patch.object(aiter.rocm_aiter_ops, "is_mha_enabled", return_value=mha), \\
         mock.patch.object(aiter.rocm_aiter_ops, "is_rdna_aiter_enabled", return_value=rdna):
        for connector in (False, True):
            order = rocm._get_backend_priorities(False, False, connector)
            results[f"{name}-connector{int(connector)}"] = [b.name for b in order]
print(json.dumps(results))
"""


@pytest.mark.parametrize("gfx", ["gfx942:sramecc+:xnack-", "gfx1100", "gfx1201"])
def test_rocm_prefers_triton_attn(gfx):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", _PRIORITIES, gfx],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    orders = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(orders) == {
        f"{n}-connector{c}" for n in ("plain", "aiter", "rdna_aiter") for c in (0, 1)
    }
    for case, order in orders.items():
        assert order[0] == "TRITON_ATTN", (case, order)
        assert order.count("TRITON_ATTN") == 1
    # the upstream fallbacks stay behind ours
    assert orders["aiter-connector0"][1:4] == [
        "ROCM_ATTN",
        "ROCM_AITER_FA",
        "ROCM_AITER_UNIFIED_ATTN",
    ]
    rdna_aiter = orders["rdna_aiter-connector0"]
    if gfx == "gfx1201":  # upstream puts its RDNA aiter backend first on RDNA4 only
        assert rdna_aiter[1:3] == ["ROCM_AITER_UNIFIED_ATTN", "ROCM_ATTN"]
    else:
        assert rdna_aiter[1] == "ROCM_ATTN"
        assert rdna_aiter.index("ROCM_AITER_UNIFIED_ATTN") > 1
    assert "ROCM_ATTN" not in orders["plain-connector1"]
