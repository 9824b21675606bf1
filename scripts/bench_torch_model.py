#!/usr/bin/env python3
"""Peer side of the model benchmark (`lorafuse-bench model`): the same GGUF run by PyTorch
transformers in float32, on the same token ids and thread count as lorafuse.

  /root/peers/bin/python scripts/bench_torch_model.py INPUTS.json

INPUTS.json (written by Benchmarks/lorafuse-bench/ModelBench.swift):
  model          path of the .gguf file (transformers dequantizes it to float32)
  threads        torch.set_num_threads
  repeats        timed repetitions (best is reported), after one warm-up
  pp_ids         prompt-processing ids (512 by default)
  decode_prompt  ids of the decode prompt (64 by default)
  decode_tokens  greedy tokens to decode after it (128 by default)
  eval           [{prompt_ids, answer_ids}] — lorafuse's own token ids of the chat-rendered prompt and
                 of answer + end-of-turn, so both sides score exactly the same sequences

What is timed (all under torch.inference_mode()):
  prompt processing  one forward of pp_ids with a fresh DynamicCache, logits_to_keep=1 (lorafuse
                     also computes the last row only); tokens/s = len(pp_ids) / seconds
  decode             a manual loop: forward the prompt (untimed), then decode_tokens steps of one token
                     each with past_key_values (greedy argmax, logits_to_keep=1); tokens/s =
                     decode_tokens / seconds of the loop
  eval               what `lorafuse eval --no-accuracy` does: the prompts' common prefix is run once into
                     a DynamicCache; per example the cache is cropped back to it and the rest of
                     prompt + answer[:-1] is run teacher-forced with logits_to_keep=|answer| (the head
                     only for the rows that predict answer tokens), then Σ −log_softmax in float64;
                     examples/s, and tokens/s counting every token of prompt + answer[:-1]
Peak RSS is this process's ru_maxrss (model loading included).

Output, JSON on stdout: {pp_tokens_per_s, pp_seconds, decode_tokens_per_s, decode_seconds, decode_ids,
  decode_method, eval_method, eval_examples_per_s, eval_tokens_per_s, eval_seconds, eval_loss, peak_rss_mb,
  load_seconds, threads, torch_version, transformers_version}
"""
import json
import sys
import time

from bench_torch_common import load_gguf_fp32, peak_rss_mb


def main():
    cfg = json.load(open(sys.argv[1]))
    threads = int(cfg["threads"])
    model, load_seconds, versions = load_gguf_fp32(cfg["model"], threads)
    import torch
    from transformers import DynamicCache

    model.eval()
    repeats = int(cfg.get("repeats", 3))
    out = {"threads": threads, "load_seconds": load_seconds, **versions}

    with torch.inference_mode():
        # Prompt processing.
        ids = torch.tensor([cfg["pp_ids"]], dtype=torch.long)
        def pp():
            t = time.perf_counter()
            model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
            return time.perf_counter() - t
        pp()  # warm-up
        best = min(pp() for _ in range(repeats))
        out["pp_seconds"] = best
        out["pp_tokens_per_s"] = ids.shape[1] / best

        # Decode.
        prompt = torch.tensor([cfg["decode_prompt"]], dtype=torch.long)
        n = int(cfg["decode_tokens"])
        def decode(steps):
            cache = DynamicCache()
            o = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = int(torch.argmax(o.logits[0, -1]))
            got = [nxt]
            t = time.perf_counter()
            for _ in range(steps):
                o = model(input_ids=torch.tensor([[nxt]]), past_key_values=o.past_key_values, use_cache=True,
                          logits_to_keep=1)
                nxt = int(torch.argmax(o.logits[0, -1]))
                got.append(nxt)
            return time.perf_counter() - t, got
        decode(8)  # warm-up
        runs = [decode(n) for _ in range(repeats)]
        best_t = min(r[0] for r in runs)
        out["decode_seconds"] = best_t
        out["decode_tokens_per_s"] = n / best_t
        out["decode_ids"] = runs[0][1]
        out["decode_method"] = "manual loop, one token per forward with past_key_values (DynamicCache), greedy argmax"

        # Eval loss pass, the way lorafuse's Evaluator does it: the prompts' common prefix is run once
        # into a cache, each example crops the cache back to it and runs only the rest, and the head
        # is computed for the answer rows only (logits_to_keep = |answer|: they are the last rows).
        exs = cfg["eval"]
        shared = min(len(e["prompt_ids"]) for e in exs) - 1
        first = exs[0]["prompt_ids"]
        for e in exs[1:]:
            k = 0
            while k < shared and e["prompt_ids"][k] == first[k]:
                k += 1
            shared = k
        prefix_cache = DynamicCache()
        if shared > 0:
            model(input_ids=torch.tensor([first[:shared]]), past_key_values=prefix_cache, use_cache=True,
                  logits_to_keep=1)
        out["eval_method"] = (f"common prompt prefix ({shared} tokens) cached once, DynamicCache.crop per example, "
                              "logits_to_keep=|answer|")
        def score(e):
            p, a = e["prompt_ids"], e["answer_ids"]
            extra = prefix_cache.get_seq_length() - shared
            if extra > 0:
                prefix_cache.crop(-extra)  # transformers 5: a negative value removes that many tokens
            x = torch.tensor([p[shared:] + a[:-1]], dtype=torch.long)
            logits = model(input_ids=x, past_key_values=prefix_cache, use_cache=True,
                           logits_to_keep=len(a)).logits[0]
            lp = torch.log_softmax(logits.double(), dim=-1)
            return -float(lp[torch.arange(len(a)), torch.tensor(a)].sum()), len(a)
        for e in exs[:2]:
            score(e)  # warm-up
        t = time.perf_counter()
        nll, toks = 0.0, 0
        for e in exs:
            s, k = score(e)
            nll += s
            toks += k
        secs = time.perf_counter() - t
        out["eval_seconds"] = secs
        out["eval_examples_per_s"] = len(exs) / secs
        out["eval_tokens_per_s"] = sum(len(e["prompt_ids"]) + len(e["answer_ids"]) - 1 for e in exs) / secs
        out["eval_loss"] = nll / toks

    out["peak_rss_mb"] = peak_rss_mb()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
