import Foundation

// The Fusion VAE: a conditional VAE over whole adapters, one latent per adapter (as ICM-LoRA's
// CVAE has one 256-d latent per flattened LoRA), in front of a fixed linear basis of the
// training samples.
//
// Per adapter sample n (N rows; V = padded parameter count of the chunk layout, K = basis size,
// Hc = condition width, Z = latent):
//   y   = (x − P) Uᵀ / σ                             (N, K)   coordinates in the samples' principal basis
//   cp  = h Wcᵀ + bc                                 (N, Pc)  projected task condition
//   g1  = tanh(y W1yᵀ + cp W1cᵀ + b1)                (N, Hd)  encoder q(z | y, c)
//   μ   = g1 Wμᵀ + bμ,  lv = g1 Wlvᵀ + blv            (N, Z)
//   gp  = tanh(cp Wpᵀ + bp)                          (N, Hd)  conditional prior p(z | c)
//   μp  = gp Wpμᵀ + bpμ,  lvp = gp Wplvᵀ + bplv       (N, Z)   (zeros without `conditionalPrior`)
//   z   = μ + exp(lv/2) ⊙ ε                          (N, Z)
//   g2  = tanh(z W2zᵀ + cp W2cᵀ + b2)                (N, Hd)  decoder p(y | z, c)
//   ŷ   = g2 W3ᵀ + b3                                (N, K)
//   x̂   = P + (σ ⊙ ŷ) U                              (N, V)
// Loss = (1/N) Σ_n [ Σ_k ω_k (ŷ_nk − y_nk)² + β·KL(q_n ‖ p_n) ],  ω_k = σ_k² / Σ_j σ_j²,
//   KL = ½ Σ_j (lvp − lv + (e^lv + (μ − μp)²)/e^lvp − 1).
// With orthonormal U, Σ_k ω_k (ŷ − y)² = ‖x̂ − x‖²_in-basis / (mean ‖x − P‖²): the reconstruction
// term is the relative squared error of the deviations from the mean adapter.
//
// Why a basis: the chunked decoder this replaces (one shared output layer for ~2,550 chunk
// positions) could only put position-specific deviations into one shared 256-d subspace and
// reconstructed the suite adapters with relative error 0.40–1.59. P and U (the weighted mean and
// leading principal directions of the training samples) give every parameter its own capacity at
// the cost of K adapters' worth of storage; the small network then learns a latent space of
// whole adapters where fusion happens, to convergence, in seconds. P and U are fixed after
// `ParameterBasis.fit` — the meta phase cannot move them.

public struct FusionVAEConfig: Sendable, Equatable, Codable {
    public var basis: Int              // K
    public var conditionDim: Int       // Hc
    public var conditionProj = 32      // Pc
    public var hidden = 128            // Hd
    public var latent = 16             // Z
    public var beta: Float = 1e-3
    public var conditionalPrior = true

    public init(basis: Int, conditionDim: Int) { self.basis = basis; self.conditionDim = conditionDim }
}

/// The fixed linear part of the decoder: x ≈ P + (σ ⊙ y) U over padded chunk vectors.
public struct ParameterBasis: Sendable, Equatable {
    public var mean: [Float]        // P (V)
    public var vectors: [Float]     // U (K, V), rows orthonormal up to bf16 rounding
    public var sigma: [Float]       // σ (K): weighted std of the training coordinates
    public var length: Int { mean.count }
    public var size: Int { sigma.count }

    public init(mean: [Float], vectors: [Float], sigma: [Float]) { self.mean = mean; self.vectors = vectors; self.sigma = sigma }

    /// Weighted PCA of the rows of `x` (N, V) (weights sum to 1): P = Σ wₙ xₙ, U = the leading
    /// `size` right singular vectors of diag(√w)(X − P), through the N×N Gram matrix (N ≪ V).
    /// `x` is overwritten with diag(√w)(X − P) (the rows of a suite's samples take gigabytes; no
    /// copy is made). U is rounded to bf16, the precision the state file keeps, so a loaded
    /// generator decodes exactly what the trained one did.
    public static func fit(centering x: inout [Float], count N: Int, length V: Int, weights w: [Double], size: Int) throws -> ParameterBasis {
        precondition(x.count == N * V && w.count == N)
        var P = [Float](repeating: 0, count: V)
        let wf = w.map(Float.init)
        BLAS.gemm(transA: false, transB: false, m: 1, n: V, k: N, alpha: 1, a: wf, lda: N, b: x, ldb: V, beta: 0, c: &P, ldc: V)
        x.withUnsafeMutableBufferPointer { xp in
            for n in 0..<N {
                let s = Float(w[n].squareRoot())
                for j in 0..<V { xp[n * V + j] = (xp[n * V + j] - P[j]) * s }
            }
        }
        let xc = x
        var G = [Float](repeating: 0, count: N * N)
        BLAS.gemm(transA: false, transB: true, m: N, n: N, k: V, alpha: 1, a: xc, lda: V, b: xc, ldb: V, beta: 0, c: &G, ldc: N)
        let svd = try Linalg.svd(Matrix(rows: N, cols: N, data: G))
        // Directions without variance (fewer distinct samples than `size`) are dropped: a Float Gram
        // matrix puts its null eigenvalues near 1e-7 of the largest.
        let top = svd.S.first ?? 0
        let K = min(size, svd.S.filter { $0 > max(top * 1e-5, 1e-30) }.count)
        guard K > 0 else {
            throw ICMError.badInput(what: "fusion VAE basis", reason: "the training adapters are all identical (no variance to learn)")
        }
        // u_k = Σ_n V[n,k] xcₙ / √λ_k
        var coef = [Float](repeating: 0, count: K * N)
        for k in 0..<K { for n in 0..<N { coef[k * N + n] = svd.U[n, k] / svd.S[k].squareRoot() } }
        var U = [Float](repeating: 0, count: K * V)
        BLAS.gemm(transA: false, transB: false, m: K, n: V, k: N, alpha: 1, a: coef, lda: N, b: xc, ldb: V, beta: 0, c: &U, ldc: V)
        U = U.map { HalfConversion.floatFromBFloat(HalfConversion.bfloatFromFloat($0)) }
        // λ_k = Σ wₙ yₙₖ² is the weighted variance of coordinate k (the weights sum to 1; P is the weighted mean).
        let sigma = (0..<K).map { max(svd.S[$0].squareRoot(), 1e-12) }
        return ParameterBasis(mean: P, vectors: U, sigma: sigma)
    }

    /// Normalised coordinates y = (x − P) Uᵀ / σ of rows x (N, V): (N, K).
    public func coordinates(_ x: [Float], rows N: Int) -> [Float] {
        let V = length, K = size
        var xc = x
        for n in 0..<N { for j in 0..<V { xc[n * V + j] -= mean[j] } }
        var y = [Float](repeating: 0, count: N * K)
        BLAS.gemm(transA: false, transB: true, m: N, n: K, k: V, alpha: 1, a: xc, lda: V, b: vectors, ldb: V, beta: 0, c: &y, ldc: K)
        for n in 0..<N { for k in 0..<K { y[n * K + k] /= sigma[k] } }
        return y
    }

    /// x̂ = P + (σ ⊙ ŷ) U for rows ŷ (N, K): (N, V).
    public func expand(_ y: [Float], rows N: Int) -> [Float] {
        let V = length, K = size
        var ys = y
        for n in 0..<N { for k in 0..<K { ys[n * K + k] *= sigma[k] } }
        var x = [Float](repeating: 0, count: N * V)
        for n in 0..<N { for j in 0..<V { x[n * V + j] = mean[j] } }
        BLAS.gemm(transA: false, transB: false, m: N, n: V, k: K, alpha: 1, a: ys, lda: K, b: vectors, ldb: V, beta: 1, c: &x, ldc: V)
        return x
    }

    /// dL/dŷ = σ ⊙ (dL/dx̂ Uᵀ) for rows dx (N, V): (N, K).
    public func coordinateGradient(_ dx: [Float], rows N: Int) -> [Float] {
        let V = length, K = size
        var dy = [Float](repeating: 0, count: N * K)
        BLAS.gemm(transA: false, transB: true, m: N, n: K, k: V, alpha: 1, a: dx, lda: V, b: vectors, ldb: V, beta: 0, c: &dy, ldc: K)
        for n in 0..<N { for k in 0..<K { dy[n * K + k] *= sigma[k] } }
        return dy
    }
}

public struct FusionVAE: Sendable {
    public let config: FusionVAEConfig
    public var params: ParamSet
    public var basis: ParameterBasis

    public init(config c: FusionVAEConfig, basis: ParameterBasis, seed: UInt64) {
        precondition(basis.size == c.basis)
        self.config = c
        self.basis = basis
        var p = ParamSet()
        var rng = SeededRNG(seed: seed, stream: "fusion-vae")
        // Glorot-style uniform init keeps tanh units out of saturation at the start.
        func dense(_ name: String, out: Int, inp: Int, fanIn: Int? = nil) {
            let bound = (6 / Float((fanIn ?? inp) + out)).squareRoot()
            p.add(name, shape: [out, inp], values: (0..<(out * inp)).map { _ in (2 * rng.nextUniform() - 1) * bound })
        }
        func zeros(_ name: String, _ shape: [Int]) { p.add(name, shape: shape, values: [Float](repeating: 0, count: shape.reduce(1, *))) }
        let K = c.basis, Pc = c.conditionProj, H = c.hidden, Z = c.latent
        dense("cond.W", out: Pc, inp: c.conditionDim); zeros("cond.b", [Pc])
        dense("enc.Wy", out: H, inp: K, fanIn: K + Pc); dense("enc.Wc", out: H, inp: Pc, fanIn: K + Pc); zeros("enc.b", [H])
        dense("enc.Wmu", out: Z, inp: H); zeros("enc.bmu", [Z])
        dense("enc.Wlv", out: Z, inp: H); zeros("enc.blv", [Z])
        if c.conditionalPrior {
            dense("prior.W", out: H, inp: Pc); zeros("prior.b", [H])
            dense("prior.Wmu", out: Z, inp: H); zeros("prior.bmu", [Z])
            zeros("prior.Wlv", [Z, H]); zeros("prior.blv", [Z])
        }
        dense("dec.Wz", out: H, inp: Z, fanIn: Z + Pc); dense("dec.Wc", out: H, inp: Pc, fanIn: Z + Pc); zeros("dec.b", [H])
        // Zero output layer: the decoder starts at ŷ = 0, x̂ = P (the training mean).
        zeros("dec.Wo", [K, H]); zeros("dec.bo", [K])
        params = p
    }

    init(config: FusionVAEConfig, params: ParamSet, basis: ParameterBasis) {
        self.config = config; self.params = params; self.basis = basis
    }

    /// Reconstruction weights ω_k = σ_k² / Σ σ².
    var omega: [Float] {
        let s = basis.sigma.reduce(0) { $0 + Double($1) * Double($1) }
        return basis.sigma.map { Float(Double($0) * Double($0) / s) }
    }

    // MARK: Condition and prior

    /// cp = h Wcᵀ + bc  (N, Pc)
    func project(_ h: [Float], rows N: Int) -> [Float] {
        var cp = [Float](repeating: 0, count: N * config.conditionProj)
        Dense.forward(h, rows: N, inFeatures: config.conditionDim, params["cond.W"], params["cond.b"], outFeatures: config.conditionProj, into: &cp)
        return cp
    }

    struct PriorTape { var gp: [Float]; var mu: [Float]; var lv: [Float] }

    func prior(cp: [Float], rows N: Int) -> PriorTape {
        let c = config, Z = c.latent
        guard c.conditionalPrior else { return PriorTape(gp: [], mu: [Float](repeating: 0, count: N * Z), lv: [Float](repeating: 0, count: N * Z)) }
        var gp = [Float](repeating: 0, count: N * c.hidden)
        Dense.forward(cp, rows: N, inFeatures: c.conditionProj, params["prior.W"], params["prior.b"], outFeatures: c.hidden, into: &gp)
        Activation.tanhForward(&gp)
        var mu = [Float](repeating: 0, count: N * Z), lv = mu
        Dense.forward(gp, rows: N, inFeatures: c.hidden, params["prior.Wmu"], params["prior.bmu"], outFeatures: Z, into: &mu)
        Dense.forward(gp, rows: N, inFeatures: c.hidden, params["prior.Wlv"], params["prior.blv"], outFeatures: Z, into: &lv)
        return PriorTape(gp: gp, mu: mu, lv: lv)
    }

    /// The conditional prior p(z | c) of standardised conditions h (N, Hc): means and log-variances (N, Z).
    public func prior(_ h: [Float], rows N: Int) -> (mu: [Float], logVar: [Float]) {
        let t = prior(cp: project(h, rows: N), rows: N)
        return (t.mu, t.lv)
    }

    /// Returns dL/dcp from the prior's dμp, dlvp.
    func priorBackward(_ t: PriorTape, cp: [Float], rows N: Int, dmu: [Float], dlv: [Float], grads g: inout ParamSet) -> [Float] {
        let c = config, Z = c.latent
        var dcp = [Float](repeating: 0, count: N * c.conditionProj)
        guard c.conditionalPrior else { return dcp }
        g.denseBackward("prior.Wmu", "prior.bmu", x: t.gp, rows: N, inFeatures: c.hidden, outFeatures: Z, dY: dmu)
        g.denseBackward("prior.Wlv", "prior.blv", x: t.gp, rows: N, inFeatures: c.hidden, outFeatures: Z, dY: dlv)
        var dgp = [Float](repeating: 0, count: N * c.hidden)
        Dense.inputGradient(dY: dmu, rows: N, params["prior.Wmu"], inFeatures: c.hidden, outFeatures: Z, into: &dgp)
        Dense.inputGradient(dY: dlv, rows: N, params["prior.Wlv"], inFeatures: c.hidden, outFeatures: Z, into: &dgp)
        Activation.tanhBackward(post: t.gp, &dgp)
        g.denseBackward("prior.W", "prior.b", x: cp, rows: N, inFeatures: c.conditionProj, outFeatures: c.hidden, dY: dgp)
        Dense.inputGradient(dY: dgp, rows: N, params["prior.W"], inFeatures: c.conditionProj, outFeatures: c.hidden, into: &dcp)
        return dcp
    }

    // MARK: Encoder

    struct EncoderTape { var g1: [Float]; var mu: [Float]; var lv: [Float] }

    func encode(y: [Float], cp: [Float], rows N: Int) -> EncoderTape {
        let c = config
        var a1 = [Float](repeating: 0, count: N * c.hidden)
        Dense.forward(y, rows: N, inFeatures: c.basis, params["enc.Wy"], params["enc.b"], outFeatures: c.hidden, into: &a1)
        Dense.forward(cp, rows: N, inFeatures: c.conditionProj, params["enc.Wc"], nil, outFeatures: c.hidden, into: &a1, accumulate: true)
        Activation.tanhForward(&a1)
        var mu = [Float](repeating: 0, count: N * c.latent), lv = mu
        Dense.forward(a1, rows: N, inFeatures: c.hidden, params["enc.Wmu"], params["enc.bmu"], outFeatures: c.latent, into: &mu)
        Dense.forward(a1, rows: N, inFeatures: c.hidden, params["enc.Wlv"], params["enc.blv"], outFeatures: c.latent, into: &lv)
        return EncoderTape(g1: a1, mu: mu, lv: lv)
    }

    /// Posterior means and log-variances (N, Z) of coordinates y (N, K) under standardised conditions h (N, Hc).
    public func posterior(y: [Float], h: [Float], rows N: Int) -> (mu: [Float], logVar: [Float]) {
        let t = encode(y: y, cp: project(h, rows: N), rows: N)
        return (t.mu, t.lv)
    }

    /// Returns dL/dcp.
    func encoderBackward(_ t: EncoderTape, y: [Float], cp: [Float], rows N: Int, dmu: [Float], dlv: [Float], grads g: inout ParamSet) -> [Float] {
        let c = config
        g.denseBackward("enc.Wmu", "enc.bmu", x: t.g1, rows: N, inFeatures: c.hidden, outFeatures: c.latent, dY: dmu)
        g.denseBackward("enc.Wlv", "enc.blv", x: t.g1, rows: N, inFeatures: c.hidden, outFeatures: c.latent, dY: dlv)
        var dg1 = [Float](repeating: 0, count: N * c.hidden)
        Dense.inputGradient(dY: dmu, rows: N, params["enc.Wmu"], inFeatures: c.hidden, outFeatures: c.latent, into: &dg1)
        Dense.inputGradient(dY: dlv, rows: N, params["enc.Wlv"], inFeatures: c.hidden, outFeatures: c.latent, into: &dg1)
        Activation.tanhBackward(post: t.g1, &dg1)
        g.denseBackward("enc.Wy", "enc.b", x: y, rows: N, inFeatures: c.basis, outFeatures: c.hidden, dY: dg1)
        g.denseBackward("enc.Wc", nil, x: cp, rows: N, inFeatures: c.conditionProj, outFeatures: c.hidden, dY: dg1)
        var dcp = [Float](repeating: 0, count: N * c.conditionProj)
        Dense.inputGradient(dY: dg1, rows: N, params["enc.Wc"], inFeatures: c.conditionProj, outFeatures: c.hidden, into: &dcp)
        return dcp
    }

    // MARK: Decoder

    struct DecoderTape { var g2: [Float]; var yHat: [Float] }

    func decode(z: [Float], cp: [Float], rows N: Int) -> DecoderTape {
        let c = config
        var a2 = [Float](repeating: 0, count: N * c.hidden)
        Dense.forward(z, rows: N, inFeatures: c.latent, params["dec.Wz"], params["dec.b"], outFeatures: c.hidden, into: &a2)
        Dense.forward(cp, rows: N, inFeatures: c.conditionProj, params["dec.Wc"], nil, outFeatures: c.hidden, into: &a2, accumulate: true)
        Activation.tanhForward(&a2)
        var y = [Float](repeating: 0, count: N * c.basis)
        Dense.forward(a2, rows: N, inFeatures: c.hidden, params["dec.Wo"], params["dec.bo"], outFeatures: c.basis, into: &y)
        return DecoderTape(g2: a2, yHat: y)
    }

    /// Decoded coordinates ŷ (N, K) of latents z (N, Z) under standardised conditions h (N, Hc).
    public func decodeCoordinates(z: [Float], h: [Float], rows N: Int) -> [Float] {
        decode(z: z, cp: project(h, rows: N), rows: N).yHat
    }

    /// Decoded normalised parameter vectors x̂ (N, V).
    public func decode(z: [Float], h: [Float], rows N: Int) -> [Float] {
        basis.expand(decodeCoordinates(z: z, h: h, rows: N), rows: N)
    }

    /// Back through the decoder from dŷ (N, K): parameter gradients (when `grads` is given);
    /// returns (dL/dz (N, Z), dL/dcp (N, Pc)).
    func decoderBackward(_ t: DecoderTape, z: [Float], cp: [Float], rows N: Int, dy: [Float], grads g: inout ParamSet?) -> (dz: [Float], dcp: [Float]) {
        let c = config
        if var gg = g {
            g = nil   // drop the second reference so the arrays are mutated in place
            gg.denseBackward("dec.Wo", "dec.bo", x: t.g2, rows: N, inFeatures: c.hidden, outFeatures: c.basis, dY: dy)
            g = gg
        }
        var dg2 = [Float](repeating: 0, count: N * c.hidden)
        Dense.inputGradient(dY: dy, rows: N, params["dec.Wo"], inFeatures: c.hidden, outFeatures: c.basis, into: &dg2)
        Activation.tanhBackward(post: t.g2, &dg2)
        if var gg = g {
            g = nil
            gg.denseBackward("dec.Wz", "dec.b", x: z, rows: N, inFeatures: c.latent, outFeatures: c.hidden, dY: dg2)
            gg.denseBackward("dec.Wc", nil, x: cp, rows: N, inFeatures: c.conditionProj, outFeatures: c.hidden, dY: dg2)
            g = gg
        }
        var dz = [Float](repeating: 0, count: N * c.latent), dcp = [Float](repeating: 0, count: N * c.conditionProj)
        Dense.inputGradient(dY: dg2, rows: N, params["dec.Wz"], inFeatures: c.latent, outFeatures: c.hidden, into: &dz)
        Dense.inputGradient(dY: dg2, rows: N, params["dec.Wc"], inFeatures: c.conditionProj, outFeatures: c.hidden, into: &dcp)
        return (dz, dcp)
    }

    /// dL/dz of latents (N, Z) decoded under h, given dL/dx̂ (N, V) (no parameter gradients).
    public func latentGradient(z: [Float], h: [Float], rows N: Int, dx: [Float]) -> [Float] {
        let cp = project(h, rows: N)
        let t = decode(z: z, cp: cp, rows: N)
        var none: ParamSet? = nil
        return decoderBackward(t, z: z, cp: cp, rows: N, dy: basis.coordinateGradient(dx, rows: N), grads: &none).dz
    }

    // MARK: Loss

    public struct LossParts: Sendable { public var loss: Double; public var recon: Double; public var kl: Double }

    /// The VAE loss of a batch of coordinates y (N, K) with standardised conditions h (N, Hc), and
    /// its gradients. `eps` (N, Z) is the reparameterisation noise (zeros: deterministic).
    /// `extraDy` (N, K), when given, is added to dL/dŷ — the meta-objective's gradient flowing
    /// into the same decoder pass. `rowScale` (N, summing to N) weighs each row's terms (the
    /// generator gives every task the same total weight).
    public func lossAndGradients(y: [Float], h: [Float], rows N: Int, eps: [Float], extraDy: [Float]? = nil,
                                 rowScale: [Float]? = nil) -> (LossParts, ParamSet) {
        let c = config, K = c.basis, Z = c.latent
        let cp = project(h, rows: N)
        let et = encode(y: y, cp: cp, rows: N)
        let pt = prior(cp: cp, rows: N)
        var z = et.mu
        for i in z.indices { z[i] += exp(0.5 * et.lv[i]) * eps[i] }
        let dt = decode(z: z, cp: cp, rows: N)
        let w = omega
        var recon = 0.0, kl = 0.0
        var dy = [Float](repeating: 0, count: N * K)
        let r = rowScale ?? [Float](repeating: 1, count: N)
        for n in 0..<N {
            for k in 0..<K {
                let i = n * K + k, e = dt.yHat[i] - y[i]
                recon += Double(r[n] * w[k] * e * e); dy[i] = 2 * r[n] * w[k] * e / Float(N)
            }
        }
        if let extraDy { for i in dy.indices { dy[i] += extraDy[i] } }
        // KL(q ‖ p) and its gradients in μ, lv, μp, lvp.
        var dmu = [Float](repeating: 0, count: N * Z), dlv = dmu, dmup = dmu, dlvp = dmu
        let kb = c.beta / Float(N)
        for i in 0..<(N * Z) {
            let m = et.mu[i], l = et.lv[i], mp = pt.mu[i], lp = pt.lv[i], rn = r[i / Z]
            let ip = exp(-lp), d = m - mp
            kl += 0.5 * Double(rn * (lp - l + (exp(l) + d * d) * ip - 1))
            dmu[i] = rn * kb * d * ip
            dlv[i] = rn * kb * 0.5 * (exp(l) * ip - 1)
            dmup[i] = -rn * kb * d * ip
            dlvp[i] = rn * kb * 0.5 * (1 - (exp(l) + d * d) * ip)
        }
        recon /= Double(N); kl /= Double(N)
        var g: ParamSet? = params.zeros()
        let (dz, dcpDec) = decoderBackward(dt, z: z, cp: cp, rows: N, dy: dy, grads: &g)
        for i in 0..<(N * Z) {
            dmu[i] += dz[i]
            dlv[i] += dz[i] * eps[i] * 0.5 * exp(0.5 * et.lv[i])
        }
        var gg = g!
        var dcp = encoderBackward(et, y: y, cp: cp, rows: N, dmu: dmu, dlv: dlv, grads: &gg)
        let dcpPrior = priorBackward(pt, cp: cp, rows: N, dmu: dmup, dlv: dlvp, grads: &gg)
        for i in dcp.indices { dcp[i] += dcpDec[i] + dcpPrior[i] }
        gg.denseBackward("cond.W", "cond.b", x: h, rows: N, inFeatures: c.conditionDim, outFeatures: c.conditionProj, dY: dcp)
        return (LossParts(loss: recon + Double(c.beta) * kl, recon: recon, kl: kl), gg)
    }
}
