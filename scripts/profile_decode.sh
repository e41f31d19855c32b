#!/usr/bin/env bash
# Nsight Compute breakdown of one GPU stage's decode step (issue 16): per kernel, its GPU
# time, the DRAM bytes it moved and the bandwidth that makes. Runs on the GPU machine
# after scripts/gpu_check.sh has built build-gpu/. The stage (rank 1 of `mpirun -np 2`)
# runs under ncu with the profiler off until the stage's step BATCH+2 (the prompts'
# prefill is behind it), then on for STEPS decode steps (CASCADE_PROFILE_STEPS), so
# loading, quantizing and the prefill run at full speed and are not profiled; the
# tables divide by STEPS.
#   scripts/profile_decode.sh MODEL_DIR [OUT_DIR]
# Environment: CASES="bf16:1 bf16:16 int8_0:1 int8_6:1" (weights:batch; int8_T = LLM.int8
# with threshold T), GRAPHS=false (true: one row per graph replay), BOUND_GBS=4270 (the
# device copy bandwidth the % column divides by), METRICS (default: time and DRAM bytes;
# `gpu__time_duration.sum` alone runs several times faster under ncu, bytes then read 0),
# STEPS=3, RUN_TIMEOUT=300 (seconds per profiled run), PROMPT_LEN=32, FIRST (the first
# profiled step; default BATCH+2; FIRST=0 STEPS=1 profiles the prompts' prefill instead).
set -uo pipefail
cd "$(dirname "$0")/.."
model=$1
out=${2:-${OUT:-/tmp}}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ids=$(seq -s, 11 $((10 + ${PROMPT_LEN:-32})))
steps=${STEPS:-3}
metrics=${METRICS:-gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum}
for case in ${CASES:-bf16:1 bf16:16 int8_0:1 int8_6:1}; do
  weights=${case%%:*} batch=${case##*:}
  quant=none threshold=0
  case $weights in int8_*) quant=int8 threshold=${weights#int8_} ;; esac
  first=${FIRST:-$((batch + 2))}
  n=$((first + steps + 1))
  printf '[model]\npath = "%s"\ndtype = "bfloat16"\n[placement]\nmax_memory = { "cuda:0" = "100GiB", "cpu" = "100GiB" }\n[runtime]\nmax_batch = %s\nmax_seq_len = %s\ncuda_graphs = %s\n[quantization]\nmode = "%s"\nthreshold = %s\n' \
    "$model" "$batch" "$((${PROMPT_LEN:-32} + first + steps + 8))" "${GRAPHS:-false}" "$quant" "$threshold" >/tmp/profile.toml
  prompts=()
  for _ in $(seq "$batch"); do prompts+=(--prompt-ids "$ids"); done
  log=$out/ncu_${weights}_b${batch}.csv
  timeout "${RUN_TIMEOUT:-300}" mpirun --oversubscribe -np 1 build-gpu/cascade generate --config /tmp/profile.toml \
    "${prompts[@]}" --max-new-tokens $n : -np 1 env CASCADE_PROFILE_STEPS=$first:$steps ncu --csv \
    --profile-from-start off --clock-control none --metrics $metrics --log-file "$log" \
    build-gpu/cascade generate --config /tmp/profile.toml "${prompts[@]}" --max-new-tokens $n \
    >"$out/profile_${weights}_b${batch}.log" 2>&1
  echo "== $weights batch $batch, steps $first..$((first + steps - 1)) profiled: exit $?"
done
python3 - "$out" "$steps" "${BOUND_GBS:-4270}" ${CASES:-bf16:1 bf16:16 int8_0:1 int8_6:1} <<'PY'
import collections, csv, io, re, sys
out, steps, bound = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6,
         "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}
def kernels(path):  # name -> [launches, us, bytes]
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return {}
    start = text.find('"ID"')
    by = collections.defaultdict(lambda: [0, 0.0, 0.0])
    seen = set()
    for r in csv.DictReader(io.StringIO(text[start:])) if start >= 0 else []:
        name = r["Kernel Name"].replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
        name = re.split(r"[(<]", re.sub(r"^void ", "", name))[0][:60] + f" {r['Grid Size']}"
        v = float(r["Metric Value"].replace(",", "") or 0) * scale.get(r["Metric Unit"], 1.0)
        if r["ID"] not in seen:
            seen.add(r["ID"])
            by[name][0] += 1
        if r["Metric Name"] == "gpu__time_duration.sum":
            by[name][1] += v
        else:
            by[name][2] += v
    return by
for case in sys.argv[4:]:
    weights, batch = case.split(":")
    b = kernels(f"{out}/ncu_{weights}_b{batch}.csv")
    step = {k: [v[i] / steps for i in range(3)] for k, v in b.items()}
    step = {k: v for k, v in step.items() if v[0] > 0.5}
    us = sum(v[1] for v in step.values())
    gb = sum(v[2] for v in step.values()) / 1e9
    print(f"\n### {weights}, batch {batch}: one decode step = {sum(v[0] for v in step.values()):.0f} kernels, "
          f"{us:.0f} us GPU time, {gb * 1e3:.0f} MB DRAM, {gb / (us * 1e-6) if us else 0:.0f} GB/s "
          f"({100 * gb / (us * 1e-6) / bound if us else 0:.0f}% of {bound:.0f})")
    print("| kernel | launches | us | MB | GB/s | % of time |\n|---|---|---|---|---|---|")
    for k, (n, t, by) in sorted(step.items(), key=lambda kv: -kv[1][1])[:16]:
        print(f"| {k} | {n:.0f} | {t:.0f} | {by / 1e6:.1f} | {by / 1e3 / t if t else 0:.0f} | {100 * t / us:.1f} |")
PY
