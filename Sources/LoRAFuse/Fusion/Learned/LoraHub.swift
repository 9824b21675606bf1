import Foundation

/// LoraHub (Huang et al., arXiv 2307.13269): one weight w_i per adapter, found by a
/// derivative-free search (CMA-ES here, as in LoraHub's nevergrad setup) on
///     few-shot loss(w) + α · mean_i |w_i|      (LoraHub: α = 0.05, w_i ∈ [−1.5, 1.5])
/// within a budget of loss evaluations (forward passes only; no gradients are needed).
///
/// Composition. LoraHub itself composes the factors separately,
///     A' = Σ_i w_i A_i,  B' = Σ_i w_i B_i,  ΔW' = s · B'A' = s · Σ_i Σ_j w_i w_j B_i A_j,
/// which carries cross terms w_i w_j B_i A_j (i ≠ j) between unrelated adapters and needs equal
/// ranks ("factors"). The default here ("exact") applies ΔW' = Σ_i w_i s_i B_i A_i through the
/// exact concatenation, which is what the weights are meant to express.
enum LoraHubSearch {
    /// LoraHub's α, the weight of mean_i |w_i| in the objective (`LearnedFusionOptions.defaults`).
    static let paperL1: Float = 0.05

    static func run(problem: LearnedProblem, options o: LearnedFusionOptions,
                    progress: (@Sendable (Int, Int, Double) -> Void)?) throws -> LearnedFusionResult {
        let n = problem.adapterCount
        let factors = o.lorahubComposition == "factors"
        if factors { try checkFactorCompatible(problem) }
        func lora(_ w: [Double]) -> LoRAParameters {
            factors ? factorParameters(problem, w) : problem.parameters(broadcast(w, problem))
        }
        var curve: [LossPoint] = []
        var bestIndex = 1, bestObjective = Double.infinity
        let bound = o.lorahubBound
        let x0 = [Double](repeating: min(max(o.initialCoefficient, -bound), bound), count: n)
        let result = CMAES.minimize({ w in
            let l = problem.loss(problem.train, lora: lora(w))
            curve.append(LossPoint(step: curve.count + 1, trainLoss: l))
            progress?(curve.count, o.evaluations, l)
            let objective = l + Double(o.l1) * w.reduce(0) { $0 + abs($1) } / Double(n)
            if objective < bestObjective { bestObjective = objective; bestIndex = curve.count }
            return objective
        }, x0: x0, sigma: o.lorahubSigma, budget: o.evaluations, seed: o.seed, bounds: -bound...bound)
        let w = result.x
        let hasVal = !problem.val.isEmpty
        let initialVal = hasVal ? problem.loss(problem.val, lora: lora(x0)) : nil
        let finalVal = hasVal ? problem.loss(problem.val, lora: lora(w)) : nil
        let finalTrain = curve[bestIndex - 1].trainLoss

        let adapter: LoRAAdapter
        if factors {
            adapter = try foldFactors(problem, w, rank: o.foldRank, seed: o.seed)
        } else {
            adapter = try problem.fold(broadcast(w, problem), rank: o.foldRank, seed: o.seed, name: "fused")
        }
        let coeffs = LearnedCoefficients(
            method: LearnedFusionMethod.lorahub.rawValue, granularity: .adapter, adapterNames: problem.adapters.map(\.name),
            values: problem.tabulate(broadcast(w, problem)), parameters: w, lossCurve: curve,
            initialTrainLoss: curve[0].trainLoss, finalTrainLoss: finalTrain, initialValLoss: initialVal,
            finalValLoss: finalVal, bestStep: bestIndex, seed: o.seed, options: o.record(.lorahub))
        return LearnedFusionResult(adapter: adapter, coefficients: coeffs)
    }

    static func broadcast(_ w: [Double], _ p: LearnedProblem) -> [[Double]] {
        w.map { [Double](repeating: $0, count: p.blocks.count) }
    }

    static func checkFactorCompatible(_ p: LearnedProblem) throws {
        for b in p.blocks {
            let name = ModuleAddress.projection(layer: b.layer, b.target).hf
            guard b.parts.count == p.adapterCount else {
                let missing = (0..<p.adapterCount).first { a in !b.parts.contains { $0.adapter == a } }!
                throw FusionError.invalidParameter(method: "lorahub", parameter: "composition", value: "factors",
                                                   expected: "every adapter to adapt every module (adapter '\(p.adapters[missing].name)' lacks \(name)); use exact")
            }
            for part in b.parts where part.rank != b.parts[0].rank || part.scale != b.parts[0].scale {
                throw FusionError.invalidParameter(
                    method: "lorahub", parameter: "composition", value: "factors",
                    expected: "equal ranks and scales on \(name) (adapter '\(p.adapters[b.parts[0].adapter].name)' r=\(b.parts[0].rank) s=\(b.parts[0].scale), '\(p.adapters[part.adapter].name)' r=\(part.rank) s=\(part.scale)); use exact")
            }
        }
    }

    /// LoraHub's A' = Σ w_i A_i, B' = Σ w_i B_i per block (scale shared by all inputs).
    static func factorModules(_ p: LearnedProblem, _ w: [Double]) -> [(A: [Float], B: [Float], rank: Int, scale: Float)] {
        p.blocks.map { b in
            let r = b.parts[0].rank
            var A = [Float](repeating: 0, count: r * b.inFeatures), B = [Float](repeating: 0, count: b.outFeatures * r)
            for part in b.parts {
                let f = Float(w[part.adapter])
                for k in A.indices { A[k] += f * part.A[k] }
                for k in B.indices { B[k] += f * part.B[k] }
            }
            return (A, B, r, b.parts[0].scale)
        }
    }

    static func factorParameters(_ p: LearnedProblem, _ w: [Double]) -> LoRAParameters {
        p.parameters(modules: factorModules(p, w))
    }

    static func foldFactors(_ p: LearnedProblem, _ w: [Double], rank: Int?, seed: UInt64) throws -> LoRAAdapter {
        var modules: [String: LoRAModule] = [:]
        for (b, m) in zip(p.blocks, factorModules(p, w)) {
            let name = ModuleAddress.projection(layer: b.layer, b.target).peft
            modules[name] = LoRAModule(A: Matrix(rows: m.rank, cols: b.inFeatures, data: m.A),
                                       B: Matrix(rows: b.outFeatures, cols: m.rank, data: m.B), scale: m.scale)
        }
        let composed = LoRAAdapter(name: "lorahub", modules: modules, metadata: p.adapters[0].metadata,
                                   sourceDType: p.adapters[0].sourceDType)
        let method: any FusionMethod = rank.map { SVDFusion(rank: $0) } ?? CatFusion()
        return try Fuser.fuse([composed], weights: [1], method: method, seed: seed, name: "fused").0
    }
}
