#!/usr/bin/env python3
"""Writes the GGUF reader fixtures under Tests/LoRAFuseTests/Fixtures/gguf/ with the reference
`gguf` Python package (0.19), so the Swift reader is checked against gguf-python's own writer and
dequantizer.

  types.gguf            v3: one metadata entry of every value type (incl. typed, string and nested
                        arrays) and one small tensor per supported ggml type.
  aligned64_v2.gguf     the same kind of file with general.alignment = 64 and version 2 (v2 and v3
                        share the layout; the version field is patched after writing).
  expected.bin          little-endian float32 values: each tensor dequantized by gguf.quants.dequantize,
                        plus the f32 source the Q8_0 tensor was quantized from (to check our writer's
                        Q8_0 bytes), concatenated.
  manifest.json         for each entry of expected.bin: name, type, ggml dims, float offset and count.
  smollm2_slice.gguf    (only if the SmolLM2 GGUF is given) its scalar metadata and the first two
                        rows (original Q8_0 / Q4_1 / F32 bytes) of four real tensors;
  smollm2_rows.bin/.json  those rows dequantized by gguf-python (full-model dims in the JSON), also
                        checked against the full model by the opt-in integration test.

K-quants (Q4_K, Q5_K, Q6_K) cannot be quantized by gguf-python 0.19, so their blocks are random bytes
with the f16 super-block scales replaced by small finite values; gguf-python dequantizes them.

Usage: /root/peers/bin/python scripts/make_gguf_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V
from gguf.quants import quantize, dequantize

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "LoRAFuseTests", "Fixtures", "gguf")
rng = np.random.default_rng(20240611)


def kquant_blocks(qtype, n_blocks):
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    def halves(lo, hi):
        return rng.uniform(lo, hi, size=n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype in (T.Q4_K, T.Q5_K):
        b[:, 0:2] = halves(0.001, 0.02)   # d
        b[:, 2:4] = halves(0.001, 0.02)   # dmin
    else:  # Q6_K: d is the last two bytes
        b[:, -2:] = halves(0.001, 0.02)
    return b


def add_metadata(w):
    w.add_key_value("test.u8", 200, V.UINT8)
    w.add_key_value("test.i8", -100, V.INT8)
    w.add_key_value("test.u16", 60000, V.UINT16)
    w.add_key_value("test.i16", -30000, V.INT16)
    w.add_key_value("test.u32", 4000000000, V.UINT32)
    w.add_key_value("test.i32", -2000000000, V.INT32)
    w.add_key_value("test.f32", 1.5, V.FLOAT32)
    w.add_key_value("test.bool", True, V.BOOL)
    w.add_key_value("test.string", "h\u00e9llo \u2713", V.STRING)
    w.add_key_value("test.u64", 2**63 + 5, V.UINT64)
    w.add_key_value("test.i64", -(2**62), V.INT64)
    w.add_key_value("test.f64", 3.141592653589793, V.FLOAT64)
    w.add_key_value("test.array_i32", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("test.array_u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.array_f32", [0.5, -2.0, 1e-3], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("test.array_bool", [True, False], V.ARRAY, sub_type=V.BOOL)
    w.add_key_value("test.array_str", ["a", "bc", ""], V.ARRAY, sub_type=V.STRING)
    w.add_key_value("test.array_nested", [[1, 2], [3]], V.ARRAY)  # inner arrays of INT32


def write(path, alignment=None, version=None, extra_tensors=True):
    # Same seed for every file, so the dense tensors of aligned64_v2.gguf equal those of types.gguf.
    global rng
    rng = np.random.default_rng(20240611)
    w = gguf.GGUFWriter(path, "test")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    add_metadata(w)
    entries = []
    expected = []

    def record(name, qtype, dims, values):
        entries.append({"name": name, "type": qtype.name, "dims": dims,
                        "offset": sum(len(e) for e in expected), "count": int(values.size)})
        expected.append(values.astype(np.float32).ravel())

    def dense(name, qtype, shape):
        x = rng.standard_normal(shape).astype(np.float32)
        if qtype == T.F32:
            w.add_tensor(name, x)
            record(name, qtype, list(shape[::-1]), x)
        elif qtype == T.F16:
            h = x.astype(np.float16)
            w.add_tensor(name, h)
            record(name, qtype, list(shape[::-1]), h.astype(np.float32))
        else:
            q = quantize(x, qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
            record(name, qtype, list(shape[::-1]), dequantize(q, qtype))
            if qtype == T.Q8_0:
                record(name + ".source", T.F32, list(shape[::-1]), x)

    dense("f32", T.F32, (3, 8))
    dense("f16", T.F16, (2, 8))
    dense("bf16", T.BF16, (2, 8))
    dense("q4_0", T.Q4_0, (2, 64))
    dense("q4_1", T.Q4_1, (2, 64))
    dense("q8_0", T.Q8_0, (3, 64))
    if extra_tensors:
        for name, qtype in (("q4_k", T.Q4_K), ("q5_k", T.Q5_K), ("q6_k", T.Q6_K)):
            rows, per_row = 2, 2  # 2 rows of 512 values = 2 super-blocks each
            blocks = kquant_blocks(qtype, rows * per_row).reshape(rows, -1)
            w.add_tensor(name, blocks, raw_dtype=qtype)
            record(name, qtype, [per_row * 256, rows], dequantize(blocks, qtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version is not None:
        with open(path, "r+b") as f:
            f.seek(4)
            f.write(np.uint32(version).tobytes())
    return entries, np.concatenate(expected)


def smollm2_slice(model_path):
    """Copies the first two rows of a few real tensors (their original quantized bytes) and the
    scalar metadata of the SmolLM2 GGUF into a small GGUF, with gguf-python's dequantization of
    those rows as the expected values. Arrays (the 49152-entry vocabulary) are left out for size."""
    r = gguf.GGUFReader(model_path)
    w = gguf.GGUFWriter(os.path.join(OUT, "smollm2_slice.gguf"), r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or field.types[0] == V.ARRAY:
            continue
        w.add_key_value(key, field.contents(), field.types[0])
    names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight", "output_norm.weight"]
    entries, values = [], []
    for t in r.tensors:
        if t.name not in names:
            continue
        qtype = T(t.tensor_type)
        data = np.asarray(t.data)
        rows = data.reshape(-1, data.shape[-1])[:2].copy() if data.ndim > 1 else data.copy()
        if qtype == T.F32:
            w.add_tensor(t.name, rows)
            deq = rows.astype(np.float32)
        else:
            w.add_tensor(t.name, rows, raw_dtype=qtype)
            deq = dequantize(rows, qtype).astype(np.float32)
        entries.append({"name": t.name, "type": qtype.name, "dims": [int(d) for d in t.shape],
                        "offset": sum(len(v) for v in values), "count": int(deq.size)})
        values.append(deq.ravel())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(os.path.join(OUT, "smollm2_rows.json"), "w") as f:
        json.dump({"tensors": entries}, f, indent=1)
    np.concatenate(values).astype("<f4").tofile(os.path.join(OUT, "smollm2_rows.bin"))


def main():
    os.makedirs(OUT, exist_ok=True)
    entries, values = write(os.path.join(OUT, "types.gguf"))
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"tensors": entries}, f, indent=1)
    values.astype("<f4").tofile(os.path.join(OUT, "expected.bin"))
    write(os.path.join(OUT, "aligned64_v2.gguf"), alignment=64, version=2, extra_tensors=False)
    if len(sys.argv) > 1:
        smollm2_slice(sys.argv[1])


if __name__ == "__main__":
    main()
