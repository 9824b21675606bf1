#!/usr/bin/env python3
"""Reference logits for lorafuse's model engine (Tests/LoRAFuseTests/Fixtures/model/).

Run with the peers venv: /root/peers/bin/python scripts/make_model_fixtures.py

(a) Tiny random models made with transformers (Llama, Qwen 2 with q/k/v bias), saved as HF
    directories (F32 safetensors) and the Llama one also as GGUF (F32, q/k rows permuted the way
    llama.cpp's converter does), their logits on 3 token sequences, and the logits with two PEFT
    adapters (all linear projections; embed_tokens + lm_head + q_proj).
(b) The real SmolLM2-135M-Instruct Q4_1 GGUF loaded by transformers (which dequantizes and
    un-permutes q/k): for 5 prompts the token ids, the logits at the last position (full vocab) and
    at every position for the first 512 ids, without and with a small random PEFT adapter.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file, load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "LoRAFuseTests", "Fixtures", "model")
os.makedirs(OUT, exist_ok=True)
torch.set_grad_enabled(False)

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from peft import LoraConfig, get_peft_model


def byte_chars():
    """GPT-2's byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


TINY_VOCAB = 96
# 95 byte symbols plus one merged token: the gguf writer drops an empty merges array, and the
# GGUF tokenizer loader needs one.
TINY_TOKENS = byte_chars()[:TINY_VOCAB - 1] + ['!"']
TINY_MERGES = ['! "']


def write_tiny_tokenizer(d):
    tok = {
        "version": "1.0",
        "added_tokens": [],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(TINY_TOKENS)}, "merges": TINY_MERGES},
    }
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)


def randomize(model, std=0.15):
    g = torch.Generator().manual_seed(1234)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(std * torch.randn(p.shape, generator=g))


def randomize_lora(model, seed, std):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.copy_(std * torch.randn(p.shape, generator=g))


TINY_SEQS = [[1, 5, 9, 33, 70], [2, 90, 14, 14, 61, 7, 0, 95, 40], list(range(3, 96, 6))]


def logits_of(model, ids):
    return model(torch.tensor([ids])).logits[0].float().contiguous()


def permute_hf_to_gguf(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model, cfg, path, arch="llama"):
    """llama: q/k rows permuted as llama.cpp's converter does; qwen2: not permuted, q/k/v biases,
    tied embeddings (no output.weight)."""
    import gguf
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2" if arch == "llama" else "qwen2")
    w.add_token_list(TINY_TOKENS)
    w.add_token_merges(TINY_MERGES)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    permute = (lambda t, n: np.ascontiguousarray(permute_hf_to_gguf(t, n))) if arch == "llama" else (lambda t, n: t)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        for b, g in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")]:
            if p + f"self_attn.{b}.bias" in sd:
                w.add_tensor(f"blk.{i}.{g}.bias", sd[p + f"self_attn.{b}.bias"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny():
    out = {}
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=TINY_VOCAB, rms_norm_eps=1e-5, rope_theta=10000.0,
                  max_position_embeddings=128)
    torch.manual_seed(0)
    cfg = LlamaConfig(tie_word_embeddings=False, **common)
    m = LlamaForCausalLM(cfg).float().eval()
    randomize(m)
    d = os.path.join(OUT, "tiny-llama")
    os.makedirs(d, exist_ok=True)
    m.save_pretrained(d, safe_serialization=True)
    write_tiny_tokenizer(d)
    write_tiny_gguf(m, cfg, os.path.join(OUT, "tiny-llama.gguf"))
    for i, s in enumerate(TINY_SEQS):
        out[f"seq{i}.tokens"] = torch.tensor(s, dtype=torch.float32)
        out[f"llama.seq{i}"] = logits_of(m, s)

    for tag, targets, seed in [("lora", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 7),
                               ("lora_embed", ["embed_tokens", "lm_head", "q_proj"], 8)]:
        base = LlamaForCausalLM(cfg).float().eval()
        base.load_state_dict(m.state_dict())
        pc = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets)
        pm = get_peft_model(base, pc).eval()
        randomize_lora(pm, seed, 0.2)
        ad = os.path.join(OUT, f"tiny-llama-{tag.replace('_', '-')}")
        pm.save_pretrained(ad)
        os.remove(os.path.join(ad, "README.md"))
        for i, s in enumerate(TINY_SEQS):
            out[f"llama_{tag}.seq{i}"] = logits_of(pm, s)

    qcfg = Qwen2Config(tie_word_embeddings=True, **common)
    q = Qwen2ForCausalLM(qcfg).float().eval()
    randomize(q)
    d = os.path.join(OUT, "tiny-qwen2")
    os.makedirs(d, exist_ok=True)
    q.save_pretrained(d, safe_serialization=True)
    write_tiny_tokenizer(d)
    write_tiny_gguf(q, qcfg, os.path.join(OUT, "tiny-qwen2.gguf"), arch="qwen2")
    for i, s in enumerate(TINY_SEQS):
        out[f"qwen2.seq{i}"] = logits_of(q, s)
    save_file(out, os.path.join(OUT, "tiny_logits.safetensors"))


PROMPTS = [
    ("chat", "What is the capital of France?"),
    ("plain", "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village by the sea,"),
    ("chat", "Write a haiku about autumn leaves."),
    ("plain", "def fibonacci(n):\n    if n < 2:\n        return n\n    return"),
    ("plain", "Photosynthesis converts light energy into chemical energy stored in glucose. The main"),
]


def smollm2():
    home = os.environ.get("LORAFUSE_HOME", os.path.expanduser("~/.cache/lorafuse"))
    mdir = os.path.join(home, "models")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not os.path.exists(os.path.join(mdir, name)):
        sys.exit(f"missing {mdir}/{name}: run scripts/setup.sh")
    tok = AutoTokenizer.from_pretrained(mdir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(mdir, gguf_file=name, torch_dtype=torch.float32).eval()
    out = {}
    ids_all = []
    for i, (kind, text) in enumerate(PROMPTS):
        if kind == "chat":
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tok(text)["input_ids"]
        ids = list(ids)
        assert 8 <= len(ids) <= 40, (i, len(ids))
        ids_all.append(ids)
        out[f"p{i}.tokens"] = torch.tensor(ids, dtype=torch.float32)
        lg = logits_of(model, ids)
        out[f"p{i}.last"] = lg[-1].contiguous()
        out[f"p{i}.head"] = lg[:, :512].contiguous()

    pc = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    pm = get_peft_model(model, pc).eval()
    g = torch.Generator().manual_seed(42)
    for n, p in pm.named_parameters():
        if "lora_A" in n:
            p.copy_((0.05 * torch.randn(p.shape, generator=g)).half().float())
        elif "lora_B" in n:
            p.copy_((0.01 * torch.randn(p.shape, generator=g)).half().float())
    ad = os.path.join(OUT, "smollm2-lora")
    pm.save_pretrained(ad)
    os.remove(os.path.join(ad, "README.md"))
    # Store the factors as F16 (their values are F16-exact) to keep the fixture small.
    wpath = os.path.join(ad, "adapter_model.safetensors")
    sd = load_file(wpath)
    save_file({k: v.half() for k, v in sd.items()}, wpath)
    for i, ids in enumerate(ids_all):
        lg = logits_of(pm, ids)
        if i < 2:  # full-vocab rows for two prompts only, to keep the fixtures near 3 MB
            out[f"p{i}.lora.last"] = lg[-1].contiguous()
        out[f"p{i}.lora.head"] = lg[:, :512].contiguous()
    save_file(out, os.path.join(OUT, "smollm2_logits.safetensors"))
    print("smollm2 token counts:", [len(x) for x in ids_all])


if __name__ == "__main__":
    what = sys.argv[1:] or ["tiny", "smollm2"]
    if "tiny" in what:
        tiny()
    if "smollm2" in what:
        smollm2()
    print("ok")
