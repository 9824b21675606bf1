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
//
// Files: LearnedFusionOptions.swift (settings, the defaults the CLI and the report start from),
// LearnedProblem.swift (the objective: blocks, loss, coefficient gradient, fold),
// GradientCoefficientSearch.swift (Adam on θ for aTLAS and cat-learned; the maps in Atlas.swift
// and CatLearned.swift), LoraHub.swift + CMAES.swift (LoraHub's search), LearnedFusionResult.swift
// (the result, coefficients.json, loss.csv/.svg and writing it).

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

public enum LearnedFusion {
    /// Learns how to combine `adapters` from the few-shot `shots` (one `EvalTask` per task) and
    /// folds the result into one plain adapter. `val` (optional) drives early stopping and the
    /// choice of the kept coefficients. `progress(step, total, loss)` reports each optimizer step
    /// (or loss evaluation for lorahub) with its few-shot loss.
    public static func fuse(method: LearnedFusionMethod, adapters: [LoRAAdapter], model: LlamaModel,
                            shots: [EvalTask], val: [EvalTask], options: LearnedFusionOptions,
                            progress: (@Sendable (_ step: Int, _ total: Int, _ loss: Double) -> Void)?) throws -> LearnedFusionResult {
        try options.validate(method: method)
        for a in adapters { try a.requireDense("learned fusion (\(method.rawValue))") }
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
