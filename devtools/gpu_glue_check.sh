#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The backend's GPU glue tests on a GPU machine that has torch and Triton but no vLLM.
#
# Installs the bundle of `python -m devtools.vllm_python_bundle` (.vllm-python/,
# or $VLLM_PYTHON_BUNDLE) into a temporary site directory, puts this checkout's
# own vllm/ files over it, replaces vLLM's compiled extensions with the stand-ins
# in devtools/vllm_standins/, then runs tests/backend/test_backend_on_gpu.py
# and the GPU kernel tests of the launch path. The log goes to LOG (default
# glue_check.log) as well as to the terminal.
#
#   bash devtools/gpu_glue_check.sh [LOG]
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '3,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
log=$(realpath -m "${1:-glue_check.log}")
bundle=${VLLM_PYTHON_BUNDLE:-.vllm-python}
if [ ! -f "$bundle/vllm.tgz" ]; then
  echo "no $bundle/vllm.tgz: run 'python -m devtools.vllm_python_bundle' where vLLM is installed" >&2
  exit 2
fi
site=$(mktemp -d /tmp/vllm-python.XXXXXX)
trap 'rm -rf "$site"' EXIT
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
  --target "$site" "$bundle"/wheels/*.whl
tar xzf "$bundle/vllm.tgz" -C "$site"
cp -r vllm/. "$site/vllm/"
cp devtools/vllm_standins/_C_stable_libtorch.py "$site/vllm/_C_stable_libtorch.py"
rm -rf "$site/vllm/vllm_flash_attn"
cp devtools/vllm_standins/vllm_flash_attn.py "$site/vllm/vllm_flash_attn.py"

export PYTHONPATH="$site" PYTHONUNBUFFERED=1
{
  echo "# $(date -u +%FT%TZ) commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  python3 -c 'import torch, triton, vllm; print("#", torch.cuda.get_device_name(), "torch",
torch.__version__, "triton", triton.__version__, "vllm", vllm.__version__)'
  python3 -m pytest -p no:cacheprovider -v -rfEs \
    tests/backend/test_backend_on_gpu.py \
    tests/kernels/test_batch_launches.py tests/kernels/test_graph_replay.py
} 2>&1 | tee "$log"
