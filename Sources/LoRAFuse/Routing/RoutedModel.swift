import Foundation

// A routed model on disk is a folder:
//
//   router_config.json    method, top-k, temperature, placement, gate kind, the base model's
//                         shape, and each adapter: name, path (relative to this folder, or
//                         absolute) and sha256 digest
//   router.safetensors    one gate per routed projection, "<HF module name>.gate" (N, in), F32
//   adapters/NAME/        the adapters, when copied in (`--copy-adapters`); otherwise the paths
//                         point at the user's own folders and the digests are checked on load
//   general/NAME/         GenKnowSub's general adapters, likewise ("genknowsub" in the config:
//                         composition and entries as for the adapters; GenKnowSub.swift)
//
// An adapter's digest is the SHA-256 of, for a folder, each of the files its reader reads that
// exists (adapter_config.json, adapter_model.safetensors, adapters.safetensors, nola_config.json,
// nola_coefficients.safetensors, in that order) as
// "name\n<size>\n<bytes>"; for a single file (GGUF), the same over that one file.

public enum RoutedModelError: Error, CustomStringConvertible, Equatable {
    case badConfig(path: String, field: String, reason: String)
    case adapterMissing(dir: String, adapter: String, path: String)
    case adapterChanged(dir: String, adapter: String, path: String, expected: String, actual: String)
    case gateShape(path: String, tensor: String, expected: [Int], actual: [Int])
    case unknownGate(path: String, tensor: String)
    case otherBase(dir: String, expected: String, actual: String)
    case embeddingNotRoutable(adapter: String, module: String)

    public var description: String {
        switch self {
        case let .badConfig(p, f, r): return "\(p): field '\(f)': \(r)"
        case let .adapterMissing(d, a, p):
            return "routed model \(d): adapter '\(a)' is missing at \(p); put it back or rebuild the router with lorafuse route"
        case let .adapterChanged(d, a, p, e, x):
            return "routed model \(d): adapter '\(a)' at \(p) changed since the router was built (sha256 \(e.prefix(12))…, now \(x.prefix(12))…); its gates were fitted to the old weights: rebuild with lorafuse route"
        case let .gateShape(p, t, e, a): return "\(p): gate '\(t)' has shape \(a), expected \(e) (adapters × the projection's input width)"
        case let .unknownGate(p, t): return "\(p): tensor '\(t)' is not a gate of a projection of this model (expected model.layers.N.{self_attn,mlp}.PROJ.gate)"
        case let .otherBase(d, e, a): return "routed model \(d) was built for a base with \(e); this model has \(a)"
        case let .embeddingNotRoutable(a, m):
            return "adapter '\(a)': module '\(m)' is an embedding LoRA, which a per-token gate cannot route (there is no input to score before the lookup); route adapters without embedding modules"
        }
    }
}

/// Which projections get gates (LoRA-Mixer routes only attention; MeteoRA all seven).
public enum RoutePlacement: String, Sendable, Codable, CaseIterable {
    case all, attention, mlp

    public func includes(_ p: Projection) -> Bool {
        switch self {
        case .all: return true
        case .attention: return [.q, .k, .v, .o].contains(p)
        case .mlp: return [.gate, .up, .down].contains(p)
        }
    }
}

/// The base model a router was fitted on, by shape (names differ between copies of one model).
public struct RouterBase: Codable, Equatable, Sendable {
    public var hiddenSize: Int
    public var layers: Int
    public var vocabSize: Int
    public var name: String?

    enum CodingKeys: String, CodingKey {
        case name
        case hiddenSize = "hidden_size", layers = "num_hidden_layers", vocabSize = "vocab_size"
    }

    public init(config c: LlamaConfig, name: String?) {
        hiddenSize = c.hiddenSize
        layers = c.numHiddenLayers
        vocabSize = c.vocabSize
        self.name = name
    }

    var summary: String { "hidden \(hiddenSize), \(layers) layers, vocab \(vocabSize)" }
}

public struct RouterAdapterEntry: Codable, Equatable, Sendable {
    public var name: String
    public var path: String
    public var sha256: String

    public init(name: String, path: String, sha256: String) {
        self.name = name
        self.path = path
        self.sha256 = sha256
    }
}

public struct RouterConfig: Codable, Equatable, Sendable {
    public var format = RouterConfig.formatName
    public var version = 1
    public var method: String
    public var gate: GateKind
    public var topK: Int
    public var temperature: Float
    public var placement: RoutePlacement
    public var base: RouterBase
    public var adapters: [RouterAdapterEntry]
    /// How the gates were fitted (steps, lr, seed, shots…), for the record.
    public var training: [String: String]
    /// GenKnowSub: general adapters whose mean is subtracted from every expert on load
    /// (GenKnowSub.swift); nil for none.
    public var general: GeneralKnowledge?

    public static let formatName = "lorafuse-router"
    public static let fileName = "router_config.json"
    public static let gatesFileName = "router.safetensors"

    enum CodingKeys: String, CodingKey {
        case format, version, method, gate, temperature, placement, adapters, training
        case topK = "top_k", base = "base_model", general = "genknowsub"
    }

    public init(method: String, gate: GateKind, topK: Int, temperature: Float, placement: RoutePlacement, base: RouterBase,
                adapters: [RouterAdapterEntry], training: [String: String], general: GeneralKnowledge? = nil) {
        self.general = general
        self.method = method
        self.gate = gate
        self.topK = topK
        self.temperature = temperature
        self.placement = placement
        self.base = base
        self.adapters = adapters
        self.training = training
    }
}

/// A routed model: its config, the adapters it routes over (in expert order) and one gate per
/// routed projection, keyed by HF module name, (N, in).
public struct RoutedModel: Sendable {
    public var config: RouterConfig
    public var adapters: [LoRAAdapter]
    public var gates: [String: Matrix]
    /// The folder it was read from (for messages).
    public var sourcePath: String?
    /// A LoRA applied to every token at each routed projection, outside the gates: GenKnowSub's
    /// −mean of the general adapters when the experts are kept as they are (GenKnowSub.swift).
    public var fixed: LoRAAdapter?

    public init(config: RouterConfig, adapters: [LoRAAdapter], gates: [String: Matrix]) {
        self.config = config
        self.adapters = adapters
        self.gates = gates
    }

    public var policy: RoutingPolicy { RoutingPolicy(topK: config.topK, temperature: config.temperature) }

    /// Projections whose adapter terms the router weights: one per gate; for X-LoRA, every
    /// projection of the placement that some adapter has a LoRA on; none for a per-request router.
    public var routedProjectionCount: Int {
        switch config.gate {
        case .sequence: return 0
        case .linear, .arrow: return gates.count
        case .xlora:
            var seen = Set<ModuleAddress>()
            for a in adapters {
                for m in a.moduleNames {
                    let hf = m.hasPrefix(ModuleAddress.peftPrefix) ? String(m.dropFirst(ModuleAddress.peftPrefix.count)) : m
                    if case let .projection(_, p)? = ModuleAddress(hf: hf), config.placement.includes(p) { seen.insert(ModuleAddress(hf: hf)!) }
                }
            }
            return seen.count
        }
    }

    /// Whether `path` is a routed-model folder (has router_config.json).
    public static func isRoutedDirectory(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
            && FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(RouterConfig.fileName))
    }

    /// The files of an adapter that its digest covers (see the top of this file).
    static func digestedFiles(_ path: String) -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return [] }
        if !isDir.boolValue { return [path] }
        // NOLA's files come last, so the digests of the other formats are what they always were.
        return ["adapter_config.json", "adapter_model.safetensors", "adapters.safetensors",
                NOLAVariant.configFile, NOLAVariant.weightsFile]
            .map { (path as NSString).appendingPathComponent($0) }
            .filter { FileManager.default.fileExists(atPath: $0) }
    }

    public static func digest(adapterAt path: String) throws -> String {
        var s = SHA256()
        for f in digestedFiles(path) {
            let size = ((try? FileManager.default.attributesOfItem(atPath: f))?[.size] as? Int) ?? 0
            s.update("\((f as NSString).lastPathComponent)\n\(size)\n")
            try s.update(fileAt: f)
        }
        return s.hexDigest()
    }

    /// Reads a routed-model folder: the config (every field checked), the gates, and each adapter
    /// after checking that it exists and that its digest is the one recorded.
    public static func load(directory dir: String, hints: ModelHints = ModelHints()) throws -> RoutedModel {
        let cfgPath = (dir as NSString).appendingPathComponent(RouterConfig.fileName)
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: cfgPath)) } catch { throw AdapterIOError.notFound(path: cfgPath) }
        let config: RouterConfig
        do { config = try JSONDecoder().decode(RouterConfig.self, from: data) } catch {
            throw RoutedModelError.badConfig(path: cfgPath, field: Self.fieldName(of: error), reason: Self.reason(of: error))
        }
        func bad(_ f: String, _ r: String) -> RoutedModelError { .badConfig(path: cfgPath, field: f, reason: r) }
        guard config.format == RouterConfig.formatName else { throw bad("format", "is '\(config.format)', expected '\(RouterConfig.formatName)'") }
        guard config.version == 1 else { throw bad("version", "is \(config.version); this lorafuse reads version 1") }
        guard !config.adapters.isEmpty else { throw bad("adapters", "is empty; a router needs at least one adapter") }
        guard (1...config.adapters.count).contains(config.topK) else {
            throw bad("top_k", "is \(config.topK); it must be between 1 and the number of adapters (\(config.adapters.count))")
        }
        guard config.temperature.isFinite && config.temperature > 0 else { throw bad("temperature", "is \(config.temperature); it must be > 0") }
        var names = Set<String>()
        for (i, e) in config.adapters.enumerated() where !names.insert(e.name).inserted {
            throw bad("adapters[\(i)].name", "'\(e.name)' appears twice")
        }
        func read(_ e: RouterAdapterEntry) throws -> LoRAAdapter {
            let p = (e.path as NSString).isAbsolutePath ? e.path : (dir as NSString).appendingPathComponent(e.path)
            guard FileManager.default.fileExists(atPath: p) else {
                throw RoutedModelError.adapterMissing(dir: dir, adapter: e.name, path: p)
            }
            let d = try digest(adapterAt: p)
            guard d == e.sha256 else {
                throw RoutedModelError.adapterChanged(dir: dir, adapter: e.name, path: p, expected: e.sha256, actual: d)
            }
            var a = try AdapterIO.read(path: p, hints: hints)
            a.name = e.name
            return a
        }
        var adapters = try config.adapters.map(read)
        var fixed: LoRAAdapter?
        if let g = config.general {
            guard !g.adapters.isEmpty else { throw bad("genknowsub.adapters", "is empty; GenKnowSub needs at least one general adapter") }
            let general = try g.adapters.map(read)
            if g.composition == .exact && config.gate != .sequence {
                fixed = try GenKnowSub.negatedMean(general)
            } else {
                adapters = try GenKnowSub.subtract(general, from: adapters, composition: g.composition)
            }
        }
        let gatesPath = (dir as NSString).appendingPathComponent(RouterConfig.gatesFileName)
        guard FileManager.default.fileExists(atPath: gatesPath) else { throw AdapterIOError.notFound(path: gatesPath) }
        let reader = try SafetensorsFile(path: gatesPath)
        var gates: [String: Matrix] = [:]
        for t in reader.names {
            if config.gate == .sequence {
                // One classifier (N, hidden + 1) and nothing else.
                guard t == SequenceRouter.tensorName + ".gate" else { throw RoutedModelError.unknownGate(path: gatesPath, tensor: t) }
                let m = try reader.finiteMatrix(t)
                guard m.rows == adapters.count, m.cols == config.base.hiddenSize + 1 else {
                    throw RoutedModelError.gateShape(path: gatesPath, tensor: t, expected: [adapters.count, config.base.hiddenSize + 1], actual: m.shape)
                }
                gates[SequenceRouter.tensorName] = m
                continue
            }
            if config.gate == .xlora {
                // One classifier (L·N, hidden + 1) and nothing else.
                guard t == XLoRAClassifier.tensorName + ".gate" else { throw RoutedModelError.unknownGate(path: gatesPath, tensor: t) }
                let m = try reader.finiteMatrix(t)
                let want = [config.base.layers * adapters.count, config.base.hiddenSize + 1]
                guard m.shape == want else { throw RoutedModelError.gateShape(path: gatesPath, tensor: t, expected: want, actual: m.shape) }
                gates[XLoRAClassifier.tensorName] = m
                continue
            }
            guard t.hasSuffix(".gate"), case .projection? = ModuleAddress(hf: String(t.dropLast(5))) else {
                throw RoutedModelError.unknownGate(path: gatesPath, tensor: t)
            }
            let m = try reader.finiteMatrix(t)
            guard m.rows == adapters.count else {
                throw RoutedModelError.gateShape(path: gatesPath, tensor: t, expected: [adapters.count, m.cols], actual: m.shape)
            }
            gates[String(t.dropLast(5))] = m
        }
        guard !gates.isEmpty else { throw bad("router.safetensors", "holds no gates") }
        var routed = RoutedModel(config: config, adapters: adapters, gates: gates)
        routed.sourcePath = dir
        routed.fixed = fixed
        return routed
    }

    /// Writes the folder into `dir` (a fresh folder from `OutputGuard.buildDirectory`).
    /// `sources[i]` is where adapter i was read from; copied in with `copyAdapters`, else
    /// referenced by a path relative to `finalPath` (where the folder will be installed).
    /// `generalSources` are GenKnowSub's general adapters, recorded (and copied) the same way,
    /// in the order and under the names of `config.general`.
    public func write(into dir: String, finalPath: String, sources: [String], generalSources: [String] = [],
                      copyAdapters: Bool) throws {
        precondition(sources.count == adapters.count)
        precondition(generalSources.count == (config.general?.adapters.count ?? 0))
        var cfg = config
        cfg.adapters = []
        let fm = FileManager.default
        func store(name: String, src: String, under folder: String) throws -> RouterAdapterEntry {
            let digest = try Self.digest(adapterAt: src)
            var stored: String
            if copyAdapters {
                var isDir: ObjCBool = false
                _ = fm.fileExists(atPath: src, isDirectory: &isDir)
                let safe = name.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." ? $0 : "_" }
                stored = folder + "/" + String(safe)
                let dest = (dir as NSString).appendingPathComponent(stored)
                if isDir.boolValue {
                    try fm.createDirectory(atPath: dest, withIntermediateDirectories: true)
                    for f in Self.digestedFiles(src) {
                        try fm.copyItem(atPath: f, toPath: (dest as NSString).appendingPathComponent((f as NSString).lastPathComponent))
                    }
                } else {
                    stored += "." + (src as NSString).pathExtension
                    try fm.createDirectory(atPath: (dir as NSString).appendingPathComponent(folder), withIntermediateDirectories: true)
                    try fm.copyItem(atPath: src, toPath: (dir as NSString).appendingPathComponent(stored))
                }
            } else {
                stored = Self.relativePath(of: OutputGuard.resolve(src), from: OutputGuard.resolve(finalPath))
            }
            return RouterAdapterEntry(name: name, path: stored, sha256: digest)
        }
        cfg.adapters = try zip(adapters, sources).map { try store(name: $0.name, src: $1, under: "adapters") }
        if let g = config.general {
            // Their own folder (general/NAME): a general adapter may share a name with an expert.
            cfg.general?.adapters = try zip(g.adapters, generalSources).map { try store(name: $0.name, src: $1, under: "general") }
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(cfg).write(to: URL(fileURLWithPath: (dir as NSString).appendingPathComponent(RouterConfig.fileName)))
        let tensors = gates.keys.sorted().map { SafetensorsTensor(name: $0 + ".gate", matrix: gates[$0]!) }
        try SafetensorsWriter.write(tensors: tensors, metadata: ["format": RouterConfig.formatName, "method": config.method],
                                    dtype: .f32, to: URL(fileURLWithPath: (dir as NSString).appendingPathComponent(RouterConfig.gatesFileName)))
    }

    /// `target` relative to the folder `base` ("../adapters/x"), or `target` itself when they
    /// share nothing but the root.
    static func relativePath(of target: String, from base: String) -> String {
        let t = target.split(separator: "/"), b = base.split(separator: "/")
        var i = 0
        while i < t.count && i < b.count && t[i] == b[i] { i += 1 }
        if i == 0 { return target }
        let ups = Array(repeating: "..", count: b.count - i)
        return (ups + t[i...].map(String.init)).joined(separator: "/")
    }

    private static func fieldName(of error: Error) -> String {
        switch error as? DecodingError {
        case let .keyNotFound(k, ctx)?: return (ctx.codingPath.map(\.stringValue) + [k.stringValue]).joined(separator: ".")
        case let .typeMismatch(_, ctx)?, let .valueNotFound(_, ctx)?, let .dataCorrupted(ctx)?:
            return ctx.codingPath.map(\.stringValue).joined(separator: ".")
        default: return "(file)"
        }
    }

    private static func reason(of error: Error) -> String {
        switch error as? DecodingError {
        case .keyNotFound?: return "is missing"
        case let .typeMismatch(t, _)?: return "has the wrong type (expected \(t))"
        case .valueNotFound?: return "is null"
        case let .dataCorrupted(ctx)?: return ctx.debugDescription
        default: return "not valid JSON: \(error)"
        }
    }
}

extension LlamaModel {
    /// Prepares a routed model for this model's forward pass: every adapter is checked as
    /// `prepare(_:mode:)` checks it, each gate against its projection. Adapter modules at
    /// projections without a gate (outside the router's placement) are not applied.
    public func prepare(routed: RoutedModel) throws -> AdapterSet {
        let here = RouterBase(config: config, name: nil)
        let want = routed.config.base
        guard here.hiddenSize == want.hiddenSize, here.layers == want.layers, here.vocabSize == want.vocabSize else {
            throw RoutedModelError.otherBase(dir: routed.sourcePath ?? "(\(routed.config.method) router)", expected: want.summary, actual: here.summary)
        }
        let N = routed.adapters.count
        if routed.config.gate == .sequence {
            guard let g = routed.gates[SequenceRouter.tensorName], routed.gates.count == 1 else {
                throw RoutedModelError.badConfig(path: routed.sourcePath ?? RouterConfig.gatesFileName, field: "gate",
                                                 reason: "is 'sequence' but router.safetensors does not hold exactly '\(SequenceRouter.tensorName).gate'")
            }
            guard g.rows == N, g.cols == config.hiddenSize + 1 else {
                throw RoutedModelError.gateShape(path: RouterConfig.gatesFileName, tensor: SequenceRouter.tensorName + ".gate",
                                                 expected: [N, config.hiddenSize + 1], actual: g.shape)
            }
            let router = SequenceRouter(experts: N, hiddenSize: config.hiddenSize, table: g.data, topK: routed.config.topK,
                                        temperature: routed.config.temperature)
            let single = try routed.adapters.map { try prepare([($0, 1)], mode: .unmerged) }
            var set = AdapterSet(adapters: routed.adapters.map { AdapterWeight(name: $0.name, weight: 1) }, mode: .unmerged,
                                 modelID: ObjectIdentifier(self), linearFactors: [:], embedFactors: [], mergedLinear: [:],
                                 mergedEmbed: nil, maxRank: single.map(\.maxRank).max() ?? 0, routed: nil)
            set.sequence = SequenceRouting(router: router, adapters: routed.adapters, single: single)
            return set
        }
        let perExpert = try expertFactors(routed.adapters)
        var linears: [Int: RoutedLinear] = [:]
        if routed.config.gate == .xlora {
            let where_ = routed.sourcePath ?? RouterConfig.gatesFileName
            guard let g = routed.gates[XLoRAClassifier.tensorName], routed.gates.count == 1 else {
                throw RoutedModelError.badConfig(path: where_, field: "gate",
                                                 reason: "is 'xlora' but router.safetensors does not hold exactly '\(XLoRAClassifier.tensorName).gate'")
            }
            let want = [layerCount * N, config.hiddenSize + 1]
            guard g.shape == want else {
                throw RoutedModelError.gateShape(path: RouterConfig.gatesFileName, tensor: XLoRAClassifier.tensorName + ".gate", expected: want, actual: g.shape)
            }
            // The projections of the placement that some adapter touches; each layer's share
            // the layer's scalings.
            for id in RouterBuilder.routedIDs(layers: layerCount, placement: routed.config.placement, factors: perExpert) {
                linears[id] = RoutedLinear.stacking(perExpert, id: id, linear: base.linears[id], gate: [], kind: .xlora)
            }
            let classifier = XLoRAClassifier(layers: layerCount, experts: N, hiddenSize: config.hiddenSize, table: g.data,
                                             topK: routed.config.topK, temperature: routed.config.temperature)
            let fixed = try fixedFactors(routed, at: linears.keys)
            let maxRank = (perExpert.flatMap(\.values) + fixed.values.flatMap { $0 }).map(\.rank).max() ?? 0
            return AdapterSet(adapters: routed.adapters.map { AdapterWeight(name: $0.name, weight: 1) }, mode: .unmerged,
                              modelID: ObjectIdentifier(self), linearFactors: fixed, embedFactors: [], mergedLinear: [:],
                              mergedEmbed: nil, maxRank: maxRank,
                              routed: RoutedLayers(linears: linears, policy: routed.policy, expertNames: routed.adapters.map(\.name),
                                                   xlora: classifier))
        }
        for (module, g) in routed.gates {
            guard case let .linear(id)? = target(of: module), id != LlamaWeights.lmHeadID(layers: layerCount) else {
                throw RoutedModelError.unknownGate(path: RouterConfig.gatesFileName, tensor: module + ".gate")
            }
            let lw = base.linears[id]
            guard g.rows == N, g.cols == lw.inFeatures else {
                throw RoutedModelError.gateShape(path: RouterConfig.gatesFileName, tensor: module + ".gate",
                                                 expected: [N, lw.inFeatures], actual: g.shape)
            }
            guard let r = RoutedLinear.stacking(perExpert, id: id, linear: lw, gate: g.data, kind: routed.config.gate) else {
                continue   // no expert touches this projection
            }
            linears[id] = r
        }
        let fixed = try fixedFactors(routed, at: linears.keys)
        let maxRank = (perExpert.flatMap(\.values) + fixed.values.flatMap { $0 }).map(\.rank).max() ?? 0
        return AdapterSet(adapters: routed.adapters.map { AdapterWeight(name: $0.name, weight: 1) }, mode: .unmerged,
                          modelID: ObjectIdentifier(self), linearFactors: fixed, embedFactors: [], mergedLinear: [:],
                          mergedEmbed: nil, maxRank: maxRank,
                          routed: RoutedLayers(linears: linears, policy: routed.policy, expertNames: routed.adapters.map(\.name)))
    }

    /// `routed.fixed`'s factors at the routed projections `ids` (none elsewhere: like the experts,
    /// it is not applied outside the router's placement).
    private func fixedFactors(_ routed: RoutedModel, at ids: Dictionary<Int, RoutedLinear>.Keys) throws -> [Int: [LoRAFactors]] {
        guard let f = routed.fixed else { return [:] }
        return try prepare([(f, 1)], mode: .unmerged).linearFactors.filter { ids.contains($0.key) }
    }

    /// Each adapter checked as `prepare(_:mode:)` checks it, as its factors per linear id; an
    /// embedding LoRA is refused (no per-token gate can route it). Shared by the gate fitters and
    /// `prepare(routed:)`.
    func expertFactors(_ adapters: [LoRAAdapter]) throws -> [[Int: LoRAFactors]] {
        try adapters.map { a in
            try a.requireDense("routing it as one expert")
            for m in a.moduleNames where a.modules[m]!.kind == .embedding {
                throw RoutedModelError.embeddingNotRoutable(adapter: a.name, module: m)
            }
            // An adapter naming one module twice (two spellings) adds both, as prepare does.
            return try prepare([(a, 1)], mode: .unmerged).linearFactors.mapValues { $0.count == 1 ? $0[0] : Self.concatenated($0) }
        }
    }

    /// Several factor pairs on one module as one pair of rank Σr (coefficients folded into B).
    static func concatenated(_ fs: [LoRAFactors]) -> LoRAFactors {
        let out = fs[0].B.count / fs[0].rank
        let R = fs.reduce(0) { $0 + $1.rank }
        var B = [Float](repeating: 0, count: out * R)
        var col = 0
        for f in fs {
            for o in 0..<out { for j in 0..<f.rank { B[o * R + col + j] = f.coef * f.B[o * f.rank + j] } }
            col += f.rank
        }
        return LoRAFactors(A: fs.flatMap(\.A), B: B, rank: R, coef: 1)
    }
}
