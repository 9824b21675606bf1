import Foundation

// LoRA-Pro (Wang et al., "LoRA-Pro: Are Low-Rank Adapters Properly Optimized?", ICLR 2025),
// `lorafuse train --variant lora-pro`.
//
// A LoRA step moves W by s·(B·dA + dB·A) (to first order), a low-rank "equivalent gradient".
// LoRA-Pro chooses dA and dB so that this equivalent gradient is as close as possible to the
// full fine-tuning gradient g, and does so from the LoRA gradients alone, because
// g_A = s·Bᵀg and g_B = s·g·Aᵀ carry everything about g that the closed form needs:
//
//     dA = (1/s²)·(BᵀB)⁻¹·g_A + X·A
//     dB = (1/s²)·(I − B(BᵀB)⁻¹Bᵀ)·g_B·(AAᵀ)⁻¹ − B·X
//
// s·(B·dA + dB·A) is then the orthogonal projection of g onto the tangent space {B·Y + Z·A}
// for every X (the X terms cancel); X picks, among those, the dA and dB closest to the LoRA
// gradients, the solution of the Sylvester equation
//
//     (BᵀB)·X + X·(AAᵀ) = −(1/s²)·(BᵀB)⁻¹·g_A·Aᵀ.
//
// With AdamW (the paper's Algorithm 2 and the authors' code, which we follow): the equivalent
// gradient of the step is formed (X = 0), AdamW's moments are kept for it at full size (out, in)
// per module, the Adam-normalised full step Ĝ is taken back to LoRA gradients (s·BᵀĜ, s·ĜAᵀ),
// those are adjusted again with X, and A and B take a plain SGD step along them (the authors run
// their DeepSpeed optimizer this way with the trainer's optimizer set to SGD, weight decay 0).
// The inverses are regularised as the authors do, (M + δI)⁻¹ with δ = 1e-8, computed here from a
// symmetric eigen-decomposition in Double; the Sylvester equation uses the unregularised Gram
// matrices, as theirs. Gradient clipping scales the final step by the global-norm coefficient of
// the raw LoRA gradients (DeepSpeed's order: norm before the adjustment, scaling after).
//
// Differences from the authors' code, on purpose: bias correction uses the update number t
// (theirs uses t + 1, their step counter being incremented before the adjustment reads it), and
// the second moment stays F32 (theirs accumulates bf16-rounded gradients). Cost: two (out, in)
// F32 moments per module — for SmolLM2-135M with all seven projections 850 MB — and a few
// (out, in) × rank GEMMs per module per step.

/// The LoRA-Pro optimizer over every module of a `LoRAParameters`.
public final class LoRAProOptimizer {
    public static let delta = 1e-8
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    /// Updates done (t of the bias correction).
    public internal(set) var step = 0
    /// AdamW's moments of the equivalent full gradient, one (out, in) per module.
    public internal(set) var m: [[Float]], v: [[Float]]
    private var scratch: [Float] = []

    public init(like p: LoRAParameters) {
        m = p.modules.map { [Float](repeating: 0, count: $0.outFeatures * $0.inFeatures) }
        v = m
    }

    /// Bytes the moments take (what LoRA-Pro adds to a LoRA run's memory).
    public var stateBytes: Int { m.reduce(0) { $0 + $1.count } * 2 * MemoryLayout<Float>.size }

    /// One update of every A and B along LoRA-Pro's adjusted gradients of `grads` (the LoRA
    /// gradients), with SGD learning rate `lr`, the step multiplied by `clip`.
    public func update(_ p: inout LoRAParameters, grads: LoRAGradients, lr: Float, clip: Float = 1) {
        let d = adjustedGradients(p, grads: grads)
        let f = lr * clip
        for i in p.modules.indices {
            for j in 0..<d.dA[i].count { p.modules[i].A[j] -= f * d.dA[i][j] }
            for j in 0..<d.dB[i].count { p.modules[i].B[j] -= f * d.dB[i][j] }
        }
    }

    /// The directions `update` moves A and B along (before lr and clipping), advancing the
    /// moments by one step: X = 0 adjustment, AdamW on the equivalent gradient, back to LoRA
    /// gradients, adjustment with X.
    public func adjustedGradients(_ p: LoRAParameters, grads: LoRAGradients) -> LoRAGradients {
        step += 1
        let bc1 = 1 - Float(pow(Double(beta1), Double(step)))
        let bc2Sqrt = (1 - Float(pow(Double(beta2), Double(step)))).squareRoot()
        var out = LoRAGradients(zerosLike: p)
        for i in p.modules.indices {
            let mod = p.modules[i]
            let geo = LoRAProGeometry(A: mod.A, B: mod.B, rank: mod.rank, out: mod.outFeatures, in: mod.inFeatures,
                                      scale: mod.scale)
            let (dA0, dB0) = geo.adjusted(gA: grads.dA[i], gB: grads.dB[i], sylvester: false)
            let n = mod.outFeatures * mod.inFeatures
            if scratch.count < n { scratch = [Float](repeating: 0, count: n) }
            geo.equivalentGradient(dA: dA0, dB: dB0, into: &scratch)      // (out, in)
            let (b1, b2, e) = (beta1, beta2, eps)
            scratch.withUnsafeMutableBufferPointer { g in
                m[i].withUnsafeMutableBufferPointer { mm in
                    v[i].withUnsafeMutableBufferPointer { vv in
                        for j in 0..<n {
                            mm[j] = b1 * mm[j] + (1 - b1) * g[j]
                            vv[j] = b2 * vv[j] + (1 - b2) * g[j] * g[j]
                            g[j] = (mm[j] / bc1) / (vv[j].squareRoot() / bc2Sqrt + e)
                        }
                    }
                }
            }
            let (hA, hB) = geo.loraGradients(ofFull: scratch)
            (out.dA[i], out.dB[i]) = geo.adjusted(gA: hA, gB: hB, sylvester: true)
        }
        return out
    }

    /// Restores moments and step (from a checkpoint).
    func restore(step: Int, m: [[Float]], v: [[Float]]) {
        self.step = step
        self.m = m
        self.v = v
    }
}

/// The closed forms of one module at its current A (r, in) and B (out, r).
struct LoRAProGeometry {
    let r: Int, out: Int, inF: Int
    let s: Float
    let A: [Float], B: [Float]
    /// Eigen-decompositions of BᵀB and AAᵀ (r, r), and their δ-regularised inverses (F32).
    let eP: (values: [Double], vectors: [Double]), eQ: (values: [Double], vectors: [Double])
    let Pinv: [Float], Qinv: [Float]

    init(A: [Float], B: [Float], rank r: Int, out: Int, in inF: Int, scale: Float) {
        self.r = r; self.out = out; self.inF = inF; s = scale; self.A = A; self.B = B
        var P = [Float](repeating: 0, count: r * r), Q = P
        mm(true, false, r, r, out, 1, B, B, 0, &P)       // BᵀB
        mm(false, true, r, r, inF, 1, A, A, 0, &Q)       // AAᵀ
        eP = Self.eigen(P, r)
        eQ = Self.eigen(Q, r)
        Pinv = Self.regularisedInverse(eP, r)
        Qinv = Self.regularisedInverse(eQ, r)
    }

    private static func eigen(_ a: [Float], _ r: Int) -> (values: [Double], vectors: [Double]) {
        // Symmetrise: the GEMM's two triangles can differ in the last bit.
        var d = [Double](repeating: 0, count: r * r)
        for i in 0..<r { for j in 0..<r { d[i * r + j] = 0.5 * (Double(a[i * r + j]) + Double(a[j * r + i])) } }
        // Non-finite factors (a diverged run) give a NaN step, as plain LoRA's would.
        return (try? Linalg.symmetricEigen(d, n: r))
            ?? ([Double](repeating: .nan, count: r), [Double](repeating: .nan, count: r * r))
    }

    /// (M + δI)⁻¹ = V diag(1/(λ + δ)) Vᵀ, λ clamped at 0 (a Gram matrix's rounding can dip below).
    private static func regularisedInverse(_ e: (values: [Double], vectors: [Double]), _ r: Int) -> [Float] {
        var out = [Float](repeating: 0, count: r * r)
        for i in 0..<r {
            for j in 0..<r {
                var acc = 0.0
                for k in 0..<r { acc += e.vectors[i * r + k] * e.vectors[j * r + k] / (max(e.values[k], 0) + LoRAProOptimizer.delta) }
                out[i * r + j] = Float(acc)
            }
        }
        return out
    }

    /// dA = (1/s²)·P⁻¹·g_A (+ X·A), dB = (1/s²)·(g_B − B·P⁻¹·Bᵀ·g_B)·Q⁻¹ (− B·X), with X from the
    /// Sylvester equation when `sylvester` (see the file's header).
    func adjusted(gA: [Float], gB: [Float], sylvester: Bool) -> (dA: [Float], dB: [Float]) {
        let s2 = 1 / (s * s)
        var dA = [Float](repeating: 0, count: r * inF)
        mm(false, false, r, inF, r, s2, Pinv, gA, 0, &dA)                 // (r, in)
        var btg = [Float](repeating: 0, count: r * r), w = btg
        mm(true, false, r, r, out, 1, B, gB, 0, &btg)                      // Bᵀ g_B (r, r)
        mm(false, false, r, r, r, 1, Pinv, btg, 0, &w)                     // P⁻¹ Bᵀ g_B
        var t = gB
        mm(false, false, out, r, r, -1, B, w, 1, &t)                       // (I − B P⁻¹ Bᵀ) g_B (out, r)
        var dB = [Float](repeating: 0, count: out * r)
        mm(false, false, out, r, r, s2, t, Qinv, 0, &dB)
        if sylvester {
            var gat = [Float](repeating: 0, count: r * r), c = gat
            mm(false, true, r, r, inF, 1, gA, A, 0, &gat)                  // g_A Aᵀ (r, r)
            mm(false, false, r, r, r, -s2, Pinv, gat, 0, &c)               // C = −(1/s²) P⁻¹ g_A Aᵀ
            let x = solveSylvester(c)
            mm(false, false, r, inF, r, 1, x, A, 1, &dA)                   // + X A
            mm(false, false, out, r, r, -1, B, x, 1, &dB)                  // − B X
        }
        return (dA, dB)
    }

    /// X with P·X + X·Q = C, P = U Λ Uᵀ, Q = V M Vᵀ: X = U·[(Uᵀ C V)ᵢⱼ / (λᵢ + μⱼ)]·Vᵀ.
    /// Entries whose λᵢ + μⱼ vanishes (B = 0 and a singular A) are set to 0 (the least-norm X).
    func solveSylvester(_ c: [Float]) -> [Float] {
        let U = eP.vectors, V = eQ.vectors
        func mul(_ a: [Double], _ ta: Bool, _ b: [Double], _ tb: Bool) -> [Double] {
            var o = [Double](repeating: 0, count: r * r)
            for i in 0..<r { for j in 0..<r {
                var acc = 0.0
                for k in 0..<r { acc += (ta ? a[k * r + i] : a[i * r + k]) * (tb ? b[j * r + k] : b[k * r + j]) }
                o[i * r + j] = acc
            } }
            return o
        }
        var y = mul(mul(U, true, c.map(Double.init), false), false, V, false)
        for i in 0..<r { for j in 0..<r {
            let d = max(eP.values[i], 0) + max(eQ.values[j], 0)
            y[i * r + j] = d > 1e-300 ? y[i * r + j] / d : 0
        } }
        return mul(mul(U, false, y, false), false, V, true).map { Float($0) }
    }

    /// s·(B·dA + dB·A) into the first out·in entries of `g` (row-major (out, in)).
    func equivalentGradient(dA: [Float], dB: [Float], into g: inout [Float]) {
        mm(false, false, out, inF, r, s, B, dA, 0, &g)
        mm(false, false, out, inF, r, s, dB, A, 1, &g)
    }

    /// The LoRA gradients a full gradient G (out, in) induces: (s·BᵀG, s·G·Aᵀ).
    func loraGradients(ofFull g: [Float]) -> (gA: [Float], gB: [Float]) {
        var gA = [Float](repeating: 0, count: r * inF), gB = [Float](repeating: 0, count: out * r)
        mm(true, false, r, inF, out, s, B, g, 0, &gA)
        mm(false, true, out, r, inF, s, g, A, 0, &gB)
        return (gA, gB)
    }
}

/// C = α·op(A)·op(B) + β·C on dense row-major arrays, leading dimensions from the shapes.
private func mm(_ ta: Bool, _ tb: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float, _ a: [Float], _ b: [Float],
                _ beta: Float, _ c: inout [Float]) {
    BLAS.gemm(transA: ta, transB: tb, m: m, n: n, k: k, alpha: alpha, a: a, lda: ta ? m : k, b: b, ldb: tb ? k : n,
              beta: beta, c: &c, ldc: n)
}
