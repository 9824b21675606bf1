#!/usr/bin/env python3
"""llama.cpp as a peer of the model benchmark (issue 13): the same GGUF, the same token ids and
thread count as lorafuse, through llama-cpp-python's low-level API (libllama itself; no Python
sampling or caching layer in the timed loops).

Run in the venv of scripts/setup_llamacpp.sh:
  PY=~/.cache/lorafuse/venvs/llamacpp/bin/python
  $PY scripts/bench_llamacpp.py INPUTS.json                  # as lorafuse-bench runs its peers
  $PY scripts/bench_llamacpp.py --model M.gguf --threads 2   # standalone: its own token ids
Options (both modes; in INPUTS.json mode they override the file): --repeats N, --batch-sizes 8,32
(empty: skip batched decode), --flash-attn off|on|auto, --no-eval.

INPUTS.json (the layout of Benchmarks/lorafuse-bench/ModelBench.swift, as for bench_torch_model.py):
  model, threads, repeats, pp_ids, decode_prompt, decode_tokens, eval (optional; [{prompt_ids, answer_ids}])
and optionally
  batch_sizes    sequence counts for batched decode (default [8, 32])
  batch_prompts  one id list per sequence (the first B are used); default: sequence i's prompt is
                 pp_ids[8i : 8i + len(decode_prompt)] (wrapping around), so every sequence differs
Standalone mode makes pp_ids/decode_prompt as ModelBench does, from the same English text (repeated
`text + " "` tokenized by llama.cpp without BOS until long enough), decode_tokens 128, no eval.

What is timed (wall clock, time.perf_counter; each measure is run once to warm up, then `repeats`
times; the reported value is the MEDIAN of the repeats, the *_runs fields hold all of them and
*_best the fastest, which is what bench_torch_model.py reports):
  prompt processing  the KV cache cleared, then one llama_decode of pp_ids (one sequence, logits of
                     the last position only); tokens/s = len(pp_ids) / seconds
  decode             the KV cache cleared, decode_prompt decoded (untimed, last logits only), then
                     decode_tokens llama_decode calls of one token each, greedy (numpy argmax of
                     llama_get_logits_ith); tokens/s = decode_tokens / seconds of that loop
  eval               what `lorafuse eval --no-accuracy` does: the prompts' common prefix decoded once;
                     per example llama_memory_seq_rm back to it, then one llama_decode of the rest of
                     prompt + answer[:-1] with logits on the |answer| rows that predict answer tokens;
                     Σ −log_softmax in float64. examples/s and tokens/s (every fed token) as in the torch peer
  batched decode B   its own context (n_seq_max = B, one KV stream per sequence, n_ctx = B × 256);
                     every sequence's prompt decoded (untimed), then decode_tokens steps, each ONE
                     llama_decode of a batch of B tokens (one per sequence, seq_id i, each at its own
                     position), greedy per sequence; tokens/s = B × decode_tokens / seconds
Contexts: n_batch = max(512, len(pp_ids)), n_ubatch 512 (llama.cpp's default), F16 KV cache, flash
attention off by default (llama-cpp-python's Llama() default; --flash-attn changes it), n_threads and
n_threads_batch = threads. The model is memory-mapped (llama.cpp's default).
load_seconds: llama_model_load_from_file plus creating the first context. peak_rss_mb: this
process's ru_maxrss (Python and numpy included, ~30 MB) after the single-sequence measures, before
the batched contexts exist; batched_peak_rss_mb: after them (each batched context's KV cache is
B × 256 positions).

Output, one JSON object on stdout: {pp_tokens_per_s, pp_seconds, decode_tokens_per_s,
  decode_seconds, decode_ids, decode_method, eval_method, eval_examples_per_s, eval_tokens_per_s,
  eval_seconds, eval_loss, peak_rss_mb, load_seconds, threads, ...}: every field bench_torch_model.py
  prints (the eval fields are 0 and eval_method says "skipped" without eval inputs), plus
  stat ("median"), pp_tokens_per_s_runs/_best, decode_tokens_per_s_runs/_best,
  batched [{sequences, decode_tokens, tokens_per_s, seconds, tokens_per_s_runs, tokens_per_s_best,
  ids_first_sequence}] (or batched_skipped with the reason), batched_peak_rss_mb, model, model_bytes,
  flash_attn, n_ubatch, llama_cpp_python_version, system_info, openblas_coretype and omp_wait_policy
  (the environment's values, or null), load_average_before/after ("1m 5m 15m").
Progress goes to stderr.

Load matters more for llama.cpp than for most: this build uses OpenMP, whose threads spin while
waiting, so with other processes on the 2 cores its decode collapses (measured 2026-12-02 at load
≈ 4.5: 7.8 tokens/s with 2 threads, 73 with OMP_WAIT_POLICY=passive, 108 with 1 thread, against
150–171 on a quiet machine). Compare numbers only from runs whose load_average_before is low.
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

# The text of Benchmarks/lorafuse-bench/ModelBench.swift (`ModelBench.text`), for standalone mode.
TEXT = (
    "The history of computing is a story of ideas that were first thought impossible. Early machines "
    "filled whole rooms, consumed enormous amounts of power and could only perform a handful of "
    "operations each second. Engineers wrote programs by rewiring panels and flipping switches, and a "
    "single mistake could cost a day of work. Over the following decades transistors replaced vacuum "
    "tubes, integrated circuits replaced individual transistors, and the number of components on a chip "
    "doubled again and again. Programming languages grew from raw machine code to assemblers, then to "
    "compilers that let people describe what they wanted in something closer to mathematics or plain "
    "language. Networks connected universities, then businesses, then homes, and information began to "
    "move faster than anyone had predicted. Today a phone in a pocket holds more computing power than "
    "all the machines of the nineteen sixties combined, and researchers train language models that can "
    "summarize books, translate between dozens of languages and answer questions about almost anything. "
    "Yet the basic ideas remain: store numbers, combine them with simple rules, and repeat those rules "
    "very many times, very quickly."
)


def note(msg):
    print(f"llama.cpp: {msg}", file=sys.stderr, flush=True)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def load_average():
    """The 1-, 5- and 15-minute load averages, as lorafuse-bench prints them."""
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Engine:
    """A model and its contexts through the C API."""

    def __init__(self, lc, path, threads, flash_attn):
        self.lc, self.threads, self.flash_attn = lc, threads, flash_attn
        lc.llama_backend_init()
        lc.llama_log_set(_quiet_logger(lc), ctypes.c_void_p(0))
        mp = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)

    def context(self, n_ctx, n_batch, n_seq=1):
        lc = self.lc
        p = lc.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, n_batch, min(512, n_batch), n_seq
        p.n_threads = p.n_threads_batch = self.threads
        p.flash_attn_type = {"off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED, "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                             "auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO}[self.flash_attn]
        ctx = lc.llama_init_from_model(self.model, p)
        if not ctx:
            raise SystemExit(f"llama.cpp could not create a context (n_ctx {n_ctx}, n_seq {n_seq})")
        return Context(self, ctx, n_batch)

    def tokenize(self, text, add_special=False):
        buf = (self.lc.llama_token * (len(text) + 16))()
        b = text.encode()
        n = self.lc.llama_tokenize(self.vocab, b, len(b), buf, len(buf), add_special, False)
        assert n >= 0
        return list(buf[:n])


def _quiet_logger(lc):
    # llama.cpp logs every context creation to stderr; keep errors only.
    @lc.llama_log_callback
    def cb(level, text, user):
        if level == 3:  # GGML_LOG_LEVEL_ERROR (ggml.h: NONE 0, INFO 1, WARN 2, ERROR 3)
            sys.stderr.write(text.decode("utf-8", "replace"))
    _quiet_logger.keep = cb  # keep the callback alive
    return cb


class Context:
    def __init__(self, eng, ctx, n_batch):
        self.eng, self.lc, self.ctx, self.n_batch = eng, eng.lc, ctx, n_batch
        self.batch = self.lc.llama_batch_init(n_batch, 0, 1)
        self.mem = self.lc.llama_get_memory(ctx)

    def clear(self):
        self.lc.llama_memory_clear(self.mem, True)

    def decode(self, tokens, positions, seqs, outputs):
        """One llama_decode; returns the logits of the output rows as an (n_out, vocab) view."""
        b, n = self.batch, len(tokens)
        assert n <= self.n_batch
        b.n_tokens = n
        for i in range(n):
            b.token[i] = tokens[i]
            b.pos[i] = positions[i]
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seqs[i]
            b.logits[i] = outputs[i]
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")
        n_out = sum(1 for o in outputs if o)
        if n_out == 0:
            self.lc.llama_synchronize(self.ctx)
            return None
        ptr = self.lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.eng.n_vocab))

    def feed(self, tokens, start=0, seq=0, last_only=True, out_rows=None):
        n = len(tokens)
        outs = [0] * n
        if out_rows is None:
            outs[-1] = 1
        else:
            for r in out_rows:
                outs[r] = 1
        return self.decode(tokens, list(range(start, start + n)), [seq] * n, outs)


def timed(fn, repeats):
    fn()  # warm-up
    return [fn() for _ in range(repeats)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="?", help="INPUTS.json written by lorafuse-bench")
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--batch-sizes")
    ap.add_argument("--flash-attn", choices=["off", "on", "auto"], default="off")
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args()
    cfg = json.load(open(args.inputs)) if args.inputs else {}
    if args.model:
        cfg["model"] = args.model
    if args.threads:
        cfg["threads"] = args.threads
    if args.repeats:
        cfg["repeats"] = args.repeats
    if args.batch_sizes is not None:
        cfg["batch_sizes"] = [int(x) for x in args.batch_sizes.split(",") if x]
    if args.no_eval:
        cfg.pop("eval", None)
    if "model" not in cfg:
        ap.error("give INPUTS.json or --model")
    threads = int(cfg.get("threads", 2))
    repeats = int(cfg.get("repeats", 3))

    import llama_cpp as lc

    t0 = time.perf_counter()
    eng = Engine(lc, cfg["model"], threads, args.flash_attn)

    if "pp_ids" not in cfg:
        ids = []
        while len(ids) < 512:
            ids += eng.tokenize(TEXT + " ")
        cfg["pp_ids"], cfg["decode_prompt"] = ids[:512], ids[:64]
        cfg.setdefault("decode_tokens", 128)
    pp_ids, prompt, steps = cfg["pp_ids"], cfg["decode_prompt"], int(cfg["decode_tokens"])
    exs = cfg.get("eval") or []
    longest = max([len(pp_ids), len(prompt) + steps + 1] + [len(e["prompt_ids"]) + len(e["answer_ids"]) for e in exs])
    n_batch = max(512, len(pp_ids), max([len(e["prompt_ids"]) + len(e["answer_ids"]) for e in exs], default=0))
    ctx = eng.context(-(-longest // 256) * 256, n_batch)
    load_seconds = time.perf_counter() - t0

    out = {"threads": threads, "load_seconds": load_seconds, "stat": "median", "repeats": repeats,
           "model": os.path.basename(cfg["model"]), "model_bytes": os.path.getsize(cfg["model"]),
           "flash_attn": args.flash_attn, "n_ubatch": min(512, n_batch),
           "llama_cpp_python_version": lc.__version__,
           "system_info": lc.llama_print_system_info().decode().strip(),
           "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_before": load_average()}

    def summarize(key, work, runs):
        secs = [r[0] if isinstance(r, tuple) else r for r in runs]
        rates = [work / s for s in secs]
        out[key + "_seconds"] = statistics.median(secs)
        out[key + "_tokens_per_s"] = statistics.median(rates)
        out[key + "_tokens_per_s_runs"] = rates
        out[key + "_tokens_per_s_best"] = max(rates)

    # Prompt processing.
    note(f"prompt processing, {len(pp_ids)} tokens…")
    def pp():
        ctx.clear()
        t = time.perf_counter()
        ctx.feed(pp_ids)
        lc.llama_synchronize(ctx.ctx)
        return time.perf_counter() - t
    summarize("pp", len(pp_ids), timed(pp, repeats))

    # Decode.
    note(f"decode, {steps} tokens after {len(prompt)}…")
    def decode(n):
        ctx.clear()
        nxt = int(np.argmax(ctx.feed(prompt)[0]))
        got = [nxt]
        pos = len(prompt)
        t = time.perf_counter()
        for _ in range(n):
            nxt = int(np.argmax(ctx.decode([nxt], [pos], [0], [1])[0]))
            pos += 1
            got.append(nxt)
        return time.perf_counter() - t, got
    decode(8)  # warm-up
    runs = [decode(steps) for _ in range(repeats)]
    summarize("decode", steps, runs)
    out["decode_ids"] = runs[0][1]
    out["decode_method"] = ("llama_decode of one token per step on the KV cache (libllama through llama-cpp-python's "
                            "ctypes API), greedy numpy argmax of the logits")

    # Eval loss pass.
    if exs:
        note(f"eval loss pass, {len(exs)} examples…")
        first = exs[0]["prompt_ids"]
        shared = min(len(e["prompt_ids"]) for e in exs) - 1
        for e in exs[1:]:
            k = 0
            while k < shared and e["prompt_ids"][k] == first[k]:
                k += 1
            shared = k
        ctx.clear()
        if shared > 0:
            ctx.feed(first[:shared])
        def score(e):
            p, a = e["prompt_ids"], e["answer_ids"]
            lc.llama_memory_seq_rm(ctx.mem, 0, shared, -1)
            x = p[shared:] + a[:-1]
            logits = ctx.feed(x, start=shared, out_rows=range(len(x) - len(a), len(x))).astype(np.float64)
            m = logits.max(axis=1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
            return float((lse - logits[np.arange(len(a)), a]).sum()), len(a)
        for e in exs[:2]:
            score(e)  # warm-up
        t = time.perf_counter()
        nll = toks = 0
        for e in exs:
            s, k = score(e)
            nll += s
            toks += k
        secs = time.perf_counter() - t
        out["eval_seconds"] = secs
        out["eval_examples_per_s"] = len(exs) / secs
        out["eval_tokens_per_s"] = sum(len(e["prompt_ids"]) + len(e["answer_ids"]) - 1 for e in exs) / secs
        out["eval_loss"] = nll / toks
        out["eval_method"] = (f"common prompt prefix ({shared} tokens) decoded once, llama_memory_seq_rm back to it per "
                              "example, logits on the |answer| rows only")
    else:
        out.update(eval_seconds=0.0, eval_examples_per_s=0.0, eval_tokens_per_s=0.0, eval_loss=0.0,
                   eval_method="skipped (no eval inputs)")
    out["peak_rss_mb"] = peak_rss_mb()

    # Batched decode: B sequences, one llama_decode of B tokens per step.
    sizes = cfg.get("batch_sizes", [8, 32])
    out["batched"] = []
    for B in sizes:
        plen = len(prompt)
        prompts = cfg.get("batch_prompts") or [[pp_ids[(8 * i + j) % len(pp_ids)] for j in range(plen)] for i in range(B)]
        if len(prompts) < B:
            out.setdefault("batched_skipped", []).append(f"{B} sequences: only {len(prompts)} batch_prompts given")
            continue
        prompts = prompts[:B]
        per_seq = max(len(p) for p in prompts) + steps + 1
        note(f"batched decode, {B} sequences × {steps} tokens…")
        bctx = eng.context(B * (-(-per_seq // 256) * 256), max(512, B), n_seq=B)
        seqs = list(range(B))
        def batched(n):
            bctx.clear()
            nxt, pos = [], []
            for s, p in enumerate(prompts):
                nxt.append(int(np.argmax(bctx.feed(p, seq=s)[0])))
                pos.append(len(p))
            got0 = [nxt[0]]
            t = time.perf_counter()
            for _ in range(n):
                logits = bctx.decode(nxt, pos, seqs, [1] * B)
                nxt = [int(i) for i in np.argmax(logits, axis=1)]
                pos = [q + 1 for q in pos]
                got0.append(nxt[0])
            return time.perf_counter() - t, got0
        batched(4)  # warm-up
        runs = [batched(steps) for _ in range(repeats)]
        rates = [B * steps / r[0] for r in runs]
        out["batched"].append({"sequences": B, "decode_tokens": steps,
                               "seconds": statistics.median(r[0] for r in runs),
                               "tokens_per_s": statistics.median(rates), "tokens_per_s_runs": rates,
                               "tokens_per_s_best": max(rates), "ids_first_sequence": runs[0][1]})
        lc.llama_batch_free(bctx.batch)
        lc.llama_free(bctx.ctx)
    out["batched_method"] = ("own context per B (n_seq_max = B, kv_unified off), prompts decoded untimed, then per step "
                             "one llama_decode of B tokens (one per seq_id, each at its own position), greedy per sequence")
    out["batched_peak_rss_mb"] = peak_rss_mb()
    out["load_average_after"] = load_average()
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
