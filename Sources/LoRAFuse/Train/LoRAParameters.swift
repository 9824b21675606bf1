import Foundation

/// Errors of LoRA training.
public enum TrainError: Error, CustomStringConvertible, Equatable {
    case unknownTarget(String)
    case badAdapter(path: String, module: String, reason: String)
    case badData(file: String, reason: String)
    case badCheckpoint(path: String, field: String, expected: String, actual: String)
    case badOption(option: String, reason: String)

    public var description: String {
        switch self {
        case .unknownTarget(let t):
            return "train: unknown LoRA target '\(t)' (expected q, k, v, o, gate, up, down)"
        case let .badAdapter(path, module, reason):
            return "train: adapter \(path): module '\(module)': \(reason)"
        case let .badData(file, reason):
            return "train: data \(file): \(reason)"
        case let .badCheckpoint(path, field, expected, actual):
            return "train: checkpoint \(path): \(field): expected \(expected), found \(actual)"
        case let .badOption(option, reason):
            return "train: \(option): \(reason)"
        }
    }
}

/// One trainable LoRA pair on a projection: y = x Wᵀ + scale · (x Aᵀ) Bᵀ.
public struct TrainableLoRAModule: Sendable {
    public let layer: Int
    public let target: Projection
    public let rank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    public var scale: Float
    public var A: [Float]      // (r, in)
    public var B: [Float]      // (out, r)
    /// FlyLoRA: the ranks each token keeps (nil: all).
    public var rankGate: RankGate? = nil
    /// False when A is fixed (FlyLoRA's router): the backward pass skips dA.
    public var trainsA = true

    /// PEFT module name, e.g. `base_model.model.model.layers.3.self_attn.q_proj`.
    public var name: String { ModuleAddress.projection(layer: layer, target).peft }
    var linearID: Int { LlamaWeights.linearID(layer: layer, target) }
}

/// All trainable LoRA parameters of a model, in (layer, target) order, plus the hyper-parameters
/// a PEFT `adapter_config.json` records.
public struct LoRAParameters: Sendable {
    public var modules: [TrainableLoRAModule]
    public var rank: Int
    public var alpha: Double
    public var rsLoRA: Bool
    public var targets: [Projection]
    /// The layers that carry modules when not all of them do (PEFT's `layers_to_transform`;
    /// `--layers`, Flexora's selection).
    public var layers: [Int]?
    /// LoRAMoE: the localized balancing constraint the training passes add (nil: none).
    public var expertBalance: ExpertBalance?
    /// MixLoRA's auxiliary load-balance and z-loss coefficients (nil: not a MixLoRA run).
    public var mixtureLoss: MixtureLoss?

    /// PEFT scaling: α/r, or α/√r with rsLoRA (Kalajdzievski 2023).
    public static func scale(rank: Int, alpha: Double, rsLoRA: Bool) -> Float {
        Float(rsLoRA ? alpha / Double(rank).squareRoot() : alpha / Double(rank))
    }

    /// PEFT's default initialisation: A ~ kaiming_uniform_(a=√5), i.e. U(−1/√in, 1/√in)
    /// (gain √(2/(1+a²)) = √(1/3), bound = gain·√3/√fan_in = 1/√fan_in), and B = 0 so the adapter
    /// starts as the identity. Each module draws from its own seeded stream, so the values do not
    /// depend on which other targets (or layers) are trained. `layers` (nil: every layer) must lie
    /// in 0..<numHiddenLayers.
    public static func initialize(config c: LlamaConfig, rank: Int, alpha: Double, targets: [Projection],
                                  rsLoRA: Bool = false, seed: UInt64, layers: [Int]? = nil) -> LoRAParameters {
        let shapes = LlamaWeights.linearShapes(c)
        let s = scale(rank: rank, alpha: alpha, rsLoRA: rsLoRA)
        var mods: [TrainableLoRAModule] = []
        let chosen = layers.map(Set.init)
        for l in 0..<c.numHiddenLayers where chosen?.contains(l) ?? true {
            for t in Projection.allCases where targets.contains(t) {
                let sh = shapes[LlamaWeights.linearID(layer: l, t)]
                let A = peftInitA(seed: seed, layer: l, target: t, rank: rank, inFeatures: sh.in)
                mods.append(TrainableLoRAModule(layer: l, target: t, rank: rank, inFeatures: sh.in, outFeatures: sh.out,
                                                scale: s, A: A, B: [Float](repeating: 0, count: sh.out * rank)))
            }
        }
        var p = LoRAParameters(modules: mods, rank: rank, alpha: alpha, rsLoRA: rsLoRA, targets: targets)
        p.layers = chosen.map { $0.sorted() }
        return p
    }

    /// PEFT's initial A of one module (r, in), from its own seeded stream (shared with NOLA's A₀).
    static func peftInitA(seed: UInt64, layer l: Int, target t: Projection, rank: Int, inFeatures: Int) -> [Float] {
        var rng = SeededRNG(seed: seed, stream: "lora_A.\(l).\(t.rawValue)")
        let bound = 1 / Float(inFeatures).squareRoot()
        return (0..<(rank * inFeatures)).map { _ in (2 * rng.nextUniform() - 1) * bound }
    }

    /// Trainable copies of an adapter's factors (for continuing training or checking gradients
    /// against a peer). Only linear LoRA on the seven layer projections is accepted.
    public init(adapter: LoRAAdapter, config c: LlamaConfig) throws {
        let path = adapter.sourcePath ?? adapter.name
        let shapes = LlamaWeights.linearShapes(c)
        var mods: [TrainableLoRAModule] = []
        var targets: Set<Projection> = []
        for name in adapter.moduleNames {
            let m = adapter.modules[name]!
            guard m.kind == .linear, case let .projection(l, t)? = ModuleAddress(peft: name), l < c.numHiddenLayers else {
                throw TrainError.badAdapter(path: path, module: name, reason: "only LoRA on a layer's q/k/v/o/gate/up/down projection can be trained")
            }
            let sh = shapes[LlamaWeights.linearID(layer: l, t)]
            guard m.deltaShape == [sh.out, sh.in] else {
                throw TrainError.badAdapter(path: path, module: name, reason: "ΔW shape \(m.deltaShape), the model's weight is [\(sh.out), \(sh.in)]")
            }
            targets.insert(t)
            mods.append(TrainableLoRAModule(layer: l, target: t, rank: m.rank, inFeatures: sh.in, outFeatures: sh.out,
                                            scale: m.scale, A: m.A.data, B: m.B.data, rankGate: m.rankGate))
        }
        mods.sort { ($0.layer, $0.target.index) < ($1.layer, $1.target.index) }
        self.modules = mods
        self.rank = adapter.metadata.rank > 0 ? adapter.metadata.rank : (mods.first?.rank ?? 0)
        self.alpha = adapter.metadata.alpha
        self.rsLoRA = adapter.metadata.useRSLoRA
        self.targets = Projection.allCases.filter { targets.contains($0) }
        self.layers = adapter.metadata.layersToTransform
    }

    init(modules: [TrainableLoRAModule], rank: Int, alpha: Double, rsLoRA: Bool, targets: [Projection]) {
        self.modules = modules
        self.rank = rank
        self.alpha = alpha
        self.rsLoRA = rsLoRA
        self.targets = targets
    }

    public var parameterCount: Int { modules.reduce(0) { $0 + $1.A.count + $1.B.count } }

    /// The adapter as a `LoRAAdapter` (for `PEFTAdapter.write` or `LlamaModel.prepare`).
    public func adapter(name: String = "lora", baseModel: String? = nil) -> LoRAAdapter {
        var meta = AdapterMetadata()
        meta.baseModel = baseModel
        meta.taskType = "CAUSAL_LM"
        meta.targetModules = targets.map(\.peftName)
        meta.useRSLoRA = rsLoRA
        meta.rank = rank
        meta.alpha = alpha
        meta.layersToTransform = layers
        var mods: [String: LoRAModule] = [:]
        for m in modules {
            mods[m.name] = LoRAModule(A: Matrix(rows: m.rank, cols: m.inFeatures, data: m.A),
                                      B: Matrix(rows: m.outFeatures, cols: m.rank, data: m.B), scale: m.scale,
                                      rankGate: m.rankGate)
        }
        return LoRAAdapter(name: name, modules: mods, metadata: meta)
    }
}

/// Gradients of the loss with respect to every module's A and B, parallel to `LoRAParameters.modules`.
public struct LoRAGradients: Sendable {
    public var dA: [[Float]]   // per module (r, in)
    public var dB: [[Float]]   // per module (out, r)
    /// FlyLoRA: per module, the tokens of the accumulated batches that kept each rank (empty for
    /// modules without a rank gate). Not a gradient: the balancing bias's update reads it.
    public var rankCounts: [[Int]]
    /// SMoRA: per module, ∂L/∂W_g of its router (r, in); empty for modules without one.
    public var dRouter: [[Float]]

    public init(zerosLike p: LoRAParameters) {
        // A frozen (FlyLoRA) has no gradient: an empty array rather than a zero one never read.
        dA = p.modules.map { [Float](repeating: 0, count: $0.trainsA ? $0.A.count : 0) }
        dB = p.modules.map { [Float](repeating: 0, count: $0.B.count) }
        rankCounts = p.modules.map { $0.rankGate.map { [Int](repeating: 0, count: $0.experts) } ?? [] }
        dRouter = p.modules.map { [Float](repeating: 0, count: $0.rankGate?.router?.count ?? 0) }
    }

    /// dW_g (r, in) += dlᵀ (r, rows) · x (rows, in).
    mutating func addRouterGradient(_ dl: UnsafePointer<Float>, x: UnsafePointer<Float>, rows: Int, module i: Int, inFeatures nIn: Int) {
        let r = dRouter[i].count / nIn
        dRouter[i].withUnsafeMutableBufferPointer { d in
            BLAS.gemm(transA: true, transB: false, m: r, n: nIn, k: rows, alpha: 1, a: dl, lda: r,
                      b: x, ldb: nIn, beta: 1, c: d.baseAddress!, ldc: nIn)
        }
    }

    mutating func addRankCounts(_ c: [Int], module i: Int) {
        if rankCounts[i].isEmpty { rankCounts[i] = c } else { for j in c.indices { rankCounts[i][j] += c[j] } }
    }

    /// √(Σ g²) over every gradient, accumulated in Double.
    public var globalNorm: Double {
        var s = 0.0
        for g in dA + dB + dRouter { for v in g { s += Double(v) * Double(v) } }
        return s.squareRoot()
    }

    public mutating func scale(by f: Float) {
        for i in dA.indices { for j in dA[i].indices { dA[i][j] *= f } }
        for i in dB.indices { for j in dB[i].indices { dB[i][j] *= f } }
        for i in dRouter.indices { for j in dRouter[i].indices { dRouter[i][j] *= f } }
    }

    public mutating func zero() {
        for i in dA.indices { for j in dA[i].indices { dA[i][j] = 0 } }
        for i in dB.indices { for j in dB[i].indices { dB[i][j] = 0 } }
        for i in rankCounts.indices { for j in rankCounts[i].indices { rankCounts[i][j] = 0 } }
        for i in dRouter.indices { for j in dRouter[i].indices { dRouter[i][j] = 0 } }
    }
}

/// LoRAMoE's localized balancing constraint: `weight` (β) times CV² of the per-sequence expert
/// importance, the experts' groups weighted 1 ± `alpha` (δ) by example type. `scale` multiplies
/// the gradient only (the trainer's 1/micro-batches per step, so the constraint is a mean over
/// the step as the LM loss is).
public struct ExpertBalance: Sendable, Equatable {
    public var alpha: Float
    public var weight: Float
    public var scale: Float = 1

    public init(alpha: Float, weight: Float) {
        self.alpha = alpha
        self.weight = weight
    }
}
