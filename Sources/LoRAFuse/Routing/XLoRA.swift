import Foundation

// X-LoRA (Buehler & Buehler, arXiv 2402.07148; peft's XLoraModel): the adapters' weights come
// from a classifier on the base model's own view of the sequence, not from a gate per projection.
//
//   pass 1    h_t = the base model's last hidden state at token t (after the final RMSNorm, what
//                   lm_head reads), adapters off: X-LoRA's "scaling pass" with scalings 0
//   scalings  z = W h_t + b                                       W (L·N, C), b (L·N)
//             s[t, l, ·] = softmax over the top-k of z[l·N ..< (l+1)·N], temperature T,
//                          0 for the others (k = N: X-LoRA's default dense softmax)
//   pass 2    every routed projection of layer l: y = W x + Σ_i s[t, l, i] · c_i B_i (A_i x)
//
// peft's defaults are a depth-1 classifier (one linear layer with bias), layer-wise scalings,
// softmax with temperature 1 and no top-k; with `top_k_lora` set it masks the softmax output and
// only renormalises over the kept ones with `enable_softmax_topk`. Here the top-k are always
// renormalised (the softmax runs over the kept logits), as every router of this module does.
// Trained with base and adapters frozen on the LM cross-entropy of the shots' answers alone; the
// gradient reaches the classifier through ∂L/∂s[t, l, i] = Σ over layer l's routed projections
// of ⟨dy_t, c_i B_i A_i x_t⟩ (RoutedTraining.swift), since h does not depend on it.
// Pass 1 is a full base forward over the same tokens, with its own KV cache: a routed session
// keeps a shadow base session beside it, so decoding costs two forwards per token.
// On disk: one tensor "xlora.gate" (L·N, C + 1) in router.safetensors, b in the last column.

/// The scalings classifier of an X-LoRA routed model.
public struct XLoRAClassifier: Sendable, Equatable {
    public let layers: Int
    public let experts: Int
    public let hiddenSize: Int
    /// (L·N, C + 1): row l·N + i is W's row for (layer l, adapter i), b in the last column.
    public var table: [Float]
    public var topK: Int
    public var temperature: Float

    public static let tensorName = "xlora"

    public init(layers: Int, experts: Int, hiddenSize: Int, table: [Float], topK: Int, temperature: Float) {
        precondition(table.count == layers * experts * (hiddenSize + 1), "X-LoRA classifier: table must be (L·N) × (C + 1)")
        self.layers = layers
        self.experts = experts
        self.hiddenSize = hiddenSize
        self.table = table
        self.topK = topK
        self.temperature = temperature
    }

    /// Scalings per row: L·N values.
    public var width: Int { layers * experts }

    /// out (rows, L·N) ← the scalings of hidden states h (rows, C).
    public func scalings(_ h: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>) {
        let C = hiddenSize, W = width
        table.withUnsafeBufferPointer { t in
            // (rows, L·N) = h · Wᵀ, W read in place from the table (leading dimension C + 1)
            BLAS.gemm(transA: false, transB: true, m: rows, n: W, k: C, alpha: 1, a: h, lda: C,
                      b: t.baseAddress!, ldb: C + 1, beta: 0, c: out, ldc: W)
            for r in 0..<rows { for j in 0..<W { out[r * W + j] += t[j * (C + 1) + C] } }
        }
        let k = min(max(topK, 1), experts), invT = 1 / max(temperature, 1e-6)
        for r in 0..<rows {
            for l in 0..<layers { Self.keptSoftmax(out + r * W + l * experts, n: experts, k: k, invT: invT) }
        }
    }

    /// Scalings of `rows` hidden states, as an array.
    public func scalings(_ h: [Float], rows: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows * width)
        h.withUnsafeBufferPointer { hp in out.withUnsafeMutableBufferPointer { scalings(hp.baseAddress!, rows: rows, into: $0.baseAddress!) } }
        return out
    }

    /// z (n) ← softmax(z_kept · invT) on the k largest (ties to the lower index), 0 elsewhere.
    static func keptSoftmax(_ z: UnsafeMutablePointer<Float>, n: Int, k: Int, invT: Float) {
        if k >= n {
            var m = -Float.infinity
            for i in 0..<n { m = max(m, z[i] * invT) }
            var sum: Float = 0
            for i in 0..<n { z[i] = expf(z[i] * invT - m); sum += z[i] }
            for i in 0..<n { z[i] /= sum }
            return
        }
        // Runs per token and layer while decoding: scratch on the stack, not the heap.
        withUnsafeTemporaryAllocation(of: Int.self, capacity: n) { order in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: k) { kept in
                for i in 0..<n { order[i] = i }
                RoutedLinear.keepTopK(z, n: n, candidates: order.baseAddress!, count: n, k: k, invT: invT, kept: kept.baseAddress!)
            }
        }
    }

    /// Gradient of the table (L·N, C + 1) from ∂L/∂s (rows, L·N), given the scalings s the
    /// forward produced and its inputs h (rows, C): softmax backward over each kept group,
    /// dz = s ⊙ (ds − Σ s ds) / T, then dW = dzᵀ h and db = Σ_rows dz.
    public func tableGradient(h: [Float], scalings s: [Float], dScalings ds: [Float], rows: Int) -> [Float] {
        let C = hiddenSize, W = width, N = experts
        let invT = 1 / max(temperature, 1e-6)
        var dz = [Float](repeating: 0, count: rows * W)
        for r in 0..<rows {
            for l in 0..<layers {
                let o = r * W + l * N
                var dot: Float = 0
                for i in 0..<N { dot += s[o + i] * ds[o + i] }
                for i in 0..<N where s[o + i] > 0 { dz[o + i] = s[o + i] * (ds[o + i] - dot) * invT }
            }
        }
        var g = [Float](repeating: 0, count: W * (C + 1))
        dz.withUnsafeBufferPointer { d in
            h.withUnsafeBufferPointer { hp in
                g.withUnsafeMutableBufferPointer { gp in
                    // dW (L·N, C) = dzᵀ h, written with leading dimension C + 1
                    BLAS.gemm(transA: true, transB: false, m: W, n: C, k: rows, alpha: 1, a: d.baseAddress!, lda: W,
                              b: hp.baseAddress!, ldb: C, beta: 0, c: gp.baseAddress!, ldc: C + 1)
                    for j in 0..<W {
                        var b: Float = 0
                        for r in 0..<rows { b += d[r * W + j] }
                        gp[j * (C + 1) + C] = b
                    }
                }
            }
        }
        return g
    }
}

extension LlamaSession {
    /// The base session of X-LoRA's first pass, made on first use; a paged session's shadow takes
    /// its blocks from the same pool (and so the same memory budget).
    func xloraShadowSession() throws -> LlamaSession {
        if let s = xloraShadow, s.maxTokens >= maxTokens { return s }
        let shadow = try LlamaSession(model: model, maxTokens: maxTokens, adapters: .none, pool: cache.pool)
        xloraShadow = shadow
        return shadow
    }

    /// X-LoRA's first pass for `tokens` (about to be fed at `position`): the shadow base session,
    /// kept at this session's position, runs them and the classifier turns its last hidden states
    /// into `xloraScalings` (T, L·N). The shadow is created on first use.
    func prepareXLoRA(_ classifier: XLoRAClassifier, tokens: [Int]) throws {
        let shadow = try xloraShadowSession()
        try shadow.cache.reserve(position + tokens.count)
        // Both caches hold the same tokens below `position`; a reset or truncate of this session
        // moves the shadow back with it here.
        shadow.position = position
        let h = shadow.finalHiddenStates(tokens)
        classifier.scalings(h, rows: tokens.count, into: xloraScalings.reserve(tokens.count * classifier.width))
    }
}
