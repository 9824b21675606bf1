import Foundation

// NOLA (Koohpayegani et al., "NOLA: Compressing LoRA using Linear Combination of Random Basis",
// ICLR 2024). Each module's factors are fixed random matrices mixed by trained coefficients:
//
//     A = A₀ + Σ_i α_i U_i      U_i (r, in),  i < k_A
//     B =      Σ_j β_j V_j      V_j (out, r), j < k_B
//     ΔW = s · B A              (s = α/r, or α/√r with rsLoRA, as LoRA)
//
// Only α (k_A) and β (k_B) per module are trained and stored; A₀, U and V are regenerated from the
// seed. A₀ is PEFT's LoRA initialisation (Kaiming-uniform, bound 1/√in, the same seeded streams as
// `LoRAParameters.initialize`) and β starts at 0, so a NOLA run starts exactly where LoRA does
// (ΔW = 0) and the first gradient reaches β through A₀, as in the authors' LLaMA code.
// Basis entries are uniform(−1, 1)/√k, as there.
//
// One difference from the paper, for CPU memory: the basis of a projection is shared by all its
// layers (every layer keeps its own coefficients). The authors regenerate a basis per layer on the
// GPU in every step; kept per layer here it would take k·Σ(r·in + out·r) floats per layer (2.5 GB
// for SmolLM2 at k = 256), regenerated it would cost more than the step itself. Shared, it is
// 83 MB (166 MB at the CLI's default k = 512), and a layer's update still lies in a random
// k-dimensional subspace of its factors. The stored size is the same either way.
//
// With the factors as a GEMM over the coefficients, per projection over its L layers:
//   A_all (L, r·in) = A₀_all + α (L, k_A) · U (k_A, r·in)
//   dα (L, k_A)     = dA_all (L, r·in) · Uᵀ
// and the same for β, V and B.

/// What a NOLA folder records besides its coefficients: everything needed to regenerate A₀, U and
/// V and to name the modules, without the base model.
public struct NOLAConfig: Codable, Equatable, Sendable {
    public static let currentFormat = "lorafuse-nola-1"
    public var format = NOLAConfig.currentFormat
    public var rank: Int
    public var alpha: Double
    public var rsLoRA: Bool
    public var basisA: Int
    public var basisB: Int
    /// Seed of A₀ and the bases (as a string: JSON numbers lose 64-bit integers in some readers).
    public var seed: String
    public var layers: Int
    /// PEFT target names (`q_proj`, …), in checkpoint order.
    public var targets: [String]
    /// Per target: [out, in] of the base weight.
    public var shapes: [String: [Int]]
    public var baseModel: String?

    enum CodingKeys: String, CodingKey {
        case format, rank, alpha = "lora_alpha", rsLoRA = "use_rslora", basisA = "num_basis_A", basisB = "num_basis_B"
        case seed, layers = "num_layers", targets = "target_modules", shapes, baseModel = "base_model_name_or_path"
    }

    public init(rank: Int, alpha: Double, rsLoRA: Bool, basisA: Int, basisB: Int, seed: UInt64, layers: Int,
                targets: [Projection], shapes: [Projection: (out: Int, in: Int)], baseModel: String?) {
        self.rank = rank; self.alpha = alpha; self.rsLoRA = rsLoRA; self.basisA = basisA; self.basisB = basisB
        self.seed = "\(seed)"; self.layers = layers
        self.targets = targets.map(\.peftName)
        self.shapes = Dictionary(uniqueKeysWithValues: targets.map { ($0.peftName, [shapes[$0]!.out, shapes[$0]!.in]) })
        self.baseModel = baseModel
    }

    /// Checks every field before a basis is generated from it; the first bad field is reported.
    func validated(path: String) throws -> (seed: UInt64, targets: [Projection], shapes: [Projection: (out: Int, in: Int)]) {
        func bad(_ f: String, _ want: String, _ got: String) -> NOLAError { .badField(path: path, field: f, expected: want, actual: got) }
        guard format == Self.currentFormat else { throw bad("format", Self.currentFormat, format) }
        guard (1...4096).contains(rank) else { throw bad("rank", "1…4096", "\(rank)") }
        guard alpha.isFinite && alpha > 0 else { throw bad("lora_alpha", "a finite value > 0", "\(alpha)") }
        for (f, k) in [("num_basis_A", basisA), ("num_basis_B", basisB)] where !(1...65_536).contains(k) {
            throw bad(f, "1…65536", "\(k)")
        }
        guard let s = UInt64(seed) else { throw bad("seed", "an unsigned 64-bit integer as a string", seed) }
        guard (1...100_000).contains(layers) else { throw bad("num_layers", "1…100000", "\(layers)") }
        guard !targets.isEmpty else { throw bad("target_modules", "at least one projection", "none") }
        var ts: [Projection] = [], sh: [Projection: (out: Int, in: Int)] = [:]
        for name in targets {
            guard let t = Projection.allCases.first(where: { $0.peftName == name }), !ts.contains(t) else {
                throw bad("target_modules", "distinct names of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj", name)
            }
            guard let d = shapes[name], d.count == 2, (1...1_000_000).contains(d[0]), (1...1_000_000).contains(d[1]) else {
                throw bad("shapes.\(name)", "[out, in], each 1…1000000", shapes[name].map { "\($0)" } ?? "missing")
            }
            // The basis is generated in memory: refuse sizes no machine holds before allocating.
            let floats = basisA * rank * d[1] + basisB * d[0] * rank
            guard floats <= 1 << 30 else {
                throw bad("num_basis_A/num_basis_B", "a basis of at most 2³⁰ values per projection", "\(floats) for \(name)")
            }
            ts.append(t); sh[t] = (d[0], d[1])
        }
        return (s, ts.sorted { $0.index < $1.index }, sh)
    }
}

public enum NOLAError: Error, CustomStringConvertible, Equatable {
    case badField(path: String, field: String, expected: String, actual: String)
    case badTensor(path: String, tensor: String, reason: String)

    public var description: String {
        switch self {
        case let .badField(p, f, e, a): return "NOLA adapter \(p): \(f): expected \(e), found \(a)"
        case let .badTensor(p, t, r): return "NOLA adapter \(p): tensor '\(t)': \(r)"
        }
    }
}

/// A NOLA adapter: the fixed parts regenerated from the seed, and the trained coefficients.
public final class NOLAVariant: TrainingVariant {
    public static let configFile = "nola_config.json"
    public static let weightsFile = "nola_coefficients.safetensors"

    public let name = "nola"
    public let config: NOLAConfig
    public let seed: UInt64
    public let targets: [Projection]
    let shapes: [Projection: (out: Int, in: Int)]
    /// Per target: U (k_A, r·in) and V (k_B, out·r), shared by the target's layers.
    private var basisA: [Projection: [Float]] = [:]
    private var basisB: [Projection: [Float]] = [:]
    /// Per target: A₀ of every layer, (L, r·in).
    private var initA: [Projection: [Float]] = [:]
    /// Coefficients, one (L, k) matrix per target and factor, row l for layer l:
    /// `<target>.nola_A` (L, k_A) and `<target>.nola_B` (L, k_B) — the layout the GEMMs and the
    /// file both use.
    public var parameters = ParamSet()

    /// A fresh NOLA adapter for a model (all β = 0, α = 0: ΔW = 0).
    public convenience init(model c: LlamaConfig, options o: TrainingOptions, basisA: Int, basisB: Int, baseModel: String?) throws {
        guard basisA >= 1, basisB >= 1 else {
            throw TrainError.badOption(option: "nola-basis", reason: "must be ≥ 1, got \(min(basisA, basisB))")
        }
        let all = LlamaWeights.linearShapes(c)
        var shapes: [Projection: (out: Int, in: Int)] = [:]
        for t in o.targets { let s = all[LlamaWeights.linearID(layer: 0, t)]; shapes[t] = (s.out, s.in) }
        let cfg = NOLAConfig(rank: o.rank, alpha: o.alpha, rsLoRA: o.rsLoRA, basisA: basisA, basisB: basisB, seed: o.seed,
                             layers: c.numHiddenLayers, targets: o.targets, shapes: shapes, baseModel: baseModel)
        try self.init(config: cfg, coefficients: nil, path: "(the one being trained: --nola-basis \(basisA))")
    }

    /// From a config and its coefficients (nil: zeros), everything checked first.
    public init(config: NOLAConfig, coefficients: ParamSet?, path: String) throws {
        let v = try config.validated(path: path)
        self.config = config
        seed = v.seed; targets = v.targets; shapes = v.shapes
        let r = config.rank
        for t in targets {
            let (out, inF) = shapes[t]!
            basisA[t] = Self.basis(count: config.basisA, size: r * inF, seed: seed, stream: "nola.basis.A.\(t.rawValue)")
            basisB[t] = Self.basis(count: config.basisB, size: out * r, seed: seed, stream: "nola.basis.B.\(t.rawValue)")
            var a0: [Float] = []
            a0.reserveCapacity(config.layers * r * inF)
            for l in 0..<config.layers { a0 += LoRAParameters.peftInitA(seed: seed, layer: l, target: t, rank: r, inFeatures: inF) }
            initA[t] = a0
        }
        for t in targets {
            for (suffix, k) in [("nola_A", config.basisA), ("nola_B", config.basisB)] {
                let n = Self.tensorName(t, suffix), count = config.layers * k
                var vals = [Float](repeating: 0, count: count)
                if let c = coefficients {
                    guard let given = c.values[n] else { throw NOLAError.badTensor(path: path, tensor: n, reason: "missing") }
                    guard given.count == count else {
                        throw NOLAError.badTensor(path: path, tensor: n, reason: "has \(given.count) values, num_layers × num_basis is \(count)")
                    }
                    if let i = given.firstIndex(where: { !$0.isFinite }) {
                        throw NOLAError.badTensor(path: path, tensor: n, reason: "value \(i) is \(given[i])")
                    }
                    vals = given
                }
                parameters.add(n, shape: [config.layers, k], values: vals)
            }
        }
        if let c = coefficients, let extra = c.names.first(where: { parameters.values[$0] == nil }) {
            throw NOLAError.badTensor(path: path, tensor: extra, reason: "not a tensor of this config (expected \(parameters.names.joined(separator: ", ")))")
        }
    }

    /// k rows of uniform(−1, 1)/√k, row-major (k, size).
    static func basis(count k: Int, size: Int, seed: UInt64, stream: String) -> [Float] {
        var rng = SeededRNG(seed: seed, stream: stream)
        let s = 1 / Float(k).squareRoot()
        return (0..<(k * size)).map { _ in (2 * rng.nextUniform() - 1) * s }
    }

    /// `q_proj.nola_A`, …: the coefficients of one target and factor, in memory and in the file.
    static func tensorName(_ t: Projection, _ suffix: String) -> String { "\(t.peftName).\(suffix)" }

    public func factors() -> LoRAParameters {
        let r = config.rank, L = config.layers
        let scale = LoRAParameters.scale(rank: r, alpha: config.alpha, rsLoRA: config.rsLoRA)
        var byTarget: [Projection: (A: [Float], B: [Float])] = [:]
        for t in targets {
            let (out, inF) = shapes[t]!
            let alpha = parameters[Self.tensorName(t, "nola_A")], beta = parameters[Self.tensorName(t, "nola_B")]   // (L, k)
            var A = initA[t]!                                              // (L, r·in)
            BLAS.gemm(transA: false, transB: false, m: L, n: r * inF, k: config.basisA, alpha: 1,
                      a: alpha, lda: config.basisA, b: basisA[t]!, ldb: r * inF, beta: 1, c: &A, ldc: r * inF)
            var B = [Float](repeating: 0, count: L * out * r)              // (L, out·r)
            BLAS.gemm(transA: false, transB: false, m: L, n: out * r, k: config.basisB, alpha: 1,
                      a: beta, lda: config.basisB, b: basisB[t]!, ldb: out * r, beta: 0, c: &B, ldc: out * r)
            byTarget[t] = (A, B)
        }
        var mods: [TrainableLoRAModule] = []
        for l in 0..<L {
            for t in targets {
                let (out, inF) = shapes[t]!
                let f = byTarget[t]!
                mods.append(TrainableLoRAModule(layer: l, target: t, rank: r, inFeatures: inF, outFeatures: out, scale: scale,
                                                A: Array(f.A[(l * r * inF)..<((l + 1) * r * inF)]),
                                                B: Array(f.B[(l * out * r)..<((l + 1) * out * r)])))
            }
        }
        return LoRAParameters(modules: mods, rank: r, alpha: config.alpha, rsLoRA: config.rsLoRA, targets: targets)
    }

    public func parameterGradients(_ g: LoRAGradients) -> ParamSet {
        let r = config.rank, L = config.layers, T = targets.count
        precondition(g.dA.count == L * T, "NOLA: gradients of \(g.dA.count) modules, expected \(L * T)")
        var out = parameters.zeros()
        for (ti, t) in targets.enumerated() {
            let (o, inF) = shapes[t]!
            // Modules are in (layer, target) order: module l·T + ti.
            let dA = (0..<L).flatMap { g.dA[$0 * T + ti] }                 // (L, r·in)
            let dB = (0..<L).flatMap { g.dB[$0 * T + ti] }                 // (L, out·r)
            var dAlpha = [Float](repeating: 0, count: L * config.basisA)
            BLAS.gemm(transA: false, transB: true, m: L, n: config.basisA, k: r * inF, alpha: 1,
                      a: dA, lda: r * inF, b: basisA[t]!, ldb: r * inF, beta: 0, c: &dAlpha, ldc: config.basisA)
            var dBeta = [Float](repeating: 0, count: L * config.basisB)
            BLAS.gemm(transA: false, transB: true, m: L, n: config.basisB, k: o * r, alpha: 1,
                      a: dB, lda: o * r, b: basisB[t]!, ldb: o * r, beta: 0, c: &dBeta, ldc: config.basisB)
            out[Self.tensorName(t, "nola_A")] = dAlpha
            out[Self.tensorName(t, "nola_B")] = dBeta
        }
        return out
    }

    /// The coefficients, stored in F32: they are few, and rounding one moves every entry of its
    /// module's A or B.
    public var storedBytes: Int { parameters.count * 4 }

    /// The file holds `parameters` as they are: one (num_layers, k) tensor per target and factor
    /// (per-module tensors would spend a tenth of the file on header names).
    public func writeFiles(into dir: URL, name: String, baseModel: String?, path: String) throws {
        var cfg = config
        cfg.baseModel = baseModel ?? cfg.baseModel
        let tensors = parameters.names.map { SafetensorsTensor(name: $0, shape: parameters.shapes[$0]!, values: parameters[$0]) }
        try SafetensorsWriter.write(tensors: tensors, metadata: ["format": NOLAConfig.currentFormat], dtype: .f32,
                                    to: dir.appendingPathComponent(Self.weightsFile))
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try enc.encode(cfg) + Data("\n".utf8)
        try SafetensorsWriter.atomicWrite(to: dir.appendingPathComponent(Self.configFile)) { h in try h.write(contentsOf: data) }
    }

    // MARK: Reading

    public static func isNOLADirectory(_ path: String) -> Bool {
        FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(configFile))
    }

    /// Opens a NOLA folder written by `train --variant nola`.
    public static func open(directory: String) throws -> NOLAVariant {
        let cfgPath = (directory as NSString).appendingPathComponent(configFile)
        let wPath = (directory as NSString).appendingPathComponent(weightsFile)
        let cfg: NOLAConfig
        do {
            cfg = try JSONDecoder().decode(NOLAConfig.self, from: Data(contentsOf: URL(fileURLWithPath: cfgPath)))
        } catch let e as DecodingError {
            throw NOLAError.badField(path: cfgPath, field: Self.decodingField(e), expected: "a lorafuse NOLA config", actual: Self.decodingReason(e))
        }
        guard FileManager.default.fileExists(atPath: wPath) else {
            throw NOLAError.badTensor(path: wPath, tensor: "(file)", reason: "missing: a NOLA folder holds \(configFile) and \(weightsFile)")
        }
        // The config's own fields first, so a bad one is reported as itself, not as a tensor that
        // does not match it.
        _ = try cfg.validated(path: cfgPath)
        let f = try SafetensorsFile(path: wPath)
        // Shapes are checked here, where the file's own shape is known; names, counts and
        // finiteness by the initialiser.
        var coef = ParamSet()
        for n in f.names {
            let shape = try f.info(n).shape
            let isA = n.hasSuffix(".nola_A")
            if isA || n.hasSuffix(".nola_B") {
                let k = isA ? cfg.basisA : cfg.basisB
                guard shape == [cfg.layers, k] else {
                    throw NOLAError.badTensor(path: wPath, tensor: n, reason: "shape \(shape), expected [num_layers \(cfg.layers), \(isA ? "num_basis_A" : "num_basis_B") \(k)]")
                }
            }
            coef.add(n, shape: shape, values: try f.floats(n))
        }
        return try NOLAVariant(config: cfg, coefficients: coef, path: directory)
    }

    /// A NOLA folder as the LoRA adapter it stands for (A and B materialised), for every reader.
    public static func read(directory: String) throws -> LoRAAdapter {
        let v = try open(directory: directory)
        var a = v.factors().adapter(name: (directory as NSString).lastPathComponent, baseModel: v.config.baseModel)
        a.sourcePath = directory
        return a
    }

    private static func decodingField(_ e: DecodingError) -> String {
        switch e {
        case let .keyNotFound(k, c): return (c.codingPath + [k]).map(\.stringValue).joined(separator: ".")
        case let .typeMismatch(_, c), let .valueNotFound(_, c), let .dataCorrupted(c):
            return c.codingPath.isEmpty ? "(file)" : c.codingPath.map(\.stringValue).joined(separator: ".")
        @unknown default: return "(file)"
        }
    }

    private static func decodingReason(_ e: DecodingError) -> String {
        switch e {
        case .keyNotFound: return "nothing"
        case let .typeMismatch(_, c), let .valueNotFound(_, c), let .dataCorrupted(c): return c.debugDescription
        @unknown default: return "\(e)"
        }
    }
}
