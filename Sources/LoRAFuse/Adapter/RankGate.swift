import Foundation

// FlyLoRA (Zou et al., NeurIPS 2025, "FlyLoRA: Boosting Task Decoupling and Parameter Efficiency
// via Implicit Rank-Wise Mixture-of-Experts"): each rank of a LoRA module is an expert and the
// frozen, sparse, random A is the router. Per token, with u = x Aᵀ (r values) and a balancing
// bias d (r values, not trained by the optimizer):
//
//     keep  = the k ranks of largest |u_j + d_j|          (ties: the lower rank)
//     y    += s · Σ_{j ∈ keep} u_j B[:, j]                (d only chooses; it is not added)
//
// as the authors' `flylora.py`. Their modified PEFT layer takes top-k of the signed u + d instead
// and updates d in every forward, inference included; we follow the paper and `flylora.py`
// (magnitude, d updated only while training). The top-k choice has no gradient.

/// Per-token top-k selection of a LoRA module's ranks: FlyLoRA (scores |u + d| from the frozen A
/// itself, kept ranks pass unchanged), SMoRA (scores x W_gᵀ + d from a trained router, kept ranks
/// weighted by the softmax of their router logits) or LoRAMoE (the ranks grouped into experts of
/// `ranksPerExpert` each, every expert kept, weighted by the softmax of the router's logits; see
/// `Train/LoRAMoE.swift`). `bias` has one entry per expert (a rank, for FlyLoRA and SMoRA).
public struct RankGate: Sendable, Equatable {
    /// Experts kept per token (k < experts; k = experts, a dense softmax, needs a router).
    public var topK: Int
    /// The balancing bias d (experts), added to the scores before they are ranked; never to the output.
    public var bias: [Float]
    /// The router W_g (experts, in), row-major; nil for FlyLoRA.
    public var router: [Float]?
    /// Consecutive ranks that form one expert and share its weight (1: each rank is an expert).
    public var ranksPerExpert: Int
    /// MixLoRA: the module is one projection of a layer whose FFN is a mixture of whole-FFN experts
    /// (`Train/MixLoRA.swift`). Its expert blocks are not gated one projection at a time: the
    /// layer's router (E, hidden), the same on each of its mixture modules, picks the experts
    /// per token for gate, up and down together (`MixtureFFN`); `select` is never called on it.
    public var wholeFFN: Bool = false

    public init(topK: Int, bias: [Float], router: [Float]? = nil, ranksPerExpert: Int = 1, wholeFFN: Bool = false) {
        precondition(ranksPerExpert >= 1 && (router != nil || ranksPerExpert == 1), "FlyLoRA's gate is per rank")
        precondition(topK >= 1 && (topK < bias.count || (router != nil && topK == bias.count)), "top-k \(topK) of \(bias.count) experts")
        precondition(router.map { $0.count % bias.count == 0 && !$0.isEmpty } ?? true, "router of \(router?.count ?? 0) values for \(bias.count) experts")
        self.topK = topK
        self.bias = bias
        self.router = router
        self.ranksPerExpert = ranksPerExpert
        self.wholeFFN = wholeFFN
    }

    /// Ranks of the module the gate applies to.
    public var rank: Int { bias.count * ranksPerExpert }
    /// Experts the router chooses among.
    public var experts: Int { bias.count }
    /// Whether every expert is kept for every token (LoRAMoE's dense softmax).
    public var isDense: Bool { topK == bias.count }

    /// What chooses the ranks, for messages.
    public var kindName: String {
        wholeFFN ? "MixLoRA" : router == nil ? "FlyLoRA" : isDense || ranksPerExpert > 1 ? "LoRAMoE" : "SMoRA"
    }

    /// Applies the gate to each of `rows` rows of `u` (rows, r, leading dimension r): ranks of unkept
    /// experts become 0, kept ones are multiplied by their expert's weight (FlyLoRA 1, else the softmax over the
    /// kept ranks of the router logits x W_gᵀ). `x` (rows, in) is the module's input, needed with a
    /// router. `weights` (rows, r), when given, receives each rank's weight (0 for unkept);
    /// `counts` (experts), when given, is incremented for every kept expert.
    public func select(_ u: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>? = nil, rows: Int,
                       weights: UnsafeMutablePointer<Float>? = nil, counts: UnsafeMutablePointer<Int>? = nil) {
        precondition(!wholeFFN, "a MixLoRA module is applied by its layer's MixtureFFN")
        let e = bias.count
        // Router logits live in temporary storage: this runs once per projection per decoded token,
        // and a heap array there showed up as allocator traffic in the serve path.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: router == nil ? 0 : rows * e) { lp in
            if let w = router {
                precondition(x != nil, "a router gate needs the module's input")
                let nIn = w.count / e
                w.withUnsafeBufferPointer { wp in
                    BLAS.gemm(transA: false, transB: true, m: rows, n: e, k: nIn, alpha: 1, a: x!, lda: nIn,
                              b: wp.baseAddress!, ldb: nIn, beta: 0, c: lp.baseAddress!, ldc: e)    // l (rows, experts)
                }
            }
            choose(u, logits: router == nil ? nil : UnsafePointer(lp.baseAddress!), rows: rows, weights: weights, counts: counts)
        }
    }

    private func choose(_ u: UnsafeMutablePointer<Float>, logits lg: UnsafePointer<Float>?, rows: Int,
                        weights: UnsafeMutablePointer<Float>?, counts: UnsafeMutablePointer<Int>?) {
        let e = bias.count, g = ranksPerExpert, r = e * g, k = topK
        let routed = lg != nil
        bias.withUnsafeBufferPointer { d in
            withUnsafeTemporaryAllocation(of: Int.self, capacity: k) { chosen in
                withUnsafeTemporaryAllocation(of: Float.self, capacity: e) { wt in
                    for t in 0..<rows {
                        let row = u + t * r
                        if isDense {
                            for j in 0..<e { chosen[j] = j }
                        } else {
                            func score(_ j: Int) -> Float { routed ? lg![t * e + j] + d[j] : abs(row[j] + d[j]) }
                            // Insertion into a list of k sorted by score: r is small (8–64), k smaller.
                            var n = 0
                            for j in 0..<e {
                                let s = score(j)
                                if n == k && !(s > score(chosen[k - 1])) { continue }
                                var p = min(n, k - 1)
                                while p > 0 && s > score(chosen[p - 1]) {
                                    chosen[p] = chosen[p - 1]
                                    p -= 1
                                }
                                chosen[p] = j
                                n = min(n + 1, k)
                            }
                        }
                        for j in 0..<e { wt[j] = 0 }
                        if routed {
                            var m = -Float.infinity
                            for i in 0..<k { m = max(m, lg![t * e + chosen[i]]) }
                            var z: Float = 0
                            for i in 0..<k { let v = expf(lg![t * e + chosen[i]] - m); wt[chosen[i]] = v; z += v }
                            for i in 0..<k { wt[chosen[i]] /= z }
                        } else {
                            for i in 0..<k { wt[chosen[i]] = 1 }
                        }
                        for i in 0..<k { counts?[chosen[i]] += 1 }
                        for j in 0..<r {
                            let w = wt[j / g]
                            row[j] *= w
                            weights?[t * r + j] = w
                        }
                    }
                }
            }
        }
    }

    /// The sign-based balancing update of d after a training step, d_j += rate · sign(c̄ − c_j),
    /// where c_j counts the tokens that kept rank j and c̄ is their mean (FlyLoRA, after
    /// DeepSeek's auxiliary-loss-free balancing): ranks chosen less than average become likelier.
    public mutating func balance(counts: [Int], rate: Float) {
        Self.balance(&bias, counts: counts, rate: rate)
    }

    /// The same update on a bare bias vector (the trainers keep d apart from any gate).
    public static func balance(_ bias: inout [Float], counts: [Int], rate: Float) {
        precondition(counts.count == bias.count, "one count per expert")
        let mean = Float(counts.reduce(0, +)) / Float(max(counts.count, 1))
        for j in bias.indices {
            let c = Float(counts[j])
            bias[j] += rate * (c < mean ? 1 : c > mean ? -1 : 0)
        }
    }
}

/// An adapter whose modules choose ranks per token cannot be turned into a dense ΔW: operations
/// that need one refuse it by name.
public enum RankGateError: Error, CustomStringConvertible, Equatable {
    /// `kind` names the mixture (`RankGate.kindName`): FlyLoRA, SMoRA, LoRAMoE or MixLoRA.
    case notDense(adapter: String, module: String, operation: String, kind: String)

    public var description: String {
        switch self {
        case let .notDense(a, m, op, kind):
            return "adapter '\(a)' is a \(kind) adapter (module '\(m)' weights its ranks per token): \(op) needs a plain LoRA, whose update is the same for every token. FlyLoRA, SMoRA, LoRAMoE and MixLoRA adapters run unmerged in eval, generate, report and serve; FlyLoRA adapters fuse with `linear` when they share A (same --seed, --rank, --targets)"
        }
    }
}

extension LoRAAdapter {
    /// Whether any module weights its ranks per token (FlyLoRA, SMoRA, LoRAMoE).
    public var isRankGated: Bool { modules.values.contains { $0.rankGate != nil } }

    /// Throws `RankGateError.notDense` naming `operation` when a module selects ranks per token.
    public func requireDense(_ operation: String) throws {
        if let m = moduleNames.first(where: { modules[$0]!.rankGate != nil }) {
            throw RankGateError.notDense(adapter: name, module: m, operation: operation, kind: modules[m]!.rankGate!.kindName)
        }
    }
}
