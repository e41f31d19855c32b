#!/usr/bin/env python3
"""Feed the same configs and budgets to accelerate.infer_auto_device_map and to
`cascade plan --json`, and write where they differ as a Markdown report.

Run where transformers and accelerate are installed (the GPU machine):

    python3 scripts/compare_planner.py --cascade build-gpu/cascade --out planner_compare.md

Checkpoints are written as safetensors headers over sparse files (the sizes are real,
no weight data exists), so even the 2.7 B anchor costs nothing to make. accelerate
plans on the meta device. Both sides get weights in bfloat16. Cascade is run with
max_batch 1 and max_seq_len 128 (a KV cache of a few MiB) and offload_compute=cpu, the
closest to accelerate's weights-only accounting; the differences that remain are the
deliberate ones listed in docs/planner.md.
"""
import argparse
import json
import os
import struct
import subprocess
import tempfile

import torch
from accelerate import infer_auto_device_map, init_empty_weights
from accelerate.utils import get_balanced_memory
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

GiB = 1 << 30

MODELS = {
    # The anchor model of DESIGN §10.
    "llama-2.7b": LlamaConfig(hidden_size=2560, intermediate_size=6912, num_hidden_layers=32, num_attention_heads=20,
                              num_key_value_heads=20, vocab_size=32000),
    # Tied embeddings with a large vocabulary: the tied copy matters here.
    "qwen2-0.6b-tied": Qwen2Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=24,
                                   num_attention_heads=16, num_key_value_heads=8, vocab_size=151936,
                                   tie_word_embeddings=True),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16, vocab_size=50257),
}

# (model, strategy, accelerate max_memory). Cascade gets the same budgets plus "disk",
# which accelerate always adds on its own.
CASES = [
    ("llama-2.7b", "sequential", {0: 2 * GiB, "cpu": 64 * GiB}),
    ("llama-2.7b", "sequential", {0: 2 * GiB, "cpu": 2 * GiB}),
    ("llama-2.7b", "balanced", {0: 3 * GiB, 1: 3 * GiB, "cpu": 64 * GiB}),
    ("llama-2.7b", "balanced", {0: 20 * GiB, 1: 20 * GiB, "cpu": 64 * GiB}),
    ("llama-2.7b", "balanced_low_0", {0: 20 * GiB, 1: 20 * GiB, "cpu": 64 * GiB}),
    ("qwen2-0.6b-tied", "sequential", {0: 512 << 20, "cpu": 8 * GiB}),
    ("qwen2-0.6b-tied", "balanced", {0: 1 * GiB, 1: 1 * GiB, "cpu": 8 * GiB}),
    ("gpt2-medium", "sequential", {0: 300 << 20, "cpu": 8 * GiB}),
]


def write_checkpoint(model, config, path):
    """config.json + a safetensors file whose data section is a hole of the right size."""
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    header, offset = {}, 0
    for name, p in model.named_parameters():  # tied parameters appear once, as save_pretrained writes them
        n = p.numel() * 2
        header[name] = {"dtype": "BF16", "shape": list(p.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)


def accelerate_map(model, strategy, max_memory):
    no_split = model._no_split_modules
    mm = dict(max_memory)
    if strategy != "sequential":
        mm = get_balanced_memory(model, max_memory=mm, no_split_module_classes=no_split, dtype=torch.bfloat16,
                                 low_zero=strategy == "balanced_low_0")
    try:
        return infer_auto_device_map(model, max_memory=mm, no_split_module_classes=no_split, dtype=torch.bfloat16)
    except TypeError:  # accelerate versions whose infer_auto_device_map reads dtypes off the parameters
        return infer_auto_device_map(model, max_memory=mm, no_split_module_classes=no_split)


def expand(acc_map, modules):
    """accelerate's (possibly collapsed) map at Cascade's module granularity."""
    out = {}
    for m in modules:
        keys = [k for k in acc_map if k == "" or k == m or m.startswith(k + ".")]
        if keys:
            out[m] = acc_map[max(keys, key=len)]
        else:
            parts = sorted({str(v) for k, v in acc_map.items() if k.startswith(m + ".")})
            out[m] = "split:" + "/".join(parts)
    return out


def size(b):
    return f"{b // GiB}GiB" if b % GiB == 0 else f"{b >> 20}MiB"


def cascade_budget(max_memory):
    parts = [f"{'cuda:' + str(k) if isinstance(k, int) else k}={size(v)}" for k, v in max_memory.items()]
    return ",".join(parts + ["disk"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cascade", default="build-gpu/cascade")
    ap.add_argument("--out", default="planner_compare.md")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    built = {}
    lines = ["# Cascade plan vs accelerate infer_auto_device_map", "",
             "Weights in bfloat16; Cascade with --max-batch 1 --max-seq-len 128 --offload-compute cpu.", ""]
    for model_name, strategy, max_memory in CASES:
        cfg = MODELS[model_name]
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        model.tie_weights()  # on the meta device ties are not made for us
        path = os.path.join(tmp, model_name)
        if model_name not in built:
            write_checkpoint(model, cfg, path)
            built[model_name] = True
        cmd = [a.cascade, "plan", "--model", path, "--max-memory", cascade_budget(max_memory), "--strategy", strategy,
               "--dtype", "bfloat16", "--max-batch", "1", "--max-seq-len", "128", "--offload-compute", "cpu", "--json"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        title = f"## {model_name}, {strategy}, max_memory {cascade_budget(max_memory)}"
        lines += [title, ""]
        acc = accelerate_map(model, strategy, max_memory)
        if res.returncode != 0:
            lines += [f"Cascade refused: `{res.stderr.strip()}`", ""]
            print(title, "-> cascade refused:", res.stderr.strip())
            continue
        ours = json.loads(res.stdout)["device_map"]
        theirs = expand(acc, list(ours))
        diff = [(m, theirs[m], ours[m]) for m in ours if str(theirs[m]) != str(ours[m])]

        def count(d):
            c = {}
            for v in d.values():
                c[str(v)] = c.get(str(v), 0) + 1
            return ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))

        lines += [f"- modules per device: accelerate {{{count(theirs)}}}, cascade {{{count(ours)}}}",
                  f"- {len(diff)} of {len(ours)} modules placed differently", ""]
        if diff:
            lines += ["| module | accelerate | cascade |", "|---|---|---|"]
            lines += [f"| {m} | {t} | {o} |" for m, t, o in diff[:12]]
            if len(diff) > 12:
                lines.append(f"| ... {len(diff) - 12} more | | |")
            lines.append("")
        print(title, f"-> {len(diff)}/{len(ours)} differ;", "accelerate", count(theirs), "| cascade", count(ours))
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
