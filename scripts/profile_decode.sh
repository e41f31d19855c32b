#!/usr/bin/env bash
# Nsight Compute look at one GPU stage's decode step (issue 8): how long the GPU works
# per step and on which kernels. Runs on the GPU machine after scripts/gpu_check.sh has
# built build-gpu/. The stage (rank 1 of `mpirun -np 2`) runs under ncu, collecting one
# metric per kernel (its GPU time); the coordinator runs plainly.
#   scripts/profile_decode.sh MODEL_DIR [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
model=$1
out=${2:-${OUT:-/tmp}}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
printf '[model]\npath = "%s"\ndtype = "bfloat16"\n[placement]\nmax_memory = { "cuda:0" = "70GiB", "cpu" = "100GiB" }\n[runtime]\nmax_batch = 1\nmax_seq_len = 64\n' \
  "$model" >/tmp/profile.toml
ids=$(seq -s, 11 42)
for graphs in false true; do
  mode=$([ $graphs = true ] && echo graph || echo node)
  timeout 240 mpirun --oversubscribe -np 1 build-gpu/cascade generate --config /tmp/profile.toml \
    --set runtime.cuda_graphs=$graphs --prompt-ids "$ids" --max-new-tokens 4 : \
    -np 1 ncu --csv --graph-profiling "$mode" --metrics gpu__time_duration.sum --log-file "$out/ncu_graphs_$graphs.csv" \
    build-gpu/cascade generate --config /tmp/profile.toml --set runtime.cuda_graphs=$graphs --prompt-ids "$ids" \
    --max-new-tokens 4 >"$out/profile_run_$graphs.log" 2>&1
  echo "== cuda_graphs=$graphs: exit $?"
done
python3 - "$out" <<'PY'
import collections, csv, io, sys
unit = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6}
def rows(path):
    text = open(path, errors="replace").read()
    start = text.find('"ID"')
    return list(csv.DictReader(io.StringIO(text[start:]))) if start >= 0 else []
for graphs in ("false", "true"):
    r = [x for x in rows(f"{sys.argv[1]}/ncu_graphs_{graphs}.csv") if x.get("Metric Name") == "gpu__time_duration.sum"]
    us = [float(x["Metric Value"].replace(",", "")) * unit.get(x["Metric Unit"], 1.0) for x in r]
    print(f"cuda_graphs={graphs}: {len(r)} profiled launches, {sum(us) / 1e3:.2f} ms GPU time in all")
    if graphs == "true":  # one result per graph replay: the decode steps
        for x, t in list(zip(r, us))[-4:]:
            print(f"  last launches: {x['Kernel Name'][:60]}  {t / 1e3:.3f} ms")
        continue
    # Eager: the last quarter of the launches is the last decode steps; per step, by kernel.
    n = len(r) // 4 if r else 0
    tail = list(zip(r, us))[-n:] if n else []
    by = collections.defaultdict(lambda: [0, 0.0])
    for x, t in tail:
        k = x["Kernel Name"].split("(")[0][:70]
        by[k][0] += 1
        by[k][1] += t
    tot = sum(t for _, t in tail)
    print(f"  last {n} launches: {tot / 1e3:.2f} ms GPU time, mean {tot / max(n, 1):.1f} us per kernel")
    for k, (c, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:15]:
        print(f"  {c:5d} x {t / max(c, 1):8.1f} us  {t / 1e3:7.2f} ms  {k}")
PY
