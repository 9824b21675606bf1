/// What a LoRA module is attached to. Embedding LoRA keeps PEFT's factor layout
/// (`lora_embedding_A` is (r, num_embeddings), `lora_embedding_B` is (dim, r)), so `B·A` is the
/// transpose of the embedding table's update; fusion methods do not care, writers do.
public enum LoRAModuleKind: String, Sendable, Codable {
    case linear
    case embedding
}

/// One adapted module: ΔW = scale · B · A.
public struct LoRAModule: Sendable {
    public var A: Matrix          // (r, in)
    public var B: Matrix          // (out, r)
    /// The adapter's scaling for this module: α/r, or α/√r with rsLoRA.
    public var scale: Float
    public var kind: LoRAModuleKind
    /// FlyLoRA's per-token choice of ranks (nil: every rank, a plain LoRA). A gated module's
    /// update depends on the token, so `delta()` is not what it applies: see `RankGate`.
    public var rankGate: RankGate?

    public init(A: Matrix, B: Matrix, scale: Float, kind: LoRAModuleKind = .linear, rankGate: RankGate? = nil) {
        precondition(A.rows == B.cols, "LoRA rank mismatch: A is \(A.shape), B is \(B.shape)")
        precondition(rankGate.map { $0.rank == A.rows } ?? true, "rank gate of \(rankGate?.rank ?? 0) ranks on a rank-\(A.rows) module")
        self.A = A
        self.B = B
        self.scale = scale
        self.kind = kind
        self.rankGate = rankGate
    }

    public var rank: Int { A.rows }
    public var inFeatures: Int { A.cols }
    public var outFeatures: Int { B.rows }
    /// Shape of ΔW = B·A as (out, in).
    public var deltaShape: [Int] { [B.rows, A.cols] }
    public var parameterCount: Int { A.count + B.count }

    /// The dense update scale · B · A, (out, in). O(out·in) memory: only for one module at a time.
    public func delta() -> Matrix {
        var d = B.matmul(A)
        d.scale(by: scale)
        return d
    }

    /// ‖scale · B · A‖_F from the factors: sqrt(trace((BᵀB)(AAᵀ))), O((out + in)·r²).
    public var deltaNorm: Double {
        let btb = B.matmul(B, transposeSelf: true)   // (r, r)
        let aat = A.matmul(A, transposeOther: true)  // (r, r)
        var tr = 0.0
        for i in 0..<rank { for j in 0..<rank { tr += Double(btb[i, j]) * Double(aat[j, i]) } }
        return abs(Double(scale)) * max(tr, 0).squareRoot()
    }

    /// The same update with the scale folded into B, so that ΔW = B·A.
    public func foldingScale() -> LoRAModule {
        LoRAModule(A: A, B: B.scaled(by: scale), scale: 1, kind: kind, rankGate: rankGate)
    }
}

/// Frobenius inner product ⟨ΔW_a, ΔW_b⟩ from the factors, never forming either matrix:
/// trace((B_aᵀ B_b)(A_b A_aᵀ)) · s_a · s_b.
public func deltaInnerProduct(_ a: LoRAModule, _ b: LoRAModule) -> Double {
    let bb = a.B.matmul(b.B, transposeSelf: true)      // (ra, rb)
    let aa = b.A.matmul(a.A, transposeOther: true)     // (rb, ra)
    var tr = 0.0
    for i in 0..<a.rank { for j in 0..<b.rank { tr += Double(bb[i, j]) * Double(aa[j, i]) } }
    return tr * Double(a.scale) * Double(b.scale)
}

/// A whole adapter in memory, independent of the file format it came from.
public struct LoRAAdapter: Sendable {
    /// Display name (the directory name for a PEFT adapter).
    public var name: String
    /// Module name (e.g. `base_model.model.model.layers.0.self_attn.q_proj`) to its factors.
    public var modules: [String: LoRAModule]
    /// Settings that travel with the adapter (base model, task type, targets …).
    public var metadata: AdapterMetadata
    /// Tensors that are not LoRA factors but belong to the adapter (PEFT `modules_to_save`),
    /// carried through unchanged by fusion when all inputs agree.
    public var extraTensors: [String: Matrix]
    /// Element type of the file it was read from.
    public var sourceDType: DType
    public var sourcePath: String?

    public init(name: String, modules: [String: LoRAModule], metadata: AdapterMetadata = AdapterMetadata(),
                extraTensors: [String: Matrix] = [:], sourceDType: DType = .f32, sourcePath: String? = nil) {
        self.name = name
        self.modules = modules
        self.metadata = metadata
        self.extraTensors = extraTensors
        self.sourceDType = sourceDType
        self.sourcePath = sourcePath
    }

    /// Module names in a stable, human order (layer numbers compared as numbers).
    public var moduleNames: [String] { modules.keys.sorted(by: naturalLess) }

    public var parameterCount: Int { modules.values.reduce(0) { $0 + $1.parameterCount } }
}

/// Format-independent adapter settings. PEFT's `adapter_config.json` maps onto this; unknown
/// keys of the original config are kept in `peftExtra` and written back unchanged.
public struct AdapterMetadata: Sendable {
    public var baseModel: String?
    public var taskType: String?
    public var targetModules: [String] = []
    public var fanInFanOut: Bool = false
    public var useRSLoRA: Bool = false
    /// Default rank and alpha as written in the config (modules may differ via patterns).
    public var rank: Int = 0
    public var alpha: Double = 0
    public var rankPattern: [String: Int] = [:]
    public var alphaPattern: [String: Double] = [:]
    public var layersToTransform: [Int]? = nil
    public var modulesToSave: [String]? = nil
    /// Original shapes of `LoRAAdapter.extraTensors` (a `Matrix` flattens 1-D and >2-D tensors),
    /// so writers can restore e.g. a bias of shape [n] instead of [1, n].
    public var extraTensorShapes: [String: [Int]] = [:]
    /// Remaining JSON of the source config, as serialized JSON text per key.
    public var peftExtra: [String: String] = [:]
    /// FlyLoRA's config (the authors' PEFT fork): ranks kept per token (`top_k`) and the rate of
    /// the balancing bias's update (`bias_u`). nil for a plain LoRA.
    public var topK: Int? = nil
    public var biasRate: Double? = nil
    /// LoRAMoE's config (the authors' PEFT fork): experts per module (`lora_nums`; `rank` is then
    /// one expert's) and the balancing constraint it was trained with (`blc_alpha`, `blc_weight`).
    public var experts: Int? = nil
    public var blcAlpha: Double? = nil
    public var blcWeight: Double? = nil
    /// MixLoRA's config (the authors' `mixlora` package): the load-balance coefficient it was
    /// trained with (`router_aux_loss_coef`); `experts` and `topK` hold num_experts and top_k.
    public var routerAuxLoss: Double? = nil

    public init() {}
}

/// "layers.10" after "layers.9": compares digit runs numerically.
public func naturalLess(_ a: String, _ b: String) -> Bool {
    var ia = a.unicodeScalars.makeIterator(), ib = b.unicodeScalars.makeIterator()
    var ca = ia.next(), cb = ib.next()
    while let x = ca, let y = cb {
        let dx = ("0"..."9").contains(x), dy = ("0"..."9").contains(y)
        if dx && dy {
            var nx = 0, ny = 0
            var c1: Unicode.Scalar? = x
            while let c = c1, ("0"..."9").contains(c) { nx = nx &* 10 &+ Int(c.value - 48); c1 = ia.next() }
            var c2: Unicode.Scalar? = y
            while let c = c2, ("0"..."9").contains(c) { ny = ny &* 10 &+ Int(c.value - 48); c2 = ib.next() }
            if nx != ny { return nx < ny }
            ca = c1; cb = c2
            continue
        }
        if x != y { return x.value < y.value }
        ca = ia.next(); cb = ib.next()
    }
    return ca == nil && cb != nil
}
