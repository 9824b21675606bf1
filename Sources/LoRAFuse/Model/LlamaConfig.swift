import Foundation

/// Errors of the model engine: loading, shapes, configuration. Each names the file and the
/// tensor or field involved, with what was expected and what was found.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    case unsupportedArchitecture(path: String, architecture: String)
    case unsupportedConfig(path: String, field: String, value: String, reason: String)
    case missingConfigField(path: String, field: String)
    case missingTensor(path: String, tensor: String)
    case shapeMismatch(path: String, tensor: String, expected: [Int], actual: [Int])
    case unsupportedTensorType(path: String, tensor: String, type: String)
    case notAModel(path: String, reason: String)
    case missingTokenizer(path: String)
    case tokenOutOfRange(token: Int, vocabSize: Int)
    case contextFull(maxTokens: Int, requested: Int)

    public var description: String {
        switch self {
        case let .unsupportedArchitecture(path, arch):
            return "\(path): unsupported architecture '\(arch)' (supported: llama, mistral without sliding window, qwen2)"
        case let .unsupportedConfig(path, field, value, reason):
            return "\(path): unsupported \(field) = \(value): \(reason)"
        case let .missingConfigField(path, field):
            return "\(path): missing config field '\(field)'"
        case let .missingTensor(path, tensor):
            return "\(path): missing tensor '\(tensor)'"
        case let .shapeMismatch(path, tensor, expected, actual):
            return "\(path): tensor '\(tensor)' has shape \(actual), the config needs \(expected)"
        case let .unsupportedTensorType(path, tensor, type):
            return "\(path): tensor '\(tensor)' has unsupported type \(type)"
        case let .notAModel(path, reason):
            return "\(path): not a model: \(reason)"
        case let .missingTokenizer(path):
            return "\(path): no tokenizer (expected GGUF tokenizer.ggml.* metadata or tokenizer.json)"
        case let .tokenOutOfRange(token, vocab):
            return "token id \(token) is outside the vocabulary 0..<\(vocab)"
        case let .contextFull(maxTokens, requested):
            return "session holds at most \(maxTokens) tokens, \(requested) requested"
        }
    }
}

/// Hyper-parameters of a Llama-family decoder (Llama, SmolLM, Mistral without sliding window,
/// Qwen 2). Field names follow HF `config.json`; `init(gguf:)` reads llama.cpp's `llama.*` /
/// `qwen2.*` metadata instead.
public struct LlamaConfig: Codable, Sendable, Equatable {
    /// RoPE scaling as HF writes it: `rope_scaling` (transformers 4.x) or `rope_parameters`
    /// (5.x, which also carries `rope_theta`). Only `default` (none) and `linear` are implemented.
    public struct RopeScaling: Codable, Sendable, Equatable {
        public var type: String
        public var factor: Float?
        public var ropeTheta: Double?

        enum CodingKeys: String, CodingKey {
            case type, ropeType = "rope_type", factor, ropeTheta = "rope_theta"
        }

        public init(type: String, factor: Float? = nil, ropeTheta: Double? = nil) {
            self.type = type
            self.factor = factor
            self.ropeTheta = ropeTheta
        }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            type = try c.decodeIfPresent(String.self, forKey: .ropeType)
                ?? c.decodeIfPresent(String.self, forKey: .type) ?? "default"
            factor = try c.decodeIfPresent(Float.self, forKey: .factor)
            ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta)
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(type, forKey: .ropeType)
            try c.encodeIfPresent(factor, forKey: .factor)
            try c.encodeIfPresent(ropeTheta, forKey: .ropeTheta)
        }
    }

    public var modelType: String
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var headDim: Int
    public var vocabSize: Int
    public var rmsNormEps: Float
    public var ropeTheta: Double
    public var tieWordEmbeddings: Bool
    /// Bias on q/k/v (Qwen 2 always has it; HF Llama's `attention_bias` also puts one on o_proj).
    public var attentionBias: Bool
    public var maxPositionEmbeddings: Int
    public var ropeScaling: RopeScaling?
    public var slidingWindow: Int?
    public var useSlidingWindow: Bool?
    /// Only "silu" (SwiGLU) and no MLP bias are implemented; kept to refuse anything else.
    public var hiddenAct: String?
    public var mlpBias: Bool?

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads", headDim = "head_dim", vocabSize = "vocab_size"
        case rmsNormEps = "rms_norm_eps", ropeTheta = "rope_theta", tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias", maxPositionEmbeddings = "max_position_embeddings"
        case ropeScaling = "rope_scaling", ropeParameters = "rope_parameters"
        case slidingWindow = "sliding_window", useSlidingWindow = "use_sliding_window"
        case hiddenAct = "hidden_act", mlpBias = "mlp_bias"
    }

    public init(modelType: String = "llama", hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int,
                numAttentionHeads: Int, numKeyValueHeads: Int? = nil, headDim: Int? = nil, vocabSize: Int,
                rmsNormEps: Float = 1e-5, ropeTheta: Double = 10000, tieWordEmbeddings: Bool = false,
                attentionBias: Bool? = nil, maxPositionEmbeddings: Int = 2048, ropeScaling: RopeScaling? = nil) {
        self.modelType = modelType
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads ?? numAttentionHeads
        self.headDim = headDim ?? hiddenSize / max(numAttentionHeads, 1)
        self.vocabSize = vocabSize
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.tieWordEmbeddings = tieWordEmbeddings
        self.attentionBias = attentionBias ?? (modelType == "qwen2")
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.ropeScaling = ropeScaling
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        modelType = try c.decodeIfPresent(String.self, forKey: .modelType) ?? "llama"
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim) ?? hiddenSize / max(numAttentionHeads, 1)
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        rmsNormEps = try c.decodeIfPresent(Float.self, forKey: .rmsNormEps) ?? 1e-6
        let params = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeParameters)
        ropeScaling = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeScaling) ?? params
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? params?.ropeTheta ?? 10000
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? (modelType == "qwen2")
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
        slidingWindow = try c.decodeIfPresent(Int.self, forKey: .slidingWindow)
        useSlidingWindow = try c.decodeIfPresent(Bool.self, forKey: .useSlidingWindow)
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct)
        mlpBias = try c.decodeIfPresent(Bool.self, forKey: .mlpBias)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(modelType, forKey: .modelType)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(numHiddenLayers, forKey: .numHiddenLayers)
        try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encode(numKeyValueHeads, forKey: .numKeyValueHeads)
        try c.encode(headDim, forKey: .headDim)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(rmsNormEps, forKey: .rmsNormEps)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(attentionBias, forKey: .attentionBias)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encodeIfPresent(ropeScaling, forKey: .ropeScaling)
        try c.encodeIfPresent(slidingWindow, forKey: .slidingWindow)
        try c.encodeIfPresent(useSlidingWindow, forKey: .useSlidingWindow)
        try c.encodeIfPresent(hiddenAct, forKey: .hiddenAct)
        try c.encodeIfPresent(mlpBias, forKey: .mlpBias)
    }

    /// Reads HF `config.json`, then `validate`s it.
    public static func load(configJSON path: String) throws -> LlamaConfig {
        let data: Data
        try InputFile.refuseSpecialFile(path)
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ModelError.notAModel(path: path, reason: "cannot read: \(error.localizedDescription)")
        }
        let cfg: LlamaConfig
        do { cfg = try JSONDecoder().decode(LlamaConfig.self, from: data) } catch let DecodingError.keyNotFound(key, _) {
            throw ModelError.missingConfigField(path: path, field: key.stringValue)
        } catch {
            throw ModelError.notAModel(path: path, reason: "config.json does not decode: \(error)")
        }
        try cfg.validate(path: path)
        return cfg
    }

    /// From llama.cpp metadata: `<arch>.embedding_length`, `.feed_forward_length`, `.block_count`,
    /// `.attention.head_count(_kv)`, `.attention.key_length`, `.attention.layer_norm_rms_epsilon`,
    /// `.rope.freq_base`, `.rope.scaling.*`, `.context_length`, `.vocab_size` (else the rows of
    /// `token_embd.weight`). Tied embeddings ⇔ no `output.weight` tensor.
    public init(gguf: GGUFFile) throws {
        let path = gguf.path
        let arch = gguf.metadata["general.architecture"]?.asString ?? "<none>"
        guard arch == "llama" || arch == "qwen2" else {
            throw ModelError.unsupportedArchitecture(path: path, architecture: arch)
        }
        func int(_ key: String) throws -> Int {
            guard let v = gguf.metadata["\(arch).\(key)"]?.asInt else {
                throw ModelError.missingConfigField(path: path, field: "\(arch).\(key)")
            }
            return v
        }
        func optInt(_ key: String) -> Int? { gguf.metadata["\(arch).\(key)"]?.asInt }
        func optDouble(_ key: String) -> Double? { gguf.metadata["\(arch).\(key)"]?.asDouble }
        let hidden = try int("embedding_length")
        let heads = try int("attention.head_count")
        var vocab = optInt("vocab_size")
        if vocab == nil, let t = gguf.tensorInfo("token_embd.weight"), t.dims.count >= 2 { vocab = t.dims[1] }
        if vocab == nil, let toks = gguf.metadata["tokenizer.ggml.tokens"]?.asArray { vocab = toks.count }
        guard let vocab else { throw ModelError.missingConfigField(path: path, field: "\(arch).vocab_size") }
        var scaling: RopeScaling? = nil
        if let t = gguf.metadata["\(arch).rope.scaling.type"]?.asString, t != "none" {
            scaling = RopeScaling(type: t, factor: optDouble("rope.scaling.factor").map(Float.init))
        }
        self.init(modelType: arch, hiddenSize: hidden, intermediateSize: try int("feed_forward_length"),
                  numHiddenLayers: try int("block_count"), numAttentionHeads: heads,
                  numKeyValueHeads: optInt("attention.head_count_kv") ?? heads,
                  headDim: optInt("attention.key_length") ?? optInt("rope.dimension_count") ?? hidden / max(heads, 1),
                  vocabSize: vocab,
                  rmsNormEps: Float(optDouble("attention.layer_norm_rms_epsilon") ?? 1e-5),
                  ropeTheta: optDouble("rope.freq_base") ?? 10000,
                  tieWordEmbeddings: gguf.tensorInfo("output.weight") == nil,
                  attentionBias: arch == "qwen2" || gguf.tensorInfo("blk.0.attn_q.bias") != nil,
                  maxPositionEmbeddings: optInt("context_length") ?? 2048, ropeScaling: scaling)
        if let sw = optInt("attention.sliding_window"), sw > 0, sw < maxPositionEmbeddings {
            slidingWindow = sw
            useSlidingWindow = true
        }
        try validate(path: path)
    }

    /// Rejects what the engine does not implement, naming the field.
    public func validate(path: String) throws {
        guard ["llama", "mistral", "qwen2", "smollm", "smollm2"].contains(modelType) else {
            throw ModelError.unsupportedArchitecture(path: path, architecture: modelType)
        }
        if let s = ropeScaling, s.type != "default", s.type != "linear" {
            throw ModelError.unsupportedConfig(path: path, field: "rope_scaling.rope_type", value: s.type,
                                               reason: "only default and linear RoPE are implemented")
        }
        if let s = ropeScaling, s.type == "linear", (s.factor ?? 0) <= 0 {
            throw ModelError.unsupportedConfig(path: path, field: "rope_scaling.factor", value: "\(s.factor.map { "\($0)" } ?? "nil")",
                                               reason: "linear RoPE scaling needs a positive factor")
        }
        if let sw = slidingWindow, sw > 0, useSlidingWindow ?? (modelType == "mistral"), sw < maxPositionEmbeddings {
            throw ModelError.unsupportedConfig(path: path, field: "sliding_window", value: "\(sw)",
                                               reason: "sliding-window attention is not implemented")
        }
        if let act = hiddenAct, act != "silu" {
            throw ModelError.unsupportedConfig(path: path, field: "hidden_act", value: act, reason: "only silu (SwiGLU) is implemented")
        }
        if mlpBias == true {
            throw ModelError.unsupportedConfig(path: path, field: "mlp_bias", value: "true", reason: "MLP biases are not implemented")
        }
        for (name, v) in [("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                          ("num_hidden_layers", numHiddenLayers), ("num_attention_heads", numAttentionHeads),
                          ("num_key_value_heads", numKeyValueHeads), ("head_dim", headDim), ("vocab_size", vocabSize)] where v <= 0 {
            throw ModelError.unsupportedConfig(path: path, field: name, value: "\(v)", reason: "must be positive")
        }
        guard numAttentionHeads % numKeyValueHeads == 0 else {
            throw ModelError.unsupportedConfig(path: path, field: "num_key_value_heads", value: "\(numKeyValueHeads)",
                                               reason: "must divide num_attention_heads (\(numAttentionHeads))")
        }
        // GGUF metadata and config.json are read as given: a zero, negative or NaN base or
        // epsilon gives NaN activations (empty generations, an `inf` loss) without this.
        guard ropeTheta.isFinite, ropeTheta > 0 else {
            throw ModelError.unsupportedConfig(path: path, field: "rope_theta (GGUF rope.freq_base)", value: "\(ropeTheta)",
                                               reason: "must be a finite positive number")
        }
        guard rmsNormEps.isFinite, rmsNormEps >= 0, rmsNormEps < 1 else {
            throw ModelError.unsupportedConfig(path: path, field: "rms_norm_eps (GGUF attention.layer_norm_rms_epsilon)", value: "\(rmsNormEps)",
                                               reason: "must be finite and in [0, 1)")
        }
        if let f = ropeScaling?.factor, !f.isFinite {
            throw ModelError.unsupportedConfig(path: path, field: "rope_scaling.factor", value: "\(f)", reason: "must be finite")
        }
        guard headDim % 2 == 0 else {
            throw ModelError.unsupportedConfig(path: path, field: "head_dim", value: "\(headDim)", reason: "RoPE needs an even head dimension")
        }
    }

    /// Position divisor of linear RoPE scaling (1 without scaling).
    var ropePositionScale: Float {
        if let s = ropeScaling, s.type == "linear", let f = s.factor { return f }
        return 1
    }
}
