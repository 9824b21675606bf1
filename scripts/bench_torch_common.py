"""What the PyTorch peers of lorafuse-bench share: the thread set-up, loading the benchmark's GGUF
as a float32 transformers model (transformers dequantizes it), versions and peak RSS.
Imported by scripts/bench_torch_model.py and scripts/bench_torch_train.py (run from scripts/, so
the import needs no package)."""
import os
import resource
import time


def load_gguf_fp32(path, threads):
    """(model, load_seconds, versions dict) with torch limited to `threads` threads."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 torch_dtype=torch.float32)
    load_seconds = time.perf_counter() - t0
    versions = {"torch_version": torch.__version__, "transformers_version": transformers.__version__}
    return model, load_seconds, versions


def peak_rss_mb():
    """This process's resident-set peak (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
