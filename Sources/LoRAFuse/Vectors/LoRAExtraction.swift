import Foundation

/// Per-module result of `LoRAExtraction`.
public struct ExtractedModuleReport: Codable, Sendable, Equatable {
    public var module: String
    public var tensor: String
    public var shape: [Int]
    public var rank: Int
    /// Σ_{i<r} S_i² / ‖τ‖_F² (1 for τ = 0).
    public var retainedEnergy: Double
    /// ‖τ‖_F.
    public var deltaNorm: Double
    /// `svd` (exact LAPACK) or `randomized`.
    public var method: String
}

/// Extracts a LoRA adapter from a fine-tuned checkpoint: for every targeted 2-D linear weight,
/// τ = W_tuned − W_base (Float32) and a truncated SVD τ ≈ U_r·diag(S_r)·Vh_r.
///
/// Factor convention (the same as mergekit-extract-lora): A = diag(√S_r)·Vh_r (r, in),
/// B = U_r·diag(√S_r) (out, r), so B·A = U_r S_r Vh_r and both factors carry the same norm. The
/// adapter is written with lora_alpha = r for every module (default r = the most common rank,
/// other ranks through rank_pattern / alpha_pattern) so PEFT's scale α/r is exactly 1.
///
/// Rank rules: `.rank(R)` keeps min(R, min(out, in)) directions, dropping directions with
/// S_i ≤ 1e-6·S_0 (numerically zero, as mergekit drops S ≤ ε); `.energy(E)` keeps the smallest
/// r with Σ_{i<r} S_i² ≥ E·‖τ‖_F². On the randomized path (min(out, in) > `randomizedAbove`) the
/// total energy is ‖τ‖_F² computed directly from τ, and the sketch rank is doubled until the
/// leading values reach E (Halko, Martinsson & Tropp 2011, with power iterations for the flat
/// spectra of fine-tuning deltas).
public enum LoRAExtraction {
    public enum RankRule: Sendable, Equatable {
        case rank(Int)
        case energy(Double)
    }

    public struct Options: Sendable {
        public var rule: RankRule
        /// Module types (last name component before `.weight`, e.g. `q_proj`); nil: every `*_proj`.
        public var targets: [String]?
        /// Matrices whose smaller side exceeds this use the randomized SVD.
        public var randomizedAbove: Int
        public var powerIterations: Int
        public var seed: UInt64
        public var progress: (@Sendable (Int, Int) -> Void)?

        public init(rule: RankRule, targets: [String]? = nil, randomizedAbove: Int = 512, powerIterations: Int = 4,
                    seed: UInt64 = 0, progress: (@Sendable (Int, Int) -> Void)? = nil) {
            self.rule = rule
            self.targets = targets
            self.randomizedAbove = randomizedAbove
            self.powerIterations = powerIterations
            self.seed = seed
            self.progress = progress
        }
    }

    public struct Result: Sendable {
        public var adapter: LoRAAdapter
        public var modules: [ExtractedModuleReport]
        public var skipped: [SkippedTensor]
    }

    /// Whether `tensor` (e.g. `model.layers.3.mlp.down_proj.weight`) is a targeted linear weight.
    static func isTarget(_ tensor: String, targets: [String]?) -> Bool {
        guard tensor.hasSuffix(".weight") else { return false }
        let parts = tensor.dropLast(".weight".count).split(separator: ".")
        guard let last = parts.last else { return false }
        if let t = targets { return t.contains(String(last)) }
        // Default: the projections inside transformer layers.
        return last.hasSuffix("_proj") && parts.contains(where: { $0 == "layers" || $0 == "h" || $0 == "blocks" })
    }

    public static func extract(base basePath: String, tuned tunedPath: String, options: Options) throws -> Result {
        let base = try HFCheckpoint(path: basePath)
        let tuned = try HFCheckpoint(path: tunedPath)
        var skipped: [SkippedTensor] = []
        var work: [String] = []
        for n in base.names where isTarget(n, targets: options.targets) {
            let ib = base.infos[n]!
            guard let it = tuned.infos[n] else {
                skipped.append(SkippedTensor(name: n, reason: "missing-in-tuned", detail: "only in \(basePath)"))
                continue
            }
            guard ib.floatType != nil, it.floatType != nil else {
                skipped.append(SkippedTensor(name: n, reason: "non-float", detail: "dtypes \(ib.dtype), \(it.dtype)"))
                continue
            }
            guard ib.shape.count == 2 else {
                skipped.append(SkippedTensor(name: n, reason: "not-2d", detail: "shape \(ib.shape)"))
                continue
            }
            guard ib.shape == it.shape else {
                skipped.append(SkippedTensor(name: n, reason: "shape-mismatch", detail: "\(ib.shape) in base, \(it.shape) in tuned"))
                continue
            }
            work.append(n)
        }
        guard !work.isEmpty else {
            throw CheckpointError.nothingMatched(first: tunedPath, second: basePath, firstCount: tuned.names.count, secondCount: base.names.count)
        }
        var rng = SeededRNG(seed: options.seed)
        var modules: [String: LoRAModule] = [:]
        var reports: [ExtractedModuleReport] = []
        var wb: [Float] = [], wt: [Float] = [], scratch: [UInt8] = []
        var dtype: DType = .f32
        for (k, n) in work.enumerated() {
            let info = base.infos[n]!
            dtype = tuned.infos[n]!.floatType!
            try tuned.readFloats(n, into: &wt, scratch: &scratch)
            try base.readFloats(n, into: &wb, scratch: &scratch)
            BLAS.axpy(count: wt.count, alpha: -1, x: wb, y: &wt)
            let tau = Matrix(rows: info.shape[0], cols: info.shape[1], data: wt)   // (out, in)
            let (module, report) = try factorize(tau, rule: options.rule, randomizedAbove: options.randomizedAbove,
                                                 powerIterations: options.powerIterations, rng: &rng)
            let name = ModuleAddress.peftPrefix + String(n.dropLast(".weight".count))
            var rep = report
            rep.module = name
            rep.tensor = n
            reports.append(rep)
            if let m = module { modules[name] = m }
            wt = []   // the matrix took the buffer; start a fresh one
            options.progress?(k + 1, work.count)
        }
        var meta = AdapterMetadata()
        meta.baseModel = base.displayName
        meta.taskType = "CAUSAL_LM"
        meta.rank = 0   // makes PEFTAdapter.write fold scales and emit r = α patterns
        let adapter = LoRAAdapter(name: (tunedPath as NSString).lastPathComponent, modules: modules, metadata: meta,
                                  sourceDType: dtype)
        return Result(adapter: adapter, modules: reports, skipped: skipped)
    }

    /// Truncated factorization of one τ (out, in). Returns nil for the module when τ = 0.
    public static func factorize(_ tau: Matrix, rule: RankRule, randomizedAbove: Int = 512, powerIterations: Int = 4,
                                 rng: inout SeededRNG) throws -> (LoRAModule?, ExtractedModuleReport) {
        let minDim = min(tau.rows, tau.cols)
        var total = 0.0
        for v in tau.data { total += Double(v) * Double(v) }
        func report(_ r: Int, _ kept: Double, _ method: String) -> ExtractedModuleReport {
            ExtractedModuleReport(module: "", tensor: "", shape: tau.shape, rank: r,
                                  retainedEnergy: total == 0 ? 1 : min(kept / total, 1), deltaNorm: total.squareRoot(), method: method)
        }
        if total == 0 || minDim == 0 { return (nil, report(0, 0, "svd")) }

        let useRandom = minDim > randomizedAbove
        var svd: SVDResult
        var r: Int
        switch rule {
        case let .rank(R):
            let want = min(R, minDim)
            if useRandom {
                svd = try Linalg.randomizedSVD(tau, rank: want, oversample: max(16, want / 4),
                                               powerIterations: powerIterations, rng: &rng)
            } else {
                svd = try Linalg.svd(tau)
            }
            r = want
        case let .energy(E):
            if useRandom {
                var k = min(32, minDim)
                while true {
                    svd = try Linalg.randomizedSVD(tau, rank: k, oversample: max(16, k / 4),
                                                   powerIterations: powerIterations, rng: &rng)
                    let kept = svd.S.reduce(0.0) { $0 + Double($1) * Double($1) }
                    if kept >= E * total - 1e-12 * total || k >= minDim { break }
                    k = min(2 * k, minDim)
                }
            } else {
                svd = try Linalg.svd(tau)
            }
            // Smallest r whose leading energy reaches E of the directly computed total.
            var acc = 0.0
            r = svd.S.count
            for (i, s) in svd.S.enumerated() {
                acc += Double(s) * Double(s)
                if acc >= E * total - 1e-12 * total { r = i + 1; break }
            }
        }
        // Drop numerically zero directions.
        let s0 = svd.S.first ?? 0
        r = min(r, svd.S.count, svd.S.prefix { $0 > s0 * 1e-6 }.count)
        if r == 0 { return (nil, report(0, 0, useRandom ? "randomized" : "svd")) }
        let t = svd.truncated(to: r)
        let root = t.S.map { $0.squareRoot() }
        let A = t.Vt.scalingRows(by: root)       // (r, in)
        let B = t.U.scalingColumns(by: root)     // (out, r)
        let kept = t.S.reduce(0.0) { $0 + Double($1) * Double($1) }
        return (LoRAModule(A: A, B: B, scale: 1), report(r, kept, useRandom ? "randomized" : "svd"))
    }

    /// Extracts and writes the adapter in `format` (PEFT by default). `hints` serve the GGUF writer
    /// (architecture and q/k head counts); when they lack head counts, the base's own config is used.
    @discardableResult
    public static func extract(base: String, tuned: String, output: String, format: AdapterFormat = .peft,
                               dtype: DType? = nil, hints: ModelHints = ModelHints(), force: Bool = false,
                               options: Options) throws -> Result {
        try AdapterIO.checkOutput(output, format: format, inputs: [base, tuned], force: force)
        let res = try extract(base: base, tuned: tuned, options: options)
        guard !res.adapter.modules.isEmpty else {
            throw CheckpointError.unsupported(what: tuned, reason: "every targeted weight equals the base's; there is no LoRA to extract")
        }
        var h = hints
        if h.heads == nil, let fromBase = try? ModelHints.load(path: base) { h = fromBase }
        try AdapterIO.write(res.adapter, to: output, format: format, dtype: dtype ?? res.adapter.sourceDType,
                            hints: h, protecting: [base, tuned], force: force)
        return res
    }
}
