import Foundation

// Learned fusion: coefficients that combine adapters, fitted on a few examples per task.
//
// Every method here applies, per adapter i and block b (one projection of one layer),
//     ΔW_b = Σ_i c_{i,b} · s_i · B_{i,b} A_{i,b}
// and evaluates the model through the training engine with the exact concatenation
//     A_cat = [A_1; …; A_n] (Σr, in),  B_cat = [c_1 s_1 B_1 | … | c_n s_n B_n] (out, Σr),  scale 1,
// so no dense ΔW is ever formed. The engine gives dL/dB_cat; since B_cat's block i is
// c_i·s_i·B_i, the chain rule gives the exact coefficient gradient
//     dL/dc_i = ⟨dL/dB_cat[:, block i], s_i · B_i⟩_F.
// The methods differ only in how the coefficients c are parametrised and searched:
//   aTLAS        c = θ (one θ per adapter and coefficient group), Adam on the few-shot loss
//   cat-learned  c = S · softmax over adapters of θ (per group), Adam, adapters frozen
//   lorahub      c_i = w_i for every block, CMA-ES (derivative-free) on loss + α·mean|w|

/// The learned fusion methods `lorafuse fuse --method` knows. New methods add a case here and a
/// branch in `LearnedFusion.fuse`; the CLI lists and dispatches through this enum.
public enum LearnedFusionMethod: String, CaseIterable, Sendable {
    case atlas
    case lorahub
    case catLearned = "cat-learned"
}

/// Which (adapter, block) pairs share one learned coefficient.
public enum CoefficientGranularity: String, CaseIterable, Sendable, Codable {
    /// One coefficient per adapter per block (one projection of one layer): aTLAS's finest grouping.
    case block
    /// One per adapter per layer (all projections of the layer share it).
    case layer
    /// One per adapter per projection type (q_proj of every layer shares it).
    case module
    /// One per adapter (task-arithmetic style).
    case adapter
}

/// Settings of a learned fusion. Defaults suit SmolLM2-135M with a dozen rank-8 adapters.
public struct LearnedFusionOptions: Sendable {
    /// Optimizer steps (aTLAS, cat-learned).
    public var steps = 40
    /// Adam learning rate on the coefficient parameters (aTLAS, cat-learned).
    public var learningRate: Float = 0.02
    /// Sequences per step, drawn as a seeded stream of epochs over all tasks' shots.
    public var batchSize = 8
    public var seed: UInt64 = 0
    /// Keep only the first N examples of each shots file (nil: all).
    public var shotsPerTask: Int?
    /// Keep only the first N examples of each validation file (nil: all).
    public var valPerTask: Int?
    public var granularity: CoefficientGranularity = .block
    /// Penalty weights. aTLAS: λ₁·Σ|c| + λ₂·Σc² over the parameters θ = c (aTLAS's ‖λ‖_p).
    /// cat-learned: on the softmax logits θ (pulls toward the uniform mix). lorahub: `l1`·mean|w|
    /// (LoraHub uses 0.05), `l2` unused.
    public var l1: Float = 0
    public var l2: Float = 0
    /// Early stopping: stop after this many validation checks without improvement (nil: never).
    /// With validation shots the coefficients of the best validation loss are kept.
    public var patience: Int?
    /// Validation loss every this many steps (nil: about ten times per run).
    public var evalEvery: Int?
    /// LoraHub's budget: the number of few-shot loss evaluations, the starting point included.
    public var evaluations = 40
    /// LoraHub composition: "exact" (default) applies Σ w_i ΔW_i; "factors" is LoraHub's own
    /// A = Σ w_i A_i, B = Σ w_i B_i (equal ranks and scales needed), whose product B·A carries the
    /// cross terms w_i w_j B_i A_j (i ≠ j).
    public var lorahubComposition = "exact"
    /// LoraHub's box: each w_i is kept in [−bound, bound] (LoraHub: 1.5).
    public var lorahubBound = 1.5
    /// CMA-ES initial step size.
    public var lorahubSigma = 0.5
    /// Starting value of every coefficient: 1 starts at the plain sum of the adapters (what `cat`
    /// with weights 1 gives); `defaults(for:adapters:)` starts at their mean, 1/n. LoraHub's paper
    /// starts at 0 (the base model); pass 0 for that.
    public var initialCoefficient = 1.0
    /// cat-learned: c = S · softmax(θ); nil uses S = number of adapters, so the start θ = 0 is
    /// the plain sum of the adapters and the coefficients of a group always sum to S.
    public var catScale: Double?
    /// Rank of the written adapter: nil writes the exact concatenation (rank Σ r_i per module),
    /// R refactors each module by the exact truncated SVD of the `svd` method.
    public var foldRank: Int?

    public init() {}

    /// What a run of `method` over `n` adapters uses when the caller sets nothing else (the CLI's
    /// `fuse` and the report both start here). Every coefficient starts at 1/n, the mean of the
    /// adapters (the static `linear` method with weights 1/n), not at their plain sum
    /// (`initialCoefficient` 1), which is n times too strong for any one task: measured on the
    /// SmolLM2 suite, aTLAS from the sum ended at 1.89 held-out loss, from 1/n at 0.78 (linear
    /// 1/n: 0.79). LoraHub adds its paper's L1 weight 0.05 (`LoraHubSearch.paperL1`) and a first
    /// CMA-ES step on the scale of the start (σ = 1/n; σ 0.5 around 1/n never found its way back
    /// within 40 evaluations). cat-learned uses softmax scale 1, the convex mix of LoRA Soups,
    /// which also starts at 1/n.
    public static func defaults(for method: LearnedFusionMethod, adapters n: Int) -> LearnedFusionOptions {
        var o = LearnedFusionOptions()
        o.initialCoefficient = AtlasDefaults.start(adapters: n)
        // Set for every method (only cat-learned reads it), so the report's cached option
        // strings stay what they were when the report set it itself.
        o.catScale = 1
        if method == .lorahub {
            o.l1 = LoraHubSearch.paperL1
            o.lorahubSigma = o.initialCoefficient
        }
        return o
    }

    func validate(method: LearnedFusionMethod) throws {
        func bad(_ p: String, _ v: String, _ e: String) -> FusionError {
            .invalidParameter(method: method.rawValue, parameter: p, value: v, expected: e)
        }
        if steps < 1 { throw bad("steps", "\(steps)", "≥ 1") }
        if !(learningRate > 0) { throw bad("learning rate", "\(learningRate)", "> 0") }
        if batchSize < 1 { throw bad("batch", "\(batchSize)", "≥ 1") }
        if let n = shotsPerTask, n < 1 { throw bad("shots-per-task", "\(n)", "≥ 1") }
        if let n = valPerTask, n < 1 { throw bad("val-per-task", "\(n)", "≥ 1") }
        if !(l1 >= 0) { throw bad("l1", "\(l1)", "≥ 0") }
        if !(l2 >= 0) { throw bad("l2", "\(l2)", "≥ 0") }
        if let p = patience, p < 1 { throw bad("patience", "\(p)", "≥ 1") }
        if let e = evalEvery, e < 1 { throw bad("eval-every", "\(e)", "≥ 1") }
        if evaluations < 2 { throw bad("evaluations", "\(evaluations)", "≥ 2") }
        if !["exact", "factors"].contains(lorahubComposition) {
            throw bad("composition", lorahubComposition, "exact or factors")
        }
        if !(lorahubBound > 0) { throw bad("bound", "\(lorahubBound)", "> 0") }
        if !(lorahubSigma > 0) { throw bad("sigma", "\(lorahubSigma)", "> 0") }
        if !initialCoefficient.isFinite { throw bad("init", "\(initialCoefficient)", "a finite number") }
        if let s = catScale, !(s > 0) { throw bad("cat-scale", "\(s)", "> 0") }
        if let r = foldRank, r < 1 { throw bad("rank", "\(r)", "≥ 1") }
    }
}

/// One row of a learned fusion's loss curve.
public struct LossPoint: Sendable, Codable, Equatable {
    /// Optimizer step (aTLAS, cat-learned; 0 = the start) or loss evaluation (lorahub; 1 = the start).
    public var step: Int
    /// Few-shot loss of the step's minibatch (aTLAS, cat-learned) or of all shots (lorahub),
    /// without the penalty.
    public var trainLoss: Double
    public var valLoss: Double?

    public init(step: Int, trainLoss: Double, valLoss: Double? = nil) {
        self.step = step
        self.trainLoss = trainLoss
        self.valLoss = valLoss
    }
}

/// The coefficients a learned fusion chose, as written to `coefficients.json`.
public struct LearnedCoefficients: Sendable, Codable {
    public var method: String
    public var granularity: CoefficientGranularity
    public var adapterNames: [String]
    /// values[i][module][layer]: the coefficient c applied to adapter i's ΔW on projection
    /// `module` (PEFT name: "q_proj", …, "down_proj") of layer `layer`; the fused update is
    /// Σ_i c · ΔW_i exactly (before any `foldRank` truncation). Layers where adapter i lacks that
    /// projection hold 0; projections it never adapts are absent. With lorahub's "factors"
    /// composition the value is w_i, a weight on the factors, not on ΔW_i.
    public var values: [[String: [Double]]]
    /// The raw learned parameters (θ for aTLAS and cat-learned, w for lorahub).
    public var parameters: [Double]
    public var lossCurve: [LossPoint]
    /// Mean over tasks of the token-mean loss on all shots, at the start and at the result.
    public var initialTrainLoss: Double
    public var finalTrainLoss: Double
    /// Same on the validation shots (nil without validation).
    public var initialValLoss: Double?
    public var finalValLoss: Double?
    /// Step (or evaluation) whose coefficients were kept.
    public var bestStep: Int
    public var seed: UInt64
    /// Options as text, for the record ("steps": "40", …).
    public var options: [String: String]

    /// The coefficient of adapter `adapter` on `module` ("q_proj") of `layer` (0 when absent).
    public func coefficient(adapter: Int, layer: Int, module: String) -> Double {
        guard let row = values[adapter][module], layer < row.count else { return 0 }
        return row[layer]
    }
}

public struct LearnedFusionResult: Sendable {
    public let adapter: LoRAAdapter
    public let coefficients: LearnedCoefficients

    public init(adapter: LoRAAdapter, coefficients: LearnedCoefficients) {
        self.adapter = adapter
        self.coefficients = coefficients
    }
}

public enum LearnedFusion {
    /// Learns how to combine `adapters` from the few-shot `shots` (one `EvalTask` per task) and
    /// folds the result into one plain adapter. `val` (optional) drives early stopping and the
    /// choice of the kept coefficients. `progress(step, total, loss)` reports each optimizer step
    /// (or loss evaluation for lorahub) with its few-shot loss.
    public static func fuse(method: LearnedFusionMethod, adapters: [LoRAAdapter], model: LlamaModel,
                            shots: [EvalTask], val: [EvalTask], options: LearnedFusionOptions,
                            progress: (@Sendable (_ step: Int, _ total: Int, _ loss: Double) -> Void)?) throws -> LearnedFusionResult {
        try options.validate(method: method)
        let problem = try LearnedProblem(adapters: adapters, model: model, shots: shots, val: val,
                                         shotsPerTask: options.shotsPerTask, valPerTask: options.valPerTask)
        return try run(method: method, problem: problem, options: options, progress: progress)
    }

    /// `fuse` on already tokenized shots.
    static func run(method: LearnedFusionMethod, problem: LearnedProblem, options: LearnedFusionOptions,
                    progress: (@Sendable (_ step: Int, _ total: Int, _ loss: Double) -> Void)?) throws -> LearnedFusionResult {
        try options.validate(method: method)
        let adapters = problem.adapters
        switch method {
        case .atlas:
            let map = LinearCoefficientMap(problem: problem, granularity: options.granularity)
            return try GradientCoefficientSearch.run(method: method, problem: problem, map: map,
                                                     options: options, progress: progress)
        case .catLearned:
            let map = SoftmaxCoefficientMap(problem: problem, granularity: options.granularity,
                                            scale: options.catScale ?? Double(adapters.count))
            return try GradientCoefficientSearch.run(method: method, problem: problem, map: map,
                                                     options: options, progress: progress)
        case .lorahub:
            return try LoraHubSearch.run(problem: problem, options: options, progress: progress)
        }
    }
}

/// One block (a projection of one layer) and each adapter's factors there.
struct LearnedBlock {
    struct Part {
        var adapter: Int
        var A: [Float]       // (r, in)
        var B: [Float]       // (out, r)
        var rank: Int
        var scale: Float
        var offset: Int      // first column of this part in B_cat
    }
    var layer: Int
    var target: LoRATarget
    var inFeatures: Int
    var outFeatures: Int
    var parts: [Part]
    var totalRank: Int { parts.reduce(0) { $0 + $1.rank } }
}

/// The adapters split into blocks, the tokenized shots, and the loss and its coefficient
/// gradient through the training engine. Coefficients are indexed c[adapter][block].
final class LearnedProblem {
    let adapters: [LoRAAdapter]
    let config: LlamaConfig
    let engine: LlamaTrainingEngine
    let blocks: [LearnedBlock]
    let train: [[TrainingSequence]]   // per task
    let val: [[TrainingSequence]]
    let taskNames: [String]
    /// Concatenated A's, fixed; only the B's are rewritten per coefficient vector.
    private var template: LoRAParameters

    var adapterCount: Int { adapters.count }

    /// Tokenizes the shots as `Evaluator` scores them (the first `shotsPerTask` / `valPerTask` of each task).
    convenience init(adapters: [LoRAAdapter], model: LlamaModel, shots: [EvalTask], val: [EvalTask],
                     shotsPerTask: Int?, valPerTask: Int? = nil) throws {
        guard !shots.isEmpty else { throw TrainError.badData(file: "(shots)", reason: "no shots files") }
        func tokenize(_ tasks: [EvalTask], first: Int?) throws -> [[TrainingSequence]] {
            try tasks.map { t in
                var t = t
                if let n = first { t.examples = Array(t.examples.prefix(n)) }
                guard !t.examples.isEmpty else {
                    throw TrainError.badData(file: t.path ?? t.name, reason: "no examples")
                }
                return try TrainingData.sequences(t, model: model)
            }
        }
        try self.init(adapters: adapters, model: model, train: try tokenize(shots, first: shotsPerTask),
                      val: try tokenize(val, first: valPerTask),
                      taskNames: shots.map(\.name))
    }

    init(adapters: [LoRAAdapter], model: LlamaModel, train: [[TrainingSequence]], val: [[TrainingSequence]],
         taskNames: [String]) throws {
        guard !adapters.isEmpty else { throw FusionError.noAdapters }
        guard !train.isEmpty, train.allSatisfy({ !$0.isEmpty }) else {
            throw TrainError.badData(file: "(shots)", reason: "every task needs at least one example")
        }
        self.adapters = adapters
        config = model.config
        engine = LlamaTrainingEngine(model: model)
        var byBlock: [Int: LearnedBlock] = [:]   // linear id -> block
        for (i, a) in adapters.enumerated() {
            let p = try LoRAParameters(adapter: a, config: config)
            for m in p.modules {
                let id = m.linearID
                var b = byBlock[id] ?? LearnedBlock(layer: m.layer, target: m.target, inFeatures: m.inFeatures,
                                                    outFeatures: m.outFeatures, parts: [])
                b.parts.append(.init(adapter: i, A: m.A, B: m.B, rank: m.rank, scale: m.scale, offset: b.totalRank))
                byBlock[id] = b
            }
        }
        let blocks = byBlock.keys.sorted().map { byBlock[$0]! }
        guard !blocks.isEmpty else { throw FusionError.noAdapters }
        self.blocks = blocks
        let mods = blocks.map { b -> TrainableLoRAModule in
            let R = b.totalRank
            var A: [Float] = []
            A.reserveCapacity(R * b.inFeatures)
            for p in b.parts { A += p.A }
            return TrainableLoRAModule(layer: b.layer, target: b.target, rank: R, inFeatures: b.inFeatures,
                                       outFeatures: b.outFeatures, scale: 1, A: A,
                                       B: [Float](repeating: 0, count: b.outFeatures * R))
        }
        let targets = LoRATarget.allCases.filter { t in blocks.contains { $0.target == t } }
        template = LoRAParameters(modules: mods, rank: mods.map(\.rank).max() ?? 0, alpha: 0, rsLoRA: false, targets: targets)

        self.train = train
        self.val = val
        self.taskNames = taskNames
    }

    /// The engine's parameters for coefficients c[adapter][block]: B_cat block i = c_i·s_i·B_i.
    func parameters(_ c: [[Double]]) -> LoRAParameters {
        var p = template
        for (bi, b) in blocks.enumerated() {
            let R = b.totalRank
            p.modules[bi].B.withUnsafeMutableBufferPointer { dst in
                for part in b.parts {
                    let f = Float(c[part.adapter][bi]) * part.scale
                    for o in 0..<b.outFeatures {
                        let src = o * part.rank, d = o * R + part.offset
                        for k in 0..<part.rank { dst[d + k] = f * part.B[src + k] }
                    }
                }
            }
        }
        return p
    }

    /// Parameters for an arbitrary per-block module list (lorahub's factor composition).
    func parameters(modules: [(A: [Float], B: [Float], rank: Int, scale: Float)]) -> LoRAParameters {
        var p = template
        for (bi, m) in modules.enumerated() {
            let t = p.modules[bi]
            p.modules[bi] = TrainableLoRAModule(layer: t.layer, target: t.target, rank: m.rank, inFeatures: t.inFeatures,
                                                outFeatures: t.outFeatures, scale: m.scale, A: m.A, B: m.B)
        }
        return p
    }

    /// The few-shot objective: mean over tasks of each task's token-mean loss on `tasks`,
    /// forward only (`LlamaTrainingEngine.meanLoss`, in chunks of 16 sequences).
    func loss(_ tasks: [[TrainingSequence]], lora: LoRAParameters) -> Double {
        tasks.reduce(0) { $0 + engine.meanLoss($1, lora: lora) } / Double(max(tasks.count, 1))
    }

    /// Loss of a minibatch (mean over the tasks present of their token-mean loss) and its exact
    /// gradient with respect to every c[adapter][block].
    func lossAndGradient(_ batch: [(task: Int, seq: TrainingSequence)], coefficients c: [[Double]]) -> (loss: Double, grad: [[Double]]) {
        let lora = parameters(c)
        var grads = LoRAGradients(zerosLike: lora)
        var byTask: [Int: [TrainingSequence]] = [:]
        for e in batch { byTask[e.task, default: []].append(e.seq) }
        let k = Double(byTask.count)
        var loss = 0.0
        for t in byTask.keys.sorted() {
            let seqs = byTask[t]!
            let n = seqs.reduce(0) { $0 + $1.lossTokens }
            let r = engine.accumulateGradients(seqs, lora: lora, into: &grads, gradScale: Float(1 / (k * Double(n))))
            loss += r.nll / (k * Double(n))
        }
        return (loss, coefficientGradient(grads))
    }

    /// dL/dc_i = ⟨dL/dB_cat[:, block i], s_i · B_i⟩ per block.
    func coefficientGradient(_ g: LoRAGradients) -> [[Double]] {
        var out = [[Double]](repeating: [Double](repeating: 0, count: blocks.count), count: adapterCount)
        for (bi, b) in blocks.enumerated() {
            let R = b.totalRank
            let dB = g.dB[bi]
            for part in b.parts {
                var s = 0.0
                for o in 0..<b.outFeatures {
                    let src = o * part.rank, d = o * R + part.offset
                    var row: Float = 0
                    for k in 0..<part.rank { row += dB[d + k] * part.B[src + k] }
                    s += Double(row)
                }
                out[part.adapter][bi] = s * Double(part.scale)
            }
        }
        return out
    }

    /// Group index of each block under a granularity, and the number of groups.
    func groups(_ g: CoefficientGranularity) -> (ofBlock: [Int], count: Int) {
        switch g {
        case .block: return (Array(blocks.indices), blocks.count)
        case .adapter: return (blocks.map { _ in 0 }, 1)
        case .layer:
            let layers = Array(Set(blocks.map(\.layer))).sorted()
            return (blocks.map { layers.firstIndex(of: $0.layer)! }, layers.count)
        case .module:
            let ts = LoRATarget.allCases.filter { t in blocks.contains { $0.target == t } }
            return (blocks.map { ts.firstIndex(of: $0.target)! }, ts.count)
        }
    }

    /// values[adapter][peft module name][layer] from c[adapter][block], only where the adapter
    /// has that module (elsewhere its coefficient multiplies nothing).
    func tabulate(_ c: [[Double]]) -> [[String: [Double]]] {
        var out = [[String: [Double]]](repeating: [:], count: adapterCount)
        for (bi, b) in blocks.enumerated() {
            for part in b.parts {
                var row = out[part.adapter][b.target.peftName] ?? [Double](repeating: 0, count: config.numHiddenLayers)
                row[b.layer] = c[part.adapter][bi]
                out[part.adapter][b.target.peftName] = row
            }
        }
        return out
    }

    /// The fused adapter Σ_i c_{i,b} ΔW_{i,b}: each adapter's module scale multiplied by its
    /// coefficient, then the existing `cat` (exact, rank Σ r_i) or `svd` (exact truncated SVD
    /// from the factors) rule, so metadata and rank patterns are handled as for static fusion.
    func fold(_ c: [[Double]], rank: Int?, seed: UInt64, name: String) throws -> LoRAAdapter {
        var coef: [[Int: Double]] = Array(repeating: [:], count: adapterCount)   // adapter -> linear id -> c
        for (bi, b) in blocks.enumerated() {
            let id = LlamaWeights.linearID(layer: b.layer, b.target.slot)
            for part in b.parts { coef[part.adapter][id] = c[part.adapter][bi] }
        }
        var scaled = adapters
        for (i, a) in adapters.enumerated() {
            for (n, m) in a.modules {
                guard let id = Self.linearID(moduleName: n, layers: config.numHiddenLayers), let f = coef[i][id] else { continue }
                scaled[i].modules[n]!.scale = m.scale * Float(f)
            }
        }
        let method: any FusionMethod = rank.map { SVDFusion(rank: $0) } ?? CatFusion()
        return try Fuser.fuse(scaled, weights: [Float](repeating: 1, count: scaled.count), method: method,
                              seed: seed, name: name).0
    }

    /// `[base_model.model.]model.layers.L.<hf module>` → the engine's linear id.
    static func linearID(moduleName: String, layers: Int) -> Int? {
        var n = Substring(moduleName)
        if n.hasPrefix("base_model.model.") { n = n.dropFirst("base_model.model.".count) }
        let parts = n.split(separator: ".", maxSplits: 3)
        guard parts.count == 4, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]), l >= 0, l < layers,
              let t = LoRATarget.allCases.first(where: { $0.hfModule == parts[3] }) else { return nil }
        return LlamaWeights.linearID(layer: l, t.slot)
    }

    /// Seeded stream of epochs over every (task, shot): step k (1-based) takes positions
    /// (k−1)·batch ..< k·batch, each epoch a fresh permutation; a batch never holds a shot twice.
    func batch(step k: Int, size: Int, seed: UInt64) -> [(task: Int, seq: TrainingSequence)] {
        let all = train.enumerated().flatMap { (t, seqs) in seqs.map { (task: t, seq: $0) } }
        if size >= all.count { return all }
        var out: [(task: Int, seq: TrainingSequence)] = []
        var pos = (k - 1) * size
        while out.count < size {
            let epoch = pos / all.count, i = pos % all.count
            var rng = SeededRNG(seed: seed, stream: "learned-fusion.epoch.\(epoch)")
            let perm = Array(all.indices).shuffled(using: &rng)
            out.append(all[perm[i]])
            pos += 1
        }
        return out
    }
}

/// Adam on a flat Double vector (the coefficient parameters are few; no weight decay, the
/// penalties are explicit).
struct VectorAdam {
    var m: [Double], v: [Double]
    var t = 0
    init(count: Int) { m = [Double](repeating: 0, count: count); v = m }
    mutating func step(_ x: inout [Double], grad g: [Double], lr: Double) {
        t += 1
        AdamRule.step(&x, g, &m, &v, t: t, lr: lr)
    }
}

/// How parameters θ map to coefficients c[adapter][block], and the chain rule back.
protocol CoefficientMap {
    var parameterCount: Int { get }
    var granularity: CoefficientGranularity { get }
    func initialParameters(_ options: LearnedFusionOptions) -> [Double]
    func coefficients(_ theta: [Double]) -> [[Double]]
    /// dL/dθ from dL/dc.
    func pullback(_ theta: [Double], _ dc: [[Double]]) -> [Double]
}

/// Shared gradient loop of aTLAS and cat-learned: Adam on θ over seeded minibatches, penalty
/// on θ, validation every `evalEvery` steps with patience, the best-validation θ kept.
enum GradientCoefficientSearch {
    static func run(method: LearnedFusionMethod, problem: LearnedProblem, map: some CoefficientMap,
                    options o: LearnedFusionOptions,
                    progress: (@Sendable (Int, Int, Double) -> Void)?) throws -> LearnedFusionResult {
        var theta = map.initialParameters(o)
        var adam = VectorAdam(count: theta.count)
        let hasVal = !problem.val.isEmpty
        let evalEvery = o.evalEvery ?? max(1, o.steps / 10)
        let initialTrain = problem.loss(problem.train, lora: problem.parameters(map.coefficients(theta)))
        let initialVal = hasVal ? problem.loss(problem.val, lora: problem.parameters(map.coefficients(theta))) : nil
        var curve = [LossPoint(step: 0, trainLoss: initialTrain, valLoss: initialVal)]
        var best = (step: 0, theta: theta, val: initialVal ?? .infinity)
        var sinceBest = 0
        for step in 1...o.steps {
            let batch = problem.batch(step: step, size: o.batchSize, seed: o.seed)
            let (loss, dc) = problem.lossAndGradient(batch, coefficients: map.coefficients(theta))
            var g = map.pullback(theta, dc)
            for i in g.indices {
                let x = theta[i]
                g[i] += Double(o.l1) * (x > 0 ? 1 : (x < 0 ? -1 : 0)) + 2 * Double(o.l2) * x
            }
            guard g.allSatisfy(\.isFinite), loss.isFinite else {
                throw FusionError.invalidParameter(method: method.rawValue, parameter: "learning rate",
                                                   value: "\(o.learningRate)",
                                                   expected: "a smaller value (loss or gradient became non-finite at step \(step))")
            }
            adam.step(&theta, grad: g, lr: Double(o.learningRate))
            var point = LossPoint(step: step, trainLoss: loss)
            var stop = false
            if hasVal && (step % evalEvery == 0 || step == o.steps) {
                let v = problem.loss(problem.val, lora: problem.parameters(map.coefficients(theta)))
                point.valLoss = v
                if v < best.val {
                    best = (step, theta, v); sinceBest = 0
                } else {
                    sinceBest += 1
                    if let p = o.patience, sinceBest >= p { stop = true }
                }
            }
            curve.append(point)
            progress?(step, o.steps, loss)
            if stop { break }
        }
        if !hasVal { best = (curve.last!.step, theta, .infinity) }
        let c = map.coefficients(best.theta)
        let finalTrain = problem.loss(problem.train, lora: problem.parameters(c))
        let adapter = try problem.fold(c, rank: o.foldRank, seed: o.seed, name: "fused")
        let coeffs = LearnedCoefficients(
            method: method.rawValue, granularity: map.granularity, adapterNames: problem.adapters.map(\.name),
            values: problem.tabulate(c), parameters: best.theta, lossCurve: curve,
            initialTrainLoss: initialTrain, finalTrainLoss: finalTrain, initialValLoss: initialVal,
            finalValLoss: hasVal ? best.val : nil, bestStep: best.step, seed: o.seed, options: o.record(method))
        return LearnedFusionResult(adapter: adapter, coefficients: coeffs)
    }
}

extension LearnedFusionOptions {
    /// The options that shaped a run, as strings for coefficients.json.
    func record(_ method: LearnedFusionMethod) -> [String: String] {
        var d: [String: String] = ["seed": "\(seed)", "initial_coefficient": "\(initialCoefficient)",
                                   "fold_rank": foldRank.map(String.init) ?? "concat",
                                   "shots_per_task": shotsPerTask.map(String.init) ?? "all",
                                   "val_per_task": valPerTask.map(String.init) ?? "all"]
        switch method {
        case .lorahub:
            d["evaluations"] = "\(evaluations)"; d["composition"] = lorahubComposition
            d["l1_mean_abs"] = "\(l1)"; d["bound"] = "\(lorahubBound)"; d["sigma"] = "\(lorahubSigma)"
        case .atlas, .catLearned:
            d["steps"] = "\(steps)"; d["learning_rate"] = "\(learningRate)"; d["batch"] = "\(batchSize)"
            d["granularity"] = granularity.rawValue; d["l1"] = "\(l1)"; d["l2"] = "\(l2)"
            d["patience"] = patience.map(String.init) ?? "none"
            d["eval_every"] = evalEvery.map(String.init) ?? "auto"
            if method == .catLearned { d["cat_scale"] = catScale.map { "\($0)" } ?? "adapters" }
        }
        return d
    }
}

extension LearnedCoefficients {
    /// Pretty, key-sorted JSON (what `coefficients.json` holds).
    public func jsonData() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try enc.encode(self)
    }

    /// `step,train_loss,val_loss` per row of the loss curve (val empty where not computed).
    public func lossCSV() -> String {
        var s = "step,train_loss,val_loss\n"
        for p in lossCurve { s += "\(p.step),\(p.trainLoss),\(p.valLoss.map { "\($0)" } ?? "")\n" }
        return s
    }

    public func lossChartSVG() -> String {
        var series = [SVGLineChart.Series(name: "train loss", points: lossCurve.map { (Double($0.step), $0.trainLoss) })]
        let v = lossCurve.compactMap { p in p.valLoss.map { (Double(p.step), $0) } }
        if !v.isEmpty { series.append(SVGLineChart.Series(name: "val loss", points: v, markers: true)) }
        return SVGLineChart(title: "\(method) coefficient learning", xLabel: method == "lorahub" ? "loss evaluation" : "step",
                            yLabel: "few-shot loss (nats / answer token)", series: series).render()
    }
}

extension LearnedFusionResult {
    /// Writes the fused adapter as PEFT into `directory` with coefficients.json, loss.csv and
    /// loss.svg, all or nothing, through `OutputGuard` (inputs in `protecting` are never touched;
    /// an existing non-empty folder is replaced only with `force`).
    public func write(to directory: String, dtype: DType = .f32, protecting: [String] = [], force: Bool = false) throws {
        let target = try OutputGuard.check(directory, kind: .directory, inputs: protecting, force: force)
        try OutputGuard.writeDirectory(target) { dir in
            try PEFTAdapter.writeFiles(adapter, into: dir, dtype: dtype, path: directory)
            try coefficients.jsonData().write(to: dir.appendingPathComponent("coefficients.json"))
            try coefficients.lossCSV().write(to: dir.appendingPathComponent("loss.csv"), atomically: true, encoding: .utf8)
            try coefficients.lossChartSVG().write(to: dir.appendingPathComponent("loss.svg"), atomically: true, encoding: .utf8)
        }
    }
}
