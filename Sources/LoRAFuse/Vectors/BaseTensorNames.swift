import Foundation

// NOTE for the coordinator: a minimal, internal copy of the HF ↔ GGUF name mapping and the llama.cpp
// q/k row permutation, used by merge-into-base until Model/TensorNames.swift (interop helper) lands;
// dedupe onto that file when both are merged.

/// Hugging Face (Llama layout) ↔ GGUF tensor names, and the PEFT module → checkpoint tensor rule.
enum BaseTensorNames {
    private static let layerParts: [(String, String)] = [
        ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm"),
    ]
    private static let globals: [(String, String)] = [
        ("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output"),
    ]

    /// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`; nil when unknown.
    static func gguf(fromHF name: String) -> String? {
        let suffix: String
        let stem: String
        if name.hasSuffix(".weight") { suffix = ".weight"; stem = String(name.dropLast(7)) }
        else if name.hasSuffix(".bias") { suffix = ".bias"; stem = String(name.dropLast(5)) }
        else { return nil }
        for (h, g) in globals where stem == h { return g + suffix }
        let parts = stem.split(separator: ".", maxSplits: 3).map(String.init)
        guard parts.count == 4, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]) else { return nil }
        for (h, g) in layerParts where parts[3] == h { return "blk.\(layer).\(g)\(suffix)" }
        return nil
    }

    /// `blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`; nil when unknown.
    static func hf(fromGGUF name: String) -> String? {
        let suffix: String
        let stem: String
        if name.hasSuffix(".weight") { suffix = ".weight"; stem = String(name.dropLast(7)) }
        else if name.hasSuffix(".bias") { suffix = ".bias"; stem = String(name.dropLast(5)) }
        else { return nil }
        for (h, g) in globals where stem == g { return h + suffix }
        let parts = stem.split(separator: ".", maxSplits: 2).map(String.init)
        guard parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]) else { return nil }
        for (h, g) in layerParts where parts[2] == g { return "model.layers.\(layer).\(h)\(suffix)" }
        return nil
    }

    /// Candidate checkpoint tensor names for a PEFT module name, most likely first:
    /// `base_model.model.model.layers.0.self_attn.q_proj` → `model.layers.0.self_attn.q_proj.weight`.
    static func hfCandidates(forModule module: String) -> [String] {
        var stem = module
        if stem.hasPrefix("base_model.model.") { stem = String(stem.dropFirst("base_model.model.".count)) }
        var out = [stem + ".weight"]
        if !stem.hasPrefix("model.") { out.append("model." + stem + ".weight") }
        if stem.hasPrefix("model.model.") { out.append(String(stem.dropFirst(6)) + ".weight") }
        return out
    }

    /// llama.cpp's conversion reorders the rows of q_proj / k_proj within each head from HF's
    /// "halves" RoPE layout to adjacent pairs: with head dim d, GGUF row h·d + 2j + i holds HF row
    /// h·d + i·d/2 + j (i ∈ {0, 1}, j < d/2). `heads` is the attention head count for q and the
    /// KV head count for k.
    static func permuteRowsHFToGGUF(_ m: Matrix, heads: Int) -> Matrix {
        permute(m, heads: heads, toGGUF: true)
    }

    static func permuteRowsGGUFToHF(_ m: Matrix, heads: Int) -> Matrix {
        permute(m, heads: heads, toGGUF: false)
    }

    private static func permute(_ m: Matrix, heads: Int, toGGUF: Bool) -> Matrix {
        precondition(heads > 0 && m.rows % (2 * heads) == 0, "rows \(m.rows) not divisible by 2·heads (\(heads))")
        let d = m.rows / heads, half = d / 2, c = m.cols
        var out = Matrix(rows: m.rows, cols: c)
        m.data.withUnsafeBufferPointer { src in
            out.data.withUnsafeMutableBufferPointer { dst in
                for h in 0..<heads {
                    for i in 0..<2 {
                        for j in 0..<half {
                            let g = h * d + 2 * j + i, f = h * d + i * half + j
                            let (to, from) = toGGUF ? (g, f) : (f, g)
                            for k in 0..<c { dst[to * c + k] = src[from * c + k] }
                        }
                    }
                }
            }
        }
        return out
    }
}
