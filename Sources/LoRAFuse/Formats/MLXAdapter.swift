import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum MLXAdapterError: Error, CustomStringConvertible, Equatable {
    case notADirectory(path: String)
    case missingFile(path: String, file: String)
    case invalidConfig(path: String, field: String, reason: String)
    case unsupported(path: String, what: String)
    case missingPartner(path: String, module: String, missing: String)
    case badShape(path: String, module: String, reason: String)
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case let .notADirectory(p): return "\(p): not a directory (an MLX adapter is a directory with adapters.safetensors and adapter_config.json)"
        case let .missingFile(p, f): return "\(p): no \(f)"
        case let .invalidConfig(p, f, r): return "\(p)/adapter_config.json: field '\(f)': \(r)"
        case let .unsupported(p, w): return "\(p): \(w)"
        case let .missingPartner(p, m, x): return "\(p): module '\(m)' has no '\(x)'"
        case let .badShape(p, m, r): return "\(p): module '\(m)': \(r)"
        case let .writeFailed(p, r): return "\(p): write failed: \(r)"
        }
    }
}

/// mlx-lm LoRA adapters: a directory with `adapters.safetensors` and `adapter_config.json`
/// (mlx_lm/tuner/utils.py `load_adapters`, mlx_lm/tuner/lora.py).
///
/// Config: `fine_tune_type` ("lora"; "dora" and "full" are not plain LoRA and are refused),
/// `num_layers` (LoRA goes into the last `num_layers` blocks; -1 means all of them) and
/// `lora_parameters: {rank, scale, dropout, keys}`, where `keys` are module paths relative to a
/// block (`self_attn.q_proj`) or to the model (`lm_head`, `model.embed_tokens`).
///
/// Tensors: `<module>.lora_a` of shape (in, r) and `<module>.lora_b` of shape (r, out), module
/// e.g. `model.layers.0.self_attn.q_proj`; `LoRALinear` computes y += scale·(x·lora_a)·lora_b, so
/// ΔW (out, in) = scale·(lora_a·lora_b)ᵀ: PEFT's A = lora_aᵀ and B = lora_bᵀ. `LoRAEmbedding`
/// has lora_a (num_embeddings, r) and lora_b (r, dims) with ΔE = scale·lora_a·lora_b, which is
/// the same transposition of PEFT's `lora_embedding_A` (r, num_embeddings) and
/// `lora_embedding_B` (dims, r). The scale is used as is (no α/r); the PEFT module name is
/// `base_model.model.` + the MLX module path.
///
/// mlx-lm has ONE rank and ONE scale for every LoRA layer it builds. The writer therefore pads
/// every module to the largest rank with zero rows of A / zero columns of B (ΔW unchanged), and
/// when the modules' scales differ it writes the scale of the most common one, S, and folds
/// s_i/S into lora_b. It writes `num_layers = -1`; blocks or keys the adapter does not cover get
/// mlx-lm's zero-initialised lora_b, i.e. ΔW = 0, as they should.
public enum MLXAdapter {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapters.safetensors"
    static let prefix = ModuleAddress.peftPrefix

    public static func isMLXDirectory(_ path: String) -> Bool {
        FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(weightsFile))
    }

    // MARK: reading

    public static func read(directory: String) throws -> LoRAAdapter {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw MLXAdapterError.notADirectory(path: directory)
        }
        let dir = URL(fileURLWithPath: directory)
        let cfgPath = dir.appendingPathComponent(configFile).path
        try InputFile.refuseSpecialFile(cfgPath)
        guard let cfgData = fm.contents(atPath: dir.appendingPathComponent(configFile).path) else {
            throw MLXAdapterError.missingFile(path: directory, file: configFile)
        }
        let weights = dir.appendingPathComponent(weightsFile).path
        guard fm.fileExists(atPath: weights) else { throw MLXAdapterError.missingFile(path: directory, file: weightsFile) }
        let (rank, scale) = try parseConfig(Array(cfgData), path: directory)

        let file = try SafetensorsFile(path: weights)
        var aKeys: [String: String] = [:], bKeys: [String: String] = [:]
        var extras: [String] = []
        for k in file.names {
            if k.hasSuffix(".lora_a") { aKeys[String(k.dropLast(7))] = k }
            else if k.hasSuffix(".lora_b") { bKeys[String(k.dropLast(7))] = k }
            else if k.hasSuffix(".m") || k.hasSuffix(".magnitude") {
                throw MLXAdapterError.unsupported(path: directory, what: "tensor '\(k)' looks like a DoRA magnitude; DoRA is not a plain LoRA")
            } else { extras.append(k) }
        }
        var modules: [String: LoRAModule] = [:]
        var dtype: DType?
        for stem in Set(aKeys.keys).union(bKeys.keys).sorted(by: naturalLess) {
            guard let ak = aKeys[stem] else { throw MLXAdapterError.missingPartner(path: directory, module: stem, missing: stem + ".lora_a") }
            guard let bk = bKeys[stem] else { throw MLXAdapterError.missingPartner(path: directory, module: stem, missing: stem + ".lora_b") }
            let ai = try file.info(ak), bi = try file.info(bk)
            guard ai.shape.count == 2, bi.shape.count == 2, ai.shape[1] == bi.shape[0], ai.shape[1] > 0 else {
                throw MLXAdapterError.badShape(path: directory, module: stem,
                                               reason: "lora_a \(ai.shape) must be (in, r) and lora_b \(bi.shape) must be (r, out)")
            }
            let la = try file.finiteMatrix(ak)   // (in, r)
            let lb = try file.finiteMatrix(bk)   // (r, out)
            if dtype == nil { dtype = ai.floatType }
            let module = prefix + stem
            let kind: LoRAModuleKind = ModuleAddress(hf: stem) == .embedding ? .embedding : .linear
            modules[module] = LoRAModule(A: la.transposed(), B: lb.transposed(), scale: scale, kind: kind)
        }
        var meta = AdapterMetadata()
        meta.rank = rank
        meta.alpha = Double(scale) * Double(rank)
        meta.targetModules = Set(modules.keys.map { String($0.split(separator: ".").last ?? "") }).sorted()
        var extraTensors: [String: Matrix] = [:]
        for k in extras {
            extraTensors[prefix + k] = try file.finiteMatrix(k)
            meta.extraTensorShapes[prefix + k] = try file.info(k).shape
        }
        return LoRAAdapter(name: dir.standardizedFileURL.lastPathComponent, modules: modules, metadata: meta,
                           extraTensors: extraTensors, sourceDType: dtype ?? .f32, sourcePath: directory)
    }

    /// (rank, scale) from `adapter_config.json`.
    static func parseConfig(_ bytes: [UInt8], path: String) throws -> (Int, Float) {
        func bad(_ f: String, _ r: String) -> MLXAdapterError { .invalidConfig(path: path, field: f, reason: r) }
        let cfg: JSONValue
        do { cfg = try JSONValue.parse(bytes) } catch { throw bad("(file)", "\(error)") }
        guard cfg.objectMembers != nil else { throw bad("(file)", "not a JSON object") }
        if let t = cfg["fine_tune_type"], !t.isNull {
            guard let s = t.stringValue else { throw bad("fine_tune_type", "not a string") }
            guard s == "lora" else {
                throw MLXAdapterError.unsupported(path: path, what: "fine_tune_type \"\(s)\" is not supported (only \"lora\"; DoRA and full fine-tunes are not low-rank ΔW adapters)")
            }
        }
        if let n = cfg["num_layers"], !n.isNull, n.intValue == nil { throw bad("num_layers", "must be an integer, got \(n.serialized())") }
        guard let lp = cfg["lora_parameters"], lp.objectMembers != nil else { throw bad("lora_parameters", "missing or not an object") }
        guard let r = lp["rank"]?.intValue, r > 0 else { throw bad("lora_parameters.rank", "must be a positive integer") }
        guard let s = lp["scale"]?.doubleValue, s.isFinite, Float(s).isFinite else { throw bad("lora_parameters.scale", "must be a finite number") }
        if let k = lp["keys"], !k.isNull {
            guard let a = k.arrayValue, a.allSatisfy({ $0.stringValue != nil }) else { throw bad("lora_parameters.keys", "must be a list of strings") }
        }
        return (r, Float(s))
    }

    // MARK: writing

    /// The config and tensors `write` puts on disk.
    static func prepare(_ adapter: LoRAAdapter, path: String) throws -> (JSONValue, [SafetensorsTensor]) {
        try adapter.requireDense("an mlx-lm adapter (mlx-lm applies every rank to every token)")
        if adapter.metadata.fanInFanOut {
            throw MLXAdapterError.unsupported(path: path, what: "fan_in_fan_out adapters (GPT-2 Conv1D layers) are not written as MLX adapters")
        }
        let extras = AdapterWriting.fullTensors(adapter)
        if !extras.isEmpty {
            let shown = extras.prefix(4).joined(separator: ", ")
            throw MLXAdapterError.unsupported(path: path, what: "the adapter carries full tensors (modules_to_save: \(shown)); an MLX LoRA adapter holds only lora_a/lora_b")
        }
        let names = adapter.moduleNames
        let maxRank = adapter.modules.values.map(\.rank).max() ?? max(adapter.metadata.rank, 1)
        var counts: [Int: Int] = [:]
        for m in adapter.modules.values { counts[m.rank, default: 0] += 1 }
        let common = counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }?.key
        var scale: Float = names.first { adapter.modules[$0]!.rank == common }.map { adapter.modules[$0]!.scale } ?? 1
        if !(scale.isFinite && scale != 0) { scale = 1 }

        var tensors: [SafetensorsTensor] = []
        var keys = Set<String>()
        for n in names {
            let m = adapter.modules[n]!
            let stem = ModuleAddress.strippingPEFTPrefix(n)
            if let r = stem.range(of: #"^model\.layers\.[0-9]+\."#, options: .regularExpression) {
                keys.insert(String(stem[r.upperBound...]))
            } else { keys.insert(stem) }
            let f = m.scale / scale
            var la = Matrix(rows: m.inFeatures, cols: maxRank)     // (in, R)
            var lb = Matrix(rows: maxRank, cols: m.outFeatures)    // (R, out)
            let aT = m.A.transposed(), bT = m.B.transposed()        // (in, r), (r, out)
            for i in 0..<m.inFeatures { for j in 0..<m.rank { la[i, j] = aT[i, j] } }
            for i in 0..<m.rank { for j in 0..<m.outFeatures { lb[i, j] = bT[i, j] * (abs(f - 1) <= 1e-6 ? 1 : f) } }
            for (k, x) in [(stem + ".lora_a", la), (stem + ".lora_b", lb)] {
                try SafetensorsFile.checkFinite(x.data, tensor: k, path: path)
                tensors.append(SafetensorsTensor(name: k, matrix: x))
            }
        }
        let config = JSONValue.object([
            ("fine_tune_type", .string("lora")),
            ("num_layers", .int(-1)),
            ("lora_parameters", .object([
                ("rank", .int(maxRank)),
                ("scale", .double(Double(scale))),
                ("dropout", .number("0.0")),
                ("keys", .array(keys.sorted().map { .string($0) })),
            ])),
        ])
        return (config, tensors)
    }

    /// Writes an mlx-lm adapter directory through `OutputGuard` (inputs refused, an existing
    /// non-empty folder replaced only with `force`, built beside the target and renamed).
    public static func write(_ adapter: LoRAAdapter, to directory: String, dtype: DType, protecting: [String] = [],
                             force: Bool = false) throws {
        let target = try OutputGuard.check(directory, kind: .directory,
                                           inputs: protecting + [adapter.sourcePath].compactMap { $0 }, force: force)
        let (config, tensors) = try prepare(adapter, path: directory)
        do {
            try OutputGuard.writeDirectory(target) { tmp in
                try SafetensorsWriter.write(tensors: tensors, metadata: ["format": "mlx"], dtype: dtype,
                                            to: tmp.appendingPathComponent(weightsFile))
                try SafetensorsWriter.atomicWrite(to: tmp.appendingPathComponent(configFile)) { h in
                    try h.write(contentsOf: Data((config.serialized(indent: 4) + "\n").utf8))
                }
            }
        } catch let e as MLXAdapterError {
            throw e
        } catch let e as OutputGuardError {
            throw e
        } catch {
            throw MLXAdapterError.writeFailed(path: directory, reason: "\(error)")
        }
    }
}

struct AdapterWriteError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
