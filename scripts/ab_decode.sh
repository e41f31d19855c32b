#!/usr/bin/env bash
# Decode speed of two cascade binaries side by side in one run (a no-regression check
# for refactors, or an A/B of a kernel change): the same random model, prompts and
# flags, alternating A and B `ROUNDS` times, one process per run (warm-up excluded).
#   scripts/ab_decode.sh OLD_BINARY NEW_BINARY [MODEL_DIR]
# Environment: BATCHES="1 16", NEW_TOKENS=64, PROMPT_LEN=32, ROUNDS=2, DTYPE=bfloat16,
# THREADS (generate --threads: compute threads of the one-process run; default LibTorch's),
# MAX_MEMORY (e.g. "cuda:0" = "100GiB": the run plans and starts its stages from a
# config with these budgets; empty = one process on the CPU, `generate --model`);
# PLACEMENT_EXTRA: more [placement] lines for that config (e.g. 'offload_compute = "cpu"');
# PLACEMENT_EXTRA_B: B's instead, to compare two placements (A and B may then be one binary);
# MAX_SEQ_LEN=512 (that config's runtime.max_seq_len: what the planner charges for KV).
# A MODEL_DIR without config.json (default /tmp/ab-anchor) first gets a random Llama
# from RANDOM_MODEL with ANCHOR_FLAGS (default: the DESIGN §10 anchor, 2.70 B
# parameters: --hidden 2560 --intermediate 6912 --layers 32 --heads 20).
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # spawned stages under root
a=$1 b=$2 model=${3:-/tmp/ab-anchor}
[ -f "$model/config.json" ] || "${RANDOM_MODEL:-build/bench/random_model}" --out "$model" \
  ${ANCHOR_FLAGS:---hidden 2560 --intermediate 6912 --layers 32 --heads 20 --kv-heads 20 --vocab 32000} >/dev/null
ids=$(python3 -c "import random; r=random.Random(0); print(','.join(str(r.randrange(1000)) for _ in range(${PROMPT_LEN:-32})))")
where=(--model "$model" --dtype "${DTYPE:-bfloat16}" ${THREADS:+--threads "$THREADS"})
where_b=("${where[@]}")
config() {  # a config with MAX_MEMORY and the [placement] lines $1
  local cfg
  cfg=$(mktemp --suffix=.toml)
  printf '[model]\npath = "%s"\ndtype = "%s"\n[placement]\nmax_memory = { %s }\n%s\n[runtime]\nmax_batch = %s\nmax_seq_len = %s\n' \
    "$model" "${DTYPE:-bfloat16}" "$MAX_MEMORY" "$1" "$(echo ${BATCHES:-1 16} | tr ' ' '\n' | sort -n | tail -1)" \
    "${MAX_SEQ_LEN:-512}" >"$cfg"
  echo "$cfg"
}
if [ -n "${MAX_MEMORY:-}" ]; then
  where=(--config "$(config "${PLACEMENT_EXTRA:-}")")
  where_b=(--config "$(config "${PLACEMENT_EXTRA_B-${PLACEMENT_EXTRA:-}}")")
fi
rate() {  # decode tokens/s of one run of binary $1 with the config flags in $2 and the prompt flags after
  local bin=$1 log
  local -n args=$2
  shift 2
  log=$(mktemp)
  if ! "$bin" generate "${args[@]}" "$@" --max-new-tokens "${NEW_TOKENS:-64}" --warmup 2>"$log" >/dev/null; then
    tail -5 "$log" >&2  # say why, on stderr, and the round reads FAILED
    return 1
  fi
  grep -o '([0-9.]* tokens/s decode)' "$log" | tail -1 | grep -o '[0-9.]*' | head -1
}
printf '%-6s %-28s %-28s\n' batch "A decode tok/s (per round)" "B decode tok/s (per round)"
for batch in ${BATCHES:-1 16}; do
  prompts=()
  for _ in $(seq "$batch"); do prompts+=(--prompt-ids "$ids"); done
  ra="" rb=""
  for _ in $(seq "${ROUNDS:-2}"); do  # interleaved, so drift hits both alike
    ra="$ra $(rate "$a" where "${prompts[@]}" || echo FAILED)"
    rb="$rb $(rate "$b" where_b "${prompts[@]}" || echo FAILED)"
  done
  printf '%-6s %-28s %-28s\n' "$batch" "$ra" "$rb"
done
