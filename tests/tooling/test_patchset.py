# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The patch tool against the real pinned upstream sdist and wheel."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import patchset  # noqa: E402

PIN = patchset.load_pin()
ROCM = "vllm/platforms/rocm.py"
OVERLAY = sorted(patchset.overlay_files())


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root/vllm, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "vllm").rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def pristine_sdist(tmp_path_factory) -> Path:
    """The pinned sdist's source tree (vllm/ and PKG-INFO), unpacked once."""
    root = tmp_path_factory.mktemp("sdist")
    prefix = f"vllm-{PIN['version']}/"
    with tarfile.open(patchset.fetch("sdist")) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix + "vllm/") or m.name == prefix + "PKG-INFO"
        ]
        tar.extractall(root, members, filter="data")
    return root / prefix


@pytest.fixture(scope="session")
def pristine_wheel(tmp_path_factory) -> Path:
    """The pinned wheel as pip lays it out in site-packages (compiled .so files left out)."""
    root = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(patchset.fetch("wheel")) as wheel:
        wheel.extractall(root, [n for n in wheel.namelist() if not n.endswith(".so")])
    return root


@pytest.fixture
def sdist_tree(pristine_sdist, tmp_path) -> Path:
    copy = tmp_path / "vllm-src"
    shutil.copytree(pristine_sdist, copy)
    return copy


@pytest.fixture
def site_packages(pristine_wheel, tmp_path) -> Path:
    copy = tmp_path / "site-packages"
    shutil.copytree(pristine_wheel, copy)
    return copy


@pytest.mark.parametrize("kind", ["sdist", "installed"])
def test_apply_check_idempotence_revert(kind, sdist_tree, site_packages):
    root = sdist_tree if kind == "sdist" else site_packages
    target = root if kind == "sdist" else root / "vllm"
    before = tree_digest(root)

    assert "would apply" in patchset.check(target)
    assert "applied" in patchset.apply(target)
    after = tree_digest(root)
    overlay = patchset.overlay_files()
    for rel, data in overlay.items():
        assert (root / rel).read_bytes() == data
    rocm = (root / ROCM).read_text()
    assert "backends.insert(0, AttentionBackendEnum.TRITON_ATTN)" in rocm
    assert "backends.append(AttentionBackendEnum.TRITON_ATTN)" not in rocm
    changed = {rel for rel in after if before.get(rel) != after[rel]}
    bookkeeping = {rel for rel in changed if patchset.STATE_DIR_NAME in rel}
    assert changed - bookkeeping == set(overlay) | {ROCM}

    assert "already applied" in patchset.check(target)
    assert "nothing to do" in patchset.apply(target)
    assert tree_digest(root) == after

    assert "reverted" in patchset.revert(target)
    assert tree_digest(root) == before
    assert "not applied" in patchset.revert(target)


def test_wrong_version_is_refused(site_packages):
    before = tree_digest(site_packages)
    metadata = next(site_packages.glob("vllm-*.dist-info/METADATA"))
    metadata.write_text(
        metadata.read_text().replace(f"Version: {PIN['version']}", "Version: 0.32.1")
    )
    with pytest.raises(patchset.PatchSetError, match=rf"vLLM 0\.32\.1.*vLLM {PIN['version']}"):
        patchset.apply(site_packages / "vllm")
    before.pop(next(iter(before)))  # digests cover vllm/ only; METADATA is outside it
    assert tree_digest(site_packages).items() >= before.items()


def test_our_own_build_is_recognised(site_packages):
    metadata = next(site_packages.glob("vllm-*.dist-info/METADATA"))
    metadata.write_text(
        metadata.read_text().replace(
            f"Version: {PIN['version']}", f"Version: {patchset.patchset_version()}"
        )
    )
    with pytest.raises(patchset.PatchSetError, match="already a patched build"):
        patchset.apply(site_packages / "vllm")


def _repo_with_extra_patch(tmp_path: Path, patch_text: str) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "vllm", repo / "vllm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "patches", repo / "patches")
    (repo / "patches" / "9999-broken.patch").write_text(patch_text)
    return repo


def test_patch_that_does_not_apply_leaves_tree_untouched(sdist_tree, tmp_path):
    broken = (
        "--- a/vllm/platforms/cuda.py\n+++ b/vllm/platforms/cuda.py\n"
        "@@ -1,2 +1,2 @@\n-this line is not in cuda.py\n+nor is this\n context\n"
    )
    repo = _repo_with_extra_patch(tmp_path, broken)
    before = tree_digest(sdist_tree)
    with pytest.raises(
        patchset.PatchSetError, match="hunk 1 does not apply to vllm/platforms/cuda.py"
    ):
        patchset.apply(sdist_tree, repo=repo)
    assert tree_digest(sdist_tree) == before
    assert not (sdist_tree / "vllm" / patchset.STATE_DIR_NAME).exists()


def test_failure_while_writing_restores_everything(sdist_tree, monkeypatch):
    before = tree_digest(sdist_tree)
    real_write = patchset._write_file
    calls = []

    def failing_write(path, data, mode):
        calls.append(path)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        real_write(path, data, mode)

    monkeypatch.setattr(patchset, "_write_file", failing_write)
    with pytest.raises(patchset.PatchSetError, match="No space left"):
        patchset.apply(sdist_tree)
    assert tree_digest(sdist_tree) == before


def test_read_only_target_is_refused_untouched(sdist_tree, monkeypatch):
    """A read-only installation: apply names the target and the reason, and writes
    nothing. (The tests run as root, for whom chmod does not make files read-only,
    so the file system's EROFS is simulated for every write the tool makes.)"""
    before = tree_digest(sdist_tree)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    for name in ("mkdir", "write_bytes", "write_text"):
        monkeypatch.setattr(pathlib.Path, name, read_only)
    monkeypatch.setattr(patchset, "_write_file", read_only)
    with pytest.raises(patchset.PatchSetError, match=r"cannot write to .*Read-only file system"):
        patchset.apply(sdist_tree)
    monkeypatch.undo()
    assert tree_digest(sdist_tree) == before
    assert not (sdist_tree / "vllm" / patchset.STATE_DIR_NAME).exists()


def test_interrupted_apply_is_recovered(sdist_tree):
    """A process killed mid-apply leaves a journal; the next call restores the tree."""
    before = tree_digest(sdist_tree)
    killer = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); import patchset\n"
        "real = os.replace; count = [0]\n"
        "def dying_replace(a, b):\n"
        "    count[0] += 1\n"
        "    if count[0] == 3: os._exit(9)\n"
        "    real(a, b)\n"
        "os.replace = dying_replace\n"
        "patchset.apply(sys.argv[2])\n"
    )
    result = subprocess.run([sys.executable, "-c", killer, str(REPO / "scripts"), str(sdist_tree)])
    assert result.returncode == 9
    assert tree_digest(sdist_tree) != before  # really half-applied
    assert (sdist_tree / "vllm" / patchset.STATE_DIR_NAME / patchset.JOURNAL).exists()
    assert "interrupted" in patchset.check(sdist_tree)
    assert "restored" in patchset.revert(sdist_tree)
    assert tree_digest(sdist_tree) == before


def test_cli_reports_errors_with_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "patchset.py"), "apply", "--target", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "neither a vLLM source checkout" in result.stderr


def test_export_applies_to_pristine_sdist(pristine_sdist, tmp_path):
    out = tmp_path / "triton-attn.patch"
    patchset.export(out)
    text = out.read_text()
    assert text.startswith("From ") and "Subject: [PATCH]" in text
    for rel in [*OVERLAY, ROCM]:
        assert f"diff --git a/{rel} b/{rel}" in text
    check = subprocess.run(
        ["git", "apply", "--check", "-v", str(out)],
        cwd=pristine_sdist,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_apply_revert_leave_nothing_behind(sdist_tree):
    """apply + revert leave no temp files or bookkeeping behind."""
    patchset.apply(sdist_tree)
    patchset.revert(sdist_tree)
    assert not list((sdist_tree / "vllm").rglob("*.patchset-tmp"))
    assert not (sdist_tree / "vllm" / patchset.STATE_DIR_NAME).exists()
    assert (
        os.listdir(sdist_tree / "vllm" / "v1" / "attention" / "ops").count("triton_attention") == 0
    )


# The release before the pin: the drift guard is tested on the real pair.
PREVIOUS = "0.33.0"
REPLACED = "vllm/v1/attention/backends/triton_attn.py"


@pytest.fixture(scope="session")
def previous_sdist() -> Path:
    return patchset.fetch_sdist(PREVIOUS)


def _pin_recording(tmp_path, monkeypatch, replaced: dict, followed: dict | None = None) -> None:
    """Point the patch tool at a copy of the pin file with other records."""
    pin = dict(PIN, replaced=replaced, followed=PIN["followed"] if followed is None else followed)
    pin_file = tmp_path / "upstream.json"
    pin_file.write_text(json.dumps(pin))
    monkeypatch.setattr(patchset, "PIN_FILE", pin_file)


def test_every_file_we_replace_is_recorded_as_ported_from_the_pin():
    with patchset._sdist_reader(patchset.fetch("sdist"), PIN["version"]) as read:
        shipped = {rel for rel in OVERLAY if read(rel) is not None}
    assert set(PIN["replaced"]) == shipped
    for record in PIN["replaced"].values():
        assert record["ported_from"] == PIN["version"]


def test_check_refuses_a_port_from_an_older_release(
    sdist_tree, previous_sdist, tmp_path, monkeypatch
):
    """Ours ported from the previous release, checked against the pinned one:
    the refusal names both releases and the drift command to run."""
    with patchset._sdist_reader(previous_sdist, PREVIOUS) as read:
        old_sha = hashlib.sha256(read(REPLACED)).hexdigest()
    _pin_recording(tmp_path, monkeypatch, {REPLACED: {"ported_from": PREVIOUS, "sha256": old_sha}})
    before = tree_digest(sdist_tree)
    for command in (patchset.check, patchset.apply):
        with pytest.raises(patchset.PatchSetError) as refusal:
            command(sdist_tree)
        message = str(refusal.value)
        assert f"{REPLACED} in vLLM {PIN['version']}" in message
        assert f"ported from (vLLM {PREVIOUS}" in message
        assert f"drift --from {PREVIOUS} --to {PIN['version']}" in message
    assert tree_digest(sdist_tree) == before

    # the same for an upstream file ours re-implements in part
    worker = "vllm/v1/worker/cpu_worker.py"
    with patchset._sdist_reader(previous_sdist, PREVIOUS) as read:
        old_worker = {"ported_from": PREVIOUS, "sha256": hashlib.sha256(read(worker)).hexdigest()}
    _pin_recording(
        tmp_path, monkeypatch, PIN["replaced"], {worker: {**old_worker, "by": "our worker"}}
    )
    with pytest.raises(patchset.PatchSetError, match=f"{worker} in vLLM .* our worker follows"):
        patchset.check(sdist_tree)


def test_check_refuses_the_previous_release_naming_both(previous_sdist, tmp_path):
    prefix = f"vllm-{PREVIOUS}/"
    with tarfile.open(previous_sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix + "vllm/")]
        tar.extractall(tmp_path, [*members, tar.getmember(prefix + "PKG-INFO")], filter="data")
    with pytest.raises(
        patchset.PatchSetError, match=rf"vLLM {PREVIOUS}, but .* for vLLM {PIN['version']}"
    ):
        patchset.check(tmp_path / prefix)


def test_check_refuses_an_upstream_file_at_a_path_we_own(sdist_tree, tmp_path, monkeypatch):
    _pin_recording(tmp_path, monkeypatch, {})
    with pytest.raises(patchset.PatchSetError, match=f"ships {REPLACED}.*records no port"):
        patchset.check(sdist_tree)
    # and a record of a file we do not replace is stale
    _pin_recording(
        tmp_path,
        monkeypatch,
        {**PIN["replaced"], "vllm/attention/nothing.py": {"ported_from": "0", "sha256": "0"}},
    )
    with pytest.raises(patchset.PatchSetError, match="vllm/attention/nothing.py.*does not have"):
        patchset.check(sdist_tree)


def test_drift_prints_upstreams_changes_between_two_releases(previous_sdist):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "patchset.py"),
            "drift",
            "--from",
            PREVIOUS,
            "--to",
            PIN["version"],
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    new_sha = PIN["replaced"][REPLACED]["sha256"]
    assert f"# replaced {REPLACED}: changed (vLLM {PIN['version']}: sha256 {new_sha})" in out
    assert f"# patched {ROCM}: changed" in out
    # upstream's own lines, as the port read them
    assert f"--- vllm-{PREVIOUS}/{REPLACED}" in out
    assert "-        self.num_heads_kv = model_config.get_num_kv_heads(" in out
    assert "+        self.num_heads_kv = kv_cache_spec.num_kv_heads" in out
    assert "+def on_gfx1201() -> bool:" in out
    assert "# followed vllm/v1/worker/cpu_worker.py: changed" in out
    assert (
        "+        memory_fraction = vllm_config.cache_config.resolved_gpu_memory_utilization" in out
    )
    # a release against itself: nothing changed
    same = patchset.drift(PIN["version"], PIN["version"])
    assert f"# replaced {REPLACED}: unchanged" in same
