import Foundation

// GenKnowSub (general knowledge subtraction; Bhardwaj et al., used with Arrow routing in PEFT's
// `tuners/lora/arrow.py`): before routing, the mean of some "general" adapters (trained on plain
// text rather than on a task) is subtracted from every task adapter, so that what the experts
// share with general language modelling does not decide the routing or get applied G times.
//
// Two compositions of "task − mean(general)":
//
//   exact    ΔW'_i = s_i B_i A_i − (1/G) Σ_g s_g B_g A_g, held exactly as one LoRA of rank
//            r_i + Σ r_g: A' = [A_i; A_1; …; A_G], B' = [s_i B_i, −s_1 B_1 / G, …, −s_G B_G / G],
//            scale 1 (the CAT fusion of the task adapter at weight 1 and each general one at −1/G).
//            A module only the general adapters touch becomes −mean(general) there.
//   factors  PEFT's arithmetic: A'_i = A_i − mean_g A_g and B'_i = B_i − mean_g B_g (raw factors,
//            the task's own scaling kept), so ΔW'_i = s_i (B_i − B̄)(A_i − Ā), which holds cross
//            terms −B_i Ā − B̄ A_i + B̄ Ā instead of −mean ΔW_g; needs equal ranks per module and
//            touches only the task adapter's modules. For matching PEFT's numbers.
//
// The routed folder records the general adapters (path and digest, checked on load like the
// experts) and the composition; loading re-does the subtraction, so no altered copy of a user's
// adapter is ever written.
//
// Applying `exact` cheaply: every gate's weights over the experts sum to 1 (a softmax over the
// kept scores, per projection or, for X-LoRA, per layer), so Σ_i g_i (ΔW_i − Ḡ) = Σ_i g_i ΔW_i − Ḡ.
// A loaded folder therefore routes over the experts as they are and applies −Ḡ once, unrouted, at
// every routed projection (`RoutedModel.fixed`), instead of carrying Ḡ's ranks in each of the N
// experts; the gates (fitted on the subtracted experts) are what tell the two ways apart, not the
// forward. The per-request router merges its picks with weights that also sum to 1, but resolves
// to plain adapter sets, so it keeps the subtracted experts; so does `factors`, which is not linear.

public enum GenKnowSubComposition: String, CaseIterable, Sendable, Codable {
    case exact, factors
}

/// What `router_config.json` records of a subtraction.
public struct GeneralKnowledge: Codable, Equatable, Sendable {
    public var composition: GenKnowSubComposition
    public var adapters: [RouterAdapterEntry]

    public init(composition: GenKnowSubComposition, adapters: [RouterAdapterEntry]) {
        self.composition = composition
        self.adapters = adapters
    }
}

public enum GenKnowSubError: Error, CustomStringConvertible, Equatable {
    case rankMismatch(task: String, general: String, module: String, taskRank: Int, generalRank: Int)
    case missingModule(task: String, general: String, module: String)
    case shapeMismatch(task: String, general: String, module: String, taskShape: [Int], generalShape: [Int])
    case sameAdapter(name: String)

    public var description: String {
        switch self {
        case let .rankMismatch(t, g, m, rt, rg):
            return "--gks-composition factors subtracts factor by factor (PEFT's GenKnowSub) and needs equal ranks: module \(m) has rank \(rt) in '\(t)' but \(rg) in general adapter '\(g)'; use --gks-composition exact"
        case let .missingModule(t, g, m):
            return "--gks-composition factors: general adapter '\(g)' has no LoRA on \(m), which '\(t)' adapts; use --gks-composition exact (a missing module counts as zero there)"
        case let .shapeMismatch(t, g, m, ts, gs):
            return "module \(m): '\(t)' updates a \(ts) weight but general adapter '\(g)' a \(gs) one; they are not for the same base model"
        case let .sameAdapter(n):
            return "'\(n)' is given both as an expert and as a general adapter; subtracting it from itself leaves nothing of it"
        }
    }
}

public enum GenKnowSub {
    /// −(1/G) Σ_g ΔW_g as one LoRA (the general adapters concatenated, rank Σ r_g).
    public static func negatedMean(_ general: [LoRAAdapter]) throws -> LoRAAdapter {
        precondition(!general.isEmpty)
        for g in general { try g.requireDense("GenKnowSub") }
        let method = try FusionMethods.make(name: "cat", parameters: FusionParameters())
        let G = Float(general.count)
        var (out, _) = try Fuser.fuse(general, weights: general.map { _ in -1 / G }, method: method, name: "genknowsub-mean")
        out.sourcePath = nil
        return out
    }

    /// `task` with the mean of `general` subtracted (see the top of this file); same name.
    public static func subtract(_ general: [LoRAAdapter], from task: LoRAAdapter,
                                composition: GenKnowSubComposition) throws -> LoRAAdapter {
        try subtract(general, from: [task], composition: composition)[0]
    }

    /// Each of `tasks` with the mean of `general` subtracted; the mean is built once for all.
    public static func subtract(_ general: [LoRAAdapter], from tasks: [LoRAAdapter],
                                composition: GenKnowSubComposition) throws -> [LoRAAdapter] {
        precondition(!general.isEmpty)
        for a in tasks + general { try a.requireDense("GenKnowSub") }
        switch composition {
        case .exact:
            let mean = try negatedMean(general)
            let cat = try FusionMethods.make(name: "cat", parameters: FusionParameters())
            return try tasks.map { task in
                var (out, _) = try Fuser.fuse([task, mean], weights: [1, 1], method: cat, name: task.name)
                out.name = task.name
                out.sourcePath = task.sourcePath
                return out
            }
        case .factors:
            return try tasks.map { try subtractFactors(general, from: $0) }
        }
    }

    /// PEFT's arithmetic on one task adapter (see the top of this file).
    private static func subtractFactors(_ general: [LoRAAdapter], from task: LoRAAdapter) throws -> LoRAAdapter {
        var out = task
        for (name, m) in task.modules {
            var sumA = [Float](repeating: 0, count: m.A.count), sumB = [Float](repeating: 0, count: m.B.count)
            for g in general {
                guard let gm = g.modules[name] else {
                    throw GenKnowSubError.missingModule(task: task.name, general: g.name, module: name)
                }
                guard gm.deltaShape == m.deltaShape else {
                    throw GenKnowSubError.shapeMismatch(task: task.name, general: g.name, module: name,
                                                        taskShape: m.deltaShape, generalShape: gm.deltaShape)
                }
                guard gm.rank == m.rank else {
                    throw GenKnowSubError.rankMismatch(task: task.name, general: g.name, module: name, taskRank: m.rank, generalRank: gm.rank)
                }
                for j in 0..<sumA.count { sumA[j] += gm.A.data[j] }
                for j in 0..<sumB.count { sumB[j] += gm.B.data[j] }
            }
            let G = Float(general.count)
            var A = m.A, B = m.B
            for j in 0..<A.data.count { A.data[j] -= sumA[j] / G }
            for j in 0..<B.data.count { B.data[j] -= sumB[j] / G }
            out.modules[name] = LoRAModule(A: A, B: B, scale: m.scale, kind: m.kind)
        }
        return out
    }
}
