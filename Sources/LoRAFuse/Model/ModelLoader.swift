import Foundation

/// Where lorafuse finds its default model.
public enum ModelLocator {
    public static let defaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf"

    /// `${LORAFUSE_HOME:-~/.cache/lorafuse}`.
    public static func home() -> String {
        if let h = ProcessInfo.processInfo.environment["LORAFUSE_HOME"], !h.isEmpty { return h }
        return (NSHomeDirectory() as NSString).appendingPathComponent(".cache/lorafuse")
    }

    /// `${LORAFUSE_HOME:-~/.cache/lorafuse}/models/SmolLM2-135M-Instruct.Q4_1.gguf` (fetched by scripts/setup.sh).
    public static func defaultModelPath() -> String {
        (home() as NSString).appendingPathComponent("models/\(defaultModelFile)")
    }
}

/// A source of named tensors, returned in PyTorch (rows, cols) layout.
private protocol TensorSource: Sendable {
    var path: String { get }
    func has(_ name: String) -> Bool
    /// Shape as PyTorch reports it ([n] for 1-D).
    func shape(_ name: String) throws -> [Int]
    func floats(_ name: String) throws -> [Float]
    /// The tensor's stored blocks without a copy, when it is kept in a quantized (or 16-bit)
    /// type; nil for Float32 tensors and for files that hold no quantized types.
    func quantized(_ name: String) throws -> QuantizedMatrix?
}

extension TensorSource {
    func quantized(_ name: String) throws -> QuantizedMatrix? { nil }
}

private struct GGUFSource: TensorSource {
    let file: GGUFFile
    var path: String { file.path }
    func has(_ name: String) -> Bool { file.tensorInfo(name) != nil }
    func shape(_ name: String) throws -> [Int] {
        guard let t = file.tensorInfo(name) else { throw ModelError.missingTensor(path: path, tensor: name) }
        var dims = t.dims
        while dims.count > 1 && dims.last == 1 { dims.removeLast() }
        return dims.reversed()
    }
    func floats(_ name: String) throws -> [Float] {
        guard let t = file.tensorInfo(name) else { throw ModelError.missingTensor(path: path, tensor: name) }
        guard t.type.canDequantize else {
            throw ModelError.unsupportedTensorType(path: path, tensor: name, type: t.type.name)
        }
        return try file.floats(name)
    }
    func quantized(_ name: String) throws -> QuantizedMatrix? {
        guard let t = file.tensorInfo(name), t.type != .f32, t.type.canDequantize, t.dims.count == 2,
              t.type.blockSize > 0, t.dims[0] % t.type.blockSize == 0 else { return nil }
        return QuantizedMatrix(type: t.type, rows: t.dims[1], cols: t.dims[0], bytes: try file.mappedBytes(name))
    }
}

private struct SafetensorsSource: TensorSource, @unchecked Sendable {
    let path: String
    let single: SafetensorsFile?
    let sharded: ShardedSafetensors?
    func has(_ name: String) -> Bool {
        if let s = single { return s.contains(name) }
        return sharded!.weightMap[name] != nil
    }
    func info(_ name: String) throws -> TensorInfo {
        guard has(name) else { throw ModelError.missingTensor(path: path, tensor: name) }
        return try single?.info(name) ?? sharded!.info(name)
    }
    func shape(_ name: String) throws -> [Int] { try info(name).shape }
    func floats(_ name: String) throws -> [Float] {
        let i = try info(name)
        guard i.floatType != nil else { throw ModelError.unsupportedTensorType(path: path, tensor: name, type: i.dtype) }
        return try single?.floats(name) ?? sharded!.floats(name)
    }
}

extension LlamaModel {
    /// Loads a GGUF file or an HF model directory (config.json + model.safetensors or
    /// model.safetensors.index.json, found by `HFCheckpointLayout`'s rule, F32/F16/BF16;
    /// tokenizer.json + tokenizer_config.json).
    ///
    /// `compute: .stored` (the default) keeps every GGUF linear and the embedding in its stored
    /// type, straight from the file's mapping (SmolLM2-135M Q4_1: ~98 MB instead of ~540 MB of
    /// Float32), and the forward runs the quantized kernels on them. `compute: .f32` dequantizes
    /// everything to Float32 once, as transformers does with a GGUF: the reference path, whose
    /// logits match the Python reference to fp32 rounding. Norms and biases are Float32 either way.
    /// Tensors are read and checked in parallel (DispatchQueue.concurrentPerform).
    ///
    /// llama.cpp's converter permutes the rows of Llama q/k weights (so it can rotate adjacent
    /// pairs); they are un-permuted here back to HF's layout (rotate_half RoPE), which is what a
    /// PEFT adapter's q_proj/k_proj factors were trained against. Qwen 2 GGUFs are not permuted.
    public static func load(path: String, compute: WeightCompute = .stored) throws -> LlamaModel {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelError.notAModel(path: path, reason: "no such file or directory")
        }
        if isDir.boolValue { return try loadHFDirectory(path) }
        return try loadGGUF(path, compute: compute)
    }

    private static func loadGGUF(_ path: String, compute: WeightCompute) throws -> LlamaModel {
        let file = try GGUFFile(path: path)
        let config = try LlamaConfig(gguf: file)
        let tokenizer: BPETokenizer
        if file.metadata["tokenizer.ggml.model"] == nil { throw ModelError.missingTokenizer(path: path) }
        tokenizer = try BPETokenizer.fromGGUFMetadata({ key in file.metadata[key].map(plainValue) }, source: path)
        let weights = try readWeights(GGUFSource(file: file), config: config,
                                      name: { $0.gguf },
                                      unpermuteQK: config.modelType == "llama", keepQuantized: compute == .stored)
        return LlamaModel(config: config, weights: weights, tokenizer: tokenizer, sourcePath: path)
    }

    private static func loadHFDirectory(_ dir: String) throws -> LlamaModel {
        let layout = try HFCheckpointLayout.discover(directory: dir)
        guard let configPath = layout.config else {
            throw ModelError.notAModel(path: dir, reason: "no config.json")
        }
        let config = try LlamaConfig.load(configJSON: configPath)
        let source: SafetensorsSource
        switch layout.weights {
        case let .single(p):
            source = SafetensorsSource(path: p, single: try SafetensorsFile(path: p), sharded: nil)
        case let .sharded(index):
            source = SafetensorsSource(path: index, single: nil, sharded: try ShardedSafetensors(indexPath: index))
        }
        guard let tokPath = layout.tokenizer else { throw ModelError.missingTokenizer(path: dir) }
        var bos: String? = nil, eos: String? = nil, template: String? = nil
        if let tc = layout.tokenizerConfig, let data = FileManager.default.contents(atPath: tc),
           let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
            func token(_ v: Any?) -> String? { (v as? String) ?? ((v as? [String: Any])?["content"] as? String) }
            bos = token(obj["bos_token"])
            eos = token(obj["eos_token"])
            template = obj["chat_template"] as? String
        }
        let tokenizer = try BPETokenizer.fromTokenizerJSON(try Data(contentsOf: URL(fileURLWithPath: tokPath)),
                                                           bosToken: bos, eosToken: eos, chatTemplate: template, source: tokPath)
        let weights = try readWeights(source, config: config, name: { $0.hf }, unpermuteQK: false, keepQuantized: false)
        return LlamaModel(config: config, weights: weights, tokenizer: tokenizer, sourcePath: dir)
    }

    /// Reads, checks and (in parallel) converts every tensor the config calls for.
    /// `name` gives a module's name in the file (`\.hf` or `\.gguf`).
    private static func readWeights(_ src: any TensorSource, config c: LlamaConfig, name: (ModuleAddress) -> String,
                                    unpermuteQK: Bool, keepQuantized: Bool) throws -> LlamaWeights {
        let L = c.numHiddenLayers
        // Plan: (tensor name in file, expected shape, HF module, kind).
        struct Item { var file: String; var shape: [Int]; var permuteHeads: Int?; var matrix: Bool }
        var items: [Item] = []
        func add(_ module: ModuleAddress, _ suffix: String, _ shape: [Int], permute: Int? = nil) {
            items.append(Item(file: name(module) + suffix, shape: shape, permuteHeads: permute, matrix: shape.count == 2))
        }
        let tied = c.tieWordEmbeddings   // for GGUF, set from the absence of output.weight
        add(.embedding, ".weight", [c.vocabSize, c.hiddenSize])
        add(.finalNorm, ".weight", [c.hiddenSize])
        if !tied { add(.lmHead, ".weight", [c.vocabSize, c.hiddenSize]) }
        let shapes = LlamaWeights.linearShapes(c)
        var biasIndex: [Int: Int] = [:]
        for l in 0..<L {
            add(.attnNorm(layer: l), ".weight", [c.hiddenSize])
            add(.ffnNorm(layer: l), ".weight", [c.hiddenSize])
            for p in Projection.allCases {
                let id = LlamaWeights.linearID(layer: l, p), module = ModuleAddress.projection(layer: l, p)
                let heads: Int? = !unpermuteQK ? nil : p == .q ? c.numAttentionHeads : p == .k ? c.numKeyValueHeads : nil
                add(module, ".weight", [shapes[id].out, shapes[id].in], permute: heads)
                if src.has(name(module) + ".bias") {
                    biasIndex[id] = items.count
                    add(module, ".bias", [shapes[id].out], permute: heads)
                }
            }
        }
        // The block count must match the blocks whose tensors are present, both ways: a smaller
        // count would silently run a truncated model, a larger one fail on a missing tensor.
        var present = 0
        while present <= L + 1_000_000, src.has(name(.attnNorm(layer: present)) + ".weight") { present += 1 }
        if present != L {
            throw ModelError.unsupportedConfig(path: src.path, field: "num_hidden_layers (GGUF block_count)", value: "\(L)",
                                               reason: "disagrees with the tensors, which hold \(present) block(s) (\(name(.attnNorm(layer: max(present - 1, 0)))).weight is the last)")
        }
        // Validate presence and shapes before spending time on conversion.
        for it in items {
            guard src.has(it.file) else { throw ModelError.missingTensor(path: src.path, tensor: it.file) }
            let s = try src.shape(it.file)
            guard s == it.shape else { throw ModelError.shapeMismatch(path: src.path, tensor: it.file, expected: it.shape, actual: s) }
        }
        enum Loaded { case floats([Float]), quantized(QuantizedMatrix) }
        let results = UnsafeMutablePointer<Result<Loaded, Error>>.allocate(capacity: items.count)
        results.initialize(repeating: .success(.floats([])), count: items.count)
        defer { results.deinitialize(count: items.count); results.deallocate() }
        let d = c.headDim
        let box = UnsafeSendable(results)
        let plan = items
        DispatchQueue.concurrentPerform(iterations: plan.count) { i in
            let it = plan[i]
            box.value[i] = Result {
                if keepQuantized, it.matrix, var q = try src.quantized(it.file) {
                    if let row = q.firstNonFiniteRow() {
                        throw ModelError.unsupportedConfig(path: src.path, field: "tensor \(it.file)", value: "row \(row)",
                                                           reason: "has a non-finite value in row \(row) (a corrupt scale or an overflowed checkpoint)")
                    }
                    if let heads = it.permuteHeads { q = try q.unpermutingRopeRows(heads: heads) }
                    return .quantized(q)
                }
                var v = try src.floats(it.file)
                if let bad = AdapterValidation.firstNonFinite(v) {
                    throw ModelError.unsupportedConfig(path: src.path, field: "tensor \(it.file)", value: "\(v[bad])",
                                                       reason: "has a non-finite entry at flat index \(bad) (a corrupt or overflowed checkpoint)")
                }
                if let heads = it.permuteHeads { v = try RopePermutation.apply(v, rows: heads * d, cols: v.count / (heads * d), heads: heads, toGGUF: false) }
                return .floats(v)
            }
        }
        var values: [Loaded] = []
        values.reserveCapacity(items.count)
        for i in 0..<items.count { values.append(try results[i].get()) }

        var k = 0
        func next() -> Loaded { defer { k += 1 }; return values[k] }
        func floats(_ v: Loaded) -> [Float] {
            switch v {
            case .floats(let f): return f
            case .quantized(let q): return q.dequantized()     // norms and biases are never kept quantized
            }
        }
        func linear(_ v: Loaded, bias: [Float]?, out: Int, in inF: Int) -> LinearWeights {
            switch v {
            case .floats(let w): return LinearWeights(weight: w, bias: bias, outFeatures: out, inFeatures: inF)
            case .quantized(let q): return LinearWeights(quantized: q, bias: bias)
            }
        }
        let embed = next()
        let finalNorm = floats(next())
        let lmHead = tied ? embed : next()
        var attnNorms: [[Float]] = [], ffnNorms: [[Float]] = [], linears: [LinearWeights] = []
        for l in 0..<L {
            attnNorms.append(floats(next()))
            ffnNorms.append(floats(next()))
            for p in Projection.allCases {
                let id = LlamaWeights.linearID(layer: l, p)
                let w = next()
                let b: [Float]? = biasIndex[id] != nil ? floats(next()) : nil
                linears.append(linear(w, bias: b, out: shapes[id].out, in: shapes[id].in))
            }
        }
        linears.append(linear(lmHead, bias: nil, out: c.vocabSize, in: c.hiddenSize))
        var weights: LlamaWeights
        switch embed {
        case .floats(let e):
            weights = LlamaWeights(embed: e, attnNorms: attnNorms, ffnNorms: ffnNorms, linears: linears, finalNorm: finalNorm)
        case .quantized(let q):
            weights = LlamaWeights(embed: [], attnNorms: attnNorms, ffnNorms: ffnNorms, linears: linears, finalNorm: finalNorm)
            weights.embedQuantized = q
        }
        return weights
    }
}

/// A pointer handed to concurrentPerform's workers, each writing its own slot.
private struct UnsafeSendable<T>: @unchecked Sendable {
    let value: UnsafeMutablePointer<T>
    init(_ v: UnsafeMutablePointer<T>) { value = v }
}

/// GGUF metadata as the plain Swift values `BPETokenizer.fromGGUFMetadata` expects.
func plainValue(_ v: GGUFValue) -> Any {
    switch v {
    case .uint8(let x): return Int(x)
    case .int8(let x): return Int(x)
    case .uint16(let x): return Int(x)
    case .int16(let x): return Int(x)
    case .uint32(let x): return Int(x)
    case .int32(let x): return Int(x)
    case .uint64(let x): return Int(truncatingIfNeeded: x)
    case .int64(let x): return Int(x)
    case .float32(let x): return Double(x)
    case .float64(let x): return x
    case .bool(let x): return x
    case .string(let x): return x
    case .array(let t, let items):
        switch t {
        case .string: return items.map { $0.asString ?? "" }
        case .uint8, .int8, .uint16, .int16, .uint32, .int32, .uint64, .int64: return items.map { $0.asInt ?? 0 }
        case .float32, .float64: return items.map { $0.asDouble ?? 0 }
        case .bool: return items.map { $0.asBool ?? false }
        default: return items.map(plainValue)
        }
    }
}
