#!/usr/bin/env bash
# Decode speed of two cascade binaries side by side in one run (a no-regression check
# for refactors, or an A/B of a kernel change): the same random model, prompts and
# flags, alternating A and B `ROUNDS` times, one process per run (warm-up excluded).
#   scripts/ab_decode.sh OLD_BINARY NEW_BINARY [MODEL_DIR]
# Environment: BATCHES="1 16", NEW_TOKENS=64, PROMPT_LEN=32, ROUNDS=2, DTYPE=bfloat16,
# and with no MODEL_DIR a random Llama made by RANDOM_MODEL (default: the DESIGN §10
# anchor, 2.70 B parameters: --hidden 2560 --intermediate 6912 --layers 32 --heads 20).
set -euo pipefail
a=$1 b=$2 model=${3:-}
if [ -z "$model" ]; then
  model=/tmp/ab-anchor
  [ -f "$model/config.json" ] || "${RANDOM_MODEL:-build/bench/random_model}" --out "$model" \
    ${ANCHOR_FLAGS:---hidden 2560 --intermediate 6912 --layers 32 --heads 20 --kv-heads 20 --vocab 32000} >/dev/null
fi
ids=$(python3 -c "import random; r=random.Random(0); print(','.join(str(r.randrange(1000)) for _ in range(${PROMPT_LEN:-32})))")
rate() {  # decode tokens/s of one run of binary $1 with the prompt flags that follow
  local bin=$1
  shift
  "$bin" generate --model "$model" --dtype "${DTYPE:-bfloat16}" "$@" --max-new-tokens "${NEW_TOKENS:-64}" --warmup \
    2>&1 >/dev/null | grep -o '([0-9.]* tokens/s decode)' | tail -1 | grep -o '[0-9.]*' | head -1
}
printf '%-6s %-28s %-28s\n' batch "A decode tok/s (per round)" "B decode tok/s (per round)"
for batch in ${BATCHES:-1 16}; do
  prompts=()
  for _ in $(seq "$batch"); do prompts+=(--prompt-ids "$ids"); done
  ra="" rb=""
  for _ in $(seq "${ROUNDS:-2}"); do  # interleaved, so drift hits both alike
    ra="$ra $(rate "$a" "${prompts[@]}" || echo FAILED)"
    rb="$rb $(rate "$b" "${prompts[@]}" || echo FAILED)"
  done
  printf '%-6s %-28s %-28s\n' "$batch" "$ra" "$rb"
done
