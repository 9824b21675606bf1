import Foundation

// Flexora (Wei, Shu, He & Yu, "Flexora: Flexible Low-Rank Adaptation for Large Language Models",
// ACL 2025, arXiv 2408.10774): which layers to fine-tune, chosen as a hyperparameter-optimisation
// problem on a validation split, then plain LoRA on the chosen layers only.
//
// Search stage. Every layer l gets a weight on its LoRA output,
//
//     y = x Wᵀ + α_l · s · (x Aᵀ) Bᵀ,     α = L · softmax(α̂)      (L layers, α̂ ∈ R^L)
//
// α̂ starts at 0, so every α_l = 1 and the search starts as plain LoRA. Each search step is the
// first-order form of the paper's unrolled differentiation (as DARTS' first-order variant):
//   1. A and B take one AdamW step on a training batch, α fixed;
//   2. α̂ takes one Adam step on a validation batch, A and B fixed.
// With B_eff = α_l·B the training engine gives G = ∂L/∂B_eff, and
//     ∂L/∂B = α_l · G,   ∂L/∂α_l = Σ_{modules of l} ⟨G, B⟩,
//     ∂L/∂α̂_j = α_j ∂L/∂α_j − p_j Σ_i α_i ∂L/∂α_i        (p = softmax(α̂)),
// so neither pass of the model changes.
//
// Selection. Layers whose α_l > 1 (more than the uniform share: the validation loss asked for more
// of their LoRA) are kept, or the `keep` largest when given; at least one layer is kept.
//
// Fine-tuning stage. A fresh PEFT-initialised LoRA on the selected layers only (the same seed, data
// order and schedule as a plain run), without α: the output is a plain PEFT adapter whose
// adapter_config.json names the layers in `layers_to_transform`.

/// Settings of the search stage.
public struct FlexoraOptions: Sendable, Equatable {
    /// Search steps (one training and one validation batch each).
    public var searchSteps: Int
    /// Adam learning rate of the layer logits α̂.
    public var learningRate: Float = FlexoraOptions.defaultLearningRate
    /// How many layers to keep; nil: those with α_l > 1.
    public var keep: Int?

    public static let defaultLearningRate: Float = 5e-2

    public init(searchSteps: Int, learningRate: Float = FlexoraOptions.defaultLearningRate, keep: Int? = nil) {
        self.searchSteps = searchSteps; self.learningRate = learningRate; self.keep = keep
    }

    /// The default search length for a fine-tuning run of `steps` steps: a quarter of it, at least 10.
    public static func defaultSearchSteps(trainingSteps steps: Int) -> Int { max(10, (steps + 3) / 4) }
}

/// The search stage's A and B, with each layer's LoRA output weighted by α_l: what the trainer
/// optimises (A and B) while the search moves α̂ on validation batches between its steps.
final class FlexoraWeightedLoRA: TrainingVariant {
    let name = "flexora-search"
    var parameters: ParamSet
    /// α̂, one per layer.
    var logits: [Float]
    private let template: LoRAParameters
    private let layerCount: Int

    init(_ initial: LoRAParameters, layers: Int) {
        template = initial
        layerCount = layers
        logits = [Float](repeating: 0, count: layers)
        var p = ParamSet()
        for m in initial.modules {
            p.add("\(m.name).A", shape: [m.rank, m.inFeatures], values: m.A)
            p.add("\(m.name).B", shape: [m.outFeatures, m.rank], values: m.B)
        }
        parameters = p
    }

    /// α = L · softmax(α̂), and p = softmax(α̂).
    var weightsAndShares: (alpha: [Float], p: [Float]) {
        let mx = logits.max() ?? 0
        let e = logits.map { Double(exp($0 - mx)) }
        let z = e.reduce(0, +)
        // In Double, so α̂ = 0 gives every α exactly 1 (the search starts as plain LoRA, bit for bit).
        return (e.map { Float($0 / z * Double(layerCount)) }, e.map { Float($0 / z) })
    }
    var weights: [Float] { weightsAndShares.alpha }

    /// The unweighted factors (A, B as trained).
    var plainFactors: LoRAParameters {
        var f = template
        for i in f.modules.indices {
            f.modules[i].A = parameters["\(f.modules[i].name).A"]
            f.modules[i].B = parameters["\(f.modules[i].name).B"]
        }
        return f
    }

    func factors() -> LoRAParameters {
        let a = weights
        var f = plainFactors
        for i in f.modules.indices {
            let w = a[f.modules[i].layer]
            f.modules[i].B = f.modules[i].B.map { $0 * w }
        }
        return f
    }

    func parameterGradients(_ g: LoRAGradients) -> ParamSet {
        let a = weights
        var out = parameters.zeros()
        for (i, m) in template.modules.enumerated() {
            out["\(m.name).A"] = g.dA[i]
            let w = a[m.layer]
            out["\(m.name).B"] = g.dB[i].map { $0 * w }
        }
        return out
    }

    /// ∂L/∂α̂ from ∂L/∂(A, B_eff) of `factors()`.
    func logitGradients(_ g: LoRAGradients) -> [Float] {
        let (a, p) = weightsAndShares
        var dAlpha = [Double](repeating: 0, count: layerCount)
        for (i, m) in template.modules.enumerated() {
            let b = parameters["\(m.name).B"]
            var s = 0.0
            for (x, y) in zip(g.dB[i], b) { s += Double(x) * Double(y) }
            dAlpha[m.layer] += s
        }
        let weighted = (0..<layerCount).map { Double(a[$0]) * dAlpha[$0] }
        let total = weighted.reduce(0, +)
        return (0..<layerCount).map { Float(weighted[$0] - Double(p[$0]) * total) }
    }

    var storedBytes: Int { parameters.count * 4 }

    /// The search stage's weights are not an output: `FlexoraSearch` records α, and the fine-tuning
    /// stage writes the adapter. Written here, they are the weighted factors as a PEFT adapter.
    func writeFiles(into dir: URL, name: String, baseModel: String?, path: String) throws {
        try PEFTAdapter.writeFiles(factors().adapter(name: name, baseModel: baseModel), into: dir, dtype: .f32, path: path)
    }
}

/// What the search found, written as `flexora.json` beside the adapter.
public struct FlexoraSelection: Codable, Sendable, Equatable {
    public static let fileName = "flexora.json"
    public var method = "flexora (Wei et al. 2025): α = L·softmax(α̂), first-order alternating search"
    /// α_l per layer after the search.
    public var weights: [Double]
    /// α̂ per layer.
    public var logits: [Double]
    /// Layers chosen for the fine-tuning stage, ascending.
    public var selected: [Int]
    /// "alpha > 1" or "top <k>".
    public var rule: String
    public var searchSteps: Int
    public var learningRate: Float
    /// Per search step: training loss of the LoRA step, validation loss of the α̂ step's batch.
    public var trainLoss: [Double]
    public var valLoss: [Double]

    enum CodingKeys: String, CodingKey {
        case method, weights, logits, selected, rule, searchSteps = "search_steps", learningRate = "learning_rate"
        case trainLoss = "train_loss", valLoss = "val_loss"
    }

    /// Layers with α_l > 1, or the `keep` largest (ties to the lower layer); at least one.
    public static func select(weights: [Double], keep: Int?) -> [Int] {
        let order = weights.indices.sorted { (weights[$0], -$0) > (weights[$1], -$1) }
        if let k = keep { return Array(order.prefix(max(1, k))).sorted() }
        let above = weights.indices.filter { weights[$0] > 1 }
        return above.isEmpty ? [order[0]] : above
    }

    public func json() throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try enc.encode(self), as: UTF8.self) + "\n"
    }

    /// α per layer as a bar chart, the selected layers in their own colour, 1 (uniform) marked.
    public func chartSVG() -> String {
        let chosen = Set(selected)
        let bars = weights.enumerated().map { l, w in
            SVGBarChart.Bar(label: "layer \(l)", value: w, color: chosen.contains(l) ? "#1f77b4" : "#bbbbbb")
        }
        return SVGBarChart(title: "Flexora layer weights α after \(searchSteps) search steps (\(rule))",
                           xLabel: "α = L·softmax(α̂)", bars: bars,
                           references: [SVGBarChart.Reference(label: "uniform", value: 1, color: "#d62728")],
                           legend: [("#1f77b4", "selected: fine-tuned"), ("#bbbbbb", "frozen")]).render()
    }
}

/// The search stage: A and B on training batches, α̂ on validation batches, alternating.
public final class FlexoraSearch {
    public let trainer: LoRATrainer
    public let options: FlexoraOptions
    let weighted: FlexoraWeightedLoRA
    private var logitAdam: ParamAdam
    private let val: [TrainingSequence]
    private let batchSize: Int
    private let seed: UInt64
    public private(set) var trainLoss: [Double] = []
    public private(set) var valLoss: [Double] = []

    /// `training` are the options of the run (the search uses their rank, targets, lr, batch and
    /// seed; it covers every layer and takes `flexora.searchSteps` steps of its own schedule).
    public init(model: LlamaModel, train: [TrainingSequence], val: [TrainingSequence], training: TrainingOptions,
                flexora: FlexoraOptions) throws {
        guard !val.isEmpty else {
            throw TrainError.badOption(option: "val", reason: "flexora chooses layers on a validation split: give --val")
        }
        guard flexora.searchSteps >= 1 else {
            throw TrainError.badOption(option: "flexora-search-steps", reason: "must be ≥ 1, got \(flexora.searchSteps)")
        }
        guard flexora.learningRate.isFinite && flexora.learningRate > 0 else {
            throw TrainError.badOption(option: "flexora-lr", reason: "must be finite and > 0, got \(flexora.learningRate)")
        }
        let L = model.config.numHiddenLayers
        if let k = flexora.keep, !(1...L).contains(k) {
            throw TrainError.badOption(option: "flexora-layers", reason: "must be in 1…\(L) (the model's layers), got \(k)")
        }
        var o = training
        o.steps = flexora.searchSteps; o.layers = nil; o.saveEvery = 0; o.evalEvery = 0
        let initial = LoRAParameters.initialize(config: model.config, rank: o.rank, alpha: o.alpha, targets: o.targets,
                                                rsLoRA: o.rsLoRA, seed: o.seed)
        weighted = FlexoraWeightedLoRA(initial, layers: L)
        trainer = try LoRATrainer(model: model, train: train, val: [], options: o, variant: weighted)
        options = flexora
        var z = ParamSet()
        z.add("logits", shape: [L], values: weighted.logits)
        logitAdam = ParamAdam(like: z, lr: flexora.learningRate)
        self.val = val
        batchSize = o.batchSize
        seed = o.seed
    }

    /// α_l per layer now.
    public var weights: [Double] { weighted.weights.map(Double.init) }
    public var logits: [Double] { weighted.logits.map(Double.init) }
    public var step: Int { trainer.step }

    /// The validation batch of search step `k` (1-based): a seeded pass over the split per epoch.
    func validationBatch(step k: Int) -> [TrainingSequence] {
        let first = (k - 1) * batchSize
        var cachedEpoch = -1, perm: [Int] = []
        return (first..<(first + batchSize)).map { pos in
            let e = pos / val.count
            if e != cachedEpoch {
                var rng = SeededRNG(seed: seed, stream: "flexora-val-epoch-\(e)")
                perm = rng.permutation(val.count); cachedEpoch = e
            }
            return val[perm[pos % val.count]]
        }
    }

    /// One search step: A and B on a training batch (α fixed), then α̂ on a validation batch (A and
    /// B fixed). Returns the two losses.
    @discardableResult
    public func searchStep() -> (train: Double, val: Double) {
        let row = trainer.trainStep()
        let batch = validationBatch(step: trainer.step)
        let (v, g) = trainer.engine.meanLossAndGradients(batch, lora: trainer.params)
        var p = ParamSet(), dp = ParamSet()
        p.add("logits", shape: [weighted.logits.count], values: weighted.logits)
        dp.add("logits", shape: [weighted.logits.count], values: weighted.logitGradients(g))
        logitAdam.update(&p, grads: dp)
        weighted.logits = p["logits"]
        trainer.params = weighted.factors()
        trainLoss.append(row.trainLoss); valLoss.append(v)
        return (row.trainLoss, v)
    }

    /// Runs the remaining search steps and returns the selection.
    public func run(progress: ((Int, Double, Double) -> Void)? = nil) -> FlexoraSelection {
        while trainer.step < options.searchSteps {
            let (t, v) = searchStep()
            progress?(trainer.step, t, v)
        }
        return selection()
    }

    public func selection() -> FlexoraSelection {
        let w = weights
        return FlexoraSelection(weights: w, logits: logits, selected: FlexoraSelection.select(weights: w, keep: options.keep),
                                rule: options.keep.map { "top \($0)" } ?? "alpha > 1", searchSteps: trainer.step,
                                learningRate: options.learningRate, trainLoss: trainLoss, valLoss: valLoss)
    }
}
