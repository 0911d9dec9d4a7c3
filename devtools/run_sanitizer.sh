#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
#
# compute-sanitizer (memcheck, then racecheck) over every kernel, in one command,
# from the repository root:
#   devtools/run_sanitizer.sh OUT_DIR
# Writes OUT_DIR/{memcheck,racecheck}.log and OUT_DIR/sanitizer_summary.txt;
# exits non-zero if the sanitizer reports an error or a result is wrong.
set -uo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '5,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
out=${1:-sanitizer}
mkdir -p "$out"
# One cudaMalloc per tensor: with PyTorch's caching allocator an overrun into a
# neighbouring tensor of the same segment would go unseen.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
# Compile outside the sanitizer; the sanitized runs take kernels from Triton's cache.
python3 -m devtools.sanitize_kernels > "$out/plain.log" 2>&1 || {
    echo "plain run failed: see $out/plain.log"; exit 1; }
status=0
: > "$out/sanitizer_summary.txt"
# racecheck tracks every shared-memory access and is far slower: it runs the
# cases that cover each kernel once (split-KV + merge, the pipelined decode of
# one split per sequence on sm_90, long-query, the Hopper long-query kernel
# with Q in registers and in shared memory (head 256) and with sliding window
# and softcap, both, fp8).
for tool in memcheck racecheck; do
    cases=()
    [ "$tool" = racecheck ] && cases=(decode decode_one_split prefill_all prefill_d128 prefill_d128_window prefill_d256 mixed fp8_decode)
    compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 50 \
        python3 -m devtools.sanitize_kernels "${cases[@]}" > "$out/$tool.log" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$out/$tool.log" | tail -1)
    echo "$tool: exit $rc; ${summary:-no summary line (see $tool.log)}" | tee -a "$out/sanitizer_summary.txt"
    [ "$rc" -eq 0 ] || status=1
done
exit $status
