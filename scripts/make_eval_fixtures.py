#!/usr/bin/env python3
"""Parity fixture for `lorafuse eval` (Evaluator) on the real SmolLM2-135M-Instruct GGUF.

    /root/peers/bin/python scripts/make_eval_fixtures.py [MODEL_DIR]

MODEL_DIR defaults to ${LORAFUSE_HOME:-~/.cache/lorafuse}/models (scripts/setup.sh fetches the model).
Reads Tests/LoRAFuseTests/Fixtures/eval/arith.jsonl and writes, in the same folder:
  adapter/            a small random PEFT LoRA adapter (r=4, alpha=8, q_proj + v_proj, A from PEFT's
                      default init, B ~ N(0, 0.02), torch seed 1234), saved as float16 (the values used
                      below are the float16-rounded ones, so Swift reads exactly what Python used)
  expected.json       per configuration ("base", "adapter"): per-example prompt ids, answer ids,
                      summed NLL, greedy ids and text; per-task loss / perplexity / accuracy / tokens.

The computation follows the Evaluator's definition exactly:
  * prompt = the model's chat template applied to one user turn with the generation prompt
    (SmolLM2's template inserts its default system message), tokenized with special tokens parsed;
  * answer ids = tokens of the answer text, then <|im_end|> (the end-of-turn token, id 2), tokenized
    separately and appended;
  * loss: one forward of prompt + answer[:-1]; logits row P-1+j predicts answer[j];
    nll_j = logsumexp(z) - z[answer[j]] in float64; task loss = sum nll / number of answer tokens;
    perplexity = exp(loss);
  * accuracy: greedy decoding with the KV cache, at most 32 new tokens, stopped at <|im_end|>;
    correct when the decoded text (special tokens kept), stripped, equals the stripped answer.

Tokenization. transformers 5.x builds SmolLM2's tokenizer from the GGUF with GPT-2's plain ByteLevel
pre-tokenizer, which differs from the model's own ("smollm": every digit split off first) for spaces
before digits. As in make_tokenizer_fixtures.py, the ids here come from the GGUF tokenizer with the
smollm pre-tokenizer restored (Digits(individual_digits=True) then ByteLevel), which is what lorafuse's
`.smollm` implements; the ids are written out so the Swift test compares them first.

Model: transformers dequantizes the Q4_1 / Q8_0 GGUF weights to float32 and computes in float32.
"""
import json
import math
import os
import sys

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

HOME = os.environ.get("LORAFUSE_HOME", os.path.expanduser("~/.cache/lorafuse"))
MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HOME, "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "Tests", "LoRAFuseTests", "Fixtures", "eval")
TASK_FILE = os.path.join(FIX, "arith.jsonl")
ADAPTER_DIR = os.path.join(FIX, "adapter")
EOT = "<|im_end|>"
MAX_NEW = 32
SEED = 1234

torch.set_num_threads(2)
torch.manual_seed(SEED)

tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)
smollm = Tokenizer.from_str(tok.backend_tokenizer.to_str())
smollm.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
)
eot_id = tok.convert_tokens_to_ids(EOT)
assert eot_id == 2, eot_id

model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME, torch_dtype=torch.float32)
model.eval()

examples = []
with open(TASK_FILE, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        examples.append({"line": line_no, "prompt": obj["prompt"], "answer": obj["answer"]})
task_name = os.path.basename(TASK_FILE).split(".", 1)[0]


def prompt_ids(prompt):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return text, smollm.encode(text, add_special_tokens=False).ids


def answer_ids(answer):
    return smollm.encode(answer, add_special_tokens=False).ids + [eot_id]


@torch.no_grad()
def score(m, p, a):
    ids = torch.tensor([p + a[:-1]])
    logits = m(input_ids=ids).logits[0].double()  # (T, vocab)
    rows = logits[len(p) - 1 : len(p) - 1 + len(a)]
    logp = torch.log_softmax(rows, dim=-1)
    nll = [-logp[j, t].item() for j, t in enumerate(a)]
    return nll


@torch.no_grad()
def greedy(m, p):
    out = m(input_ids=torch.tensor([p]), use_cache=True)
    past = out.past_key_values
    z = out.logits[0, -1]
    gen, margins = [], []
    for _ in range(MAX_NEW):
        t = int(torch.argmax(z).item())
        top2 = torch.topk(z, 2).values
        margins.append(float(top2[0] - top2[1]))  # how close this greedy choice was to flipping
        if t == eot_id:
            break
        gen.append(t)
        if len(gen) == MAX_NEW:
            break
        out = m(input_ids=torch.tensor([[t]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        z = out.logits[0, -1]
    return gen, margins


def evaluate(m):
    per = []
    total_nll, total_tokens, correct = 0.0, 0, 0
    for ex in examples:
        text, p = prompt_ids(ex["prompt"])
        a = answer_ids(ex["answer"])
        nll = score(m, p, a)
        g, margins = greedy(m, p)
        out_text = smollm.decode(g, skip_special_tokens=False)
        ok = out_text.strip() == ex["answer"].strip()
        total_nll += sum(nll)
        total_tokens += len(a)
        correct += ok
        per.append({"line": ex["line"], "prompt": ex["prompt"], "answer": ex["answer"], "rendered": text,
                    "prompt_ids": p, "answer_ids": a, "nll": sum(nll), "token_nll": nll,
                    "greedy_ids": g, "greedy_margins": margins, "greedy_text": out_text, "correct": ok})
        print(f"  {ex['prompt']!r} -> {out_text!r} nll={sum(nll):.4f}")
    loss = total_nll / total_tokens
    return {"examples": per,
            "task": {"loss": loss, "perplexity": math.exp(loss), "accuracy": correct / len(examples),
                     "examples": len(examples), "tokens": total_tokens}}


print("base")
base = evaluate(model)

# Random adapter: PEFT's default A init (seeded), B ~ N(0, 0.02) instead of zeros.
config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], bias="none",
                    task_type="CAUSAL_LM")
peft_model = get_peft_model(model, config)
gen = torch.Generator().manual_seed(SEED)
with torch.no_grad():
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        if "lora_A" in name or "lora_B" in name:
            p.copy_(p.half().float())  # exactly the float16 values that are saved
peft_model.eval()
os.makedirs(ADAPTER_DIR, exist_ok=True)
state = {k: v.detach().half().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
save_file(state, os.path.join(ADAPTER_DIR, "adapter_model.safetensors"), metadata={"format": "pt"})
cfg = peft_model.peft_config["default"]
cfg.base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"  # not this machine's path
cfg.save_pretrained(ADAPTER_DIR)
print("adapter", len(state), "tensors,", os.path.getsize(os.path.join(ADAPTER_DIR, "adapter_model.safetensors")), "bytes")

print("adapter")
adapted = evaluate(peft_model)

expected = {
    "model": GGUF_NAME,
    "task_file": "arith.jsonl",
    "task": task_name,
    "eot_id": eot_id,
    "max_new_tokens": MAX_NEW,
    "adapter": {"dir": "adapter", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                "b_std": 0.02, "seed": SEED, "dtype": "F16"},
    "base": base,
    "with_adapter": adapted,
}
with open(os.path.join(FIX, "expected.json"), "w", encoding="utf-8") as f:
    json.dump(expected, f, ensure_ascii=False, indent=1)
print("base loss", base["task"]["loss"], "adapter loss", adapted["task"]["loss"])
