import Foundation

// Fitting the gates of a routed model (`lorafuse route --method …`). Base and adapters stay frozen.
//
// arrow    training-free (Arrow, arXiv 2405.11157): per projection, expert i's gate row is the
//          top right singular vector of its ΔW = s B A, from the factors (productSVD: QR of both
//          factors and an r × r SVD, never the dense ΔW); score |cos(row, x)|.
// hidden   training-free (mergekit-moe "hidden" gates): row i = normalise(mean_i − mean), mean_i
//          the mean input of that projection over task i's shots run through the base model,
//          mean the mean of the mean_i; score row · x.
// meteora  MeteoRA's supervised routing loss (arXiv 2405.13053): each shot is run with its own
//          adapter applied, and every projection's gate G (N, in) learns, by AdamW on the
//          cross-entropy of softmax(G x) against the shot's task over every token, to name the
//          adapter the token belongs to; plus an optional Switch load-balance term
//          α · N · Σ_i f_i P_i (f_i: share of tokens whose top-1 is i, P_i: mean gate probability).
//          MeteoRA adds the LM loss of the routed model (weight 1 beside 50 for this term);
//          lorafuse does not yet backpropagate through the routed forward, so that term is absent.

public enum RouteMethod: String, CaseIterable, Sendable {
    case meteora, arrow, hidden

    public var needsShots: Bool { self != .arrow }
    public var gateKind: GateKind { self == .arrow ? .arrow : .linear }
}

public struct RouteOptions: Sendable, Equatable {
    public var method: RouteMethod
    public var topK = 2
    public var temperature: Float = 1
    public var placement: RoutePlacement = .all
    /// meteora: optimizer steps; each step runs one shot of every task.
    public var steps = 64
    public var learningRate: Float = 5e-3
    public var seed: UInt64 = 0
    /// meteora: weight of the Switch load-balance term (0: off, as in MeteoRA's code).
    public var balance: Float = 0
    /// Shots read from each task's file (the first N examples).
    public var shotsPerTask = 16
    /// meteora: which tokens carry the gate loss.
    public var supervise: GateSupervision = .all

    public init(method: RouteMethod) { self.method = method }
}

/// Which tokens of a shot teach the supervised gates its task.
public enum GateSupervision: String, CaseIterable, Sendable {
    /// Every token, as MeteoRA labels them. The chat template's shared tokens (system prompt, role
    /// markers) carry no task, so much of the loss is spent on rows no gate can tell apart.
    case all
    /// The rows that predict the answer (the last prompt row on): where routing decides the output.
    case answer
}

public enum RouteError: Error, CustomStringConvertible, Equatable {
    case shotsCount(adapters: Int, files: Int)
    case noShots(method: String)
    case emptyShots(file: String)
    case topK(k: Int, adapters: Int)
    case badOption(option: String, reason: String)
    case nothingToRoute(placement: String)
    case tooFewAdapters

    public var description: String {
        switch self {
        case let .shotsCount(a, f):
            return "\(a) adapters but \(f) shots files: give one --shots file per adapter, in the same order (its examples label that adapter's task)"
        case let .noShots(m): return "--method \(m) fits its gates on examples: give --shots FILE.jsonl for every adapter"
        case let .emptyShots(f): return "\(f): no examples to fit the gates on"
        case let .topK(k, n): return "--top-k \(k) is more than the \(n) adapters routed over"
        case let .badOption(o, r): return "\(o): \(r)"
        case let .nothingToRoute(p): return "no adapter has a LoRA on a projection of placement '\(p)'; nothing to route"
        case .tooFewAdapters: return "routing needs at least two adapters"
        }
    }
}

public enum RouterBuilder {
    /// Checks options against the inputs before any work.
    public static func validate(_ o: RouteOptions, adapters: Int, shots: Int) throws {
        guard adapters >= 2 else { throw RouteError.tooFewAdapters }
        guard o.topK >= 1 else { throw RouteError.badOption(option: "--top-k", reason: "must be at least 1") }
        guard o.topK <= adapters else { throw RouteError.topK(k: o.topK, adapters: adapters) }
        guard o.temperature.isFinite && o.temperature > 0 else { throw RouteError.badOption(option: "--temperature", reason: "must be > 0") }
        guard o.learningRate.isFinite && o.learningRate > 0 else { throw RouteError.badOption(option: "--lr", reason: "must be > 0") }
        guard o.steps >= 1 else { throw RouteError.badOption(option: "--steps", reason: "must be at least 1") }
        guard o.shotsPerTask >= 1 else { throw RouteError.badOption(option: "--shots-per-task", reason: "must be at least 1") }
        guard o.balance.isFinite && o.balance >= 0 else { throw RouteError.badOption(option: "--balance", reason: "must be ≥ 0") }
        if o.method.needsShots && shots == 0 { throw RouteError.noShots(method: o.method.rawValue) }
        if shots != 0 && shots != adapters { throw RouteError.shotsCount(adapters: adapters, files: shots) }
    }

    /// Fits the gates and returns the routed model (adapters in the given order).
    /// `progress(done, total)` is called as work completes.
    public static func build(model: LlamaModel, adapters: [LoRAAdapter], shots: [EvalTask], options o: RouteOptions,
                             baseName: String? = nil, progress: ((Int, Int) -> Void)? = nil) throws -> RoutedModel {
        try validate(o, adapters: adapters.count, shots: shots.count)
        let N = adapters.count
        // Every adapter checked against the model, and the projections some adapter touches.
        let factors = try model.expertFactors(adapters)
        let L = model.layerCount
        var routedIDs: [Int] = []
        for l in 0..<L {
            for p in Projection.allCases where o.placement.includes(p) {
                let id = LlamaWeights.linearID(layer: l, p)
                if factors.contains(where: { $0[id] != nil }) { routedIDs.append(id) }
            }
        }
        guard !routedIDs.isEmpty else { throw RouteError.nothingToRoute(placement: o.placement.rawValue) }
        var sequences: [[TrainingSequence]] = []
        for t in shots {
            let seqs = try TrainingData.sequences(EvalTask(name: t.name, path: t.path, examples: Array(t.examples.prefix(o.shotsPerTask))), model: model)
            guard !seqs.isEmpty else { throw RouteError.emptyShots(file: t.path ?? t.name) }
            sequences.append(seqs)
        }
        let gates: [Int: [Float]]
        var training: [String: String] = [:]
        switch o.method {
        case .arrow:
            gates = try arrowGates(model: model, factors: factors, ids: routedIDs, progress: progress)
        case .hidden:
            gates = try hiddenGates(model: model, sequences: sequences, ids: routedIDs, progress: progress)
            training["shots_per_task"] = String(o.shotsPerTask)
        case .meteora:
            gates = try meteoraGates(model: model, adapters: adapters, sequences: sequences, ids: routedIDs, options: o, progress: progress)
            training = ["steps": String(o.steps), "lr": String(o.learningRate), "seed": String(o.seed), "supervise": o.supervise.rawValue,
                        "balance": String(o.balance), "shots_per_task": String(o.shotsPerTask),
                        "loss": "gate cross-entropy against the task label (no LM term)"]
        }
        var named: [String: Matrix] = [:]
        for id in routedIDs {
            let (l, p) = (id / Projection.allCases.count, Projection.allCases[id % Projection.allCases.count])
            let name = ModuleAddress.projection(layer: l, p).hf
            named[name] = Matrix(rows: N, cols: model.base.linears[id].inFeatures, data: gates[id]!)
        }
        let config = RouterConfig(method: o.method.rawValue, gate: o.method.gateKind, topK: o.topK, temperature: o.temperature,
                                  placement: o.placement, base: RouterBase(config: model.config, name: baseName),
                                  adapters: adapters.map { RouterAdapterEntry(name: $0.name, path: $0.sourcePath ?? $0.name, sha256: "") },
                                  training: training)
        return RoutedModel(config: config, adapters: adapters, gates: named)
    }

    // MARK: arrow

    /// Expert i's row at projection id: the top right singular vector of s_i B_i A_i (unit), zero
    /// when it has no LoRA there. The sign does not matter (the score is |cos|).
    static func arrowGates(model: LlamaModel, factors: [[Int: LoRAFactors]], ids: [Int],
                           progress: ((Int, Int) -> Void)?) throws -> [Int: [Float]] {
        var gates: [Int: [Float]] = [:]
        for (n, id) in ids.enumerated() {
            let nIn = model.base.linears[id].inFeatures, nOut = model.base.linears[id].outFeatures
            var g = [Float](repeating: 0, count: factors.count * nIn)
            for (i, f) in factors.enumerated() {
                guard let f = f[id] else { continue }
                let svd = try Linalg.productSVD(left: Matrix(rows: nOut, cols: f.rank, data: f.B),
                                                right: Matrix(rows: f.rank, cols: nIn, data: f.A))
                let v = Array(svd.Vt.row(0))
                let norm = max(v.reduce(0) { $0 + $1 * $1 }.squareRoot(), 1e-12)
                for j in 0..<nIn { g[i * nIn + j] = v[j] / norm }
            }
            gates[id] = g
            progress?(n + 1, ids.count)
        }
        return gates
    }

    // MARK: hidden

    static func hiddenGates(model: LlamaModel, sequences: [[TrainingSequence]], ids: [Int],
                            progress: ((Int, Int) -> Void)?) throws -> [Int: [Float]] {
        let N = sequences.count
        let wanted = Set(ids)
        var sums: [Int: [Double]] = [:]       // (N, in) per id
        var counts = [Int](repeating: 0, count: N)
        let maxT = sequences.flatMap { $0 }.map(\.tokens.count).max() ?? 1
        let session = try model.makeLlamaSession(maxTokens: maxT)
        var task = 0
        session.linearInputObserver = { id, x, rows in
            guard wanted.contains(id) else { return }
            let nIn = model.base.linears[id].inFeatures
            var s = sums[id] ?? [Double](repeating: 0, count: N * nIn)
            for t in 0..<rows { for j in 0..<nIn { s[task * nIn + j] += Double(x[t * nIn + j]) } }
            sums[id] = s
        }
        let total = sequences.reduce(0) { $0 + $1.count }
        var done = 0
        for (i, seqs) in sequences.enumerated() {
            task = i
            for s in seqs {
                session.reset()
                _ = try session.feed(s.tokens, lastOnly: true)
                counts[i] += s.tokens.count
                done += 1
                progress?(done, total)
            }
        }
        var gates: [Int: [Float]] = [:]
        for id in ids {
            let nIn = model.base.linears[id].inFeatures
            let s = sums[id]!
            var means = [[Double]](repeating: [Double](repeating: 0, count: nIn), count: N)
            for i in 0..<N { for j in 0..<nIn { means[i][j] = s[i * nIn + j] / Double(max(counts[i], 1)) } }
            var mean = [Double](repeating: 0, count: nIn)
            for i in 0..<N { for j in 0..<nIn { mean[j] += means[i][j] / Double(N) } }
            var g = [Float](repeating: 0, count: N * nIn)
            for i in 0..<N {
                let d = (0..<nIn).map { means[i][$0] - mean[$0] }
                let norm = max(d.reduce(0) { $0 + $1 * $1 }.squareRoot(), 1e-12)
                for j in 0..<nIn { g[i * nIn + j] = Float(d[j] / norm) }
            }
            gates[id] = g
        }
        return gates
    }

    // MARK: meteora

    static func meteoraGates(model: LlamaModel, adapters: [LoRAAdapter], sequences: [[TrainingSequence]], ids: [Int],
                             options o: RouteOptions, progress: ((Int, Int) -> Void)?) throws -> [Int: [Float]] {
        let N = adapters.count
        let wanted = Set(ids)
        let sets = try adapters.map { try model.prepare([($0, 1)], mode: .unmerged) }
        var gates: [Int: [Float]] = [:], grads: [Int: [Float]] = [:], m: [Int: [Float]] = [:], v: [Int: [Float]] = [:]
        for id in ids {
            let n = N * model.base.linears[id].inFeatures
            gates[id] = [Float](repeating: 0, count: n)
            grads[id] = [Float](repeating: 0, count: n)
            m[id] = [Float](repeating: 0, count: n)
            v[id] = [Float](repeating: 0, count: n)
        }
        let maxT = sequences.flatMap { $0 }.map(\.tokens.count).max() ?? 1
        let session = try model.makeLlamaSession(maxTokens: maxT)
        var label = 0, tokens = 0, firstRow = 0
        session.linearInputObserver = { id, x, rows in
            guard wanted.contains(id) else { return }
            let nIn = model.base.linears[id].inFeatures
            // D (rows, N) = x · Gᵀ, then softmax per row; D ← dLoss/dlogits.
            var D = [Float](repeating: 0, count: rows * N)
            gates[id]!.withUnsafeBufferPointer { g in
                D.withUnsafeMutableBufferPointer { d in
                    BLAS.gemm(transA: false, transB: true, m: rows, n: N, k: nIn, alpha: 1, a: x, lda: nIn,
                              b: g.baseAddress!, ldb: nIn, beta: 0, c: d.baseAddress!, ldc: N)
                }
            }
            var topShare = [Float](repeating: 0, count: N)
            for t in 0..<rows {
                var mx = -Float.infinity
                for i in 0..<N { mx = max(mx, D[t * N + i]) }
                var z: Float = 0, best = 0
                for i in 0..<N { D[t * N + i] = expf(D[t * N + i] - mx); z += D[t * N + i] }
                for i in 0..<N { D[t * N + i] /= z; if D[t * N + i] > D[t * N + best] { best = i } }
                if t >= firstRow { topShare[best] += 1 / Float(max(rows - firstRow, 1)) }
            }
            // Per token: dCE/dlogit_i = p_i − [i = label]; the balance term adds α N p_i (f_i − Σ_k f_k p_k)
            // (f held fixed, as Switch does: the top-1 share has no gradient).
            for t in 0..<rows where t < firstRow {
                for i in 0..<N { D[t * N + i] = 0 }
            }
            for t in firstRow..<max(rows, firstRow) {
                var fp: Float = 0
                if o.balance > 0 { for k in 0..<N { fp += topShare[k] * D[t * N + k] } }
                for i in 0..<N {
                    let p = D[t * N + i]
                    var d = p - (i == label ? 1 : 0)
                    if o.balance > 0 { d += o.balance * Float(N) * p * (topShare[i] - fp) }
                    D[t * N + i] = d
                }
            }
            // dG (N, in) += Dᵀ · x
            grads[id]!.withUnsafeMutableBufferPointer { g in
                D.withUnsafeBufferPointer { d in
                    BLAS.gemm(transA: true, transB: false, m: N, n: nIn, k: rows, alpha: 1, a: d.baseAddress!, lda: N,
                              b: x, ldb: nIn, beta: 1, c: g.baseAddress!, ldc: nIn)
                }
            }
        }
        var rng = SeededRNG(seed: o.seed)
        var orders = sequences.map { Array($0.indices) }
        var cursor = [Int](repeating: 0, count: N)
        let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
        for step in 1...o.steps {
            tokens = 0
            for i in 0..<N {
                if cursor[i] % orders[i].count == 0 { orders[i].shuffle(using: &rng) }
                let s = sequences[i][orders[i][cursor[i] % orders[i].count]]
                cursor[i] += 1
                label = i
                firstRow = o.supervise == .answer ? (s.targets.firstIndex { $0 >= 0 } ?? 0) : 0
                session.reset(adapters: sets[i])
                _ = try session.feed(s.tokens, lastOnly: true)
                tokens += s.tokens.count - firstRow
            }
            // AdamW (no weight decay) on the token-mean gradient, bias-corrected.
            let c1 = 1 - powf(b1, Float(step)), c2 = 1 - powf(b2, Float(step))
            let inv = 1 / Float(tokens)
            for id in ids {
                gates[id]!.withUnsafeMutableBufferPointer { g in
                    grads[id]!.withUnsafeMutableBufferPointer { gr in
                        m[id]!.withUnsafeMutableBufferPointer { mm in
                            v[id]!.withUnsafeMutableBufferPointer { vv in
                                for j in 0..<g.count {
                                    let d = gr[j] * inv
                                    mm[j] = b1 * mm[j] + (1 - b1) * d
                                    vv[j] = b2 * vv[j] + (1 - b2) * d * d
                                    g[j] -= o.learningRate * (mm[j] / c1) / ((vv[j] / c2).squareRoot() + eps)
                                    gr[j] = 0
                                }
                            }
                        }
                    }
                }
            }
            progress?(step, o.steps)
        }
        return gates
    }
}
