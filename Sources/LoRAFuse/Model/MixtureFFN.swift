import Foundation

// MixLoRA's feed-forward block at inference (Li et al., "MixLoRA: Enhancing Large Language Models
// Fine-Tuning with LoRA-based Mixture of Experts", arXiv 2404.15159; training in
// `Train/MixLoRA.swift`). Each expert e is the whole frozen FFN with its own LoRA on gate, up and
// down; a router W_r (E, C) without bias picks k experts per token:
//
//   p = softmax(h W_rᵀ)                    (T, E)
//   keep = top-k of p (ties: lower index);  w_e = p_e / Σ_{keep} p      (Mixtral's routing)
//   y = Σ_{e ∈ keep} w_e · D_e(silu(G_e h) ⊙ U_e h),   P_e h = W_P h + s · B_{P,e} (A_{P,e} h)
//
// The base products h W_gateᵀ and h W_upᵀ are shared by every expert (computed once, as the
// authors' `_llama_forward`); W_down runs once per kept expert on the rows that chose it, so a
// token costs k down products instead of one. The experts of a projection are stacked into one
// factor pair: A (E·r, in) with expert e in rows e·r…, B (out, E·r) with expert e in columns e·r….

/// One layer's MixLoRA FFN, prepared for the forward pass.
struct MixtureFFN: Sendable {
    let experts: Int
    let topK: Int
    /// Rank of one expert.
    let rank: Int
    /// W_r (E, C), row-major.
    let router: [Float]
    /// Stacked factors of gate, up and down (nil: that projection has no expert LoRA, the base
    /// weight is used by every expert); `coef` = adapter weight × scale.
    let gate: LoRAFactors?
    let up: LoRAFactors?
    let down: LoRAFactors?

    /// Mixtral's routing of one row: the top-k experts of the softmax of `logits` (ties to the
    /// lower index) into `chosen` (k), their renormalised probabilities into `weights` (k), and
    /// the full softmax into `probs` (E) when given (the load-balance loss reads it).
    static func route(_ logits: UnsafePointer<Float>, experts E: Int, topK k: Int, chosen: UnsafeMutablePointer<Int>,
                      weights: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>? = nil) {
        var n = 0
        for j in 0..<E {
            let s = logits[j]
            if n == k && !(s > logits[chosen[k - 1]]) { continue }
            var p = min(n, k - 1)
            while p > 0 && s > logits[chosen[p - 1]] { chosen[p] = chosen[p - 1]; p -= 1 }
            chosen[p] = j
            n = min(n + 1, k)
        }
        // The softmax is monotone in the logits, so the top-k of p are the top-k of the logits;
        // renormalised over the kept ones, w is the softmax of the kept logits.
        let m = logits[chosen[0]]
        var z: Float = 0
        for i in 0..<k { let v = expf(logits[chosen[i]] - m); weights[i] = v; z += v }
        for i in 0..<k { weights[i] /= z }
        if let probs {
            var all: Float = 0
            for j in 0..<E { let v = expf(logits[j] - m); probs[j] = v; all += v }
            for j in 0..<E { probs[j] /= all }
        }
    }

    /// Rows (in order) that kept each expert, and each such row's weight for it.
    static func assignments(chosen: UnsafePointer<Int>, weights: UnsafePointer<Float>, rows: Int, experts E: Int,
                            topK k: Int) -> [(rows: [Int], weights: [Float])] {
        var offsets = [Int](repeating: 0, count: E + 1), order = [Int](repeating: 0, count: rows * k)
        var w = [Float](repeating: 0, count: rows * k)
        offsets.withUnsafeMutableBufferPointer { o in
            order.withUnsafeMutableBufferPointer { r in
                w.withUnsafeMutableBufferPointer {
                    group(chosen: chosen, weights: weights, rows: rows, experts: E, topK: k,
                          offsets: o.baseAddress!, order: r.baseAddress!, orderWeights: $0.baseAddress!)
                }
            }
        }
        return (0..<E).map { (Array(order[offsets[$0]..<offsets[$0 + 1]]), Array(w[offsets[$0]..<offsets[$0 + 1]])) }
    }

    /// `assignments` into caller-owned memory, for the decode path (which allocates nothing per
    /// token): expert e's rows, in order, are order[offsets[e]..<offsets[e + 1]] with their weights
    /// at the same places of `orderWeights`. offsets: E + 1 values; order, orderWeights: rows · k.
    static func group(chosen: UnsafePointer<Int>, weights: UnsafePointer<Float>, rows: Int, experts E: Int, topK k: Int,
                      offsets: UnsafeMutablePointer<Int>, order: UnsafeMutablePointer<Int>,
                      orderWeights: UnsafeMutablePointer<Float>) {
        // A counting sort by expert, stable in the row index.
        offsets.initialize(repeating: 0, count: E + 1)
        for i in 0..<(rows * k) { offsets[chosen[i] + 1] += 1 }
        for e in 0..<E { offsets[e + 1] += offsets[e] }
        for t in 0..<rows {
            for i in 0..<k {
                let e = chosen[t * k + i]
                order[offsets[e]] = t
                orderWeights[offsets[e]] = weights[t * k + i]
                offsets[e] += 1
            }
        }
        // Each offsets[e] now ends expert e's range: shift back to starts.
        for e in stride(from: E, to: 0, by: -1) { offsets[e] = offsets[e - 1] }
        offsets[0] = 0
    }
}

extension LoRAFactors {
    /// out (rows, nOut) += coef · (x A_eᵀ) B_eᵀ for expert `e`'s block of `rank` ranks; `tmp` holds
    /// rows × rank values.
    func addExpert(_ e: Int, rank r: Int, _ x: UnsafePointer<Float>, rows: Int, nIn: Int, nOut: Int,
                   into out: UnsafeMutablePointer<Float>, ld: Int, tmp: UnsafeMutablePointer<Float>) {
        A.withUnsafeBufferPointer { a in
            BLAS.gemm(transA: false, transB: true, m: rows, n: r, k: nIn, alpha: 1, a: x, lda: nIn,
                      b: a.baseAddress! + e * r * nIn, ldb: nIn, beta: 0, c: tmp, ldc: r)        // (rows, r)
        }
        B.withUnsafeBufferPointer { b in
            BLAS.gemm(transA: false, transB: true, m: rows, n: nOut, k: r, alpha: coef, a: tmp, lda: r,
                      b: b.baseAddress! + e * r, ldb: rank, beta: 1, c: out, ldc: ld)           // += (rows, out)
        }
    }
}

extension LlamaSession {
    /// x (rows, C) += the MixLoRA FFN of layer `l` on h (rows, C), given the shared base products
    /// gateBase = h W_gateᵀ and upBase = h W_upᵀ (rows, F). `downBias`: whether W_down's bias (if
    /// any) is added here (the batched step adds it with its own down product).
    func mixtureFFN(_ mix: MixtureFFN, layer l: Int, h: UnsafePointer<Float>, gateBase: UnsafePointer<Float>,
                    upBase: UnsafePointer<Float>, rows T: Int, into x: UnsafeMutablePointer<Float>, downBias: Bool) {
        let c = model.config
        let C = c.hiddenSize, F = c.intermediateSize, E = mix.experts, k = mix.topK, r = mix.rank
        let downID = LlamaWeights.linearID(layer: l, .down)
        // Scratch: logits (T, E), weights (T, k), then per expert hs (n, C), g and u (n, F), out (n, C), tmp (n, r).
        let buf = mixTmp.reserve(T * (E + k + 2 * C + 2 * F + r))
        let logits = buf, w = logits + T * E
        let hs = w + T * k, g = hs + T * C, u = g + T * F, out = u + T * F, tmp = out + T * C
        mix.router.withUnsafeBufferPointer { wr in
            BLAS.gemm(transA: false, transB: true, m: T, n: E, k: C, alpha: 1, a: h, lda: C,
                      b: wr.baseAddress!, ldb: C, beta: 0, c: logits, ldc: E)                   // (T, E)
        }
        // Routing scratch, reused across steps: chosen (T·k), offsets (E + 1), order (T·k).
        let ints = mixIndex.reserve((2 * T * k + E + 1) * MemoryLayout<Int>.stride).bindMemory(to: Int.self, capacity: 2 * T * k + E + 1)
        let chosen = ints, offsets = ints + T * k, order = offsets + E + 1
        let orderW = mixWeights.reserve(T * k)
        for t in 0..<T { MixtureFFN.route(logits + t * E, experts: E, topK: k, chosen: chosen + t * k, weights: w + t * k) }
        MixtureFFN.group(chosen: chosen, weights: w, rows: T, experts: E, topK: k, offsets: offsets, order: order, orderWeights: orderW)
        let bias = model.base.linears[downID].bias
        for e in 0..<E where offsets[e + 1] > offsets[e] {
            let first = offsets[e], n = offsets[e + 1] - first
            for i in 0..<n {
                let t = order[first + i]
                (hs + i * C).update(from: h + t * C, count: C)                                  // (n, C)
                (g + i * F).update(from: gateBase + t * F, count: F)                            // (n, F)
                (u + i * F).update(from: upBase + t * F, count: F)
            }
            mix.gate?.addExpert(e, rank: r, hs, rows: n, nIn: C, nOut: F, into: g, ld: F, tmp: tmp)
            mix.up?.addExpert(e, rank: r, hs, rows: n, nIn: C, nOut: F, into: u, ld: F, tmp: tmp)
            swiglu(g, u, count: n * F)                                                          // g ← silu(g)·u
            baseLinear(g, rows: n, id: downID, merged: nil, into: out, ld: C, accumulate: false)   // (n, C)
            if !downBias, let bias { for i in 0..<n { for j in 0..<C { out[i * C + j] -= bias[j] } } }
            mix.down?.addExpert(e, rank: r, g, rows: n, nIn: F, nOut: C, into: out, ld: C, tmp: tmp)
            for i in 0..<n {
                let we = orderW[first + i], o = out + i * C, xr = x + order[first + i] * C
                for j in 0..<C { xr[j] += we * o[j] }
            }
        }
    }
}
