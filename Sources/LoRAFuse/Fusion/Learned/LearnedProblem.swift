import Foundation

// The few-shot objective every learned method optimises: the adapters split into blocks, the
// tokenized shots, the loss through the training engine and its exact coefficient gradient, and
// the fold of chosen coefficients into one adapter.

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
    var target: Projection
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
        let targets = Projection.allCases.filter { t in blocks.contains { $0.target == t } }
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
            let ts = Projection.allCases.filter { t in blocks.contains { $0.target == t } }
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
            let id = LlamaWeights.linearID(layer: b.layer, b.target)
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
        guard case let .projection(l, t)? = ModuleAddress(peft: moduleName), l < layers else { return nil }
        return LlamaWeights.linearID(layer: l, t)
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
