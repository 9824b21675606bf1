import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors reading or writing PEFT adapter directories; each names the path and the option,
/// tensor or module concerned.
public enum PEFTError: Error, CustomStringConvertible, Equatable {
    case notADirectory(path: String)
    case missingConfig(path: String)
    case pickleOnly(path: String)
    case missingWeights(path: String)
    case invalidConfig(path: String, field: String, reason: String)
    case unsupportedOption(path: String, option: String, value: String, reason: String)
    case missingPartner(path: String, tensor: String, missing: String)
    case rankMismatch(path: String, module: String, configRank: Int, tensorRank: Int)
    case factorShapeMismatch(path: String, module: String, aShape: [Int], bShape: [Int])
    case badPattern(path: String, pattern: String, reason: String)
    case ambiguousPatterns(path: String, module: String, matched: String)
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case let .notADirectory(p): return "\(p): not a directory (a PEFT adapter is a directory with adapter_config.json)"
        case let .missingConfig(p): return "\(p): no adapter_config.json"
        case let .pickleOnly(p):
            return "\(p): only adapter_model.bin (a pickle) is present; lorafuse does not read pickles. Convert it to safetensors, e.g. "
                + "`PeftModel.from_pretrained(base, dir).save_pretrained(out, safe_serialization=True)` or "
                + "`safetensors.torch.save_file(torch.load(bin), 'adapter_model.safetensors', metadata={'format': 'pt'})`"
        case let .missingWeights(p): return "\(p): no adapter_model.safetensors"
        case let .invalidConfig(p, f, r): return "\(p)/adapter_config.json: field '\(f)': \(r)"
        case let .unsupportedOption(p, o, v, r): return "\(p)/adapter_config.json: option \(o) = \(v) is not supported: \(r)"
        case let .missingPartner(p, t, m): return "\(p): tensor '\(t)' has no partner factor '\(m)'"
        case let .rankMismatch(p, m, c, t):
            return "\(p): module '\(m)': the config gives rank \(c) (r / rank_pattern) but its tensors have rank \(t)"
        case let .factorShapeMismatch(p, m, a, b): return "\(p): module '\(m)': A has shape \(a) and B has shape \(b); B's columns must equal A's rows"
        case let .badPattern(p, pat, r): return "\(p): pattern '\(pat)' in rank_pattern/alpha_pattern is not a valid regex: \(r)"
        case let .ambiguousPatterns(p, m, k): return "\(p): module '\(m)' would match rank_pattern key '\(k)' meant for another module"
        case let .writeFailed(p, r): return "\(p): write failed: \(r)"
        }
    }
}

/// Reads and writes PEFT LoRA adapter directories (`adapter_config.json` +
/// `adapter_model.safetensors`), as written by peft ≥ 0.7 (checked against peft 0.21.2).
///
/// Tensor keys: `<module>.lora_A.weight` (r, in) and `<module>.lora_B.weight` (out, r) for linear
/// layers; `<module>.lora_embedding_A` (r, num_embeddings) and `<module>.lora_embedding_B`
/// (dim, r) for embeddings. Keys that still carry an adapter name (`lora_A.default.weight`) are
/// accepted. The module name is the key up to `.lora_A` / `.lora_B` / `.lora_embedding_A/B`,
/// e.g. `base_model.model.model.layers.0.self_attn.q_proj`.
///
/// Scale per module (PEFT `LoraLayer.update_layer`): s = α/r, or α/√r with `use_rslora`, where r
/// and α come from the first key k of `rank_pattern` / `alpha_pattern` (in file order) for which
/// `re.match(rf"(.*\.)?({k})$", path)` matches the module path without `base_model.model.`
/// (peft 0.21 `get_pattern_key`), else from `r` / `lora_alpha`.
///
/// Tensors that are not LoRA factors (PEFT `modules_to_save` copies such as
/// `base_model.model.lm_head.weight`, or the embedding base weight PEFT saves with
/// `save_embedding_layers`) are carried unchanged in `extraTensors`, their shapes in
/// `metadata.extraTensorShapes`: a fusion keeps them only when every input agrees.
public enum PEFTAdapter {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"
    public static let pickleFile = "adapter_model.bin"

    /// Config keys this reader interprets, or that the writer always sets itself; everything
    /// else is kept verbatim in `AdapterMetadata.peftExtra`.
    static let handledKeys: Set<String> = [
        "peft_type", "r", "lora_alpha", "use_rslora", "fan_in_fan_out", "target_modules", "layers_to_transform",
        "bias", "use_dora", "lora_bias", "modules_to_save", "rank_pattern", "alpha_pattern",
        "base_model_name_or_path", "task_type", "lora_dropout", "init_lora_weights", "inference_mode",
        "top_k", "bias_u", "lora_nums", "blc_alpha", "blc_weight",
    ]

    /// FlyLoRA's balancing bias d (r) of a module, as the authors' PEFT fork saves it.
    static let topKBiasMarker = ".lora_topk_bias"
    /// SMoRA's router W_g (r, in) of a module: `<module>.lora_router.weight`.
    static let routerMarker = ".lora_router"

    /// The module of a gate tensor `<module><marker>[.<adapter name>][.weight]` (PEFT may keep the
    /// adapter's name in the key, as for lora_A), or nil when `key` is not one.
    static func gateModule(_ key: String, marker: String, weight: Bool) -> String? {
        guard let range = key.range(of: marker, options: .backwards) else { return nil }
        let rest = key[range.upperBound...]
        var parts: [Substring] = []
        if !rest.isEmpty {
            guard rest.hasPrefix(".") else { return nil }
            parts = rest.dropFirst().split(separator: ".", omittingEmptySubsequences: false)
        }
        if weight {
            guard parts.last == "weight" else { return nil }
            parts.removeLast()
        }
        guard parts.count <= 1, !parts.contains(where: \.isEmpty) else { return nil }
        return String(key[..<range.lowerBound])
    }

    // MARK: reading

    public static func read(directory: String) throws -> LoRAAdapter {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw PEFTError.notADirectory(path: directory)
        }
        let dirURL = URL(fileURLWithPath: directory)
        let configURL = dirURL.appendingPathComponent(configFile)
        let weightsURL = dirURL.appendingPathComponent(weightsFile)
        try InputFile.refuseSpecialFile(configURL.path)
        guard let configData = fm.contents(atPath: configURL.path) else { throw PEFTError.missingConfig(path: directory) }
        guard fm.fileExists(atPath: weightsURL.path) else {
            if fm.fileExists(atPath: dirURL.appendingPathComponent(pickleFile).path) { throw PEFTError.pickleOnly(path: directory) }
            throw PEFTError.missingWeights(path: directory)
        }

        let config: JSONValue
        do { config = try JSONValue.parse(Array(configData)) } catch {
            throw PEFTError.invalidConfig(path: directory, field: "(file)", reason: "\(error)")
        }
        guard let members = config.objectMembers else {
            throw PEFTError.invalidConfig(path: directory, field: "(file)", reason: "not a JSON object")
        }
        if config["peft_type"]?.stringValue?.uppercased() == "MIXLORA" {
            return try readMixLoRA(file: try SafetensorsFile(path: weightsURL.path), config: config, directory: directory)
        }
        let (meta, rankOrder, alphaOrder) = try parseConfig(config, members: members, path: directory)

        let file = try SafetensorsFile(path: weightsURL.path)
        if let e = meta.experts { return try readLoRAMoE(file: file, meta: meta, experts: e, directory: directory) }
        let patterns = try CompiledPatterns(rankKeys: rankOrder, alphaKeys: alphaOrder, path: directory)

        // Group the factor tensors by module.
        var aKeys: [String: String] = [:], bKeys: [String: String] = [:]
        var kinds: [String: LoRAModuleKind] = [:]
        var extraNames: [String] = []
        var biasKeys: [String: String] = [:], routerKeys: [String: String] = [:]
        for key in file.names {
            if let module = gateModule(key, marker: routerMarker, weight: true) {
                routerKeys[module] = key
                continue
            }
            if let module = gateModule(key, marker: topKBiasMarker, weight: false) {
                biasKeys[module] = key
                continue
            }
            if key.contains("lora_magnitude_vector") {
                throw PEFTError.unsupportedOption(path: directory, option: "use_dora", value: "true (tensor '\(key)')",
                                                  reason: "DoRA's magnitude vector makes ΔW depend on the base weight; it is not a plain LoRA")
            }
            guard let parsed = try parseKey(key, path: directory) else {
                extraNames.append(key)
                continue
            }
            if let k = kinds[parsed.module], k != parsed.kind {
                throw PEFTError.invalidConfig(path: directory, field: key, reason: "module '\(parsed.module)' has both linear and embedding factors")
            }
            kinds[parsed.module] = parsed.kind
            if parsed.isA { aKeys[parsed.module] = key } else { bKeys[parsed.module] = key }
        }

        var modules: [String: LoRAModule] = [:]
        var sourceDType: DType?
        for (module, kind) in kinds.sorted(by: { naturalLess($0.key, $1.key) }) {
            let (aName, bName) = kind == .linear ? ("lora_A", "lora_B") : ("lora_embedding_A", "lora_embedding_B")
            guard let ak = aKeys[module] else {
                throw PEFTError.missingPartner(path: directory, tensor: bKeys[module]!, missing: "\(module).\(aName)")
            }
            guard let bk = bKeys[module] else {
                throw PEFTError.missingPartner(path: directory, tensor: ak, missing: "\(module).\(bName)")
            }
            let aInfo = try file.info(ak), bInfo = try file.info(bk)
            guard aInfo.shape.count == 2, bInfo.shape.count == 2, aInfo.shape[0] == bInfo.shape[1] else {
                throw PEFTError.factorShapeMismatch(path: directory, module: module, aShape: aInfo.shape, bShape: bInfo.shape)
            }
            let A = try file.finiteMatrix(ak)   // (r, in)
            let B = try file.finiteMatrix(bk)   // (out, r)
            if sourceDType == nil { sourceDType = aInfo.floatType }
            let (r, alpha) = try patterns.rankAndAlpha(module: module, meta: meta)
            guard r == A.rows else {
                throw PEFTError.rankMismatch(path: directory, module: module, configRank: r, tensorRank: A.rows)
            }
            let scale = meta.useRSLoRA ? alpha / Double(r).squareRoot() : alpha / Double(r)
            var gate: RankGate?
            if let k = meta.topK, k < r {
                guard kind == .linear else {
                    throw PEFTError.invalidConfig(path: directory, field: "top_k", reason: "module '\(module)' is an embedding LoRA; FlyLoRA's rank selection is for linear modules")
                }
                var d = [Float](repeating: 0, count: r)
                if let bk = biasKeys[module] {
                    let info = try file.info(bk)
                    guard info.shape.reduce(1, *) == r, info.shape.count <= 2 else {
                        throw PEFTError.invalidConfig(path: directory, field: bk, reason: "shape \(info.shape), expected [\(r)] (one bias per rank)")
                    }
                    d = try file.finiteMatrix(bk).data
                }
                var router: [Float]?
                if let rk = routerKeys[module] {
                    let info = try file.info(rk)
                    guard info.shape == [r, A.cols] else {
                        throw PEFTError.invalidConfig(path: directory, field: rk, reason: "shape \(info.shape), expected [\(r), \(A.cols)] (a router row per rank over the module's input)")
                    }
                    router = try file.finiteMatrix(rk).data
                }
                gate = RankGate(topK: k, bias: d, router: router)
            }
            modules[module] = LoRAModule(A: A, B: B, scale: Float(scale), kind: kind, rankGate: gate)
        }
        if let stray = routerKeys.keys.sorted().first(where: { modules[$0]?.rankGate?.router == nil }) {
            throw PEFTError.invalidConfig(path: directory, field: routerKeys[stray]!,
                                          reason: modules[stray] == nil ? "a router for module '\(stray)', which has no lora_A/lora_B"
                                              : "SMoRA's rank router, but the config's top_k does not make module '\(stray)' choose ranks (top_k missing or ≥ its rank)")
        }
        if meta.topK == nil, let stray = biasKeys.values.sorted().first {
            throw PEFTError.invalidConfig(path: directory, field: "top_k",
                                          reason: "tensor '\(stray)' is FlyLoRA's balancing bias, but the config has no top_k (how many ranks each token keeps)")
        }
        if let stray = biasKeys.keys.sorted().first(where: { modules[$0] == nil }) {
            throw PEFTError.invalidConfig(path: directory, field: biasKeys[stray]!, reason: "a balancing bias for module '\(stray)', which has no lora_A/lora_B")
        }

        var metadata = meta
        var extras: [String: Matrix] = [:]
        for name in extraNames {
            extras[name] = try file.finiteMatrix(name)
            metadata.extraTensorShapes[name] = try file.info(name).shape
        }
        let name = dirURL.standardizedFileURL.lastPathComponent
        return LoRAAdapter(name: name, modules: modules, metadata: metadata, extraTensors: extras,
                           sourceDType: sourceDType ?? .f32, sourcePath: directory)
    }

    struct ParsedKey {
        var module: String
        var kind: LoRAModuleKind
        var isA: Bool
    }

    /// Splits a PEFT tensor key into module name and factor, or nil for a non-LoRA tensor.
    static func parseKey(_ key: String, path: String) throws -> ParsedKey? {
        let markers: [(String, LoRAModuleKind, Bool)] = [
            (".lora_embedding_A", .embedding, true), (".lora_embedding_B", .embedding, false),
            (".lora_A.", .linear, true), (".lora_B.", .linear, false),
        ]
        for (marker, kind, isA) in markers {
            guard let range = key.range(of: marker, options: .backwards) else { continue }
            let module = String(key[..<range.lowerBound])
            let rest = String(key[range.upperBound...])
            switch kind {
            case .linear:
                // "weight" or "<adapter>.weight"; a bias means PEFT's lora_bias.
                let parts = rest.split(separator: ".", omittingEmptySubsequences: false)
                if parts.last == "bias" {
                    throw PEFTError.unsupportedOption(path: path, option: "lora_bias", value: "true (tensor '\(key)')",
                                                      reason: "a bias on lora_B is not part of ΔW = s·B·A")
                }
                guard parts.last == "weight", parts.count <= 2 else { continue }
            case .embedding:
                // "" or ".<adapter>"
                guard rest.isEmpty || (rest.hasPrefix(".") && !rest.dropFirst().contains(".")) else { continue }
            }
            return ParsedKey(module: module, kind: kind, isA: isA)
        }
        return nil
    }

    static func parseConfig(_ config: JSONValue, members: [(String, JSONValue)], path: String) throws
        -> (AdapterMetadata, [String], [String]) {
        func bad(_ f: String, _ r: String) -> PEFTError { .invalidConfig(path: path, field: f, reason: r) }
        var meta = AdapterMetadata()
        if let t = config["peft_type"], let s = t.stringValue, s.uppercased() != "LORA" {
            throw PEFTError.unsupportedOption(path: path, option: "peft_type", value: s, reason: "only LORA adapters are read")
        }
        if let v = config["use_dora"], v.boolValue == true {
            throw PEFTError.unsupportedOption(path: path, option: "use_dora", value: "true",
                                              reason: "DoRA's magnitude vector makes ΔW depend on the base weight; it is not a plain LoRA")
        }
        if let v = config["lora_bias"], v.boolValue == true {
            throw PEFTError.unsupportedOption(path: path, option: "lora_bias", value: "true", reason: "a bias on lora_B is not part of ΔW = s·B·A")
        }
        if let v = config["bias"], !v.isNull {
            guard let s = v.stringValue else { throw bad("bias", "not a string") }
            guard s == "none" else {
                throw PEFTError.unsupportedOption(path: path, option: "bias", value: "\"\(s)\"",
                                                  reason: "trained base-layer biases are not LoRA factors; only \"none\" is supported")
            }
        }
        // PEFT's defaults: r = 8, lora_alpha = 8.
        if let v = config["r"], !v.isNull {
            guard let r = v.intValue, r > 0 else { throw bad("r", "must be a positive integer, got \(v.serialized())") }
            meta.rank = r
        } else { meta.rank = 8 }
        if let v = config["lora_alpha"], !v.isNull {
            guard let a = v.doubleValue else { throw bad("lora_alpha", "must be a number, got \(v.serialized())") }
            meta.alpha = a
        } else { meta.alpha = 8 }
        func flag(_ k: String) throws -> Bool {
            guard let v = config[k], !v.isNull else { return false }
            guard let b = v.boolValue else { throw bad(k, "must be true or false, got \(v.serialized())") }
            return b
        }
        meta.useRSLoRA = try flag("use_rslora")
        meta.fanInFanOut = try flag("fan_in_fan_out")
        if let v = config["target_modules"], !v.isNull {
            if let s = v.stringValue { meta.targetModules = [s] }
            else if let a = v.arrayValue {
                meta.targetModules = try a.map { guard let s = $0.stringValue else { throw bad("target_modules", "entries must be strings") }; return s }
            } else { throw bad("target_modules", "must be a string or a list of strings") }
        }
        if let v = config["layers_to_transform"], !v.isNull {
            if let i = v.intValue { meta.layersToTransform = [i] }
            else if let a = v.arrayValue {
                meta.layersToTransform = try a.map { guard let i = $0.intValue else { throw bad("layers_to_transform", "entries must be integers") }; return i }
            } else { throw bad("layers_to_transform", "must be an integer or a list of integers") }
        }
        if let v = config["modules_to_save"], !v.isNull {
            guard let a = v.arrayValue else { throw bad("modules_to_save", "must be a list of strings") }
            meta.modulesToSave = try a.map { guard let s = $0.stringValue else { throw bad("modules_to_save", "entries must be strings") }; return s }
        }
        var rankOrder: [String] = [], alphaOrder: [String] = []
        if let v = config["rank_pattern"], !v.isNull {
            guard let m = v.objectMembers else { throw bad("rank_pattern", "must be an object") }
            for (k, x) in m {
                guard let r = x.intValue, r > 0 else { throw bad("rank_pattern", "value for '\(k)' must be a positive integer") }
                if meta.rankPattern[k] == nil { rankOrder.append(k) }
                meta.rankPattern[k] = r
            }
        }
        if let v = config["alpha_pattern"], !v.isNull {
            guard let m = v.objectMembers else { throw bad("alpha_pattern", "must be an object") }
            for (k, x) in m {
                guard let a = x.doubleValue else { throw bad("alpha_pattern", "value for '\(k)' must be a number") }
                if meta.alphaPattern[k] == nil { alphaOrder.append(k) }
                meta.alphaPattern[k] = a
            }
        }
        if let v = config["base_model_name_or_path"], !v.isNull { meta.baseModel = v.stringValue }
        if let v = config["task_type"], !v.isNull { meta.taskType = v.stringValue }
        if let v = config["top_k"], !v.isNull {
            guard let k = v.intValue, k >= 1 else { throw bad("top_k", "must be a positive integer (ranks kept per token), got \(v.serialized())") }
            meta.topK = k
        }
        if let v = config["bias_u"], !v.isNull {
            guard let u = v.doubleValue, u.isFinite, u >= 0 else { throw bad("bias_u", "must be a finite number ≥ 0, got \(v.serialized())") }
            meta.biasRate = u
        }
        if let v = config["lora_nums"], !v.isNull {
            guard let e = v.intValue, e >= 2 else { throw bad("lora_nums", "must be an integer ≥ 2 (LoRAMoE's experts per module), got \(v.serialized())") }
            meta.experts = e
        }
        for key in ["blc_alpha", "blc_weight"] {
            guard let v = config[key], !v.isNull else { continue }
            guard let x = v.doubleValue, x.isFinite, x >= 0 else { throw bad(key, "must be a finite number ≥ 0, got \(v.serialized())") }
            if key == "blc_alpha" { meta.blcAlpha = x } else { meta.blcWeight = x }
        }
        for (k, v) in members where !handledKeys.contains(k) {
            meta.peftExtra[k] = v.serialized()
        }
        return (meta, rankOrder, alphaOrder)
    }

    /// rank_pattern / alpha_pattern keys compiled once, in the order PEFT tries them.
    struct CompiledPatterns {
        var rank: [(String, NSRegularExpression)]
        var alpha: [(String, NSRegularExpression)]

        init(rankKeys: [String], alphaKeys: [String], path: String) throws {
            func compile(_ k: String) throws -> NSRegularExpression {
                do { return try NSRegularExpression(pattern: "^(.*\\.)?(\(k))$") } catch {
                    throw PEFTError.badPattern(path: path, pattern: k, reason: "\(error)")
                }
            }
            rank = try rankKeys.map { ($0, try compile($0)) }
            alpha = try alphaKeys.map { ($0, try compile($0)) }
        }

        static func firstMatch(_ list: [(String, NSRegularExpression)], _ name: String) -> String? {
            let range = NSRange(name.startIndex..<name.endIndex, in: name)
            return list.first { $0.1.firstMatch(in: name, options: [.anchored], range: range) != nil }?.0
        }

        /// (r, α) PEFT gives `module` (full key name; the `base_model.model.` prefix is stripped).
        func rankAndAlpha(module: String, meta: AdapterMetadata) throws -> (Int, Double) {
            let path = peftPatternKey(forModule: module)
            let r = CompiledPatterns.firstMatch(rank, path).flatMap { meta.rankPattern[$0] } ?? meta.rank
            let a = CompiledPatterns.firstMatch(alpha, path).flatMap { meta.alphaPattern[$0] } ?? meta.alpha
            return (r, a)
        }
    }

    // MARK: writing

    /// Writes `adapter` as a PEFT adapter directory loadable by `PeftModel.from_pretrained`.
    ///
    /// If every module's scale and rank are what the adapter's own config (r, lora_alpha,
    /// use_rslora, patterns) gives it, the factors and config are written as they are. Otherwise
    /// every module's scale is folded into B (ΔW = B'·A with B' = s·B), the config says
    /// use_rslora = false, r = lora_alpha = R (the most common rank) and each module of another
    /// rank gets exact `rank_pattern` / `alpha_pattern` entries r = α = its rank, so PEFT's
    /// scale is 1 everywhere.
    ///
    /// The directory goes through `OutputGuard`: refused when it is (or holds, or lies inside)
    /// the adapter's source or any of `protecting`, or exists non-empty without `force`; built in
    /// a temporary folder beside it and renamed into place, replacing (never merging into) what
    /// was there.
    public static func write(_ adapter: LoRAAdapter, to directory: String, dtype: DType, protecting: [String] = [],
                             force: Bool = false) throws {
        let target = try OutputGuard.check(directory, kind: .directory,
                                           inputs: protecting + [adapter.sourcePath].compactMap { $0 }, force: force)
        try OutputGuard.writeDirectory(target) { tmp in try writeFiles(adapter, into: tmp, dtype: dtype, path: directory) }
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into the existing folder
    /// `dir` (a writer building a larger output, such as a checkpoint, calls this on its
    /// temporary folder).
    public static func writeFiles(_ adapter: LoRAAdapter, into dir: URL, dtype: DType, path: String? = nil) throws {
        let (config, tensors) = try prepare(adapter, path: path ?? dir.path)
        do {
            try SafetensorsWriter.write(tensors: tensors, metadata: ["format": "pt"], dtype: dtype,
                                        to: dir.appendingPathComponent(weightsFile))
            try SafetensorsWriter.atomicWrite(to: dir.appendingPathComponent(configFile)) { h in
                try h.write(contentsOf: Data((config.serialized(indent: 2) + "\n").utf8))
            }
        } catch {
            if error is PEFTError || error is SafetensorsError { throw error }
            throw PEFTError.writeFailed(path: path ?? dir.path, reason: "\(error)")
        }
    }

    /// The config JSON and the tensors `write` puts on disk.
    static func prepare(_ adapter: LoRAAdapter, path: String) throws -> (JSONValue, [SafetensorsTensor]) {
        if isMixLoRA(adapter) { return try prepareMixLoRA(adapter, path: path) }
        if isLoRAMoE(adapter) { return try prepareLoRAMoE(adapter, path: path) }
        let meta = adapter.metadata
        let names = adapter.moduleNames
        // Patterns are written (and therefore matched by PEFT) in sorted key order.
        func sortedKeys<V>(_ d: [String: V]) -> [String] { d.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) } }

        var keepAsIs = meta.rank > 0
        if keepAsIs {
            let pats = try CompiledPatterns(rankKeys: sortedKeys(meta.rankPattern), alphaKeys: sortedKeys(meta.alphaPattern), path: path)
            for n in names {
                let m = adapter.modules[n]!
                let (r, a) = try pats.rankAndAlpha(module: n, meta: meta)
                let s = meta.useRSLoRA ? a / Double(r).squareRoot() : a / Double(r)
                if r != m.rank || abs(s - Double(m.scale)) > 1e-6 * max(1, abs(s)) { keepAsIs = false; break }
            }
        }

        var rank = meta.rank, alpha = meta.alpha, rslora = meta.useRSLoRA
        var rankPattern = meta.rankPattern, alphaPattern = meta.alphaPattern
        var modules = adapter.modules
        if !keepAsIs {
            var counts: [Int: Int] = [:]
            for m in modules.values { counts[m.rank, default: 0] += 1 }
            rank = counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }?.key ?? max(meta.rank, 1)
            alpha = Double(rank)
            rslora = false
            rankPattern = [:]
            alphaPattern = [:]
            for n in names {
                let m = modules[n]!
                modules[n] = m.foldingScale()
                if m.rank != rank {
                    let key = peftPatternKey(forModule: n)
                    rankPattern[key] = m.rank
                    alphaPattern[key] = Double(m.rank)
                }
            }
            var folded = meta
            folded.rank = rank
            folded.alpha = alpha
            folded.useRSLoRA = false
            folded.rankPattern = rankPattern
            folded.alphaPattern = alphaPattern
            // Check that each module resolves to its own rank under PEFT's suffix matching.
            let pats = try CompiledPatterns(rankKeys: sortedKeys(rankPattern), alphaKeys: sortedKeys(alphaPattern), path: path)
            for n in names {
                let (r, a) = try pats.rankAndAlpha(module: n, meta: folded)
                if r != modules[n]!.rank || a != Double(r) {
                    let hit = CompiledPatterns.firstMatch(pats.rank, peftPatternKey(forModule: n)) ?? "(default r)"
                    throw PEFTError.ambiguousPatterns(path: path, module: n, matched: hit)
                }
            }
        }

        var tensors: [SafetensorsTensor] = []
        for n in names {
            let m = modules[n]!
            try SafetensorsFile.checkFinite(m.A.data, tensor: n + " (A)", path: path)
            try SafetensorsFile.checkFinite(m.B.data, tensor: n + " (B)", path: path)
            switch m.kind {
            case .linear:
                tensors.append(SafetensorsTensor(name: n + ".lora_A.weight", matrix: m.A))   // (r, in)
                tensors.append(SafetensorsTensor(name: n + ".lora_B.weight", matrix: m.B))   // (out, r)
                if let g = m.rankGate {
                    try SafetensorsFile.checkFinite(g.bias, tensor: n + topKBiasMarker, path: path)
                    tensors.append(SafetensorsTensor(name: n + topKBiasMarker, shape: [g.rank], values: g.bias))  // (r)
                    if let w = g.router {
                        try SafetensorsFile.checkFinite(w, tensor: n + routerMarker, path: path)
                        tensors.append(SafetensorsTensor(name: n + routerMarker + ".weight", shape: [g.rank, m.inFeatures], values: w))  // (r, in)
                    }
                }
            case .embedding:
                tensors.append(SafetensorsTensor(name: n + ".lora_embedding_A", matrix: m.A))  // (r, num_embeddings)
                tensors.append(SafetensorsTensor(name: n + ".lora_embedding_B", matrix: m.B))  // (dim, r)
            }
        }
        for (n, x) in adapter.extraTensors.sorted(by: { naturalLess($0.key, $1.key) }) {
            var shape = x.shape
            if let s = meta.extraTensorShapes[n], s.reduce(1, *) == x.count { shape = s }
            tensors.append(SafetensorsTensor(name: n, shape: shape, values: x.data))
        }

        var targets = Set<String>()
        for n in names { targets.insert(String(n.split(separator: ".").last ?? Substring(n))) }
        let targetList = targets.isEmpty ? meta.targetModules.sorted() : targets.sorted()

        func optString(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
        func patternJSON<V>(_ d: [String: V], _ f: (V) -> JSONValue) -> JSONValue {
            .object(sortedKeys(d).map { ($0, f(d[$0]!)) })
        }
        var fields: [String: JSONValue] = [
            "peft_type": .string("LORA"),
            "task_type": optString(meta.taskType),
            "base_model_name_or_path": optString(meta.baseModel),
            "r": .int(rank),
            "lora_alpha": .double(alpha),
            "rank_pattern": patternJSON(rankPattern) { .int($0) },
            "alpha_pattern": patternJSON(alphaPattern) { .double($0) },
            "target_modules": .array(targetList.map { .string($0) }),
            "use_rslora": .bool(rslora),
            "fan_in_fan_out": .bool(meta.fanInFanOut),
            "bias": .string("none"),
            "lora_dropout": .number("0.0"),
            "init_lora_weights": .bool(true),
            "inference_mode": .bool(true),
            "use_dora": .bool(false),
            "modules_to_save": meta.modulesToSave.map { .array($0.map { .string($0) }) } ?? .null,
            "layers_to_transform": meta.layersToTransform.map { .array($0.map { .int($0) }) } ?? .null,
            "layers_pattern": .null,
            "revision": .null,
            "megatron_config": .null,
            "megatron_core": .string("megatron.core"),
            "loftq_config": .object([]),
            "auto_mapping": .null,
        ]
        // FlyLoRA, as the authors' PEFT fork configures it. Every gated module keeps the same k.
        let gated = names.compactMap { n in adapter.modules[n]!.rankGate.map { (n, $0.topK) } }
        if let (first, k) = gated.first {
            if let (other, k2) = gated.first(where: { $0.1 != k }) {
                throw PEFTError.invalidConfig(path: path, field: "top_k", reason: "module '\(first)' keeps \(k) ranks per token, '\(other)' \(k2); one top_k is written for all")
            }
            if let plain = names.first(where: { adapter.modules[$0]!.rankGate == nil && adapter.modules[$0]!.rank > k }) {
                throw PEFTError.invalidConfig(path: path, field: "top_k", reason: "module '\(plain)' keeps all its ranks, but top_k \(k) would apply to it too")
            }
            fields["top_k"] = .int(k)
            fields["bias_u"] = .double(meta.biasRate ?? FlyLoRADefaults.biasRate)
            // FlyLoRA's A is the authors' "sparse" initialisation; SMoRA's is PEFT's own.
            if names.allSatisfy({ adapter.modules[$0]!.rankGate?.router == nil }) { fields["init_lora_weights"] = .string("sparse") }
        }
        for (k, text) in meta.peftExtra where !handledKeys.contains(k) {
            guard let v = try? JSONValue.parse(text) else {
                throw PEFTError.invalidConfig(path: path, field: k, reason: "peftExtra value is not JSON: \(text)")
            }
            fields[k] = v
        }
        let config = JSONValue.object(sortedKeys(fields).map { ($0, fields[$0]!) })
        return (config, tensors)
    }
}
