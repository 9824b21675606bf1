#!/usr/bin/env python3
"""Peer side of the fusion benchmark: time PEFT's add_weighted_adapter on the inputs the Swift
benchmark wrote, and measure its memory and reconstruction error.

  /root/peers/bin/python scripts/bench_peft_fusion.py INPUT_DIR [--quick] [--threads N] [--methods svd,cat]

INPUT_DIR holds manifest.json and raw float32 files. The manifest (see
scripts/_bench_inputs_for_testing.py for a writer) has:
  adapters        number of adapters n (files are indexed 0..<n)
  rank, alpha     every adapter's r and lora_alpha (scale alpha/r, or alpha/sqrt(r) if use_rslora)
  use_rslora      optional, default false
  weights         n combination weights
  modules         [{name, out, in}] — one nn.Linear(in, out) per entry, named `name`
  files           {"A": "A_{i}_{m}.bin", "B": "B_{i}_{m}.bin"}: A is (rank, in), B is (out, rank),
                  row-major float32; "byte_order" ("little", default) and "dtype" ("float32") are checked
  methods         list of names from METHODS below (or objects {"name", "peft", ...} overriding them)
  svd_rank, density, majority_sign_method, threads, seed   optional settings
  quick_modules   optional [{name, out, in}] used by --quick (default: QUICK below)

--quick uses the quick shapes: if the files are larger it takes the leading block
(A[:, :in], B[:out, :]), so the same directory serves both runs.

Each method runs in its own subprocess (this script with --method) so its peak RSS is its own.
Output, JSON on stdout:
  {method: {seconds, peak_rss_mb, rss_after_load_mb, peak_rss_over_load_mb, rel_error: {module: e},
            target, peft_combination, svd_rank, density, threads, peft_version, torch_version}}
rel_error is ‖ΔW_target − ΔW_result‖_F / ‖ΔW_target‖_F per module, where ΔW_result is PEFT's
get_delta_weight of the new adapter, and ΔW_target is
  - "exact": Σ w_i s_i B_i A_i in float64, for svd and cat (and linear);
  - "peft_dense": the dense tensor PEFT itself passed to torch.linalg.svd (ties_svd, dare_*_svd,
    magnitude_prune_svd), replayed with the same torch RNG state, so the error is the truncation error.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

QUICK = [{"name": "q", "out": 1024, "in": 1024},
         {"name": "up", "out": 2752, "in": 1024},
         {"name": "down", "out": 1024, "in": 2752}]

# our name -> (PEFT combination_type, needs density, target kind)
METHODS = {
    "svd": ("svd", False, "exact"),
    "cat": ("cat", False, "exact"),
    "ties": ("ties_svd", True, "peft_dense"),
    "dare_ties": ("dare_ties_svd", True, "peft_dense"),
    "dare_linear": ("dare_linear_svd", True, "peft_dense"),
    "magnitude_prune": ("magnitude_prune_svd", True, "peft_dense"),
    "linear": ("linear", False, "exact"),
}


def load_manifest(input_dir):
    with open(os.path.join(input_dir, "manifest.json")) as f:
        man = json.load(f)
    if man.get("byte_order", "little") != "little" or man.get("dtype", "float32") != "float32":
        raise SystemExit(f"manifest.json: expected little-endian float32, got {man.get('byte_order')} {man.get('dtype')}")
    if len(man["weights"]) != man["adapters"]:
        raise SystemExit(f"manifest.json: {man['adapters']} adapters but {len(man['weights'])} weights")
    return man


def method_spec(man, entry):
    """(name, peft combination, density or None, target kind) for a manifest method entry."""
    if isinstance(entry, str):
        entry = {"name": entry}
    name = entry["name"]
    if name not in METHODS and "peft" not in entry:
        raise SystemExit(f"manifest.json: unknown method {name!r}; known: {sorted(METHODS)}")
    peft_name, needs_density, target = METHODS.get(name, (entry.get("peft"), False, "peft_dense"))
    peft_name = entry.get("peft", peft_name)
    density = entry.get("density", man.get("density", 0.5)) if needs_density else None
    svd_rank = entry.get("svd_rank", man.get("svd_rank", man["rank"]))
    return {"name": name, "peft": peft_name, "density": density, "target": target, "svd_rank": svd_rank,
            "majority_sign_method": entry.get("majority_sign_method", man.get("majority_sign_method", "total"))}


def modules_for(man, quick):
    if not quick:
        return [dict(m) for m in man["modules"]]
    full = {m["name"]: m for m in man["modules"]}
    out = []
    for q in man.get("quick_modules", QUICK):
        f = full[q["name"]]
        out.append({"name": q["name"], "out": min(q["out"], f["out"]), "in": min(q["in"], f["in"]),
                    "file_out": f["out"], "file_in": f["in"]})
    return out


def read_matrix(path, rows, cols, take_rows, take_cols):
    import numpy as np
    data = np.fromfile(path, dtype="<f4")
    if data.size != rows * cols:
        raise SystemExit(f"{path}: expected {rows}x{cols} = {rows * cols} float32 values, found {data.size}")
    return np.ascontiguousarray(data.reshape(rows, cols)[:take_rows, :take_cols])


def current_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_one(args):
    """Child process: one method, prints one JSON object."""
    import torch
    import peft
    from peft import LoraConfig, get_peft_model
    from peft.utils import merge_utils

    man = load_manifest(args.input_dir)
    threads = args.threads or man.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    spec = None
    for entry in man["methods"]:
        s = method_spec(man, entry)
        if s["name"] == args.method:
            spec = s
    if spec is None:
        spec = method_spec(man, args.method)
    mods = modules_for(man, args.quick)
    n, rank, alpha = man["adapters"], man["rank"], man["alpha"]
    weights = [float(w) for w in man["weights"]]
    files = man.get("files", {"A": "A_{i}_{m}.bin", "B": "B_{i}_{m}.bin"})

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for m in mods:
                lin = torch.nn.utils.skip_init(torch.nn.Linear, m["in"], m["out"], bias=False)
                with torch.no_grad():
                    lin.weight.zero_()  # only the adapters matter
                setattr(self, m["name"], lin)

    names = [f"ad{i}" for i in range(n)]
    cfg = dict(target_modules=[m["name"] for m in mods], r=rank, lora_alpha=alpha, lora_dropout=0.0,
               use_rslora=bool(man.get("use_rslora", False)), init_lora_weights=False)
    model = get_peft_model(Layer(), LoraConfig(**cfg), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, LoraConfig(**cfg))
    with torch.no_grad():
        for i, name in enumerate(names):
            for m in mods:
                fo, fi = m.get("file_out", m["out"]), m.get("file_in", m["in"])
                a = read_matrix(os.path.join(args.input_dir, files["A"].format(i=i, m=m["name"])),
                                rank, fi, rank, m["in"])
                b = read_matrix(os.path.join(args.input_dir, files["B"].format(i=i, m=m["name"])),
                                fo, rank, m["out"], rank)
                layer = getattr(model.base_model.model, m["name"])
                layer.lora_A[name].weight.copy_(torch.from_numpy(a))
                layer.lora_B[name].weight.copy_(torch.from_numpy(b))
    rss_after_load = current_rss_mb()

    # Record the torch RNG state before each module's dense combination, so the target for the
    # random DARE methods can be replayed exactly afterwards (a few KB; does not distort memory).
    lora_model = model.base_model
    rng_states = {}
    original = lora_model._svd_generalized_task_arithmetic_weighted_adapter

    def recording(combination_type, adapters, weights_, new_rank, target, *rest, **kw):
        rng_states[id(target)] = torch.get_rng_state()
        return original(combination_type, adapters, weights_, new_rank, target, *rest, **kw)

    lora_model._svd_generalized_task_arithmetic_weighted_adapter = recording

    seed = int(man.get("seed", 0))
    kwargs = {"combination_type": spec["peft"]}
    if spec["peft"].endswith("svd"):
        kwargs["svd_rank"] = spec["svd_rank"]
    if spec["density"] is not None:
        kwargs["density"] = spec["density"]
    if "ties" in spec["peft"]:
        kwargs["majority_sign_method"] = spec["majority_sign_method"]
    repeats = 2 if spec["peft"] == "cat" else 1  # cat takes milliseconds: take the min of two
    times = []
    result_name = None
    for rep in range(repeats):
        if result_name is not None:
            model.delete_adapter(result_name)
        result_name = f"fused{rep}"
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        model.add_weighted_adapter(names, weights, result_name, **kwargs)
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mb()  # before the error computation, which allocates float64 targets

    errors = {}
    with torch.no_grad():
        for m in mods:
            layer = getattr(model.base_model.model, m["name"])
            result = layer.get_delta_weight(result_name).double()
            if spec["target"] == "exact":
                target = torch.zeros(m["out"], m["in"], dtype=torch.float64)
                for name, w in zip(names, weights):
                    target += (w * layer.scaling[name]) * (layer.lora_B[name].weight.double()
                                                            @ layer.lora_A[name].weight.double())
            else:
                deltas = [layer.get_delta_weight(name) for name in names]
                wt = torch.tensor(weights)
                torch.set_rng_state(rng_states[id(layer)])
                p = spec["peft"]
                if p == "ties_svd":
                    target = merge_utils.ties(deltas, wt, spec["density"], spec["majority_sign_method"])
                elif p == "dare_ties_svd":
                    target = merge_utils.dare_ties(deltas, wt, spec["density"], spec["majority_sign_method"])
                elif p == "dare_linear_svd":
                    target = merge_utils.dare_linear(deltas, wt, spec["density"])
                elif p == "magnitude_prune_svd":
                    target = merge_utils.magnitude_prune(deltas, wt, spec["density"])
                else:
                    raise SystemExit(f"no dense target known for {p}")
                target = target.double()
                del deltas
            errors[m["name"]] = float(torch.linalg.norm(target - result) / torch.linalg.norm(target))
            del target, result

    out = {
        "seconds": min(times),
        "all_seconds": times,
        "peak_rss_mb": peak,
        "rss_after_load_mb": rss_after_load,
        "peak_rss_over_load_mb": peak - rss_after_load,
        "rel_error": errors,
        "target": spec["target"],
        "peft_combination": spec["peft"],
        "svd_rank": kwargs.get("svd_rank"),
        "density": spec["density"],
        "threads": torch.get_num_threads(),
        "shapes": {m["name"]: [m["out"], m["in"]] for m in mods},
        "peft_version": peft.__version__,
        "torch_version": torch.__version__,
    }
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input_dir")
    ap.add_argument("--quick", action="store_true", help="use the small quick shapes")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: manifest 'threads')")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the manifest's methods")
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.method:
        run_one(args)
        return
    man = load_manifest(args.input_dir)
    names = [method_spec(man, e)["name"] for e in man["methods"]]
    if args.methods:
        wanted = args.methods.split(",")
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise SystemExit(f"--methods: {unknown} not in the manifest's methods {names}")
        names = [n for n in names if n in wanted]
    results = {}
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), args.input_dir, "--method", name]
        if args.quick:
            cmd.append("--quick")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                             f"exit {proc.returncode}"}
            print(proc.stderr, file=sys.stderr)
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]['seconds']:.3f} s, peak {results[name]['peak_rss_mb']:.0f} MB",
              file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
