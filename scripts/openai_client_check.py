#!/usr/bin/env python3
"""Integration check of `lorafuse serve` with the official `openai` Python package (issue 15).

Starts `lorafuse serve` on a free loopback port with an API key (or uses --base-url), then, through
openai's client: lists the models (the base and every adapter with its parent), asks a chat
completion with the base model and one with an adapter, streams the same chat and checks the
deltas join to the same text (temperature 0), runs a text completion, a per-request ties fusion
through `extra_body` (and finds it in the model list), and checks that a wrong key and an unknown
model raise openai's AuthenticationError and NotFoundError. Prints what it saw; exits 1 on a
failed check. The Swift tests need none of this; it is run by hand:

    python3 -m venv ~/.cache/lorafuse/venvs/openai && ~/.cache/lorafuse/venvs/openai/bin/pip install openai
    swift build -c release
    ~/.cache/lorafuse/venvs/openai/bin/python scripts/openai_client_check.py
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=None, help="lorafuse binary (default: .build/release/lorafuse, else .build/debug/lorafuse)")
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/lorafuse/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--adapters", default=os.path.join(ROOT, "adapters"))
    ap.add_argument("--base-url", default=None, help="use a running server instead of starting one")
    ap.add_argument("--api-key", default="check-key")
    args = ap.parse_args()

    server = None
    if args.base_url:
        base = args.base_url.rstrip("/")
    else:
        binary = args.binary or next((p for p in (os.path.join(ROOT, ".build/release/lorafuse"),
                                                  os.path.join(ROOT, ".build/debug/lorafuse")) if os.path.exists(p)), None)
        if not binary:
            sys.exit("no lorafuse binary: run swift build -c release (or pass --binary)")
        port = free_port()
        cmd = [binary, "serve", "--model", args.model, "--adapters", args.adapters, "--port", str(port),
               "--api-key", args.api_key, "--max-batch", "4"]
        print("starting:", " ".join(cmd))
        server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    sys.exit("the server did not start:\n" + (server.stderr.read() if server.poll() is not None else "timeout"))
                time.sleep(0.5)
    try:
        run_checks(base, args.api_key, None if args.base_url else (binary, args.model, args.adapters))
    finally:
        if server:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=60)
                check(code == 0, f"server exited cleanly on SIGTERM (exit code {code})")
            except subprocess.TimeoutExpired:
                server.kill()
                check(False, "server stopped within 60 s of SIGTERM")
    print(f"{len(failures)} failed" if failures else "all checks passed")
    sys.exit(1 if failures else 0)


def run_checks(base, key, local):
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=600)
    models = client.models.list().data
    ids = [m.id for m in models]
    base_model = ids[0]
    adapters = [m for m in models[1:] if (m.model_extra or {}).get("lorafuse", {}).get("kind") == "adapter"]
    print(f"models: {len(ids)} ({base_model} + {len(adapters)} adapters: {', '.join(m.id for m in adapters[:6])}{' …' if len(adapters) > 6 else ''})")
    check(len(adapters) > 0 and all((m.model_extra or {}).get("parent") == base_model for m in adapters),
          "every adapter's parent is the base")

    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    r = client.chat.completions.create(model=base_model, messages=question, max_tokens=16, temperature=0)
    text = r.choices[0].message.content
    print(f"chat ({base_model}): {text!r} finish={r.choices[0].finish_reason} usage={r.usage.prompt_tokens}+{r.usage.completion_tokens}")
    check(r.object == "chat.completion" and r.model == base_model and isinstance(text, str) and text, "chat completion")

    chunks = list(client.chat.completions.create(model=base_model, messages=question, max_tokens=16, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    print(f"stream: {len(chunks)} chunks, {streamed!r}")
    check(streamed == text, "streamed deltas join to the non-streamed text")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, "stream usage chunk")

    name = next((m.id for m in adapters if m.id == "capital_facts"), adapters[0].id)
    a = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Capital of Peru?"}], max_tokens=12, temperature=0)
    print(f"chat ({name}): {a.choices[0].message.content!r}")
    check(a.model == name, "chat with an adapter by name")
    if local:
        binary, model, adapters_dir = local
        out = subprocess.run([binary, "generate", "--model", model, "--adapter", os.path.join(adapters_dir, name),
                              "--prompt", "Capital of Peru?", "--max-tokens", "12"], capture_output=True, text=True).stdout
        check(out.rstrip("\n") == a.choices[0].message.content, f"the same text as lorafuse generate --adapter {name} ({out.strip()!r})")

    c = client.completions.create(model=base_model, prompt="The capital of Italy is", max_tokens=8, temperature=0)
    print(f"completion: {c.choices[0].text!r}")
    check(c.object == "text_completion" and c.choices[0].text, "text completion")

    pair = [m.id for m in adapters[:2]]
    f = client.chat.completions.create(model=base_model, messages=question, max_tokens=8, temperature=0,
                                       extra_body={"adapters": [{"name": pair[0]}, {"name": pair[1], "weight": 0.5}],
                                                   "merge": {"method": "linear"}})
    print(f"fusion linear({pair[0]}, {pair[1]}:0.5) → model {f.model}: {f.choices[0].message.content!r}")
    check(f.model.startswith("fusion-") and f.model in [m.id for m in client.models.list().data], "per-request fusion, listed")

    try:
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
        check(False, "a wrong key is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, f"a wrong key is refused (401: {e.body.get('message') if isinstance(e.body, dict) else e.body})")
    try:
        client.chat.completions.create(model="no-such-model", messages=question, max_tokens=4)
        check(False, "an unknown model is refused")
    except openai.NotFoundError as e:
        check(e.status_code == 404, "an unknown model is refused (404)")
    try:
        client.chat.completions.create(model=base_model, messages=question, max_tokens=4, n=2)
        check(False, "n=2 is refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400, "n=2 is refused (400)")


if __name__ == "__main__":
    main()
