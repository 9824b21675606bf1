#!/usr/bin/env python3
"""Check a GGUF LoRA written by lorafuse the way llama.cpp's adapter loader would.

Run with the peers venv (gguf 0.19, peft, transformers):

  # 1. a tiny random PEFT adapter for SmolLM2-135M's shapes (2 layers, rank_pattern/alpha_pattern,
  #    embed_tokens), plus the ΔW PEFT computes for it, already in GGUF layout:
  /root/peers/bin/python scripts/verify_gguf_lora.py --make-peft /tmp/smol-peft
  # 2. convert it with lorafuse:
  lorafuse convert /tmp/smol-peft --format gguf --base ~/.cache/lorafuse/models/SmolLM2-135M-Instruct.Q4_1.gguf -o /tmp/smol.gguf
  # 3. verify:
  /root/peers/bin/python scripts/verify_gguf_lora.py /tmp/smol.gguf --expected /tmp/smol-peft/expected_gguf_delta.safetensors

Checks (from llama.cpp src/llama-adapter.cpp, llama_adapter_lora_init_impl):
- general.type == "adapter", adapter.type == "lora" (strings), adapter.lora.alpha is FLOAT32,
  general.architecture equals the base model's;
- every tensor is <base>.lora_a / <base>.lora_b (or a *_norm.weight, which llama.cpp skips), in pairs;
- the base tensor exists in the base GGUF;
- token_embd.weight: base.ne[0] == b.ne[1] and base.ne[1] == a.ne[1] (A and B swapped), a.ne[0] == b.ne[0];
- other tensors: base.ne[0] == a.ne[0], base.ne[1] == b.ne[1], a.ne[1] == b.ne[0].
With --expected, also compares llama.cpp's ΔW (alpha / r · B·A with r = b.ne[0]; for token_embd
alpha / r · lora_a · lora_bᵀ, the rows it gathers per token) with PEFT's own get_delta_weight,
row-permuted for q/k exactly as convert_hf_to_gguf.py's LlamaModel.permute does.
Exit status 0 when everything passes.
"""
import argparse
import os
import sys

import numpy as np

DEFAULT_BASE = os.path.join(os.environ.get("LORAFUSE_HOME", os.path.expanduser("~/.cache/lorafuse")),
                            "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def field_value(reader, key):
    """(GGUFValueType list, python value) of a metadata field, or (None, None)."""
    f = reader.fields.get(key)
    if f is None:
        return None, None
    return f.types, f.contents()


def permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute, on a (rows, cols) array."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def make_peft(out_dir, tiny=False):
    """A random PEFT adapter made by peft itself, and PEFT's ΔW in GGUF layout. SmolLM2-135M
    shapes with rank/alpha patterns by default; with tiny=True a 16-wide llama (2 heads of 8,
    1 kv head, vocab 32) with one r/alpha, small enough to commit as a test fixture."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if tiny:
        cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                          max_position_embeddings=64)
        patterns = {}
    else:
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                          num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
                          tie_word_embeddings=True, max_position_embeddings=2048)
        patterns = dict(rank_pattern={"down_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 3})
    model = LlamaForCausalLM(cfg)
    lcfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"],
                      **patterns)
    pm = get_peft_model(model, lcfg)
    # init_lora_weights=False gives random A and B; make B clearly nonzero everywhere.
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n or "lora_embedding_B" in n:
                p.normal_(0, 0.05)
    pm.save_pretrained(out_dir)
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    expected = {}
    for name, mod in pm.named_modules():
        if not hasattr(mod, "get_delta_weight") or "default" not in getattr(mod, "r", {}):
            continue
        d = mod.get_delta_weight("default").detach().float().numpy()
        hf = name.removeprefix("base_model.model.")
        short = hf.split(".")[-1]
        if short in heads:
            d = permute(d, heads[short])
        if short == "embed_tokens":
            gguf_name = "token_embd.weight"
        else:
            layer = hf.split(".")[2]
            gguf_name = f"blk.{layer}." + {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                                           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[short] + ".weight"
        expected[gguf_name] = torch.from_numpy(np.ascontiguousarray(d))
    save_file(expected, os.path.join(out_dir, "expected_gguf_delta.safetensors"))
    print(f"wrote {out_dir} ({len(expected)} modules) and expected_gguf_delta.safetensors")
    return cfg, lcfg


def make_fixture(out_dir):
    """Tests/LoRAFuseTests/Fixtures/interop: a tiny PEFT adapter (peft/), PEFT's ΔW in GGUF
    layout (expected_gguf_delta.safetensors) and reference.gguf, the same adapter written with
    gguf-py following convert_lora_to_gguf.py's rules (lora_a = A, lora_b = B with q/k rows
    permuted by LlamaModel.permute; token_embd: lora_a = Aᵀ, lora_b = B; alpha = lora_alpha;
    no head counts in the file, as the converter writes none)."""
    import gguf
    from safetensors.numpy import load_file

    peft_dir = os.path.join(out_dir, "peft")
    cfg, lcfg = make_peft(peft_dir, tiny=True)
    os.replace(os.path.join(peft_dir, "expected_gguf_delta.safetensors"), os.path.join(out_dir, "expected_gguf_delta.safetensors"))
    if os.path.exists(os.path.join(peft_dir, "README.md")):
        os.remove(os.path.join(peft_dir, "README.md"))
    # PEFT's ΔW file is what the Swift test compares with; the base embedding copy is not needed.
    tensors = load_file(os.path.join(peft_dir, "adapter_model.safetensors"))
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    w = gguf.GGUFWriter(os.path.join(out_dir, "reference.gguf"), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lcfg.lora_alpha))
    for key in sorted(tensors):
        if ".lora_A." not in key and ".lora_embedding_A" not in key:
            continue
        module = key.split(".lora_")[0]
        if "embed_tokens" in module:
            A = tensors[module + ".lora_embedding_A"]          # (r, vocab)
            B = tensors[module + ".lora_embedding_B"]          # (dim, r)
            w.add_tensor("token_embd.weight.lora_a", np.ascontiguousarray(A.T))
            w.add_tensor("token_embd.weight.lora_b", np.ascontiguousarray(B))
            continue
        A = tensors[module + ".lora_A.weight"]                 # (r, in)
        B = tensors[module + ".lora_B.weight"]                 # (out, r)
        short = module.split(".")[-1]
        if short in heads:
            B = permute(B, heads[short])
        base = f"blk.{module.split('.')[4]}.{names[short]}.weight"
        w.add_tensor(base + ".lora_a", np.ascontiguousarray(A))
        w.add_tensor(base + ".lora_b", np.ascontiguousarray(B))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out_dir}/reference.gguf")


def verify(path, base_path, expected_path):
    import gguf
    from gguf import GGUFValueType as T

    errors = []
    r = gguf.GGUFReader(path)
    base = gguf.GGUFReader(base_path)

    def expect_kv(key, want_type, want_value=None):
        types, value = field_value(r, key)
        if types is None:
            errors.append(f"metadata {key} missing")
        elif types[0] != want_type:
            errors.append(f"metadata {key} has type {types[0].name}, expected {want_type.name}")
        elif want_value is not None and value != want_value:
            errors.append(f"metadata {key} = {value!r}, expected {want_value!r}")
        return value

    expect_kv("general.type", T.STRING, "adapter")
    expect_kv("adapter.type", T.STRING, "lora")
    alpha = expect_kv("adapter.lora.alpha", T.FLOAT32)
    _, base_arch = field_value(base, "general.architecture")
    expect_kv("general.architecture", T.STRING, base_arch)

    base_dims = {t.name: [int(x) for x in t.shape] for t in r_tensors(base)}
    pairs = {}
    for t in r.tensors:
        if t.name.endswith(".lora_a") or t.name.endswith(".lora_b"):
            pairs.setdefault(t.name[:-7], {})[t.name[-1]] = t
        elif t.name.endswith("_norm.weight"):
            continue
        else:
            errors.append(f"tensor {t.name} has unexpected suffix")
    for name, ab in sorted(pairs.items()):
        if "a" not in ab or "b" not in ab:
            errors.append(f"LoRA tensor pair for {name} is missing one component")
            continue
        a, b = [int(x) for x in ab["a"].shape], [int(x) for x in ab["b"].shape]
        m = base_dims.get(name)
        if m is None:
            errors.append(f"LoRA tensor {name} does not exist in base model")
            continue
        if len(a) != 2 or len(b) != 2:
            errors.append(f"{name}: lora_a {a} / lora_b {b} are not 2-D")
            continue
        if name.endswith("token_embd.weight"):
            if m[0] != b[1] or m[1] != a[1] or a[0] != b[0]:
                errors.append(f"{name}: incorrect shape: base {m}, lora_a {a}, lora_b {b} (expect lora_a [r, n_vocab], lora_b [r, n_embd])")
        else:
            if m[0] != a[0] or m[1] != b[1]:
                errors.append(f"{name}: incorrect shape: base {m}, lora_a {a}, lora_b {b}")
            if a[1] != b[0]:
                errors.append(f"{name}: lora_a is not transposed (a.ne[1] {a[1]} != b.ne[0] {b[0]})")

    compared = 0
    if expected_path and not errors:
        from safetensors.numpy import load_file
        exp = load_file(expected_path)
        if set(exp) != set(pairs):
            errors.append(f"module sets differ: only expected {sorted(set(exp) - set(pairs))[:4]}, only in GGUF {sorted(set(pairs) - set(exp))[:4]}")
        for name in sorted(set(exp) & set(pairs)):
            A = np.asarray(pairs[name]["a"].data, dtype=np.float32)   # row-major (ne1, ne0)
            B = np.asarray(pairs[name]["b"].data, dtype=np.float32)
            rank = B.shape[1]                                         # b.ne[0]
            scale = alpha / rank if alpha else 1.0
            if name.endswith("token_embd.weight"):
                got = scale * (A @ B.T)      # (n_vocab, r)·(r, n_embd): rows gathered per token
            else:
                got = scale * (B @ A)        # (n_out, r)·(r, n_in)
            want = exp[name]
            tol = 2e-3 * max(1.0, float(np.abs(want).max()))
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
            if diff > tol:
                errors.append(f"{name}: ΔW differs from PEFT's by {diff:.3g} (tolerance {tol:.3g}), shapes {got.shape} vs {want.shape}")
            compared += 1

    if errors:
        for e in errors:
            print("FAIL:", e)
        return 1
    print(f"OK: {path}: {len(pairs)} LoRA pairs pass llama.cpp's loader checks against {base_path} "
          f"(arch {base_arch}, alpha {alpha})" + (f"; ΔW of {compared} modules matches PEFT's" if compared else ""))
    return 0


def r_tensors(reader):
    return reader.tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lora", nargs="?", help="GGUF LoRA file to verify")
    ap.add_argument("--base", default=DEFAULT_BASE, help="base model GGUF (default: %(default)s)")
    ap.add_argument("--expected", help="expected_gguf_delta.safetensors written by --make-peft")
    ap.add_argument("--make-peft", metavar="DIR", help="write a random PEFT adapter for SmolLM2 shapes and exit")
    ap.add_argument("--make-fixture", metavar="DIR", help="write the tiny interop test fixture (PEFT + gguf-py reference) and exit")
    args = ap.parse_args()
    if args.make_fixture:
        make_fixture(args.make_fixture)
        return 0
    if args.make_peft:
        make_peft(args.make_peft)
        return 0
    if not args.lora:
        ap.error("give a GGUF LoRA file (or --make-peft DIR)")
    return verify(args.lora, args.base, args.expected)


if __name__ == "__main__":
    sys.exit(main())
