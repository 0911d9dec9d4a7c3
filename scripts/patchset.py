# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Lay our patch set over a vLLM tree, take it off again, or export it upstream.

The patch set is two things, both in this repository:

* ``vllm/``: files we own, at their upstream paths (copied over the tree);
* ``patches/NNNN-*.patch``: small unified-diff hunks on upstream files,
  applied in file-name order.

Subcommands::

    patchset.py apply  --target DIR   # lay vllm/ + patches/ over DIR
    patchset.py check  --target DIR   # dry run: would apply succeed?
    patchset.py revert --target DIR   # restore the original bytes
    patchset.py export --out FILE     # one git format-patch against the sdist
    patchset.py fetch  {wheel,sdist}  # download the pinned upstream artefact
    patchset.py drift  --from OLD [--to NEW]  # upstream's own diff of the files we change

``DIR`` is either a source checkout (it contains ``vllm/__init__.py``) or an
installed package (``site-packages/vllm``). It must be the pinned upstream
version (``upstream.json``). ``apply`` is atomic: every new file is computed in
memory first, the original bytes are saved in a journal inside the target, and
any failure (or an interrupted run, found by the next call) restores them.

Files of ``vllm/`` that upstream also ships replace upstream's whole, so an
upstream fix to one of them would silently vanish from our build. The pin file
records, for each, the upstream version ours was last ported from and that
file's sha256 there (``replaced``), and the same for upstream files that ours
re-implement in part (``followed``, e.g. the CPU worker's set-up that our
development worker repeats); every command that reads a target refuses one
whose file differs. Bumping the pin is then a deliberate port: ``drift``
prints what upstream changed in those files (and in the files ``patches/``
edit) between two releases, and the port ends by recording the new sha256.

This module uses only the standard library so it runs inside Docker builds and
``setup.py`` before anything else is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIN_FILE = REPO / "upstream.json"
STATE_DIR_NAME = ".triton_attn_patchset"
MANIFEST = "manifest.json"
JOURNAL = "journal.json"


class PatchSetError(Exception):
    """A refusal with a message meant for the user; the target is unchanged."""


# ----------------------------------------------------------------------------
# The pin and the upstream artefacts
# ----------------------------------------------------------------------------


def load_pin() -> dict:
    return json.loads(PIN_FILE.read_text())


def patchset_version() -> str:
    """Our distribution's version: the upstream one plus a local label."""
    pin = load_pin()
    return f"{pin['version']}+{pin['patchset']['name']}.{pin['patchset']['version']}"


def cache_dir() -> Path:
    return Path(os.environ.get("VLLM_TRITON_ATTN_CACHE", REPO / ".cache" / "upstream"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(kind: str) -> Path:
    """Path of the pinned upstream ``wheel`` or ``sdist``, downloaded if needed.

    ``VLLM_TRITON_ATTN_BASE_WHEEL`` / ``VLLM_TRITON_ATTN_BASE_SDIST`` name a
    local file instead (offline builds). Either way the sha256 must match the
    pin.
    """
    if kind not in ("wheel", "sdist"):
        raise PatchSetError(f"fetch: kind must be 'wheel' or 'sdist', got {kind!r}")
    pin = load_pin()
    want = pin[kind]
    local = os.environ.get(f"VLLM_TRITON_ATTN_BASE_{kind.upper()}")
    path = Path(local) if local else cache_dir() / want["filename"]
    if not path.exists():
        if local:
            raise PatchSetError(f"VLLM_TRITON_ATTN_BASE_{kind.upper()}={local} does not exist")
        url, _ = _index_entry(pin["index"], pin["package"], want["filename"])
        _download(url, path)
    got = _sha256(path)
    if got != want["sha256"]:
        raise PatchSetError(
            f"{path} has sha256 {got}, but upstream.json pins {want['sha256']} "
            f"for {want['filename']}"
        )
    return path


def fetch_sdist(version: str) -> Path:
    """The sdist of any upstream release: the pinned one checked against the
    pin, any other against the sha256 the package index publishes."""
    pin = load_pin()
    if version == pin["version"]:
        return fetch("sdist")
    filename = f"{pin['package']}-{version}.tar.gz"
    path = cache_dir() / filename
    if not path.exists():
        url, sha256 = _index_entry(pin["index"], pin["package"], filename)
        _download(url, path, sha256)
    return path


def _index_entry(index: str, package: str, filename: str) -> tuple[str, str | None]:
    """(download URL, published sha256) of one file on the package index."""
    request = urllib.request.Request(
        f"{index}/{package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for entry in files:
        if entry["filename"] == filename:
            return entry["url"], entry.get("hashes", {}).get("sha256")
    raise PatchSetError(f"{filename} is not listed on {index}/{package}/")


def _download(url: str, dest: Path, sha256: str | None = None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(dest.suffix + ".partial")
    print(f"patchset: downloading {dest.name}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=600) as response, open(partial, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)
    if sha256 is not None and _sha256(partial) != sha256:
        partial.unlink()
        raise PatchSetError(f"{dest.name} from {url} does not have its published sha256")
    os.replace(partial, dest)


# ----------------------------------------------------------------------------
# What we change: the overlay and the patches
# ----------------------------------------------------------------------------


def overlay_files(repo: Path = REPO) -> dict[str, bytes]:
    """Our own files, keyed by path relative to the tree root (``vllm/...``)."""
    files = {}
    for path in sorted((repo / "vllm").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[path.relative_to(repo).as_posix()] = path.read_bytes()
    return files


@dataclasses.dataclass
class Hunk:
    old_start: int
    old_lines: list[str]
    new_lines: list[str]


@dataclasses.dataclass
class FilePatch:
    source: str  # the .patch file it came from, for messages
    path: str  # relative to the tree root, e.g. vllm/platforms/rocm.py
    hunks: list[Hunk]


_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(text: str, source: str) -> list[FilePatch]:
    """Parse a unified diff (``git diff`` style) into per-file hunks."""
    patches: list[FilePatch] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            new_name = lines[i + 1][4:].strip().split("\t")[0]
            if new_name == "/dev/null":
                raise PatchSetError(f"{source}: deleting files is not supported")
            path = new_name[2:] if new_name.startswith(("a/", "b/")) else new_name
            patches.append(FilePatch(source, path, []))
            i += 2
            continue
        match = _HUNK_HEADER.match(line)
        if match:
            if not patches:
                raise PatchSetError(f"{source}: hunk before any file header")
            old_count = int(match.group(2) or 1)
            new_count = int(match.group(4) or 1)
            hunk = Hunk(int(match.group(1)), [], [])
            i += 1
            while i < len(lines) and (old_count > 0 or new_count > 0):
                body = lines[i]
                tag, content = body[:1], body[1:]
                if body.startswith("\\"):
                    i += 1
                    continue
                if tag in (" ", "\n"):
                    content = content if tag == " " else "\n"
                    hunk.old_lines.append(content)
                    hunk.new_lines.append(content)
                    old_count -= 1
                    new_count -= 1
                elif tag == "-":
                    hunk.old_lines.append(content)
                    old_count -= 1
                elif tag == "+":
                    hunk.new_lines.append(content)
                    new_count -= 1
                else:
                    raise PatchSetError(f"{source}: malformed hunk line {body!r}")
                i += 1
            if old_count or new_count:
                raise PatchSetError(f"{source}: truncated hunk for {patches[-1].path}")
            patches[-1].hunks.append(hunk)
            continue
        i += 1
    if not patches:
        raise PatchSetError(f"{source}: no file changes found")
    return patches


def apply_hunks(original: bytes, patch: FilePatch) -> bytes:
    """Apply every hunk exactly (no fuzz); the hunk may move, its context may not."""
    lines = original.decode("utf-8").splitlines(keepends=True)
    offset = 0
    for number, hunk in enumerate(patch.hunks, 1):
        expected = max(hunk.old_start - 1 + offset, 0)
        size = len(hunk.old_lines)
        found = None
        for distance in range(len(lines) + 1):
            for start in (expected - distance, expected + distance):
                if (
                    0 <= start <= len(lines) - size
                    and lines[start : start + size] == hunk.old_lines
                ):
                    found = start
                    break
            if found is not None:
                break
        if found is None:
            raise PatchSetError(
                f"{patch.source}: hunk {number} does not apply to {patch.path} "
                "(its context is not in the file: is this the pinned upstream version?)"
            )
        lines[found : found + size] = hunk.new_lines
        offset = found - (hunk.old_start - 1) + len(hunk.new_lines) - size
    return "".join(lines).encode("utf-8")


def patch_files(repo: Path = REPO) -> list[Path]:
    return sorted((repo / "patches").glob("*.patch"))


def check_ported(read_original, version: str, repo: Path = REPO) -> None:
    """Refuse a tree whose upstream files, where ours replace them whole
    (``replaced`` in the pin file) or re-implement part of them (``followed``),
    are not the ones ours were ported from."""
    pin = load_pin()
    replaced = pin.get("replaced", {})
    problems = []
    for rel, record in pin.get("followed", {}).items():
        if _digest(read_original(rel)) != record["sha256"]:
            problems.append(
                f"{rel} in vLLM {version} is not the upstream file {record['by']} follows "
                f"(vLLM {record['ported_from']}, sha256 {record['sha256'][:12]}): port "
                f"upstream's changes (scripts/patchset.py drift --from {record['ported_from']} "
                f"--to {version}), then record the new sha256 in upstream.json"
            )
    ours = overlay_files(repo)
    for rel in ours:
        upstream = read_original(rel)
        record = replaced.get(rel)
        if record is None:
            if upstream is not None:
                problems.append(
                    f"vLLM {version} ships {rel}, which ours replaces whole, but upstream.json "
                    "records no port of it: port upstream's file into ours and record its "
                    "sha256 under 'replaced'"
                )
            continue
        ported_from = record["ported_from"]
        if upstream is None:
            problems.append(
                f"{rel} was ported from vLLM {ported_from}, but vLLM {version} no longer "
                "ships it: decide what ours becomes and update 'replaced' in upstream.json"
            )
        elif _digest(upstream) != record["sha256"]:
            problems.append(
                f"{rel} in vLLM {version} (sha256 {_digest(upstream)[:12]}) is not the upstream "
                f"file ours was ported from (vLLM {ported_from}, sha256 {record['sha256'][:12]}): "
                f"port upstream's changes (scripts/patchset.py drift --from {ported_from} "
                f"--to {version}), then record the new sha256 in upstream.json"
            )
    for rel in sorted(set(replaced) - set(ours)):
        problems.append(f"upstream.json records a port of {rel}, which vllm/ does not have")
    if problems:
        raise PatchSetError("upstream drift:\n  " + "\n  ".join(problems))


def compute_changes(read_original, version: str, repo: Path = REPO) -> dict[str, bytes]:
    """New bytes for every path we touch in a tree of upstream ``version``,
    given ``read_original(path) -> bytes | None``."""
    check_ported(read_original, version, repo)
    changes = dict(overlay_files(repo))
    for patch_path in patch_files(repo):
        for file_patch in parse_patch(patch_path.read_text(), patch_path.name):
            if file_patch.path in changes:
                base = changes[file_patch.path]
            else:
                base = read_original(file_patch.path)
            if base is None:
                raise PatchSetError(f"{patch_path.name}: {file_patch.path} is not in the target")
            changes[file_patch.path] = apply_hunks(base, file_patch)
    return changes


# ----------------------------------------------------------------------------
# The target tree
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    root: Path  # the directory that holds the vllm package
    package: Path  # root / "vllm"
    version: str

    @property
    def state(self) -> Path:
        return self.package / STATE_DIR_NAME


_VERSION_RE = re.compile(r"^__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)['\"]", re.M)


def _read_version(root: Path, package: Path) -> str | None:
    """An installed package's dist-info wins (it names our own builds); then the
    version module; then a source tree's PKG-INFO."""
    for metadata in root.glob("vllm-*.dist-info/METADATA"):
        match = re.search(r"^Version:\s*(\S+)", metadata.read_text(), re.M)
        if match:
            return match.group(1)
    version_file = package / "_version.py"
    if version_file.exists():
        match = _VERSION_RE.search(version_file.read_text())
        if match:
            return match.group(1)
    if (root / "PKG-INFO").exists():
        match = re.search(r"^Version:\s*(\S+)", (root / "PKG-INFO").read_text(), re.M)
        if match:
            return match.group(1)
    return None


def resolve_target(directory: str | Path) -> Target:
    directory = Path(directory).resolve()
    if (directory / "vllm" / "__init__.py").exists():
        root, package = directory, directory / "vllm"
    elif directory.name == "vllm" and (directory / "__init__.py").exists():
        root, package = directory.parent, directory
    else:
        raise PatchSetError(
            f"{directory} is neither a vLLM source checkout (with vllm/__init__.py) "
            "nor an installed vllm package directory"
        )
    version = _read_version(root, package)
    pinned = load_pin()["version"]
    if version is None:
        raise PatchSetError(f"cannot tell the vLLM version of {directory}; expected {pinned}")
    base_version, _, local = version.partition("+")
    if local.startswith(load_pin()["patchset"]["name"]):
        raise PatchSetError(
            f"{directory} is already a patched build (vLLM {version}, installed from this "
            "project's wheel); there is nothing to apply or revert"
        )
    if base_version != pinned:
        raise PatchSetError(
            f"{directory} holds vLLM {version}, but this patch set is for vLLM {pinned} "
            "(upstream.json)"
        )
    return Target(root, package, version)


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _original_reader(target: Target, manifest: dict | None):
    """Read a file as upstream shipped it, even where our patch set already changed it."""
    saved = (manifest or {}).get("files", {})

    def read_original(rel: str) -> bytes | None:
        if rel in saved:
            backup = saved[rel]["backup"]
            return None if backup is None else (target.state / "originals" / backup).read_bytes()
        return _read(target.root / rel)

    return read_original


def _write_file(path: Path, data: bytes, mode: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.patchset-tmp")
    tmp.write_bytes(data)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def _restore(target: Target, entries: dict) -> None:
    """Put back the original bytes of every path in ``entries`` (manifest format)."""
    for rel, entry in entries.items():
        path = target.root / rel
        if entry["backup"] is None:
            if path.exists():
                path.unlink()
            _remove_empty_parents(path.parent, target.package)
        else:
            data = (target.state / "originals" / entry["backup"]).read_bytes()
            _write_file(path, data, entry.get("mode"))


def _remove_empty_parents(directory: Path, stop: Path) -> None:
    while directory != stop and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent


def recover(target: Target) -> bool:
    """Finish off an interrupted apply by restoring the journal's originals."""
    journal = _load_json(target.state / JOURNAL)
    if journal is None:
        return False
    _restore(target, journal["files"])
    for rel in journal["files"]:  # a write cut short leaves its temp file
        path = target.root / rel
        path.with_name(f".{path.name}.patchset-tmp").unlink(missing_ok=True)
    manifest = _load_json(target.state / MANIFEST)
    if manifest is None:
        shutil.rmtree(target.state)
    else:
        (target.state / JOURNAL).unlink()
    print(f"patchset: found an interrupted apply in {target.package}; restored it", file=sys.stderr)
    return True


def _check_untouched(target: Target, manifest: dict) -> None:
    """Refuse to work over files someone changed after our apply."""
    changed = [
        rel
        for rel, entry in manifest["files"].items()
        if _digest(_read(target.root / rel)) != entry["applied_sha256"]
    ]
    if changed:
        raise PatchSetError(
            f"these files changed since the patch set was applied to {target.package}: "
            + ", ".join(changed)
            + " (reinstall vLLM to start clean)"
        )


def plan(target: Target, repo: Path = REPO) -> tuple[dict, dict | None]:
    """Return (new bytes per path, current manifest) without writing anything."""
    manifest = _load_json(target.state / MANIFEST)
    if manifest is not None:
        _check_untouched(target, manifest)
    changes = compute_changes(_original_reader(target, manifest), target.version, repo)
    return changes, manifest


def _is_applied(target: Target, changes: dict, manifest: dict | None) -> bool:
    if manifest is None or set(manifest["files"]) != set(changes):
        return False
    return all(_read(target.root / rel) == data for rel, data in changes.items())


def apply(directory: str | Path, repo: Path = REPO) -> str:
    target = resolve_target(directory)
    recover(target)
    changes, manifest = plan(target, repo)
    if _is_applied(target, changes, manifest):
        return f"already applied to {target.package} (vLLM {target.version}); nothing to do"

    read_original = _original_reader(target, manifest)
    previous = (manifest or {}).get("files", {})
    touched = sorted(set(changes) | set(previous))
    # 1. Save every original (or its absence) and a journal naming them, so that
    #    a failure now, or a crash seen by the next call, can restore them.
    created_state = not target.state.exists()
    entries = {}
    try:
        (target.state / "originals").mkdir(parents=True, exist_ok=True)
        for index, rel in enumerate(touched):
            original = read_original(rel)
            backup = None
            if original is not None:
                backup = previous.get(rel, {}).get("backup") or f"{index:04d}"
                backup_path = target.state / "originals" / backup
                if not backup_path.exists():
                    backup_path.write_bytes(original)
            path = target.root / rel
            mode = (
                previous.get(rel, {}).get("mode")
                if rel in previous
                else (path.stat().st_mode & 0o7777 if path.exists() else None)
            )
            entries[rel] = {"backup": backup, "mode": mode}
        (target.state / JOURNAL).write_text(json.dumps({"files": entries}))
    except OSError as error:
        if created_state:
            shutil.rmtree(target.state, ignore_errors=True)
        raise PatchSetError(f"cannot write to {target.package}: {error}") from error

    # 2. Write the new files; on any failure put every original back.
    try:
        for rel in touched:
            if rel in changes:
                _write_file(target.root / rel, changes[rel], entries[rel]["mode"])
            else:  # changed by an older patch set, not by this one
                _restore(target, {rel: entries[rel]})
        new_manifest = {
            "patchset": patchset_version(),
            "files": {
                rel: {**entries[rel], "applied_sha256": _digest(changes[rel])} for rel in changes
            },
        }
        (target.state / MANIFEST).write_text(json.dumps(new_manifest, indent=1))
        (target.state / JOURNAL).unlink()
    except BaseException as error:
        _restore(target, entries)
        if manifest is None:
            shutil.rmtree(target.state, ignore_errors=True)
        else:
            (target.state / MANIFEST).write_text(json.dumps(manifest, indent=1))
            (target.state / JOURNAL).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise PatchSetError(f"apply failed, {target.package} restored: {error}") from error
        raise
    return f"applied {len(changes)} files to {target.package} (vLLM {target.version})"


def check(directory: str | Path) -> str:
    target = resolve_target(directory)
    if (target.state / JOURNAL).exists():
        return f"an interrupted apply is recorded in {target.package}; the next apply restores it"
    changes, manifest = plan(target)
    if _is_applied(target, changes, manifest):
        return f"already applied to {target.package}"
    lines = [f"would apply to {target.package} (vLLM {target.version}):"]
    for rel in sorted(changes):
        state = "modify" if _original_reader(target, manifest)(rel) is not None else "create"
        lines.append(f"  {state} {rel}")
    return "\n".join(lines)


def revert(directory: str | Path) -> str:
    target = resolve_target(directory)
    if recover(target) and not (target.state / MANIFEST).exists():
        return f"restored {target.package} after an interrupted apply"
    manifest = _load_json(target.state / MANIFEST)
    if manifest is None:
        return f"the patch set is not applied to {target.package}; nothing to revert"
    _check_untouched(target, manifest)
    _restore(target, manifest["files"])
    shutil.rmtree(target.state)
    return f"reverted {len(manifest['files'])} files in {target.package}"


def apply_to_fresh_tree(root: Path) -> None:
    """Write our changes into an unpacked upstream tree without any bookkeeping.

    Used when building a distribution: the tree is a scratch copy, so there is
    nothing to journal or revert.
    """
    target = resolve_target(root)  # the version check
    for rel, data in compute_changes(lambda rel: _read(root / rel), target.version).items():
        _write_file(root / rel, data, None)


# ----------------------------------------------------------------------------
# export: one upstream pull request's worth of change
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _sdist_reader(sdist: Path, version: str):
    """``read_original(path) -> bytes | None`` over an upstream sdist."""
    prefix = f"{load_pin()['package']}-{version}/"
    with tarfile.open(sdist) as tar:
        members = {
            m.name[len(prefix) :]: m
            for m in tar.getmembers()
            if m.isfile() and m.name.startswith(prefix)
        }

        def read_original(rel: str) -> bytes | None:
            member = members.get(rel)
            return None if member is None else tar.extractfile(member).read()

        yield read_original


def export(out: str | Path) -> str:
    sdist = fetch("sdist")
    pin = load_pin()
    with _sdist_reader(sdist, pin["version"]) as read_original:
        changes = compute_changes(read_original, pin["version"])
        originals = {rel: read_original(rel) for rel in changes}

    with tempfile.TemporaryDirectory() as work:
        git = [
            "git",
            "-C",
            work,
            "-c",
            "user.name=vllm-triton-attn",
            "-c",
            "user.email=noreply@vllm.ai",
        ]
        subprocess.run([*git, "init", "-q"], check=True)
        for rel, data in originals.items():
            if data is not None:
                _write_file(Path(work) / rel, data, None)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run(
            [*git, "commit", "-q", "--allow-empty", "-m", f"vLLM {pin['version']}"], check=True
        )
        for rel, data in changes.items():
            _write_file(Path(work) / rel, data, None)
        subprocess.run([*git, "add", "-A"], check=True)
        message = (
            "[Attention] Portable Triton-only TRITON_ATTN backend\n\n"
            "Replaces the Triton attention backend with a kernel library written for\n"
            "NVIDIA and AMD alike (split-KV decode, tiled prefill, plan/run split) and\n"
            f"makes it ROCm's first choice. Generated from patch set {patchset_version()}.\n"
        )
        subprocess.run([*git, "commit", "-q", "-m", message], check=True)
        patch = subprocess.run(
            [*git, "format-patch", "-1", "--stdout", "HEAD"], check=True, capture_output=True
        ).stdout
    Path(out).write_bytes(patch)
    return f"wrote {out}: {len(changes)} files against {sdist.name}"


# ----------------------------------------------------------------------------
# drift: what upstream changed in the files we change
# ----------------------------------------------------------------------------


def changed_upstream_files(repo: Path = REPO) -> dict[str, str]:
    """Every upstream path our patch set changes or follows, and how:
    ``replaced`` (ours replaces it whole), ``followed`` (ours re-implements a
    part of it) or ``patched`` (``patches/`` edit it)."""
    pin = load_pin()
    kinds = {rel: "replaced" for rel in pin.get("replaced", {})}
    kinds.update({rel: "followed" for rel in pin.get("followed", {})})
    for patch_path in patch_files(repo):
        for file_patch in parse_patch(patch_path.read_text(), patch_path.name):
            kinds.setdefault(file_patch.path, "patched")
    return dict(sorted(kinds.items()))


def drift(old: str, new: str | None = None, repo: Path = REPO) -> str:
    """Upstream's own unified diff, from release ``old`` to ``new`` (the pinned
    one by default), of every file our patch set replaces, follows or patches."""
    new = new or load_pin()["version"]
    with (
        _sdist_reader(fetch_sdist(old), old) as read_old,
        _sdist_reader(fetch_sdist(new), new) as read_new,
    ):
        sections = []
        for rel, kind in changed_upstream_files(repo).items():
            before, after = read_old(rel), read_new(rel)
            if before == after:
                sections.append(f"# {kind} {rel}: unchanged from vLLM {old} to {new}\n")
                continue
            diff = difflib.unified_diff(
                (before or b"").decode().splitlines(keepends=True),
                (after or b"").decode().splitlines(keepends=True),
                fromfile=f"vllm-{old}/{rel}",
                tofile=f"vllm-{new}/{rel}",
            )
            sha = "absent" if after is None else f"sha256 {_digest(after)}"
            sections.append(f"# {kind} {rel}: changed (vLLM {new}: {sha})\n" + "".join(diff))
    return "\n".join(sections)


# ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("apply", "check", "revert"):
        sub = commands.add_parser(name)
        sub.add_argument("--target", required=True, help="vLLM source checkout or installed vllm/")
    sub = commands.add_parser("export")
    sub.add_argument("--out", required=True, help="the .patch file to write")
    sub = commands.add_parser("fetch")
    sub.add_argument("kind", choices=("wheel", "sdist"))
    sub = commands.add_parser("drift")
    sub.add_argument("--from", dest="old", required=True, help="the release ours was ported from")
    sub.add_argument("--to", dest="new", help="the release to port to (default: the pinned one)")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            print(export(args.out))
        elif args.command == "fetch":
            print(fetch(args.kind))
        elif args.command == "drift":
            print(drift(args.old, args.new), end="")
        else:
            print({"apply": apply, "check": check, "revert": revert}[args.command](args.target))
    except PatchSetError as error:
        print(f"patchset {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
