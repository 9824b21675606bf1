#!/usr/bin/env python3
"""Plain-prose examples for a "general" adapter (GenKnowSub, `lorafuse route --general`).

GenKnowSub subtracts adapters trained on general text (the paper: Wikipedia) from the task
adapters. No machine here has Wikipedia, so this takes English prose that every Debian machine
carries: the licence texts in /usr/share/common-licenses and Vim's user manual. Each example asks
the model to continue a paragraph: prompt = "Continue this text: <first sentences>", answer =
the next sentence or two. Not the suite's kind of task, which is the point.

    python3 scripts/make_general_text.py OUT_DIR [--train 200] [--val 20] [--seed 1]

writes OUT_DIR/general.train.jsonl and OUT_DIR/general.val.jsonl (refuses to overwrite them).
"""
import argparse, glob, json, os, random, re, sys

SOURCES = ["/usr/share/common-licenses/*", "/usr/share/vim/vim*/doc/usr_*.txt"]


def paragraphs(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        # Prose only: no tabs (code, tables), no help-file markup, no headings in capitals.
        if any("\t" in l or "|" in l or "*" in l or "==" in l for l in lines):
            continue
        p = " ".join(l.strip() for l in lines)
        p = re.sub(r"\s+", " ", p).strip()
        if len(p) < 200 or p.upper() == p or not re.match(r"[A-Z]", p):
            continue
        yield p


def example(p):
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", p)
    if len(sentences) < 2:
        return None
    k = max(1, min(2, len(sentences) - 1))
    prompt, answer = " ".join(sentences[:k]), " ".join(sentences[k:k + 2])
    if not (40 <= len(prompt) <= 400 and 20 <= len(answer) <= 300):
        return None
    return {"prompt": "Continue this text: " + prompt, "answer": answer}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--val", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    files = sorted(f for g in SOURCES for f in glob.glob(g) if os.path.isfile(f))
    if not files:
        sys.exit("no prose found under " + ", ".join(SOURCES))
    seen, rows = set(), []
    for f in files:
        for p in paragraphs(f):
            e = example(p)
            if e and e["prompt"] not in seen:
                seen.add(e["prompt"])
                rows.append(e)
    random.Random(a.seed).shuffle(rows)
    need = a.train + a.val
    if len(rows) < need:
        sys.exit(f"only {len(rows)} prose examples found in {len(files)} files; {need} wanted")
    os.makedirs(a.out, exist_ok=True)
    for name, part in (("general.train.jsonl", rows[:a.train]), ("general.val.jsonl", rows[a.train:need])):
        path = os.path.join(a.out, name)
        if os.path.exists(path):
            sys.exit(f"{path} exists; not overwriting it")
        with open(path, "w") as fh:
            for e in part:
                fh.write(json.dumps(e, ensure_ascii=False) + "\n")
    print(f"{a.train} train and {a.val} val examples from {len(rows)} paragraphs of {len(files)} files in {a.out}")


if __name__ == "__main__":
    main()
