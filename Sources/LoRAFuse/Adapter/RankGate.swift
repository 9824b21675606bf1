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
/// itself, kept ranks pass unchanged) or SMoRA (scores x W_gᵀ + d from a trained router, kept ranks
/// weighted by the softmax of their router logits). `bias` has one entry per rank.
public struct RankGate: Sendable, Equatable {
    /// Ranks kept per token (k < r).
    public var topK: Int
    /// The balancing bias d (r), added to the scores before they are ranked; never to the output.
    public var bias: [Float]
    /// SMoRA's router W_g (r, in), row-major; nil for FlyLoRA.
    public var router: [Float]?

    public init(topK: Int, bias: [Float], router: [Float]? = nil) {
        precondition(topK >= 1 && topK < bias.count, "top-k \(topK) of \(bias.count) ranks")
        precondition(router.map { $0.count % bias.count == 0 && !$0.isEmpty } ?? true, "router of \(router?.count ?? 0) values for \(bias.count) ranks")
        self.topK = topK
        self.bias = bias
        self.router = router
    }

    public var rank: Int { bias.count }

    /// What chooses the ranks, for messages.
    public var kindName: String { router == nil ? "FlyLoRA" : "SMoRA" }

    /// Applies the gate to each of `rows` rows of `u` (rows, r, leading dimension r): unkept ranks
    /// become 0, kept ones are multiplied by their weight (FlyLoRA 1, SMoRA the softmax over the
    /// kept ranks of the router logits x W_gᵀ). `x` (rows, in) is the module's input, needed with a
    /// router. `weights` (rows, r), when given, receives each rank's weight (0 for unkept);
    /// `counts` (r), when given, is incremented for every kept rank.
    public func select(_ u: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>? = nil, rows: Int,
                       weights: UnsafeMutablePointer<Float>? = nil, counts: UnsafeMutablePointer<Int>? = nil) {
        let r = bias.count
        // Router logits live in temporary storage: this runs once per projection per decoded token,
        // and a heap array there showed up as allocator traffic in the serve path.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: router == nil ? 0 : rows * r) { lp in
            if let w = router {
                precondition(x != nil, "a router gate needs the module's input")
                let nIn = w.count / r
                w.withUnsafeBufferPointer { wp in
                    BLAS.gemm(transA: false, transB: true, m: rows, n: r, k: nIn, alpha: 1, a: x!, lda: nIn,
                              b: wp.baseAddress!, ldb: nIn, beta: 0, c: lp.baseAddress!, ldc: r)    // l (rows, r)
                }
            }
            choose(u, logits: router == nil ? nil : UnsafePointer(lp.baseAddress!), rows: rows, weights: weights, counts: counts)
        }
    }

    private func choose(_ u: UnsafeMutablePointer<Float>, logits lg: UnsafePointer<Float>?, rows: Int,
                        weights: UnsafeMutablePointer<Float>?, counts: UnsafeMutablePointer<Int>?) {
        let r = bias.count, k = topK
        let routed = lg != nil
        bias.withUnsafeBufferPointer { d in
            withUnsafeTemporaryAllocation(of: Int.self, capacity: k) { chosen in
                withUnsafeTemporaryAllocation(of: Float.self, capacity: r) { wt in
                    for t in 0..<rows {
                        let row = u + t * r
                        func score(_ j: Int) -> Float { routed ? lg![t * r + j] + d[j] : abs(row[j] + d[j]) }
                        // Insertion into a list of k sorted by score: r is small (8–64), k smaller.
                        var n = 0
                        for j in 0..<r {
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
                        for j in 0..<r { wt[j] = 0 }
                        if routed {
                            var m = -Float.infinity
                            for i in 0..<k { m = max(m, lg![t * r + chosen[i]]) }
                            var z: Float = 0
                            for i in 0..<k { let e = expf(lg![t * r + chosen[i]] - m); wt[chosen[i]] = e; z += e }
                            for i in 0..<k { wt[chosen[i]] /= z }
                        } else {
                            for i in 0..<k { wt[chosen[i]] = 1 }
                        }
                        for i in 0..<k { counts?[chosen[i]] += 1 }
                        for j in 0..<r {
                            row[j] *= wt[j]
                            weights?[t * r + j] = wt[j]
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
        precondition(counts.count == bias.count, "one count per rank")
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
    case notDense(adapter: String, module: String, operation: String)

    public var description: String {
        switch self {
        case let .notDense(a, m, op):
            return "adapter '\(a)' is a FlyLoRA or SMoRA adapter (module '\(m)' keeps the top-k of its ranks per token): \(op) needs a plain LoRA, whose update is the same for every token. These adapters run unmerged in eval, generate, report and serve; FlyLoRA adapters fuse with `linear` when they share A (same --seed, --rank, --targets)"
        }
    }
}

extension LoRAAdapter {
    /// Whether any module selects ranks per token (FlyLoRA).
    public var isRankGated: Bool { modules.values.contains { $0.rankGate != nil } }

    /// Throws `RankGateError.notDense` naming `operation` when a module selects ranks per token.
    public func requireDense(_ operation: String) throws {
        if let m = moduleNames.first(where: { modules[$0]!.rankGate != nil }) {
            throw RankGateError.notDense(adapter: name, module: m, operation: operation)
        }
    }
}
