/// The one table between Hugging Face (transformers / PEFT / mlx-lm) tensor names and GGUF
/// (llama.cpp) tensor names for llama-style decoder models, and the q/k row permutation
/// llama.cpp's converter applies.
///
/// HF names: `model.layers.N.self_attn.q_proj.weight`, `model.embed_tokens.weight`,
/// `lm_head.weight`, `model.norm.weight`, …; GGUF names: `blk.N.attn_q.weight`,
/// `token_embd.weight`, `output.weight`, `output_norm.weight`, … (llama.cpp's
/// `gguf-py/gguf/tensor_mapping.py` / `constants.py` for the llama architecture).
///
/// Both functions accept names with or without the trailing `.weight` / `.bias` and keep the
/// suffix as given, so a PEFT module name (`…q_proj`, no suffix) maps to `blk.N.attn_q`. A leading
/// `base_model.model.` (PEFT's wrapper prefix) is accepted by `ggufName(forHF:)` and dropped.
public enum TensorNames {
    /// Per-layer module: HF path inside `model.layers.N.` → GGUF name inside `blk.N.`.
    public static let layerModules: [(hf: String, gguf: String)] = [
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
    ]

    /// Model-level tensors.
    public static let globalModules: [(hf: String, gguf: String)] = [
        ("model.embed_tokens", "token_embd"),
        ("lm_head", "output"),
        ("model.norm", "output_norm"),
    ]

    static let peftPrefix = "base_model.model."

    private static func splitSuffix(_ name: String) -> (String, String) {
        for s in [".weight", ".bias"] where name.hasSuffix(s) {
            return (String(name.dropLast(s.count)), s)
        }
        return (name, "")
    }

    /// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`; nil if the name is not in
    /// the table.
    public static func ggufName(forHF name: String) -> String? {
        var n = name
        if n.hasPrefix(peftPrefix) { n.removeFirst(peftPrefix.count) }
        let (stem, suffix) = splitSuffix(n)
        if let g = globalModules.first(where: { $0.hf == stem }) { return g.gguf + suffix }
        let prefix = "model.layers."
        guard stem.hasPrefix(prefix) else { return nil }
        let rest = stem.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0,
              String(layer) == rest[..<dot] else { return nil }
        let module = String(rest[rest.index(after: dot)...])
        guard let m = layerModules.first(where: { $0.hf == module }) else { return nil }
        return "blk.\(layer).\(m.gguf)\(suffix)"
    }

    /// `blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`; nil if not in the table.
    public static func hfName(forGGUF name: String) -> String? {
        let (stem, suffix) = splitSuffix(name)
        if let g = globalModules.first(where: { $0.gguf == stem }) { return g.hf + suffix }
        guard stem.hasPrefix("blk.") else { return nil }
        let rest = stem.dropFirst(4)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0,
              String(layer) == rest[..<dot] else { return nil }
        let module = String(rest[rest.index(after: dot)...])
        guard let m = layerModules.first(where: { $0.gguf == module }) else { return nil }
        return "model.layers.\(layer).\(m.hf)\(suffix)"
    }

    /// PEFT module name (`base_model.model.model.layers.0.self_attn.q_proj`) → the GGUF base
    /// tensor it adapts (`blk.0.attn_q.weight`).
    public static func ggufTensor(forPEFTModule module: String) -> String? {
        ggufName(forHF: module).map { $0 + ".weight" }
    }

    /// GGUF base tensor (`blk.0.attn_q.weight`) → PEFT module name.
    public static func peftModule(forGGUFTensor tensor: String) -> String? {
        let (stem, suffix) = splitSuffix(tensor)
        guard suffix != ".bias", let hf = hfName(forGGUF: stem) else { return nil }
        return peftPrefix + hf
    }

    /// Which RoPE row permutation a GGUF q/k tensor name needs: `.query` for `blk.N.attn_q`,
    /// `.key` for `blk.N.attn_k`, nil otherwise.
    public static func ropeRole(ofGGUF name: String) -> RopeRole? {
        let (stem, _) = splitSuffix(name)
        if stem.hasPrefix("blk.") && stem.hasSuffix(".attn_q") { return .query }
        if stem.hasPrefix("blk.") && stem.hasSuffix(".attn_k") { return .key }
        return nil
    }

    public enum RopeRole: Sendable { case query, key }

    /// Architectures whose GGUF q/k weights llama.cpp's converter row-permutes (its `LlamaModel`
    /// family, which uses adjacent-pair RoPE in GGUF). Others (qwen2, …) keep HF's row order.
    public static let ropePermutedArchitectures: Set<String> = ["llama"]
}

/// Head counts of a model's attention, needed to apply or undo the q/k permutation.
public struct AttentionHeads: Sendable, Equatable, CustomStringConvertible {
    public var heads: Int
    public var kvHeads: Int
    public init(heads: Int, kvHeads: Int) {
        self.heads = heads
        self.kvHeads = kvHeads
    }
    public var description: String { "\(heads) heads, \(kvHeads) kv heads" }
}

public enum TensorNamesError: Error, CustomStringConvertible, Equatable {
    case badHeadCount(rows: Int, heads: Int)

    public var description: String {
        switch self {
        case let .badHeadCount(rows, heads):
            return "cannot split \(rows) rows into \(heads) heads of even size (the q/k RoPE permutation needs rows = heads · head_dim with head_dim even)"
        }
    }
}

extension Matrix {
    /// llama.cpp's converter permutation of q/k weight rows (HF → GGUF): with
    /// head_dim = rows / heads, `w.reshape(heads, 2, head_dim/2, cols).swapaxes(1, 2)
    /// .reshape(rows, cols)`. Row h·hd + 2j + t of the result is row h·hd + t·(hd/2) + j of self:
    /// HF's rotate-half RoPE pairs (j, j + hd/2) become GGUF's adjacent pairs (2j, 2j+1).
    /// `heads` is the attention head count for q and the kv head count for k.
    public func ropePermutedForGGUF(heads: Int) throws -> Matrix {
        try permutingRopeRows(heads: heads, toGGUF: true)
    }

    /// The inverse of `ropePermutedForGGUF(heads:)` (GGUF → HF).
    public func ropeUnpermutedFromGGUF(heads: Int) throws -> Matrix {
        try permutingRopeRows(heads: heads, toGGUF: false)
    }

    private func permutingRopeRows(heads: Int, toGGUF: Bool) throws -> Matrix {
        guard heads > 0, rows % heads == 0, (rows / heads) % 2 == 0 else {
            throw TensorNamesError.badHeadCount(rows: rows, heads: heads)
        }
        let hd = rows / heads, half = hd / 2
        var out = Matrix(rows: rows, cols: cols)
        for h in 0..<heads {
            for j in 0..<half {
                for t in 0..<2 {
                    let gguf = h * hd + 2 * j + t
                    let hf = h * hd + t * half + j
                    let (dst, src) = toGGUF ? (gguf, hf) : (hf, gguf)
                    out.data.replaceSubrange((dst * cols)..<((dst + 1) * cols), with: data[(src * cols)..<((src + 1) * cols)])
                }
            }
        }
        return out
    }
}
