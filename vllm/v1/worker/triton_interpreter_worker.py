# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""The worker of the Triton-interpreter development platform
(``vllm.platforms.triton_interpreter``): vLLM's CPU worker minus its NUMA
memory binding, which needs vLLM's compiled CPU ops (absent from the CUDA
wheel) and means nothing for a development run."""

import math

import psutil

from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker


class TritonInterpreterWorker(CPUWorker):
    def __init__(
        self,
        vllm_config,
        local_rank: int,
        rank: int,
        distributed_init_method: str,
        is_driver_worker: bool = False,
    ):
        memory_fraction = vllm_config.cache_config.resolved_gpu_memory_utilization
        self.requested_cpu_memory = math.ceil(psutil.virtual_memory().total * memory_fraction)
        Worker.__init__(
            self,
            vllm_config,
            local_rank,
            rank,
            distributed_init_method,
            is_driver_worker=is_driver_worker,
        )
        self.parallel_config.disable_custom_all_reduce = True
