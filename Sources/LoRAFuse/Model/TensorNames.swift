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
/// Tensor-name conversions between Hugging Face (transformers / PEFT / mlx-lm) and GGUF
/// (llama.cpp), over `ModuleAddress` (ModelLayout.swift, which holds the table).
///
/// The functions accept names with or without the trailing `.weight` / `.bias` and keep the
/// suffix as given, so a PEFT module name (`…q_proj`, no suffix) maps to `blk.N.attn_q`. A leading
/// `base_model.model.` (PEFT's wrapper prefix) is accepted by `ggufName(forHF:)` and dropped.
public enum TensorNames {
    /// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`; nil if the name is not a
    /// module of the model.
    public static func ggufName(forHF name: String) -> String? {
        let (stem, suffix) = ModuleAddress.splitSuffix(name)
        return ModuleAddress(peft: stem).map { $0.gguf + suffix }
    }

    /// `blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`; nil if not a module.
    public static func hfName(forGGUF name: String) -> String? {
        let (stem, suffix) = ModuleAddress.splitSuffix(name)
        return ModuleAddress(gguf: stem).map { $0.hf + suffix }
    }

    /// PEFT module name (`base_model.model.model.layers.0.self_attn.q_proj`) → the GGUF base
    /// tensor it adapts (`blk.0.attn_q.weight`).
    public static func ggufTensor(forPEFTModule module: String) -> String? {
        ModuleAddress(peft: module).map { $0.gguf + ".weight" }
    }

    /// GGUF base tensor (`blk.0.attn_q.weight`) → PEFT module name.
    public static func peftModule(forGGUFTensor tensor: String) -> String? {
        let (stem, suffix) = ModuleAddress.splitSuffix(tensor)
        guard suffix != ".bias" else { return nil }
        return ModuleAddress(gguf: stem)?.peft
    }

    /// Which RoPE row permutation a GGUF q/k tensor name needs: `.query` for `blk.N.attn_q`,
    /// `.key` for `blk.N.attn_k`, nil otherwise.
    public static func ropeRole(ofGGUF name: String) -> RopeRole? {
        switch ModuleAddress(gguf: ModuleAddress.splitSuffix(name).module) {
        case .projection(_, .q)?: return .query
        case .projection(_, .k)?: return .key
        default: return nil
        }
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
    /// llama.cpp's converter permutation of q/k weight rows, HF → GGUF (`RopePermutation`).
    /// `heads` is the attention head count for q and the kv head count for k.
    public func ropePermutedForGGUF(heads: Int) throws -> Matrix {
        try permutingRopeRows(heads: heads, toGGUF: true)
    }

    /// The inverse of `ropePermutedForGGUF(heads:)` (GGUF → HF).
    public func ropeUnpermutedFromGGUF(heads: Int) throws -> Matrix {
        try permutingRopeRows(heads: heads, toGGUF: false)
    }

    private func permutingRopeRows(heads: Int, toGGUF: Bool) throws -> Matrix {
        guard heads > 0, rows % heads == 0 else { throw TensorNamesError.badHeadCount(rows: rows, heads: heads) }
        return Matrix(rows: rows, cols: cols, data: try RopePermutation.apply(data, rows: rows, cols: cols, heads: heads, toGGUF: toGGUF))
    }
}
