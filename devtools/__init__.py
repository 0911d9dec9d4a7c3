# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Developer tools: benchmarks, A/B timing, tuning, profiling, the compile
matrix, the sanitizer driver and result plots. Each is a module with a
command line, run from the repository root as ``python -m devtools.<tool>``
(``--help`` says how). They import the kernel library, never vLLM's glue.
"""
