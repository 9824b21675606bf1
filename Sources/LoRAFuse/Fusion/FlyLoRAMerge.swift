import Foundation

// Fusing FlyLoRA adapters. Their per-token rank choice has no dense ΔW, so the fusion methods that
// work on ΔW (or on factors as if they stood for one) cannot take them. What the FlyLoRA authors
// merge (their merge_lora_adapters.py, every task trained from one seed, so one A) is a parameter
// average; with `linear`'s weights w_i (task arithmetic) that is, per module, with A shared:
//
//     A' = A          B' = Σ_i w_i s_i B_i   (scale folded in)          d' = Σ_i w_i d_i / Σ_i w_i
//
// and the fused module keeps the top-k choice over |x A'ᵀ + d'|. The bias is a weighted mean (not
// a sum) because it shifts magnitudes of u, which do not grow with the number of tasks; with equal
// weights it is the authors' average. Adapters with different A (other seeds, ranks or targets)
// are refused: stacking them would need a choice per source adapter, which no file format holds.

extension Fuser {
    /// `linear` over FlyLoRA adapters that share A. `adapters` must all be rank-gated.
    static func fuseRankGated(_ adapters: [LoRAAdapter], weights: [Float], method: any FusionMethod,
                              name: String) throws -> (LoRAAdapter, FusionReport) {
        let start = Date()
        guard let lin = method as? LinearFusion, lin.rank == nil else {
            let gated = adapters.first { $0.isRankGated }!
            try gated.requireDense("fusion by '\(method.name)'\(method is LinearFusion ? " with rank" : "")")
            fatalError("unreachable: a rank-gated adapter passed requireDense")
        }
        let ref = adapters[0]
        for a in adapters {
            if let m = a.moduleNames.first(where: { a.modules[$0]!.rankGate?.router != nil }) {
                throw RankGateError.notDense(adapter: a.name, module: m, operation: "fusion (a router is trained per adapter; averaging routers has no meaning the method defines)",
                                             kind: a.modules[m]!.rankGate!.kindName)
            }
            if let m = a.moduleNames.first(where: { a.modules[$0]!.rankGate == nil }) {
                let gated = adapters.first { $0.isRankGated }!
                throw FusionError.rankGatedMismatch(adapter1: gated.name, adapter2: a.name, module: m,
                                                    reason: "'\(a.name)' is a plain LoRA there; FlyLoRA adapters fuse only with FlyLoRA adapters that share A")
            }
            guard Set(a.modules.keys) == Set(ref.modules.keys) else {
                let diff = Set(a.modules.keys).symmetricDifference(ref.modules.keys).sorted(by: naturalLess)[0]
                throw FusionError.rankGatedMismatch(adapter1: ref.name, adapter2: a.name, module: diff,
                                                    reason: "adapts it in one and not the other (FlyLoRA adapters fuse module by module on one shared A)")
            }
        }
        var total = weights.reduce(0, +)
        if total == 0 { total = 1 }
        var fused: [String: LoRAModule] = [:], reports: [ModuleFusionReport] = []
        for n in ref.moduleNames {
            let m0 = ref.modules[n]!, g0 = m0.rankGate!
            var B = [Float](repeating: 0, count: m0.B.count)
            var d = [Float](repeating: 0, count: g0.rank)
            for (a, w) in zip(adapters, weights) {
                let m = a.modules[n]!, g = m.rankGate!
                guard m.A == m0.A else {
                    throw FusionError.rankGatedMismatch(adapter1: ref.name, adapter2: a.name, module: n,
                                                        reason: "different A (FlyLoRA's frozen router): train both from one --seed with the same --rank and --targets")
                }
                guard g.topK == g0.topK else {
                    throw FusionError.rankGatedMismatch(adapter1: ref.name, adapter2: a.name, module: n,
                                                        reason: "top-k \(g0.topK) and \(g.topK)")
                }
                let c = w * m.scale
                for i in B.indices { B[i] += c * m.B.data[i] }
                for j in d.indices { d[j] += w / total * g.bias[j] }
            }
            fused[n] = LoRAModule(A: m0.A, B: Matrix(rows: m0.B.rows, cols: m0.B.cols, data: B), scale: 1,
                                  kind: m0.kind, rankGate: RankGate(topK: g0.topK, bias: d))
            reports.append(ModuleFusionReport(module: n, rank: m0.rank, adapters: adapters.count, retainedEnergy: nil))
        }
        var meta = ref.metadata
        meta.alpha = Double(meta.rank)     // scale folded into B: s = α/r = 1
        meta.useRSLoRA = false
        meta.rankPattern = [:]
        meta.alphaPattern = [:]
        let adapter = LoRAAdapter(name: name, modules: fused, metadata: meta, sourceDType: ref.sourceDType)
        return (adapter, FusionReport(method: method.name, modules: reports, warnings: [], seconds: Date().timeIntervalSince(start)))
    }
}
