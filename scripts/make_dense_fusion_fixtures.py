"""Makes Tests/LoRAFuseTests/Fixtures/Fusion/peft_dense_merge.json with PEFT's own dense merge
functions (peft.utils.merge_utils, the functions behind `ties_svd` and `magnitude_prune_svd`),
so lorafuse's PEFT conventions are checked against the peer itself, not a re-reading of it.

Run: /root/peers/bin/python scripts/make_dense_fusion_fixtures.py
Inputs are task deltas ΔW_i = s_i·B_i·A_i of mixed ranks computed here in float32; the fixture
stores them with the weights, so the Swift test feeds the same dense matrices.
"""
import json
import pathlib

import peft
import torch
from peft.utils.merge_utils import magnitude_prune, ties

torch.manual_seed(20240611)
out_f, in_f = 6, 10
ranks, scales = [2, 3, 4], [2.0, 0.5, 1.25]
deltas = []
for r, s in zip(ranks, scales):
    a = torch.randn(r, in_f)
    b = torch.randn(out_f, r)
    deltas.append((s * (b @ a)).float())

cases = []
for weights in ([1.0, 1.0, 1.0], [0.8, -0.6, 1.3]):
    w = torch.tensor(weights)
    for density in (0.3, 0.7):
        for method in ("total", "frequency"):
            res = ties([d.clone() for d in deltas], w, density, method)
            cases.append({"method": "ties", "sign": method, "density": density, "weights": weights,
                          "result": res.flatten().tolist()})
        res = magnitude_prune([d.clone() for d in deltas], w, density)
        cases.append({"method": "magnitude_prune", "sign": None, "density": density, "weights": weights,
                      "result": res.flatten().tolist()})

doc = {
    "generator": f"scripts/make_dense_fusion_fixtures.py with peft {peft.__version__}, torch {torch.__version__}",
    "rows": out_f, "cols": in_f,
    "deltas": [d.flatten().tolist() for d in deltas],
    "cases": cases,
}
path = pathlib.Path(__file__).resolve().parent.parent / "Tests/LoRAFuseTests/Fixtures/Fusion/peft_dense_merge.json"
path.write_text(json.dumps(doc, indent=1) + "\n")
print("wrote", path, len(cases), "cases")
