# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Stand-in for vLLM's compiled ``vllm._C_stable_libtorch`` on a GPU machine
without vLLM's binaries (``devtools/gpu_glue_check.sh``).

``vllm.platforms.cuda`` imports the extension unconditionally; importing this
module instead also answers the capability queries that vLLM's quantisation
utilities make at import time (``torch.ops._C.cutlass_*``): "not supported",
so no code path that needs a compiled kernel is taken. Nothing else of the
extension exists: a call to any of its kernels fails as unregistered.
"""

import torch

_library = torch.library.Library("_C", "FRAGMENT")
for _query in (
    "cutlass_scaled_mm_supports_fp8",
    "cutlass_scaled_mm_supports_block_fp8",
    "cutlass_scaled_mm_supports_fp4",
    "cutlass_group_gemm_supported",
):
    _library.define(f"{_query}(int cuda_device_capability) -> bool")
    _library.impl(_query, lambda cuda_device_capability: False, "CompositeExplicitAutograd")
