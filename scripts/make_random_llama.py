#!/usr/bin/env python3
"""A bf16 Llama checkpoint of the DESIGN §10 anchor's shapes with random weights, in pure
Python (no torch: the development VM has none), for timing CPU decode where the anchor
itself (scripts/compare_accelerate.py, which needs torch) cannot be made.

Shapes: hidden 2560, intermediate 6912, 20 heads (K and V too), vocabulary 32,000, an
untied head; --layers of them (the anchor has 32). Weights are N(0, 0.02) values from a
32,768-value block repeated (seed 0), norms 1: fine for timing, meaningless as a model.
No tokenizer: run it with --prompt-ids.

    python3 scripts/make_random_llama.py --out /tmp/anc --layers 6
"""
import argparse
import json
import os
import random
import struct

HIDDEN, INTERMEDIATE, HEADS, VOCAB = 2560, 6912, 20, 32000


def bf16(x):
    return struct.pack("<f", x)[2:]  # the high half of a float32: bfloat16, truncated


def tensors(layers):
    out = [("model.embed_tokens.weight", [VOCAB, HIDDEN], False)]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", [HIDDEN], True), (p + "post_attention_layernorm.weight", [HIDDEN], True)]
        out += [(p + f"self_attn.{n}.weight", [HIDDEN, HIDDEN], False) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        out += [(p + "mlp.gate_proj.weight", [INTERMEDIATE, HIDDEN], False),
                (p + "mlp.up_proj.weight", [INTERMEDIATE, HIDDEN], False),
                (p + "mlp.down_proj.weight", [HIDDEN, INTERMEDIATE], False)]
    return out + [("model.norm.weight", [HIDDEN], True), ("lm_head.weight", [VOCAB, HIDDEN], False)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": INTERMEDIATE, "num_hidden_layers": args.layers, "num_attention_heads": HEADS,
              "num_key_value_heads": HEADS, "vocab_size": VOCAB, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 2048, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
              "rope_theta": 10000.0, "hidden_act": "silu"}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    rng = random.Random(0)
    block = b"".join(bf16(rng.gauss(0, 0.02)) for _ in range(32768))
    header, offset = {}, 0
    items = tensors(args.layers)
    for name, shape, _ in items:
        n = 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with open(os.path.join(args.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for name, shape, ones in items:
            n = 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
            if ones:
                f.write(bf16(1.0) * (n // 2))
                continue
            whole, rest = divmod(n, len(block))
            for _ in range(whole):
                f.write(block)
            f.write(block[:rest])
    print(f"wrote {offset / 1e9:.3f} GB of weights to {args.out}")


if __name__ == "__main__":
    main()
