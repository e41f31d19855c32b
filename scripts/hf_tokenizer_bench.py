#!/usr/bin/env python3
"""HF `tokenizers` encode speed on the same text and tokenizer.json files as
bench/tokenizer_bench, so both run side by side on one machine:

    python3 scripts/hf_tokenizer_bench.py [--ids-out FILE] TOKENIZER_DIR...

--ids-out writes the ids of the first tokenizer, for comparison with Cascade's.
"""
import argparse
import json
import time

from tokenizers import Tokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--text", default="tests/data/tokenizers/bench.txt")
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--ids-out", default="")
ap.add_argument("dirs", nargs="+")
a = ap.parse_args()
text = open(a.text, encoding="utf-8").read()
n_bytes = len(text.encode())
for i, d in enumerate(a.dirs):
    tok = Tokenizer.from_file(d + "/tokenizer.json")
    best, ids = float("inf"), []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        best = min(best, time.perf_counter() - t0)
    print(f"HF {d:37s} {best * 1e3:8.1f} ms for {n_bytes} bytes ({len(ids)} tokens): {n_bytes / best / 1e6:.2f} MB/s")
    if i == 0 and a.ids_out:
        json.dump(ids, open(a.ids_out, "w"))
