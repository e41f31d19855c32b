#!/usr/bin/env bash
# The README's first command: install, build, and continue three prompts with the
# bundled Llama-architecture checkpoint (tests/data/llama_gqa, random weights).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
model=tests/data/llama_gqa
echo "== cascade generate --model $model (greedy, 16 new tokens per prompt)"
./build/cascade generate --model "$model" --prompt-ids 1,17,250 --prompt-ids 42 --prompt-ids 7,7,7,7,7 \
  --max-new-tokens 16
echo "== the same prompt sampled twice with one seed (identical), then another seed"
for seed in 5 5 6; do
  ./build/cascade generate --model "$model" --prompt-ids 1,17,250 --max-new-tokens 12 \
    --temperature 0.8 --top-p 0.95 --seed "$seed" --json 2>/dev/null
done
