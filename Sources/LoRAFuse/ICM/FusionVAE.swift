import Foundation

// The Fusion VAE: a conditional VAE over parameter chunks.
//
// Per chunk row n (N rows per batch; D = chunk size, Hc = task-condition width, Z = latent):
//   cp  = h Wcᵀ + bc                                   (N, Pc)   projected task condition
//   e   = E_layer[l] + E_module[m] + E_ab[a] + E_idx[k] (N, Pe)   learned position embedding
//   c   = [cp, e]                                      (N, Cd = Pc + Pe)
//   g1  = tanh(x W1xᵀ + c W1cᵀ + b1)                   (N, Hd)   encoder hidden
//   μ   = g1 Wμᵀ + bμ,  lv = g1 Wlvᵀ + blv              (N, Z)
//   z   = μ + exp(lv/2) ⊙ ε                            (N, Z)    ε ~ N(0, I) (ε = 0: the mean)
//   g2  = tanh(z W2zᵀ + c W2cᵀ + b2)                   (N, Hd)   decoder hidden
//   x̂   = g2 W3ᵀ + b3 + P[g]                           (N, D)    P: a learned per-chunk offset
// Loss = (1/N) Σ_n [ ‖x̂_n − x_n‖²/D + β·KL_n ],  KL_n = −½ Σ_j (1 + lv − μ² − e^lv).
//
// P (one row per global chunk position, i.e. one adapter's worth of values) carries what every
// adapter shares at that position — chiefly the seeded initialisation of A, which no small latent
// could encode — so the latent only has to carry what differs between tasks. It is a choice of
// this implementation (the papers' decoders output the whole flattened vector); `positionOffset`
// turns it off.

public struct FusionVAEConfig: Sendable, Equatable, Codable {
    public var chunkSize: Int
    public var conditionDim: Int       // Hc: width of the raw task condition (hidden size)
    public var conditionProj = 32      // Pc
    public var positionDim = 16        // Pe
    public var hidden = 256            // Hd
    public var latent = 32             // Z
    public var beta: Float = 1e-3
    public var numLayers: Int
    public var maxChunkIndex: Int
    public var chunkCount: Int
    public var positionOffset = true

    public init(chunkSize: Int, conditionDim: Int, numLayers: Int, maxChunkIndex: Int, chunkCount: Int) {
        self.chunkSize = chunkSize; self.conditionDim = conditionDim; self.numLayers = numLayers
        self.maxChunkIndex = maxChunkIndex; self.chunkCount = chunkCount
    }
}

/// Rows fed to the VAE: normalised chunks, their task conditions and position tags.
public struct VAEBatch: Sendable {
    public var x: [Float]          // (N, D) — may be empty for decode-only use
    public var h: [Float]          // (N, Hc)
    public var tags: [ChunkTag]    // (N)
    public var positions: [Int]    // (N) global chunk index (row of P)
    public var rows: Int { tags.count }
    public init(x: [Float], h: [Float], tags: [ChunkTag], positions: [Int]) {
        self.x = x; self.h = h; self.tags = tags; self.positions = positions
    }
}

public struct FusionVAE: Sendable {
    public let config: FusionVAEConfig
    public var params: ParamSet

    static let moduleCount = Projection.allCases.count

    public init(config c: FusionVAEConfig, seed: UInt64) {
        self.config = c
        var p = ParamSet()
        var rng = SeededRNG(seed: seed, stream: "fusion-vae")
        // Glorot-style uniform init keeps tanh units out of saturation at the start.
        func dense(_ name: String, out: Int, inp: Int, fanIn: Int? = nil) {
            let bound = (6 / Float((fanIn ?? inp) + out)).squareRoot()
            p.add(name, shape: [out, inp], values: (0..<(out * inp)).map { _ in (2 * rng.nextUniform() - 1) * bound })
        }
        func zeros(_ name: String, _ shape: [Int]) { p.add(name, shape: shape, values: [Float](repeating: 0, count: shape.reduce(1, *))) }
        func emb(_ name: String, _ rows: Int) {
            p.add(name, shape: [rows, c.positionDim], values: (0..<(rows * c.positionDim)).map { _ in rng.nextNormal() * 0.1 })
        }
        let Cd = c.conditionProj + c.positionDim
        dense("cond.W", out: c.conditionProj, inp: c.conditionDim); zeros("cond.b", [c.conditionProj])
        emb("emb.layer", c.numLayers); emb("emb.module", Self.moduleCount); emb("emb.ab", 2); emb("emb.index", c.maxChunkIndex)
        dense("enc.Wx", out: c.hidden, inp: c.chunkSize, fanIn: c.chunkSize + Cd)
        dense("enc.Wc", out: c.hidden, inp: Cd, fanIn: c.chunkSize + Cd); zeros("enc.b", [c.hidden])
        dense("enc.Wmu", out: c.latent, inp: c.hidden); zeros("enc.bmu", [c.latent])
        dense("enc.Wlv", out: c.latent, inp: c.hidden); zeros("enc.blv", [c.latent])
        dense("dec.Wz", out: c.hidden, inp: c.latent, fanIn: c.latent + Cd)
        dense("dec.Wc", out: c.hidden, inp: Cd, fanIn: c.latent + Cd); zeros("dec.b", [c.hidden])
        // Zero output layer: the decoder starts at x̂ = P (the training mean) and only moves away
        // from it where that lowers the reconstruction loss.
        zeros("dec.Wo", [c.chunkSize, c.hidden]); zeros("dec.bo", [c.chunkSize])
        if c.positionOffset { zeros("dec.P", [c.chunkCount, c.chunkSize]) }
        params = p
    }

    init(config: FusionVAEConfig, params: ParamSet) { self.config = config; self.params = params }

    // MARK: Condition

    /// c = [h Wcᵀ + bc, position embedding]  (N, Cd)
    func condition(_ b: VAEBatch) -> [Float] {
        let c = config, N = b.rows, Pc = c.conditionProj, Pe = c.positionDim, Cd = Pc + Pe
        var cp = [Float](repeating: 0, count: N * Pc)
        Dense.forward(b.h, rows: N, inFeatures: c.conditionDim, params["cond.W"], params["cond.b"], outFeatures: Pc, into: &cp)
        var out = [Float](repeating: 0, count: N * Cd)
        let El = params["emb.layer"], Em = params["emb.module"], Ea = params["emb.ab"], Ei = params["emb.index"]
        for n in 0..<N {
            for j in 0..<Pc { out[n * Cd + j] = cp[n * Pc + j] }
            let t = b.tags[n], k = min(t.index, c.maxChunkIndex - 1), a = t.isB ? 1 : 0
            for j in 0..<Pe {
                out[n * Cd + Pc + j] = El[t.layer * Pe + j] + Em[t.module * Pe + j] + Ea[a * Pe + j] + Ei[k * Pe + j]
            }
        }
        return out
    }

    /// Gradients of the condition's parameters from dL/dc (N, Cd).
    func conditionBackward(_ b: VAEBatch, dc: [Float], grads g: inout ParamSet) {
        let c = config, N = b.rows, Pc = c.conditionProj, Pe = c.positionDim, Cd = Pc + Pe
        var dcp = [Float](repeating: 0, count: N * Pc)
        for n in 0..<N { for j in 0..<Pc { dcp[n * Pc + j] = dc[n * Cd + j] } }
        g.denseBackward("cond.W", "cond.b", x: b.h, rows: N, inFeatures: c.conditionDim, outFeatures: Pc, dY: dcp)
        var El = g.values.removeValue(forKey: "emb.layer")!, Em = g.values.removeValue(forKey: "emb.module")!
        var Ea = g.values.removeValue(forKey: "emb.ab")!, Ei = g.values.removeValue(forKey: "emb.index")!
        for n in 0..<N {
            let t = b.tags[n], k = min(t.index, c.maxChunkIndex - 1), a = t.isB ? 1 : 0
            for j in 0..<Pe {
                let d = dc[n * Cd + Pc + j]
                El[t.layer * Pe + j] += d; Em[t.module * Pe + j] += d; Ea[a * Pe + j] += d; Ei[k * Pe + j] += d
            }
        }
        g.values["emb.layer"] = El; g.values["emb.module"] = Em; g.values["emb.ab"] = Ea; g.values["emb.index"] = Ei
    }

    // MARK: Encoder

    public struct EncoderTape { var c: [Float]; var g1: [Float]; public var mu: [Float]; public var lv: [Float] }

    func encode(_ b: VAEBatch, c: [Float]) -> EncoderTape {
        let cf = config, N = b.rows, Cd = cf.conditionProj + cf.positionDim
        var a1 = [Float](repeating: 0, count: N * cf.hidden)
        Dense.forward(b.x, rows: N, inFeatures: cf.chunkSize, params["enc.Wx"], params["enc.b"], outFeatures: cf.hidden, into: &a1)
        Dense.forward(c, rows: N, inFeatures: Cd, params["enc.Wc"], nil, outFeatures: cf.hidden, into: &a1, accumulate: true)
        Activation.tanhForward(&a1)
        var mu = [Float](repeating: 0, count: N * cf.latent), lv = mu
        Dense.forward(a1, rows: N, inFeatures: cf.hidden, params["enc.Wmu"], params["enc.bmu"], outFeatures: cf.latent, into: &mu)
        Dense.forward(a1, rows: N, inFeatures: cf.hidden, params["enc.Wlv"], params["enc.blv"], outFeatures: cf.latent, into: &lv)
        return EncoderTape(c: c, g1: a1, mu: mu, lv: lv)
    }

    /// Posterior means and log-variances of every row: (N, Z) each.
    public func posterior(_ b: VAEBatch) -> (mu: [Float], logVar: [Float]) {
        let t = encode(b, c: condition(b))
        return (t.mu, t.lv)
    }

    /// Back through the encoder from dμ, dlv: adds parameter gradients, returns dL/dc (N, Cd).
    func encoderBackward(_ b: VAEBatch, _ t: EncoderTape, dmu: [Float], dlv: [Float], grads g: inout ParamSet) -> [Float] {
        let cf = config, N = b.rows, Cd = cf.conditionProj + cf.positionDim
        g.denseBackward("enc.Wmu", "enc.bmu", x: t.g1, rows: N, inFeatures: cf.hidden, outFeatures: cf.latent, dY: dmu)
        g.denseBackward("enc.Wlv", "enc.blv", x: t.g1, rows: N, inFeatures: cf.hidden, outFeatures: cf.latent, dY: dlv)
        var dg1 = [Float](repeating: 0, count: N * cf.hidden)
        Dense.inputGradient(dY: dmu, rows: N, params["enc.Wmu"], inFeatures: cf.hidden, outFeatures: cf.latent, into: &dg1)
        Dense.inputGradient(dY: dlv, rows: N, params["enc.Wlv"], inFeatures: cf.hidden, outFeatures: cf.latent, into: &dg1)
        Activation.tanhBackward(post: t.g1, &dg1)
        g.denseBackward("enc.Wx", "enc.b", x: b.x, rows: N, inFeatures: cf.chunkSize, outFeatures: cf.hidden, dY: dg1)
        g.denseBackward("enc.Wc", nil, x: t.c, rows: N, inFeatures: Cd, outFeatures: cf.hidden, dY: dg1)
        var dc = [Float](repeating: 0, count: N * Cd)
        Dense.inputGradient(dY: dg1, rows: N, params["enc.Wc"], inFeatures: Cd, outFeatures: cf.hidden, into: &dc)
        return dc
    }

    // MARK: Decoder

    public struct DecoderTape { var z: [Float]; var c: [Float]; var g2: [Float]; public var xHat: [Float] }

    func decode(z: [Float], c: [Float], positions: [Int]) -> DecoderTape {
        let cf = config, N = positions.count, Cd = cf.conditionProj + cf.positionDim, D = cf.chunkSize
        var a2 = [Float](repeating: 0, count: N * cf.hidden)
        Dense.forward(z, rows: N, inFeatures: cf.latent, params["dec.Wz"], params["dec.b"], outFeatures: cf.hidden, into: &a2)
        Dense.forward(c, rows: N, inFeatures: Cd, params["dec.Wc"], nil, outFeatures: cf.hidden, into: &a2, accumulate: true)
        Activation.tanhForward(&a2)
        var x = [Float](repeating: 0, count: N * D)
        Dense.forward(a2, rows: N, inFeatures: cf.hidden, params["dec.Wo"], params["dec.bo"], outFeatures: D, into: &x)
        if cf.positionOffset {
            let P = params["dec.P"]
            for n in 0..<N { let r = positions[n] * D; for j in 0..<D { x[n * D + j] += P[r + j] } }
        }
        return DecoderTape(z: z, c: c, g2: a2, xHat: x)
    }

    /// Decodes latents (N, Z) at the batch's positions with its conditions (x of the batch unused).
    public func decode(z: [Float], _ b: VAEBatch) -> [Float] {
        decode(z: z, c: condition(b), positions: b.positions).xHat
    }

    /// Back through the decoder from dx̂ (N, D): adds parameter gradients (when `grads` is given)
    /// and returns (dL/dz (N, Z), dL/dc (N, Cd)).
    func decoderBackward(_ t: DecoderTape, positions: [Int], dx: [Float], grads g: inout ParamSet?) -> (dz: [Float], dc: [Float]) {
        let cf = config, N = positions.count, Cd = cf.conditionProj + cf.positionDim, D = cf.chunkSize
        if var gg = g {
            g = nil   // drop the second reference so the arrays are mutated in place
            gg.denseBackward("dec.Wo", "dec.bo", x: t.g2, rows: N, inFeatures: cf.hidden, outFeatures: D, dY: dx)
            if cf.positionOffset {
                var P = gg.values.removeValue(forKey: "dec.P")!
                for n in 0..<N { let r = positions[n] * D; for j in 0..<D { P[r + j] += dx[n * D + j] } }
                gg.values["dec.P"] = P
            }
            g = gg
        }
        var dg2 = [Float](repeating: 0, count: N * cf.hidden)
        Dense.inputGradient(dY: dx, rows: N, params["dec.Wo"], inFeatures: cf.hidden, outFeatures: D, into: &dg2)
        Activation.tanhBackward(post: t.g2, &dg2)
        if var gg = g {
            g = nil   // drop the second reference so the arrays are mutated in place
            gg.denseBackward("dec.Wz", "dec.b", x: t.z, rows: N, inFeatures: cf.latent, outFeatures: cf.hidden, dY: dg2)
            gg.denseBackward("dec.Wc", nil, x: t.c, rows: N, inFeatures: Cd, outFeatures: cf.hidden, dY: dg2)
            g = gg
        }
        var dz = [Float](repeating: 0, count: N * cf.latent), dc = [Float](repeating: 0, count: N * Cd)
        Dense.inputGradient(dY: dg2, rows: N, params["dec.Wz"], inFeatures: cf.latent, outFeatures: cf.hidden, into: &dz)
        Dense.inputGradient(dY: dg2, rows: N, params["dec.Wc"], inFeatures: Cd, outFeatures: cf.hidden, into: &dc)
        return (dz, dc)
    }

    /// dL/dz for latents decoded at `b`'s positions, given dL/dx̂ (no parameter gradients).
    public func latentGradient(z: [Float], _ b: VAEBatch, dx: [Float]) -> [Float] {
        let t = decode(z: z, c: condition(b), positions: b.positions)
        var none: ParamSet? = nil
        return decoderBackward(t, positions: b.positions, dx: dx, grads: &none).dz
    }

    /// Parameter gradients of ⟨dx, x̂(z)⟩ with the latents held fixed (the decoder-only path of the
    /// meta-objective).
    public func decoderParameterGradients(z: [Float], _ b: VAEBatch, dx: [Float]) -> ParamSet {
        let c = condition(b)
        let t = decode(z: z, c: c, positions: b.positions)
        var g: ParamSet? = params.zeros()
        let r = decoderBackward(t, positions: b.positions, dx: dx, grads: &g)
        var gg = g!
        conditionBackward(b, dc: r.dc, grads: &gg)
        return gg
    }

    // MARK: Loss

    public struct LossParts: Sendable { public var loss: Double; public var recon: Double; public var kl: Double }

    /// The VAE loss of a batch and its gradients. `eps` (N, Z) is the reparameterisation noise
    /// (zeros: deterministic, as the gradient tests use). `extraDx` (N, D), when given, is added
    /// to dL/dx̂ — the meta-objective's gradient flowing into the same decoder pass.
    public func lossAndGradients(_ b: VAEBatch, eps: [Float], extraDx: [Float]? = nil) -> (LossParts, ParamSet) {
        let cf = config, N = b.rows, D = cf.chunkSize, Z = cf.latent
        let c = condition(b)
        let et = encode(b, c: c)
        var z = et.mu
        for i in z.indices { z[i] += exp(0.5 * et.lv[i]) * eps[i] }
        let dt = decode(z: z, c: c, positions: b.positions)
        var recon = 0.0, kl = 0.0
        var dx = [Float](repeating: 0, count: N * D)
        let rs = 2 / Float(N * D)
        for i in dx.indices { let e = dt.xHat[i] - b.x[i]; recon += Double(e * e); dx[i] = rs * e }
        if let extraDx { for i in dx.indices { dx[i] += extraDx[i] } }
        for i in 0..<(N * Z) {
            let m = Double(et.mu[i]), l = Double(et.lv[i])
            kl += -0.5 * (1 + l - m * m - exp(l))
        }
        recon /= Double(N * D); kl /= Double(N)
        var g: ParamSet? = params.zeros()
        let (dz, dcDec) = decoderBackward(dt, positions: b.positions, dx: dx, grads: &g)
        var dmu = dz, dlv = [Float](repeating: 0, count: N * Z)
        let kb = cf.beta / Float(N)
        for i in 0..<(N * Z) {
            let s = exp(0.5 * et.lv[i])
            dlv[i] = dz[i] * eps[i] * 0.5 * s + kb * 0.5 * (s * s - 1)
            dmu[i] += kb * et.mu[i]
        }
        var gg = g!
        var dc = encoderBackward(b, et, dmu: dmu, dlv: dlv, grads: &gg)
        for i in dc.indices { dc[i] += dcDec[i] }
        conditionBackward(b, dc: dc, grads: &gg)
        return (LossParts(loss: recon + Double(cf.beta) * kl, recon: recon, kl: kl), gg)
    }
}
