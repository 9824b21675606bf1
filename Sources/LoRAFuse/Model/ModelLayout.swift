import Foundation

// The structure of a Llama-family checkpoint, in one place: which projections a layer has, how
// each module is named by Hugging Face (transformers / PEFT / mlx-lm) and by GGUF (llama.cpp),
// llama.cpp's q/k row permutation, and the RoPE table the inference and training forwards share.
// Loaders, writers, the engine, the trainer and the fusion methods all go through these types, so
// a new architecture or a new file format changes this file, not a dozen parsers.
//
// Names (llama.cpp's gguf-py `tensor_mapping.py` / `constants.py` for the llama architecture):
//   HF                                   GGUF
//   model.embed_tokens                   token_embd
//   model.layers.N.self_attn.q_proj      blk.N.attn_q        (k, v: attn_k, attn_v; o: attn_output)
//   model.layers.N.mlp.gate_proj         blk.N.ffn_gate      (up, down: ffn_up, ffn_down)
//   model.layers.N.input_layernorm       blk.N.attn_norm
//   model.layers.N.post_attention_layernorm  blk.N.ffn_norm
//   model.norm                           output_norm
//   lm_head                              output
// A PEFT module name is the HF name behind `base_model.model.`; a tensor name is a module name
// plus `.weight` / `.bias`.

/// The seven projections of a decoder layer, in checkpoint order (also the order of a layer's
/// linears in `LlamaWeights.linears`). The raw value is the short name `--targets` takes.
public enum Projection: String, CaseIterable, Sendable, Codable {
    case q, k, v, o, gate, up, down

    /// Position in `allCases` (checkpoint order).
    public var index: Int {
        switch self {
        case .q: return 0
        case .k: return 1
        case .v: return 2
        case .o: return 3
        case .gate: return 4
        case .up: return 5
        case .down: return 6
        }
    }

    /// HF module name inside a layer: `self_attn.q_proj`, `mlp.gate_proj`, …
    public var hfModule: String {
        switch self {
        case .q, .k, .v, .o: return "self_attn.\(rawValue)_proj"
        case .gate, .up, .down: return "mlp.\(rawValue)_proj"
        }
    }

    /// GGUF module name inside a block: `attn_q`, …, `attn_output`, `ffn_gate`, …
    public var ggufModule: String {
        switch self {
        case .q, .k, .v: return "attn_\(rawValue)"
        case .o: return "attn_output"
        case .gate, .up, .down: return "ffn_\(rawValue)"
        }
    }

    /// PEFT `target_modules` entry: `q_proj`, …
    public var peftName: String { "\(rawValue)_proj" }

    /// Parses "q,k,v,o,gate,up,down" (also accepts `q_proj` style names and "all"), in checkpoint order.
    public static func parseList(_ s: String) throws -> [Projection] {
        if s == "all" { return allCases }
        var out: [Projection] = []
        for part in s.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !part.isEmpty {
            let short = part.hasSuffix("_proj") ? String(part.dropLast(5)) : part
            guard let t = Projection(rawValue: short) else { throw TrainError.unknownTarget(part) }
            if !out.contains(t) { out.append(t) }
        }
        guard !out.isEmpty else { throw TrainError.unknownTarget(s) }
        return out.sorted { $0.index < $1.index }
    }
}

/// Where a module sits in the model, independent of any file's naming.
public enum ModuleAddress: Hashable, Sendable, CustomStringConvertible {
    case embedding
    case projection(layer: Int, Projection)
    case attnNorm(layer: Int)
    case ffnNorm(layer: Int)
    case finalNorm
    case lmHead

    /// PEFT's wrapper prefix in front of every HF module name in an adapter.
    public static let peftPrefix = "base_model.model."

    /// `model.layers.3.self_attn.q_proj`, `model.embed_tokens`, `lm_head`, …
    public var hf: String {
        switch self {
        case .embedding: return "model.embed_tokens"
        case let .projection(l, p): return "model.layers.\(l).\(p.hfModule)"
        case let .attnNorm(l): return "model.layers.\(l).input_layernorm"
        case let .ffnNorm(l): return "model.layers.\(l).post_attention_layernorm"
        case .finalNorm: return "model.norm"
        case .lmHead: return "lm_head"
        }
    }

    /// `base_model.model.model.layers.3.self_attn.q_proj`: the name in a PEFT adapter.
    public var peft: String { Self.peftPrefix + hf }

    /// `blk.3.attn_q`, `token_embd`, `output`, …
    public var gguf: String {
        switch self {
        case .embedding: return "token_embd"
        case let .projection(l, p): return "blk.\(l).\(p.ggufModule)"
        case let .attnNorm(l): return "blk.\(l).attn_norm"
        case let .ffnNorm(l): return "blk.\(l).ffn_norm"
        case .finalNorm: return "output_norm"
        case .lmHead: return "output"
        }
    }

    public var description: String { hf }

    /// The layer, for per-layer modules.
    public var layer: Int? {
        switch self {
        case let .projection(l, _), let .attnNorm(l), let .ffnNorm(l): return l
        case .embedding, .finalNorm, .lmHead: return nil
        }
    }

    /// An HF module name (no `.weight` suffix, no PEFT prefix). Layer numbers must be written
    /// plainly (`01` is not layer 1), so names map back and forth without ambiguity.
    public init?(hf name: some StringProtocol) {
        switch name {
        case "model.embed_tokens": self = .embedding
        case "model.norm": self = .finalNorm
        case "lm_head": self = .lmHead
        default:
            guard let (l, rest) = Self.layerAndRest(name, prefix: "model.layers.") else { return nil }
            switch rest {
            case "input_layernorm": self = .attnNorm(layer: l)
            case "post_attention_layernorm": self = .ffnNorm(layer: l)
            default:
                guard let p = Projection.allCases.first(where: { $0.hfModule == rest }) else { return nil }
                self = .projection(layer: l, p)
            }
        }
    }

    /// A module name as adapters write it: the HF name with or without PEFT's `base_model.model.`.
    public init?(peft name: some StringProtocol) {
        let s = Substring(name)
        self.init(hf: s.hasPrefix(Self.peftPrefix) ? s.dropFirst(Self.peftPrefix.count) : s)
    }

    /// A GGUF module name (no `.weight` suffix).
    public init?(gguf name: some StringProtocol) {
        switch name {
        case "token_embd": self = .embedding
        case "output_norm": self = .finalNorm
        case "output": self = .lmHead
        default:
            guard let (l, rest) = Self.layerAndRest(name, prefix: "blk.") else { return nil }
            switch rest {
            case "attn_norm": self = .attnNorm(layer: l)
            case "ffn_norm": self = .ffnNorm(layer: l)
            default:
                guard let p = Projection.allCases.first(where: { $0.ggufModule == rest }) else { return nil }
                self = .projection(layer: l, p)
            }
        }
    }

    private static func layerAndRest(_ name: some StringProtocol, prefix: String) -> (Int, Substring)? {
        let s = Substring(name)
        guard s.hasPrefix(prefix) else { return nil }
        let rest = s.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let l = Int(rest[..<dot]), l >= 0, String(l) == rest[..<dot] else { return nil }
        return (l, rest[rest.index(after: dot)...])
    }

    /// `name` without PEFT's `base_model.model.` prefix (unchanged when it has none). For module
    /// names of any architecture, including those `ModuleAddress` does not model.
    public static func strippingPEFTPrefix(_ name: String) -> String {
        name.hasPrefix(peftPrefix) ? String(name.dropFirst(peftPrefix.count)) : name
    }

    /// Splits `….weight` / `….bias` off a tensor name: (module, suffix with its dot, or "").
    public static func splitSuffix(_ name: String) -> (module: String, suffix: String) {
        for s in [".weight", ".bias"] where name.hasSuffix(s) {
            return (String(name.dropLast(s.count)), s)
        }
        return (name, "")
    }
}

// MARK: llama.cpp's q/k row permutation

/// llama.cpp's converter permutes the rows of q and k (weights and biases) for the llama
/// architecture: `w.reshape(heads, 2, head_dim/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
/// Row h·hd + 2j + t of the GGUF tensor is row h·hd + t·(hd/2) + j of the HF one: HF's
/// rotate-half RoPE pairs (j, j + hd/2) become GGUF's adjacent pairs (2j, 2j+1). `heads` is the
/// attention head count for q and the kv head count for k.
enum RopePermutation {
    /// `rows` = heads · head_dim rows of `cols` values each; head_dim must be even.
    static func apply(_ w: [Float], rows: Int, cols: Int, heads: Int, toGGUF: Bool) throws -> [Float] {
        guard heads > 0, rows % heads == 0, (rows / heads) % 2 == 0, w.count == rows * cols else {
            throw TensorNamesError.badHeadCount(rows: rows, heads: heads)
        }
        let hd = rows / heads, half = hd / 2
        var out = [Float](repeating: 0, count: w.count)
        w.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for h in 0..<heads {
                    for j in 0..<half {
                        for t in 0..<2 {
                            let gguf = (h * hd + 2 * j + t) * cols, hf = (h * hd + t * half + j) * cols
                            let (to, from) = toGGUF ? (gguf, hf) : (hf, gguf)
                            (dst.baseAddress! + to).update(from: src.baseAddress! + from, count: cols)
                        }
                    }
                }
            }
        }
        return out
    }
}

// MARK: RoPE table

/// cos/sin of every (position, frequency) pair, (positions, head_dim/2) each, as HF computes them:
/// inv_freq = 1 / θ^(2i/d) in float32, angle = (position / scale) · inv_freq in float32. The
/// inference session and the training forward both read this table, so their rotations agree
/// bit for bit.
final class RopeTable: @unchecked Sendable {
    let positions: Int
    let half: Int
    let cos: UnsafeMutablePointer<Float>
    let sin: UnsafeMutablePointer<Float>

    init(config c: LlamaConfig, positions: Int) {
        self.positions = max(positions, 1)
        half = c.headDim / 2
        let n = self.positions * half
        cos = .allocate(capacity: max(n, 1))
        sin = .allocate(capacity: max(n, 1))
        let scale = c.ropePositionScale
        for i in 0..<half {
            let invFreq = 1 / Float(pow(Float(c.ropeTheta), Float(2 * i) / Float(c.headDim)))
            for p in 0..<self.positions {
                let angle = (Float(p) / scale) * invFreq
                cos[p * half + i] = Foundation.cos(angle)
                sin[p * half + i] = Foundation.sin(angle)
            }
        }
    }

    deinit {
        cos.deallocate()
        sin.deallocate()
    }
}
