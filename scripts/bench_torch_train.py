#!/usr/bin/env python3
"""Peer side of the training benchmark (`lorafuse-bench train`): LoRA training steps with PEFT +
torch on the CPU, on the same GGUF (dequantized to float32 by transformers), the same batches,
learning rates and thread count as lorafuse.

  /root/peers/bin/python scripts/bench_torch_train.py INPUTS.json

INPUTS.json (written by Benchmarks/lorafuse-bench/TrainBench.swift):
  model           path of the .gguf file
  threads         torch.set_num_threads
  rank, alpha     LoraConfig r, lora_alpha (lora_dropout 0)
  targets         PEFT target_modules (q_proj, …, down_proj)
  warmup_steps    leading steps run but not timed
  batches         per step, the sequences [{tokens, targets}] lorafuse trains on: tokens are the
                  chat-rendered prompt + answer without its last token, targets[t] the token
                  position t must predict (−1: no loss), so the loss is on the answer tokens only
  lrs             the learning rate of each step (lorafuse's schedule)
  max_grad_norm   global gradient-norm clip (0: none)
  weight_decay, betas, eps   AdamW

One step (timed from building the batch tensors to the end of optimizer.step):
  the batch is right-padded into one (B, T_max) tensor with an attention mask; the decoder runs
  once; the lm_head runs on the rows that carry a target only (as lorafuse does); the loss is the
  mean cross-entropy over those rows; backward; clip_grad_norm_; AdamW step; zero_grad.
tokens/s counts the real (unpadded) tokens of the timed steps, as lorafuse does.

Output, JSON on stdout: {step_seconds (list), mean_step_seconds, tokens_per_s, losses, peak_rss_mb,
  load_seconds, padded_fraction, method, threads, torch_version, transformers_version, peft_version}
"""
import json
import sys
import time

from bench_torch_common import load_gguf_fp32, peak_rss_mb


def main():
    cfg = json.load(open(sys.argv[1]))
    threads = int(cfg["threads"])
    model, load_seconds, versions = load_gguf_fp32(cfg["model"], threads)
    import peft
    import torch
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=int(cfg["rank"]), lora_alpha=float(cfg["alpha"]), target_modules=cfg["targets"],
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    pm.train()
    decoder = pm.base_model.model.model          # LlamaModel: hidden states
    head = pm.base_model.model.lm_head
    trainable = [p for p in pm.parameters() if p.requires_grad]
    betas = tuple(cfg.get("betas", [0.9, 0.999]))
    opt = torch.optim.AdamW(trainable, lr=float(cfg["lrs"][0]), betas=betas, eps=float(cfg.get("eps", 1e-8)),
                            weight_decay=float(cfg.get("weight_decay", 0.0)))
    max_norm = float(cfg.get("max_grad_norm", 0.0))

    warm = int(cfg["warmup_steps"])
    times, losses, real_tokens, padded_tokens = [], [], 0, 0
    for k, (batch, lr) in enumerate(zip(cfg["batches"], cfg["lrs"])):
        t0 = time.perf_counter()
        tmax = max(len(s["tokens"]) for s in batch)
        ids = torch.zeros((len(batch), tmax), dtype=torch.long)
        mask = torch.zeros((len(batch), tmax), dtype=torch.long)
        tgt = torch.full((len(batch), tmax), -1, dtype=torch.long)
        for i, s in enumerate(batch):
            n = len(s["tokens"])
            ids[i, :n] = torch.tensor(s["tokens"])
            mask[i, :n] = 1
            tgt[i, :n] = torch.tensor(s["targets"])
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state      # (B, T, C)
        rows = tgt >= 0
        logits = head(hidden[rows])                                                # (n, V)
        loss = torch.nn.functional.cross_entropy(logits, tgt[rows], reduction="mean")
        loss.backward()
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        for g in opt.param_groups:
            g["lr"] = float(lr)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if k >= warm:
            times.append(dt)
            real_tokens += int(mask.sum())
            padded_tokens += ids.numel()

    out = {"threads": threads, "load_seconds": load_seconds, "peft_version": peft.__version__, **versions,
           "step_seconds": times, "mean_step_seconds": sum(times) / len(times),
           "tokens_per_s": real_tokens / sum(times), "losses": losses, "peak_rss_mb": peak_rss_mb(),
           "padded_fraction": 1 - real_tokens / padded_tokens,
           "method": "PEFT LoRA on transformers float32, batch right-padded with an attention mask, lm_head on "
                     "answer rows only, mean cross-entropy, backward, clip_grad_norm_, torch.optim.AdamW"}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
