#!/usr/bin/env python3
"""Train the bundled demo model: a small Llama-architecture model on Python source,
so the README's demo prints recognisable text instead of noise.

Run on the GPU machine (transformers, tokenizers and a GPU; no network needed):

    python3 scripts/train_demo_model.py --out models/demo [--seconds 240]

Corpus: Python sources that exist offline there (the standard library and
site-packages, up to 80 MB, tests excluded). Every 50th file is held out:
models/demo/heldout.txt (60 kB of it), for perplexity checks.
Tokenizer: byte-level BPE, 4096 tokens, trained on the same text. Model: 6 layers,
hidden 256, GQA 8/4 heads, tied embeddings, about 5.4 M parameters, saved in bfloat16
(about 11 MB). Prints the train and held-out loss and a few greedy samples.
"""
import argparse
import glob
import math
import os
import random
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

EOS = "<|endoftext|>"


def corpus(max_bytes):
    """Python files from the standard library and site-packages, in a fixed shuffled
    order; every 50th file is held out."""
    import site
    roots = [os.path.dirname(os.__file__)] + site.getsitepackages()
    files = []
    for r in roots:
        files += glob.glob(os.path.join(r, "**", "*.py"), recursive=True)
    files = sorted({f for f in files if "/test" not in f and "idlelib" not in f})
    random.Random(0).shuffle(files)
    train, held, size = [], [], 0
    for i, f in enumerate(files):
        try:
            t = open(f, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        if len(t) < 200:
            continue
        (held if i % 50 == 0 else train).append(t)
        size += len(t)
        if size > max_bytes:
            break
    return train, held


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/demo")
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    train_texts, held = corpus(80_000_000)
    print(f"corpus: {len(train_texts)} train files ({sum(map(len, train_texts)) / 1e6:.1f} MB), "
          f"{len(held)} held out ({sum(map(len, held)) / 1e3:.0f} kB)", flush=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.train_from_iterator(train_texts, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eos = tok.token_to_id(EOS)

    def ids_of(ts):
        out = []
        for enc in tok.encode_batch(ts):
            out.extend(enc.ids + [eos])
        return torch.tensor(out, dtype=torch.long)

    train_ids, held_ids = ids_of(train_texts), ids_of(held)
    print(f"tokens: train {train_ids.numel()}, held out {held_ids.numel()}", flush=True)

    cfg = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                      rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos,
                      pad_token_id=eos)
    dev = "cuda"
    model = LlamaForCausalLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    seq, batch = 256, 64
    data = train_ids.to(dev)

    def get_batch(src):
        ix = torch.randint(0, src.numel() - seq - 1, (batch,), device=src.device)
        x = torch.stack([src[i:i + seq] for i in ix.tolist()])
        return x

    t0, step = time.time(), 0
    model.train()
    while True:
        elapsed = time.time() - t0
        if elapsed > a.seconds:
            break
        frac = elapsed / a.seconds  # cosine over the time budget
        lr = 3e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        x = get_batch(data)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {elapsed:.0f}s", flush=True)
        step += 1

    model.eval()
    hd = held_ids.to(dev)
    with torch.no_grad():
        losses = []
        for i in range(0, min(hd.numel() - seq - 1, 200 * seq), seq):
            x = hd[i:i + seq].unsqueeze(0)
            losses.append(model(input_ids=x, labels=x).loss.float().item())
    held_loss = sum(losses) / len(losses)
    print(f"trained {step} steps; final train loss {loss.item():.3f}; held-out loss {held_loss:.3f} "
          f"(perplexity {math.exp(held_loss):.2f})", flush=True)

    os.makedirs(a.out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(a.out)
    tok.save(os.path.join(a.out, "tokenizer.json"))
    with open(os.path.join(a.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write("".join(held)[:60_000])
    print(f"held-out texts: {len(held)} files", flush=True)
    # Samples from the saved bf16 weights, as Cascade will run them.
    m = LlamaForCausalLM.from_pretrained(a.out, dtype=torch.float32).to(dev).eval()
    for prompt in ["def ", "import os\n", "class Parser:\n    def __init__(self"]:
        ids = torch.tensor([tok.encode(prompt).ids], device=dev)
        out = m.generate(ids, max_new_tokens=40, do_sample=False)
        print("--- sample:", repr(prompt + tok.decode(out[0, ids.shape[1]:].tolist())), flush=True)
    size = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(f"saved {a.out}: {size / 1e6:.1f} MB", flush=True)


if __name__ == "__main__":
    main()
