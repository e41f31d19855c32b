#!/usr/bin/env python3
"""Train small tokenizers offline with Hugging Face `tokenizers` and record how they
encode and decode a fixed set of hard strings: tests/data/tokenizers/.

Run where `tokenizers`, `transformers` and `sentencepiece` are installed (the GPU
machine's python3):

    python3 scripts/make_tokenizer_fixtures.py [--out tests/data/tokenizers] [--bench-out FILE] [--only a,b]

--only rebuilds just the named tokenizers and keeps the other rows of cases.json.
The Unigram ones (t5_*, unigram_*) are trained by SentencePiece, so their
tokenizer.json carries SentencePiece's `Precompiled` normalizer (its nmt_nfkc
charsmap), as every T5/mT5 tokenizer on the Hub does.

Training text is whatever exists offline there: the Python standard library's sources,
plus a few lines of other scripts so some non-ASCII merges exist (and many glyphs stay
unseen, which exercises byte fallback and <unk>). Each tokenizer is saved as
<name>/tokenizer.json; cases.json holds, per tokenizer and string, the ids with and
without special tokens and the decoded text with and without skip_special_tokens.
With --bench-out it also times encoding 1 MB of mixed text (bench.txt) for
docs/performance.md.
"""
import argparse
import glob
import json
import os
import sys
import tempfile
import time

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

GPT2_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
# Bloom's: a run of anything but whitespace and a few punctuation marks, with the space
# before it.
BLOOM_PATTERN = r" ?[^(\s|[.,!?…。，、।۔،])]+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

UNICODE_LINES = [
    "Größere Öfen heizen schneller, sagte der Bäcker.",
    "Les élèves étudient à l'école depuis trois ans.",
    "日本語のテキストを分割します。東京は大きい都市です。",
    "中文文本测试，今天天气很好。",
    "Привет, как дела? Всё хорошо.",
    "emoji party 🎉🎉 and a heart ❤️ and a family 👨‍👩‍👧",
    "Ελληνικά γράμματα και αριθμοί 12345.",
]

# The strings every tokenizer is checked on (>= 40): edge cases first.
CASES = [
    "", " ", "  ", "     ", "\t", "\n", "\r\n", " \t \n ",
    "hello", " hello", "hello ", "  hello  world  ", "Hello World", "HELLO WORLD",
    "line one\r\nline two\r\n", "tab\tseparated\tvalues", "trailing newline\n", "\n\nleading newlines",
    "def f(x):\n    return x ** 2\n", "import os, sys  # comment", "a-b-c = d=e==f", "x = [1, 2, 3]; y = {'k': 'v'}",
    "1234567890123456789", "3.14159 and 2.71828", "phone: 555-0100", "007 agents",
    "naïve café", "e\u0301te\u0301 with combining accents", "ﬁnancial ﬂow (ligatures)", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "日本語", "中文文本测试", "한국어 텍스트", "Привет мир", "emoji 🎉 party 🦄🦄", "👨‍👩‍👧 family", "❤️",
    "unseen glyphs: ꙮ ᚠᛇᚻ 𓀀 ⅷ", "mixed 日本 and English 123", "it's we're they've I'm you'll he'd",
    "CAPS and lower and MiXeD", "The quick brown fox jumps over the lazy dog.",
    "<s> literal bos", "text with [MASK] inside", "before<user>after", "say hello world now",
    "hello worldwide", "</s>", "<|begin_of_text|>hi<|eot_id|>", "tabs\t\tand  spaces", "a" * 200,
]


def corpus():
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
    lines, size = [], 0
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                lines.append(line)
                size += len(line)
        if size > 3_000_000:
            break
    return lines + UNICODE_LINES * 40


def train(tok, trainer, lines):
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def byte_tokens():
    return [f"<0x{i:02X}>" for i in range(256)]


def build(lines):
    toks = {}

    # GPT-2: byte-level BPE with the GPT-2 regex, ByteLevel decoder and post-processor.
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    t.decoder = decoders.ByteLevel()
    t.post_processor = processors.ByteLevel(trim_offsets=True)
    toks["gpt2_bytelevel"] = train(t, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()), lines)

    # Llama-3 style: Split on the Llama-3 regex, ByteLevel without its regex and with a
    # prefix space, ignore_merges, and a BOS template.
    t = Tokenizer(models.BPE(ignore_merges=True))
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    train(t, trainers.BpeTrainer(vocab_size=2000, special_tokens=specials,
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()), lines)
    bos = t.token_to_id("<|begin_of_text|>")
    t.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                     pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                                     special_tokens=[("<|begin_of_text|>", bos)])
    toks["llama3_split"] = t

    # Llama-2 style: normalizer Prepend + Replace, no pre-tokenizer, byte fallback,
    # the Replace/ByteFallback/Fuse/Strip decoder, a BOS template.
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(content=" ", left=1, right=0)])
    train(t, trainers.BpeTrainer(vocab_size=1500, limit_alphabet=120,
                                 special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens()), lines)
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                     special_tokens=[("<s>", t.token_to_id("<s>"))])
    toks["llama2_bytefallback"] = t

    # Bloom's structure: Split on its regex, ByteLevel without its own regex, the
    # ByteLevel decoder and post-processor, <unk> <s> </s> <pad> (bloom, bloomz).
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(BLOOM_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    toks["bloom_bytelevel"] = train(t, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()), lines)

    # Gemma's structure: SentencePiece-style BPE with byte fallback but no dummy prefix
    # (the normalizer only turns spaces into ▁; the decoder strips nothing), <bos> template.
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.normalizer = normalizers.Replace(" ", "▁")
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    train(t, trainers.BpeTrainer(vocab_size=1500, limit_alphabet=120,
                                 special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"] + byte_tokens()), lines)
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                     special_tokens=[("<bos>", t.token_to_id("<bos>"))])
    toks["gemma_bytefallback"] = t

    # Metaspace pre-tokenizer (prepend_scheme first) + Digits, NFKC + Lowercase + Strip,
    # <unk>, and added tokens with every flag: lstrip, rstrip, single_word, normalized.
    t = Tokenizer(models.BPE(unk_token="[UNK]"))
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                         normalizers.Strip(left=True, right=True)])
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Digits(individual_digits=True)])
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    train(t, trainers.BpeTrainer(vocab_size=1500, limit_alphabet=150, special_tokens=["[UNK]", "[CLS]", "[SEP]"]),
          lines)
    t.add_special_tokens([AddedToken("[MASK]", lstrip=True, rstrip=False, single_word=False, normalized=False,
                                     special=True)])
    t.add_tokens([AddedToken("<user>", lstrip=False, rstrip=True, normalized=False, special=False),
                  AddedToken("hello world", single_word=True, normalized=True, special=False)])
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", t.token_to_id("[CLS]")), ("[SEP]", t.token_to_id("[SEP]"))])
    toks["metaspace_added"] = t

    # NFC + Whitespace + grouped Digits.
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                               pre_tokenizers.Digits(individual_digits=False)])
    t.decoder = decoders.Fuse()
    toks["nfc_whitespace"] = train(t, trainers.BpeTrainer(vocab_size=1000, limit_alphabet=150,
                                                          special_tokens=["<unk>"]), lines)

    # Split: every behavior, string and regex patterns, invert.
    for behavior, pattern, invert in [("removed", " ", False), ("isolated", Regex(r"\p{P}"), False),
                                      ("merged_with_previous", "-", False),
                                      ("merged_with_next", Regex(r"\s+"), False), ("contiguous", "=", False),
                                      ("removed", Regex(r"\p{L}+|\p{N}+"), True)]:
        name = f"split_{behavior}" + ("_invert" if invert else "")
        t = Tokenizer(models.BPE(unk_token="<unk>"))
        t.pre_tokenizer = pre_tokenizers.Split(pattern, behavior=behavior, invert=invert)
        toks[name] = train(t, trainers.BpeTrainer(vocab_size=600, limit_alphabet=150, special_tokens=["<unk>"]), lines)
    return toks


def spm_train(lines, workdir, name, **options):
    """A SentencePiece Unigram model trained on `lines`; returns its parsed proto."""
    import sentencepiece as spm
    from transformers.convert_slow_tokenizer import import_protobuf
    prefix = os.path.join(workdir, name)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, model_type="unigram",
                                   normalization_rule_name="nmt_nfkc", minloglevel=2, **options)
    proto = import_protobuf().ModelProto()
    with open(prefix + ".model", "rb") as f:
        proto.ParseFromString(f.read())
    return prefix + ".model", proto


def build_unigram(lines, workdir):
    """T5 as transformers 5 builds it from spiece.model, T5 as the Hub's tokenizer.json
    files have it, and a byte-fallback Unigram without a pre-tokenizer."""
    from transformers import T5Tokenizer
    toks = {}
    # T5 ids: <pad> 0, </s> 1, <unk> 2; coverage < 1 leaves rare glyphs to <unk>.
    model, proto = spm_train(lines, workdir, "t5", vocab_size=1200, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                             character_coverage=0.995)
    d = os.path.join(workdir, "t5_spm")
    os.makedirs(d, exist_ok=True)
    os.replace(model, os.path.join(d, "spiece.model"))
    toks["t5_unigram"] = T5Tokenizer.from_pretrained(d, extra_ids=4).backend_tokenizer

    charsmap = proto.normalizer_spec.precompiled_charsmap
    vocab = [(p.piece, p.score) for p in proto.pieces] + [(f"<extra_id_{i}>", 0.0) for i in range(3, -1, -1)]
    t = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    t.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    t.add_special_tokens(["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(4)])
    t.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                     special_tokens=[("</s>", 1)])
    toks["t5_hub"] = t

    _, proto = spm_train(lines, workdir, "bf", vocab_size=800, byte_fallback=True, character_coverage=0.98,
                         split_digits=True)
    vocab = [(p.piece, p.score) for p in proto.pieces]
    t = Tokenizer(models.Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=True))
    t.normalizer = normalizers.Sequence([normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
                                         normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(content=" ", left=1, right=0)])
    t.add_special_tokens(["<unk>", "<s>", "</s>"])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                     special_tokens=[("<s>", t.token_to_id("<s>"))])
    toks["unigram_bytefallback"] = t
    return toks


def fix_llama2_bytes(tok):
    """Byte tokens live in the vocab but not in added_tokens (as in Llama-2's and Gemma's files)."""
    j = json.loads(tok.to_str())
    names = set(byte_tokens())
    j["added_tokens"] = [a for a in j["added_tokens"] if a["content"] not in names]
    return Tokenizer.from_str(json.dumps(j))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "tokenizers"))
    ap.add_argument("--bench-out", default="")
    ap.add_argument("--only", default="", help="comma-separated tokenizer names to rebuild")
    a = ap.parse_args()
    lines = corpus()
    toks = build(lines)
    for name in ("llama2_bytefallback", "gemma_bytefallback"):
        toks[name] = fix_llama2_bytes(toks[name])
    with tempfile.TemporaryDirectory() as workdir:
        toks.update(build_unigram(lines, workdir))
    os.makedirs(a.out, exist_ok=True)
    cases = {"tokenizers_version": tokenizers.__version__, "strings": CASES, "results": {}}
    cases_path = os.path.join(a.out, "cases.json")
    if a.only:
        keep = a.only.split(",")
        toks = {k: v for k, v in toks.items() if k in keep}
        with open(cases_path) as f:
            old = json.load(f)
        assert old["strings"] == CASES, "--only needs the same strings as the existing cases.json"
        cases["results"] = old["results"]
    for name, t in toks.items():
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        t.save(os.path.join(d, "tokenizer.json"))
        rows = []
        for s in CASES:
            plain = t.encode(s, add_special_tokens=False).ids
            special = t.encode(s, add_special_tokens=True).ids
            rows.append({"ids": plain, "ids_special": special,
                         "decoded": t.decode(special, skip_special_tokens=False),
                         "decoded_skip": t.decode(special, skip_special_tokens=True)})
        cases["results"][name] = rows
        unk = sum(r["ids"].count(t.token_to_id("<unk>") or -1) for r in rows)
        print(f"{name}: vocab {t.get_vocab_size()}, {sum(len(r['ids']) for r in rows)} ids over {len(CASES)} strings,"
              f" {unk} <unk>, {os.path.getsize(os.path.join(d, 'tokenizer.json')) // 1024} KiB")
    with open(cases_path, "w") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)

    if a.only:
        return 0
    # 1 MB of mixed text for the speed comparison: source code and the Unicode lines.
    text, i = [], 0
    while sum(len(x.encode()) for x in text) < 1_000_000:
        text.append(lines[(i * 7919) % len(lines)])
        if i % 50 == 0:
            text.append(UNICODE_LINES[i % len(UNICODE_LINES)] + "\n")
        i += 1
    bench = "".join(text)
    with open(os.path.join(a.out, "bench.txt"), "w", encoding="utf-8") as f:
        f.write(bench)
    if a.bench_out:
        res = {"bytes": len(bench.encode()), "tokenizers_version": tokenizers.__version__}
        for name in ("gpt2_bytelevel", "llama3_split", "llama2_bytefallback"):
            t = toks[name]
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                n = len(t.encode(bench, add_special_tokens=False).ids)
                best = min(best, time.perf_counter() - t0)
            res[name] = {"seconds": best, "tokens": n, "MB_per_s": len(bench.encode()) / best / 1e6}
            print(f"bench {name}: {best * 1e3:.1f} ms for 1 MB ({n} tokens), {res[name]['MB_per_s']:.2f} MB/s")
        with open(a.bench_out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
