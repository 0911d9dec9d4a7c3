#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Really build both Dockerfiles on a machine without registry access.
#
# Registry base images (nvidia/cuda, rocm/*) cannot be pulled here, so stand-in
# bases are made locally: a debootstrapped Debian with Python for
# Dockerfile.cuda, and that base plus vLLM 0.34.0 from PyPI for Dockerfile.rocm.
# Each image is then asked, through Python, which TRITON_ATTN it carries.
# Needs root, Debian's docker.io and debootstrap. The daemon this script starts
# is stopped again, and its bridge and iptables rules are removed, on exit.
#
#   sudo bash devtools/docker_standin_build.sh [cuda|rocm|all]
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '3,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
which=${1:-all}
work=$(mktemp -d /tmp/standin.XXXXXX)
dockerd_pid=""

cleanup() {
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
    ip link delete docker0 2>/dev/null || true
    # dockerd's own chains, the jumps into them and its docker0 rules
    for table in nat filter; do
      iptables -t "$table" -S 2>/dev/null | grep -E '^-A .*(-j DOCKER|docker0)' | sed 's/^-A/-D/' |
        while read -r rule; do read -ra args <<<"$rule"; iptables -t "$table" "${args[@]}" || true; done
      for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N DOCKER/ {print $2}'); do
        iptables -t "$table" -F "$chain" && iptables -t "$table" -X "$chain" || true
      done
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  dockerd --iptables=true >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi

if ! docker image inspect standin/python-base:bookworm >/dev/null 2>&1; then
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,git,ca-certificates \
    bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log"
  # Trust what this host trusts (a TLS-inspecting proxy's CA, where there is one).
  cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
  tar -C "$work/rootfs" -c . | docker import \
    --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    - standin/python-base:bookworm
fi

check='import importlib.metadata as m, vllm.v1.attention.backends.triton_attn as t
from vllm.v1.attention.backends.registry import AttentionBackendEnum as E
print("vllm", m.version("vllm"), "| TRITON_ATTN ->", E.TRITON_ATTN.get_path())
print("ours:", hasattr(t.TritonAttentionMetadataBuilder, "plan_for"), t.__file__)'

if [ "$which" = cuda ] || [ "$which" = all ]; then
  docker build -f Dockerfile.cuda --build-arg BASE_IMAGE=standin/python-base:bookworm \
    -t vllm-triton-attn:cuda-standin .
  docker run --rm --entrypoint python3 -e CUDA_VISIBLE_DEVICES= vllm-triton-attn:cuda-standin \
    -c "$check"
fi

if [ "$which" = rocm ] || [ "$which" = all ]; then
  if ! docker image inspect standin/vllm-0.34.0:bookworm >/dev/null 2>&1; then
    # A stand-in for a ROCm image that ships vLLM 0.34.0 (installed system-wide).
    docker rm -f standin-vllm >/dev/null 2>&1 || true
    docker run --name standin-vllm standin/python-base:bookworm \
      python3 -m pip install --break-system-packages --no-cache-dir vllm==0.34.0
    docker commit standin-vllm standin/vllm-0.34.0:bookworm
    docker rm standin-vllm
  fi
  docker build -f Dockerfile.rocm --build-arg BASE_IMAGE=standin/vllm-0.34.0:bookworm \
    -t vllm-triton-attn:rocm-standin .
  docker run --rm --entrypoint python3 -e CUDA_VISIBLE_DEVICES= vllm-triton-attn:rocm-standin \
    -c "$check"
  # A base without vLLM, and one with another vLLM version, must both be refused.
  if docker build -f Dockerfile.rocm --build-arg BASE_IMAGE=standin/python-base:bookworm \
      -t vllm-triton-attn:rocm-wrong . >"$work/none.log" 2>&1; then
    echo "Dockerfile.rocm built on a base without vLLM" >&2
    exit 1
  fi
  grep -o "Dockerfile.rocm: BASE_IMAGE has no vLLM[^\"]*" "$work/none.log" | head -1
  docker rm -f standin-relabel >/dev/null 2>&1 || true
  docker run --name standin-relabel standin/vllm-0.34.0:bookworm bash -c \
    'sed -i "s/^Version: 0.34.0$/Version: 0.32.1/" /usr/local/lib/python3*/dist-packages/vllm-0.34.0.dist-info/METADATA'
  docker commit standin-relabel standin/vllm-0.32.1-relabelled:bookworm >/dev/null
  docker rm standin-relabel >/dev/null
  if docker build -f Dockerfile.rocm --build-arg BASE_IMAGE=standin/vllm-0.32.1-relabelled:bookworm \
      -t vllm-triton-attn:rocm-wrong . >"$work/wrong.log" 2>&1; then
    echo "Dockerfile.rocm built on a vLLM 0.32.1 base" >&2
    exit 1
  fi
  grep -o "patchset apply: error: .*" "$work/wrong.log" | head -1
fi
