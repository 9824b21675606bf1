#!/usr/bin/env python3
"""llama.cpp's own output on the default model, for the quantized engine's parity tests (issue 13).

Run in the venv of scripts/setup_llamacpp.sh (llama-cpp-python 0.3.36 built from source):
  ~/.cache/lorafuse/venvs/llamacpp/bin/python scripts/make_llamacpp_fixtures.py [MODEL.gguf]

MODEL defaults to ~/.cache/lorafuse/models/SmolLM2-135M-Instruct.Q4_1.gguf. Writes
Tests/LoRAFuseTests/Fixtures/llamacpp/STEM.safetensors and STEM.json (the manifest) beside it, STEM
from the model's file name: smollm2_q4_1 for the default, smollm2_q8_0_from_q4_1 for
SmolLM2-135M-Instruct.Q8_0-from-Q4_1.gguf. The format is in scripts/README-fixtures.md
("llama.cpp parity fixture"). Tests never need Python.

(a) "suite": the first two test examples of every task in tasks/ (tasks/manifest.json order). Each
    is rendered the way lorafuse's Evaluator does it: the model's chat template (from the GGUF
    metadata, rendered with jinja2) on one user turn with the generation prompt, tokenized by
    llama.cpp with special tokens parsed; then the answer tokenized on its own, then the
    end-of-turn token. All positions of prompt + answer are run in one llama.cpp batch
    (Llama(..., logits_all=True).eval). Per position: the 32 most likely next tokens and their
    log-probabilities, and the log of the probability mass of all other tokens (computed from the
    full logits in float64, not as 1 − Σ top-32), so KL(llama.cpp ‖ other) can be taken with the tail
    lumped into one bucket; and the log-probability of the sequence's actual next token.
    The template's default system turn is included (SmolLM2's template adds it to a conversation
    without one, and so does lorafuse's Tokenizer.encodeChat); the script checks the rendering
    against the ChatML text written out by hand and that <|im_start|>/<|im_end|> are single tokens.
(b) "chat": 10 fixed user prompts in the same template; greedy decoding (argmax of the logits, the
    lowest id on an exact tie) of 32 tokens, one token per llama.cpp eval on the KV cache, not stopped
    at the end-of-turn token (first_stop in the manifest says where it came); per step the gap
    between the largest and second-largest logit.
"""
import datetime
import hashlib
import json
import os
import platform
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "LoRAFuseTests", "Fixtures", "llamacpp")
CACHE = os.environ.get("LORAFUSE_CACHE") or os.environ.get("LORAFUSE_HOME") or os.path.expanduser("~/.cache/lorafuse")
DEFAULT_MODEL = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOP_K = 32
PER_TASK = 2
GEN_TOKENS = 32

# SmolLM2's template adds this system turn when the conversation has none (as lorafuse's
# Tokenizer.encodeChat does); the rendering is checked against it.
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

CHAT_PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a prime number is.",
    "Name three colors of the rainbow and describe each one.",
    "What is the capital of France? Tell me something about it.",
    "Give me one tip for learning to program.",
    "Describe a cat in two sentences.",
    "What is 12 times 7? Explain how you got the answer.",
    "How do I say 'good morning' in Spanish?",
    "Why is the sky blue?",
    "Write a haiku about autumn leaves.",
]


def write_safetensors(path, tensors, metadata):
    """Plain safetensors writer: F32 tensors in name order, header padded to 8 bytes."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        assert np.all(np.isfinite(a)), name
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def exact_ids(ids):
    """Token ids as float32 (the convention of the other model fixtures): exact below 2^24."""
    ids = np.asarray(ids, dtype=np.int64)
    assert ids.max(initial=0) < (1 << 24)
    return ids.astype(np.float32)


def top_and_tail(logits):
    """Per row: top-K ids (descending logit, lower id first on ties), their log-probabilities, the
    log of the remaining mass, all from float64 log-softmax of the float32 logits."""
    z = logits.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    order = np.argsort(-z, axis=1, kind="stable")
    top = order[:, :TOP_K]
    rows = np.arange(z.shape[0])[:, None]
    top_lp = z[rows, top] - lse[:, None]
    rest = z.copy()
    rest[rows, top] = -np.inf
    rm = rest.max(axis=1, keepdims=True)
    tail = rm[:, 0] + np.log(np.exp(rest - rm).sum(axis=1)) - lse
    return top, top_lp, tail, lse


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    import jinja2
    import llama_cpp
    from importlib.metadata import version
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, logits_all=True, n_ctx=512, n_threads=2, seed=0, verbose=False)
    meta = llm.metadata
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") == "true"
    bos_id = int(meta["tokenizer.ggml.bos_token_id"])
    eos_id = int(meta["tokenizer.ggml.eos_token_id"])
    eot_id = int(meta.get("tokenizer.ggml.eot_token_id", eos_id))
    template_text = meta["tokenizer.chat_template"]
    piece = lambda i: llm.detokenize([i], special=True).decode("utf-8", "replace")
    template = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template_text)

    def render(user):
        return template.render(messages=[{"role": "user", "content": user}], add_generation_prompt=True,
                               bos_token=piece(bos_id), eos_token=piece(eos_id))

    def tok(text, bos, special):
        return llm.tokenize(text.encode("utf-8"), add_bos=bos, special=special)

    # Check the template against the ChatML form written out by hand, and that llama.cpp turns the
    # markers into single special tokens.
    im_start = tok("<|im_start|>", False, True)
    im_end = tok("<|im_end|>", False, True)
    assert len(im_start) == 1 and len(im_end) == 1, (im_start, im_end)
    assert im_end[0] == eot_id, (im_end, eot_id)
    rendered0 = render("Hi")
    by_hand = SYSTEM_TURN + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert rendered0 == by_hand, (rendered0, by_hand)
    ids0 = tok(rendered0, add_bos, True)
    assert ids0[0] == im_start[0] and ids0.count(im_start[0]) == 3 and ids0.count(im_end[0]) == 2, ids0

    tensors, suite, chat = {}, [], []

    # (a) the suite's test prompts.
    tasks = json.load(open(os.path.join(ROOT, "tasks", "manifest.json")))["tasks"]
    for t in tasks:
        lines = open(os.path.join(ROOT, "tasks", t["files"]["test"])).read().splitlines()
        for j, line in enumerate(lines[:PER_TASK]):
            ex = json.loads(line)
            p_ids = tok(render(ex["prompt"]), add_bos, True)
            a_ids = tok(ex["answer"], False, False) + [eot_id]
            ids = p_ids + a_ids
            llm.reset()
            llm.eval(ids)
            logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
            top, top_lp, tail, lse = top_and_tail(logits)
            nxt = np.array(ids[1:])
            next_lp = logits[np.arange(len(ids) - 1), nxt].astype(np.float64) - lse[:-1]
            k = f"suite.{len(suite)}"
            tensors[k + ".tokens"] = exact_ids(ids)
            tensors[k + ".top_ids"] = exact_ids(top)
            tensors[k + ".top_logprobs"] = top_lp
            tensors[k + ".tail_logprob"] = tail
            tensors[k + ".next_logprob"] = next_lp
            suite.append({"key": k, "task": t["name"], "line": j + 1, "prompt": ex["prompt"], "answer": ex["answer"],
                          "prompt_tokens": len(p_ids), "tokens": len(ids),
                          "answer_nll": float(-next_lp[len(p_ids) - 1:].sum()),
                          "min_top2_gap": float((top_lp[:, 0] - top_lp[:, 1]).min())})

    # (b) greedy generation from 10 chat prompts.
    for user in CHAT_PROMPTS:
        p_ids = tok(render(user), add_bos, True)
        llm.reset()
        llm.eval(p_ids)
        gen, gaps = [], []
        for _ in range(GEN_TOKENS):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            t1 = int(np.argmax(row))
            rest = row.copy()
            rest[t1] = -np.inf
            gaps.append(float(row[t1]) - float(rest.max()))
            gen.append(t1)
            llm.eval([t1])
        stops = [i for i, t in enumerate(gen) if t in (eot_id, eos_id)]
        k = f"chat.{len(chat)}"
        tensors[k + ".prompt_tokens"] = exact_ids(p_ids)
        tensors[k + ".generated"] = exact_ids(gen)
        tensors[k + ".gap"] = np.array(gaps)
        chat.append({"key": k, "prompt": user, "prompt_tokens": len(p_ids),
                     "first_stop": stops[0] if stops else GEN_TOKENS,
                     "text": llm.detokenize(gen, special=True).decode("utf-8", "replace"),
                     "min_gap": min(gaps)})

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    manifest = {
        "made_by": "scripts/make_llamacpp_fixtures.py",
        "date": now,
        "model": os.path.basename(model_path),
        "model_sha256": sha256(model_path),
        "llama_cpp_python": llama_cpp.__version__,
        "numpy": version("numpy"),
        "jinja2": version("jinja2"),
        "python": platform.python_version(),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "llama_args": {"logits_all": True, "n_ctx": 512, "n_threads": 2, "seed": 0, "n_batch": llm.n_batch},
        "add_bos": add_bos, "bos_id": bos_id, "eos_id": eos_id, "eot_id": eot_id,
        "chat_template": template_text,
        "top_k": TOP_K,
        "suite": suite,
        "chat": chat,
    }
    os.makedirs(OUT, exist_ok=True)
    base = os.path.basename(model_path)
    stem = "smollm2_" + base.removeprefix("SmolLM2-135M-Instruct.").removesuffix(".gguf").lower().replace("-", "_")
    out = os.path.join(OUT, stem + ".safetensors")
    write_safetensors(out, tensors, {"manifest": stem + ".json", "made_by": manifest["made_by"], "date": now,
                                     "llama_cpp_python": llama_cpp.__version__, "model_sha256": manifest["model_sha256"]})
    with open(os.path.join(OUT, stem + ".json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")
    n_pos = sum(s["tokens"] for s in suite)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB): {len(suite)} suite sequences, {n_pos} positions, "
          f"{len(chat)} chat generations; smallest greedy gap {min(c['min_gap'] for c in chat):.4g}")


if __name__ == "__main__":
    main()
