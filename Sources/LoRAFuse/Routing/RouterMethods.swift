import Foundation

// Fitting the gates of a routed model (`lorafuse route --method …`). Base and adapters stay frozen.
//
// arrow    training-free (Arrow, arXiv 2405.11157): per projection, expert i's gate row is the
//          top right singular vector of its ΔW = s B A, from the factors (productSVD: QR of both
//          factors and an r × r SVD, never the dense ΔW); score |cos(row, x)|.
// sequence one choice per request (SequenceRouter.swift): a linear classifier on the prompt's mean
//          last hidden state through the base model, fitted on the shots' prompts; the top-k
//          adapters merged linearly (k = 1 by default: one adapter per request).
// hidden   training-free (mergekit-moe "hidden" gates): row i = normalise(mean_i − mean), mean_i
//          the mean input of that projection over task i's shots run through the base model,
//          mean the mean of the mean_i; score row · x.
// meteora  MeteoRA (arXiv 2405.13053): every projection's gate G (N, in) is trained by Adam
//          through the routed forward (RoutedTraining.swift) on the LM cross-entropy of the
//          shots' answers plus λ × the cross-entropy of softmax(G x) against the shot's task
//          (MeteoRA's supervised routing; λ = 50 in its code); plus an optional Switch load-balance term
//          α · N · Σ_i f_i P_i (f_i: share of tokens whose top-1 is i, P_i: mean gate probability).
// xlora    X-LoRA (arXiv 2402.07148, XLoRA.swift): a linear classifier on the base model's last
//          hidden state gives every token per-layer scalings of all adapters (dense softmax by
//          default, as X-LoRA); trained by Adam through the routed forward on the LM cross-entropy
//          of the shots' answers only. The base pass of each shot runs once (the base is frozen);
//          the classifier is fitted on standardised features and the standardisation folded into
//          the stored W and b, so it reads raw hidden states.

public enum RouteMethod: String, CaseIterable, Sendable {
    case meteora, xlora, arrow, hidden, sequence

    public var needsShots: Bool { self != .arrow }
    public var gateKind: GateKind {
        switch self {
        case .arrow: return .arrow
        case .sequence: return .sequence
        case .xlora: return .xlora
        case .meteora, .hidden: return .linear
        }
    }
    /// Adapters kept per token (per request for `sequence`) unless --top-k says otherwise; 0 (xlora):
    /// every adapter, X-LoRA's dense softmax.
    public var defaultTopK: Int {
        switch self {
        case .sequence: return 1
        case .xlora: return 0
        default: return 2
        }
    }
}

public struct RouteOptions: Sendable, Equatable {
    public var method: RouteMethod
    public var topK = 2
    public var temperature: Float = 1
    public var placement: RoutePlacement = .all
    /// meteora, xlora: optimizer steps; each step runs one shot of every task.
    public var steps = 64
    /// meteora, xlora: Adam's learning rate (xlora: see `RouteOptions(method:)`).
    public var learningRate: Float = 5e-3
    public var seed: UInt64 = 0
    /// meteora: weight of the Switch load-balance term (0: off, as in MeteoRA's code).
    public var balance: Float = 0
    /// Shots read from each task's file (the first N examples).
    public var shotsPerTask = 16
    /// meteora: which tokens carry the gate loss.
    public var supervise: GateSupervision = .all
    /// meteora: weight of the LM cross-entropy of the routed model on the shots' answers.
    public var lmWeight: Float = 1
    /// meteora: weight λ of the gate cross-entropy against the task label.
    public var gateWeight: Float = 50
    /// meteora: weight of the routing entropy (LoRA-Mixer's entropy shaping; 0: off).
    public var entropy: Float = 0
    /// GenKnowSub (with general adapters given to `build`): how the mean of the general
    /// adapters is subtracted from each expert (GenKnowSub.swift).
    public var genKnowSub: GenKnowSubComposition = .exact

    public init(method: RouteMethod) {
        self.method = method
        topK = method.defaultTopK
        if method == .xlora { learningRate = Self.xloraLearningRate }
    }

    /// xlora's default learning rate (chosen on the validation split; README, "Routing").
    public static let xloraLearningRate: Float = 5e-3

    /// The top-k a router of `adapters` adapters uses: `topK`, or all of them for 0.
    public func resolvedTopK(adapters: Int) -> Int { topK == 0 ? adapters : topK }
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
        guard o.topK >= 1 || (o.method == .xlora && o.topK == 0) else { throw RouteError.badOption(option: "--top-k", reason: "must be at least 1") }
        guard o.topK <= adapters else { throw RouteError.topK(k: o.topK, adapters: adapters) }
        guard o.temperature.isFinite && o.temperature > 0 else { throw RouteError.badOption(option: "--temperature", reason: "must be > 0") }
        guard o.learningRate.isFinite && o.learningRate > 0 else { throw RouteError.badOption(option: "--lr", reason: "must be > 0") }
        guard o.steps >= 1 else { throw RouteError.badOption(option: "--steps", reason: "must be at least 1") }
        guard o.shotsPerTask >= 1 else { throw RouteError.badOption(option: "--shots-per-task", reason: "must be at least 1") }
        guard o.balance.isFinite && o.balance >= 0 else { throw RouteError.badOption(option: "--balance", reason: "must be ≥ 0") }
        guard o.lmWeight.isFinite && o.lmWeight >= 0 else { throw RouteError.badOption(option: "--lm-weight", reason: "must be ≥ 0") }
        guard o.gateWeight.isFinite && o.gateWeight >= 0 else { throw RouteError.badOption(option: "--gate-weight", reason: "must be ≥ 0") }
        guard o.entropy.isFinite && o.entropy >= 0 else { throw RouteError.badOption(option: "--entropy", reason: "must be ≥ 0") }
        guard o.method != .sequence || o.placement == .all else {
            throw RouteError.badOption(option: "--placement", reason: "sequence picks the adapters per request; it has no per-projection gates to place")
        }
        guard o.method != .meteora || o.lmWeight + o.gateWeight + o.balance + o.entropy > 0 else {
            throw RouteError.badOption(option: "--lm-weight/--gate-weight", reason: "with both 0 (and no --balance) the gates have nothing to learn")
        }
        if o.method.needsShots && shots == 0 { throw RouteError.noShots(method: o.method.rawValue) }
        if shots != 0 && shots != adapters { throw RouteError.shotsCount(adapters: adapters, files: shots) }
    }

    /// The projections of `placement` that some expert has a LoRA on, ascending.
    static func routedIDs(layers L: Int, placement: RoutePlacement, factors: [[Int: LoRAFactors]]) -> [Int] {
        var ids: [Int] = []
        for l in 0..<L {
            for p in Projection.allCases where placement.includes(p) {
                let id = LlamaWeights.linearID(layer: l, p)
                if factors.contains(where: { $0[id] != nil }) { ids.append(id) }
            }
        }
        return ids
    }

    /// Fits the gates and returns the routed model (adapters in the given order).
    /// With `general` adapters (GenKnowSub), their mean is subtracted from every expert first:
    /// the gates are fitted to, and the model routes over, the subtracted experts.
    /// `progress(done, total)` is called as work completes.
    public static func build(model: LlamaModel, adapters given: [LoRAAdapter], shots: [EvalTask], options o: RouteOptions,
                             general: [LoRAAdapter] = [], baseName: String? = nil,
                             progress: ((Int, Int) -> Void)? = nil) throws -> RoutedModel {
        try validate(o, adapters: given.count, shots: shots.count)
        let N = given.count
        var adapters = given
        if !general.isEmpty {
            for g in general {
                if let same = given.first(where: { a in a.sourcePath.map { OutputGuard.resolve($0) } == g.sourcePath.map { OutputGuard.resolve($0) } && a.sourcePath != nil }) {
                    throw GenKnowSubError.sameAdapter(name: same.sourcePath ?? same.name)
                }
            }
            // Checked against the model before the subtraction, so a general adapter for another
            // base is named as such.
            _ = try model.expertFactors(general)
            adapters = try GenKnowSub.subtract(general, from: given, composition: o.genKnowSub)
        }
        // Every adapter checked against the model, and the projections some adapter touches.
        let factors = try model.expertFactors(adapters)
        var routedIDs = routedIDs(layers: model.layerCount, placement: o.placement, factors: factors)
        guard !routedIDs.isEmpty || o.method == .sequence else { throw RouteError.nothingToRoute(placement: o.placement.rawValue) }
        var sequences: [[TrainingSequence]] = []
        for t in shots {
            let seqs = try TrainingData.sequences(EvalTask(name: t.name, path: t.path, examples: Array(t.examples.prefix(o.shotsPerTask))), model: model)
            guard !seqs.isEmpty else { throw RouteError.emptyShots(file: t.path ?? t.name) }
            sequences.append(seqs)
        }
        let gates: [Int: [Float]]
        var training: [String: String] = [:]
        var named: [String: Matrix] = [:]
        switch o.method {
        case .sequence:
            let router = try sequenceRouter(model: model, sequences: sequences, options: o, progress: progress)
            named[SequenceRouter.tensorName] = Matrix(rows: N, cols: model.config.hiddenSize + 1, data: router.table)
            gates = [:]
            routedIDs = []
            training = ["shots_per_task": String(o.shotsPerTask), "classifier": "logistic regression on the mean last hidden state of the prompt, 300 full-batch Adam steps, lr 0.05, L2 1e-3"]
        case .arrow:
            gates = try arrowGates(model: model, factors: factors, ids: routedIDs, progress: progress)
        case .hidden:
            gates = try hiddenGates(model: model, sequences: sequences, ids: routedIDs, progress: progress)
            training["shots_per_task"] = String(o.shotsPerTask)
        case .xlora:
            let c = try xloraClassifier(model: model, adapters: adapters, sequences: sequences, ids: routedIDs, options: o, progress: progress)
            named[XLoRAClassifier.tensorName] = Matrix(rows: c.width, cols: c.hiddenSize + 1, data: c.table)
            gates = [:]
            routedIDs = []
            training = ["steps": String(o.steps), "lr": String(o.learningRate), "seed": String(o.seed), "shots_per_task": String(o.shotsPerTask),
                        "classifier": "X-LoRA depth 1: linear (layers × adapters, hidden) + bias on the base model's last hidden state, per-layer softmax",
                        "loss": "LM cross-entropy of the routed model on the shots' answers"]
        case .meteora:
            gates = try meteoraGates(model: model, adapters: adapters, sequences: sequences, ids: routedIDs, options: o, progress: progress)
            training = ["steps": String(o.steps), "lr": String(o.learningRate), "seed": String(o.seed), "supervise": o.supervise.rawValue,
                        "balance": String(o.balance), "shots_per_task": String(o.shotsPerTask),
                        "lm_weight": String(o.lmWeight), "gate_weight": String(o.gateWeight), "entropy": String(o.entropy),
                        "loss": "lm_weight × LM cross-entropy of the routed model + gate_weight × gate cross-entropy against the task label"]
        }
        for id in routedIDs {
            let (l, p) = (id / Projection.allCases.count, Projection.allCases[id % Projection.allCases.count])
            let name = ModuleAddress.projection(layer: l, p).hf
            named[name] = Matrix(rows: N, cols: model.base.linears[id].inFeatures, data: gates[id]!)
        }
        let config = RouterConfig(method: o.method.rawValue, gate: o.method.gateKind, topK: o.resolvedTopK(adapters: N), temperature: o.temperature,
                                  placement: o.placement, base: RouterBase(config: model.config, name: baseName),
                                  adapters: adapters.map { RouterAdapterEntry(name: $0.name, path: $0.sourcePath ?? $0.name, sha256: "") },
                                  training: training,
                                  general: general.isEmpty ? nil : GeneralKnowledge(
                                    composition: o.genKnowSub,
                                    adapters: general.map { RouterAdapterEntry(name: $0.name, path: $0.sourcePath ?? $0.name, sha256: "") }))
        return RoutedModel(config: config, adapters: adapters, gates: named)
    }

    // MARK: sequence

    /// The per-request classifier, fitted on the shots' prompts (prompt = the tokens up to the
    /// row that predicts the first answer token).
    static func sequenceRouter(model: LlamaModel, sequences: [[TrainingSequence]], options o: RouteOptions,
                               progress: ((Int, Int) -> Void)?) throws -> SequenceRouter {
        var features: [[Float]] = [], labels: [Int] = []
        let total = sequences.reduce(0) { $0 + $1.count }
        for (i, seqs) in sequences.enumerated() {
            for s in seqs {
                let last = s.targets.firstIndex { $0 >= 0 } ?? (s.tokens.count - 1)
                features.append(try SequenceRouter.feature(model: model, prompt: Array(s.tokens[...last])))
                labels.append(i)
                progress?(features.count, total + 1)
            }
        }
        let r = SequenceRouter.fit(features: features, labels: labels, experts: sequences.count, topK: o.topK, temperature: o.temperature)
        progress?(total + 1, total + 1)
        return r
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

    // MARK: xlora

    static func xloraClassifier(model: LlamaModel, adapters: [LoRAAdapter], sequences: [[TrainingSequence]], ids: [Int],
                                options o: RouteOptions, progress: ((Int, Int) -> Void)?) throws -> XLoRAClassifier {
        let N = adapters.count, L = model.layerCount, C = model.config.hiddenSize, W = L * N
        let k = o.resolvedTopK(adapters: N)
        let routing = try TrainableRouting(model: model, adapters: adapters, ids: ids,
                                           policy: RoutingPolicy(topK: k, temperature: o.temperature), kind: .xlora)
        // Pass 1 of every shot, once: (T, C) last hidden states of the base model.
        let shots = sequences.reduce(0) { $0 + $1.count }, total = shots + o.steps
        let session = try model.makeLlamaSession(maxTokens: sequences.flatMap { $0 }.map(\.tokens.count).max() ?? 1)
        var features: [[[Float]]] = []
        var done = 0
        for seqs in sequences {
            features.append(seqs.map { s in
                session.reset()
                let h = session.finalHiddenStates(s.tokens)
                done += 1
                progress?(done, total)
                return Array(UnsafeBufferPointer(start: h, count: s.tokens.count * C))
            })
        }
        // Standardised features: mean and deviation per coordinate over every shot's rows.
        var mu = [Double](repeating: 0, count: C), sd = [Double](repeating: 0, count: C)
        var rowsSeen = 0
        for f in features.joined() {
            for t in 0..<(f.count / C) { for j in 0..<C { mu[j] += Double(f[t * C + j]) } }
            rowsSeen += f.count / C
        }
        mu = mu.map { $0 / Double(max(rowsSeen, 1)) }
        for f in features.joined() {
            for t in 0..<(f.count / C) { for j in 0..<C { let d = Double(f[t * C + j]) - mu[j]; sd[j] += d * d } }
        }
        sd = sd.map { max(($0 / Double(max(rowsSeen, 1))).squareRoot(), 1e-6) }
        let z = features.map { task in
            task.map { f in f.indices.map { Float((Double(f[$0]) - mu[$0 % C]) / sd[$0 % C]) } }
        }
        // Near zero: every token starts at the uniform mixture; the noise breaks top-k ties.
        var rng = SeededRNG(seed: o.seed)
        var table = [Float](repeating: 0, count: W * (C + 1))
        for r in 0..<W { for j in 0..<C { table[r * (C + 1) + j] = rng.nextNormal() * 1e-3 } }
        var m = [Float](repeating: 0, count: table.count), v = m
        var orders = sequences.map { Array($0.indices) }
        var cursor = [Int](repeating: 0, count: N)
        let engine = LlamaTrainingEngine(model: model)
        let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
        for step in 1...o.steps {
            var batch: [TrainingSequence] = [], h: [Float] = []
            for i in 0..<N {
                if cursor[i] % orders[i].count == 0 { orders[i].shuffle(using: &rng) }
                let j = orders[i][cursor[i] % orders[i].count]
                batch.append(sequences[i][j])
                h += z[i][j]
                cursor[i] += 1
            }
            let rows = h.count / C
            let cls = XLoRAClassifier(layers: L, experts: N, hiddenSize: C, table: table, topK: k, temperature: o.temperature)
            let s = cls.scalings(h, rows: rows)
            let r = engine.routedLossAndGradients(batch, labels: [Int](repeating: -1, count: N), routing: routing, lmWeight: 1,
                                                  gateWeight: 0, scalings: s)
            let g = cls.tableGradient(h: h, scalings: s, dScalings: r.dScalings, rows: rows)
            let c1 = 1 - powf(b1, Float(step)), c2 = 1 - powf(b2, Float(step))
            for j in table.indices {
                m[j] = b1 * m[j] + (1 - b1) * g[j]
                v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j]
                table[j] -= o.learningRate * (m[j] / c1) / ((v[j] / c2).squareRoot() + eps)
            }
            progress?(shots + step, total)
        }
        // Fold the standardisation: W' = W / sd, b' = b − W' · mu.
        for r in 0..<W {
            var bias = Double(table[r * (C + 1) + C])
            for j in 0..<C {
                let w = Double(table[r * (C + 1) + j]) / sd[j]
                table[r * (C + 1) + j] = Float(w)
                bias -= w * mu[j]
            }
            table[r * (C + 1) + C] = Float(bias)
        }
        return XLoRAClassifier(layers: L, experts: N, hiddenSize: C, table: table, topK: k, temperature: o.temperature)
    }

    // MARK: meteora

    static func meteoraGates(model: LlamaModel, adapters: [LoRAAdapter], sequences: [[TrainingSequence]], ids: [Int],
                             options o: RouteOptions, progress: ((Int, Int) -> Void)?) throws -> [Int: [Float]] {
        let N = adapters.count
        let routing = try TrainableRouting(model: model, adapters: adapters, ids: ids,
                                           policy: RoutingPolicy(topK: o.topK, temperature: o.temperature))
        let engine = LlamaTrainingEngine(model: model)
        var m: [Int: [Float]] = [:], v: [Int: [Float]] = [:]
        for id in routing.ids {
            m[id] = [Float](repeating: 0, count: routing.gates[id]!.count)
            v[id] = m[id]
        }
        var rng = SeededRNG(seed: o.seed)
        var orders = sequences.map { Array($0.indices) }
        var cursor = [Int](repeating: 0, count: N)
        let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
        for step in 1...o.steps {
            // One shot of every task per step, packed into one routed forward/backward.
            var batch: [TrainingSequence] = []
            for i in 0..<N {
                if cursor[i] % orders[i].count == 0 { orders[i].shuffle(using: &rng) }
                batch.append(sequences[i][orders[i][cursor[i] % orders[i].count]])
                cursor[i] += 1
            }
            let r = engine.routedLossAndGradients(batch, labels: Array(0..<N), routing: routing, lmWeight: o.lmWeight,
                                                  gateWeight: o.gateWeight, balance: o.balance, entropy: o.entropy,
                                                  supervise: o.supervise)
            // Adam (no weight decay), bias-corrected.
            let c1 = 1 - powf(b1, Float(step)), c2 = 1 - powf(b2, Float(step))
            for id in routing.ids {
                guard let gr = r.grads[id] else { continue }
                routing.gates[id]!.withUnsafeMutableBufferPointer { g in
                    m[id]!.withUnsafeMutableBufferPointer { mm in
                        v[id]!.withUnsafeMutableBufferPointer { vv in
                            for j in 0..<g.count {
                                let d = gr[j]
                                mm[j] = b1 * mm[j] + (1 - b1) * d
                                vv[j] = b2 * vv[j] + (1 - b2) * d * d
                                g[j] -= o.learningRate * (mm[j] / c1) / ((vv[j] / c2).squareRoot() + eps)
                            }
                        }
                    }
                }
            }
            progress?(step, o.steps)
        }
        var gates = routing.gates
        for id in ids where gates[id] == nil { gates[id] = [Float](repeating: 0, count: N * model.base.linears[id].inFeatures) }
        return gates
    }
}
