#!/usr/bin/env bash
# The README's first command: install, build, and continue Python prompts with the
# bundled demo model (models/demo: 5.4 M parameters, Llama architecture, trained on
# Python sources by scripts/train_demo_model.py), in one process on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
model=models/demo
echo
echo "== cascade generate --model $model (sampled: temperature 0.7, top-p 0.95, seed 1)"
./build/cascade generate --model "$model" --max-new-tokens 60 --temperature 0.7 --top-p 0.95 --seed 1 \
  --prompt $'import os\n\n\ndef read_config(path):\n' \
  --prompt $'class Stack:\n    def __init__(self):\n' \
  --prompt $'for i in range(10):\n'
echo
echo "== the same model as token ids (--json), greedy"
./build/cascade generate --model "$model" --prompt $'def main():\n' --max-new-tokens 12 --json 2>/dev/null
