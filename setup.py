# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Build the patched vLLM distribution: ``pip install .``.

Like vLLM's own precompiled-wheel development install there is no compile
step: the pinned upstream wheel (``upstream.json``; downloaded, or a local file
named by ``VLLM_TRITON_ATTN_BASE_WHEEL``) is unpacked into the build tree, our
``vllm/`` overlay and ``patches/`` are laid over it by ``scripts/patchset.py``,
and the result is packed as ``vllm`` version ``<upstream>+tritonattn.X`` with
upstream's dependency list (less the pin file's ``requirement_overrides``),
entry points and platform tag.
"""

import email.parser
import re
import shutil
import sys
import zipfile
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70
    from wheel.bdist_wheel import bdist_wheel

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts"))
import patchset  # noqa: E402

UPSTREAM_WHEEL = patchset.fetch("wheel")
PIN = patchset.load_pin()


def _upstream_metadata():
    with zipfile.ZipFile(UPSTREAM_WHEEL) as wheel:
        info = f"{PIN['package']}-{PIN['version']}.dist-info"
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    return metadata, entry_points


def _requirements(metadata):
    """Split upstream's Requires-Dist into install_requires and extras_require,
    with the pin file's ``requirement_overrides`` in place of upstream's."""
    overrides = {
        old: entry["use"]
        for old, entry in PIN.get("requirement_overrides", {}).items()
        if old != "comment"
    }
    unused = set(overrides)
    install, extras = [], {name: [] for name in metadata.get_all("Provides-Extra") or []}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement, _, marker = line.partition(";")
        if requirement.strip() in overrides:
            unused.discard(requirement.strip())
            requirement = overrides[requirement.strip()]
            line = f"{requirement}; {marker.strip()}" if marker.strip() else requirement
        match = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if match is None:
            install.append(line.strip())
            continue
        rest = marker.replace(match.group(0), "").strip()
        rest = re.sub(r"^(and|or)\s+|\s+(and|or)$", "", rest).strip()
        extras.setdefault(match.group(1), []).append(
            f"{requirement.strip()}; {rest}" if rest else requirement.strip()
        )
    if unused:
        raise SystemExit(
            f"upstream.json overrides {sorted(unused)}, which vLLM {PIN['version']} "
            "does not require: remove the stale overrides"
        )
    return install, extras


def _entry_points(text):
    groups, group = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            group = groups.setdefault(line[1:-1], [])
        elif line and group is not None:
            group.append(line)
    return groups


def _platform_tag():
    # e.g. vllm-0.34.0-cp38-abi3-manylinux_2_28_x86_64.whl -> (cp38, abi3, manylinux_2_28_x86_64)
    python, abi, platform = UPSTREAM_WHEEL.name[: -len(".whl")].split("-")[-3:]
    return python, abi, platform


class BuildPatchedVllm(build_py):
    """Unpack upstream's ``vllm/`` into the build tree and apply the patch set."""

    def run(self):
        build_lib = Path(self.build_lib)
        shutil.rmtree(build_lib / "vllm", ignore_errors=True)  # no stale files from a last build
        with zipfile.ZipFile(UPSTREAM_WHEEL) as wheel:
            members = [name for name in wheel.namelist() if name.startswith("vllm/")]
            wheel.extractall(build_lib, members)
            # The version check in patchset reads the dist-info beside the package.
            info = f"{PIN['package']}-{PIN['version']}.dist-info/METADATA"
            wheel.extract(info, build_lib)
        patchset.apply_to_fresh_tree(build_lib)
        (build_lib / info).unlink()
        (build_lib / info).parent.rmdir()

    def get_outputs(self, include_bytecode=True):
        return [str(p) for p in (Path(self.build_lib) / "vllm").rglob("*") if p.is_file()]

    def get_source_files(self):
        return []


class UpstreamTagWheel(bdist_wheel):
    """Our wheel carries upstream's compiled extensions, so it keeps their tag."""

    def get_tag(self):
        return _platform_tag()


class BinaryDistribution(Distribution):
    """Upstream's ``*.so`` files ride along: install to platlib, not purelib."""

    def has_ext_modules(self):
        return True


metadata, entry_points = _upstream_metadata()
install_requires, extras_require = _requirements(metadata)
entry_points = _entry_points(entry_points)
# The CPU development platform; inactive unless VLLM_TRITON_ATTN_CPU_DEV=1.
entry_points.setdefault("vllm.platform_plugins", []).append(
    "triton_interpreter = vllm.platforms.triton_interpreter:register"
)

setup(
    name="vllm",
    version=patchset.patchset_version(),
    description=(
        "vLLM with a portable, Triton-only attention backend (TRITON_ATTN) "
        f"for NVIDIA and AMD GPUs; based on vLLM {PIN['version']}"
    ),
    license="Apache-2.0",
    python_requires=metadata["Requires-Python"],
    install_requires=install_requires,
    extras_require=extras_require,
    entry_points=entry_points,
    # Declared so that setuptools runs build_py; its files come from the wheel.
    packages=["vllm"],
    cmdclass={"build_py": BuildPatchedVllm, "bdist_wheel": UpstreamTagWheel},
    distclass=BinaryDistribution,
    zip_safe=False,
)
