import Foundation

// Settings of a learned fusion and the defaults the CLI and the report start from.

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
