import Foundation
import XCTest
@testable import LoRAFuse

final class ICMTests: XCTestCase {
    // MARK: Fixtures

    static func tinyVAEConfig(conditionalPrior: Bool = true) -> FusionVAEConfig {
        var c = FusionVAEConfig(basis: 4, conditionDim: 5)
        c.conditionProj = 3; c.hidden = 7; c.latent = 3; c.beta = 0.3; c.conditionalPrior = conditionalPrior
        return c
    }

    /// A random basis of 4 directions in a 10-value space (P, U, σ all non-trivial).
    static func tinyBasis(seed: UInt64) -> ParameterBasis {
        var rng = SeededRNG(seed: seed)
        return ParameterBasis(mean: (0..<10).map { _ in rng.nextNormal() }, vectors: (0..<40).map { _ in 0.3 * rng.nextNormal() },
                              sigma: (0..<4).map { _ in 0.5 + rng.nextUniform() })
    }

    /// Central differences in Float with step 1e-2 on smooth (tanh/exp) functions of O(1) values.
    func assertGradient(_ name: String, analytic: [Float], values: [Float], f: ([Float]) -> Double,
                        file: StaticString = #filePath, line: UInt = #line) {
        let scale = max(analytic.map { abs($0) }.max() ?? 0, 1e-3)
        for i in values.indices {
            var p = values, m = values
            p[i] += 1e-2; m[i] -= 1e-2
            let fd = (f(p) - f(m)) / 2e-2
            XCTAssertEqual(Double(analytic[i]), fd, accuracy: 2e-3 * Double(scale) + 1e-4, "\(name)[\(i)]", file: file, line: line)
        }
    }

    // MARK: Layers

    func testDenseAndTanhGradientsMatchFiniteDifferences() {
        var rng = SeededRNG(seed: 3)
        let N = 3, I = 4, O = 5
        let x = (0..<(N * I)).map { _ in rng.nextNormal() }, W = (0..<(O * I)).map { _ in rng.nextNormal() }
        let b = (0..<O).map { _ in rng.nextNormal() }, r = (0..<(N * O)).map { _ in rng.nextNormal() }
        // L = ⟨r, tanh(x Wᵀ + b)⟩
        func loss(_ x: [Float], _ W: [Float], _ b: [Float]) -> Double {
            var y = [Float](repeating: 0, count: N * O)
            Dense.forward(x, rows: N, inFeatures: I, W, b, outFeatures: O, into: &y)
            Activation.tanhForward(&y)
            return zip(y, r).reduce(0) { $0 + Double($1.0 * $1.1) }
        }
        var y = [Float](repeating: 0, count: N * O)
        Dense.forward(x, rows: N, inFeatures: I, W, b, outFeatures: O, into: &y)
        Activation.tanhForward(&y)
        var dy = r
        Activation.tanhBackward(post: y, &dy)
        var dW = [Float](repeating: 0, count: O * I), db = [Float](repeating: 0, count: O), dx = [Float](repeating: 0, count: N * I)
        Dense.backward(x, rows: N, inFeatures: I, outFeatures: O, dY: dy, dW: &dW, db: &db)
        Dense.inputGradient(dY: dy, rows: N, W, inFeatures: I, outFeatures: O, into: &dx)
        assertGradient("W", analytic: dW, values: W) { loss(x, $0, b) }
        assertGradient("b", analytic: db, values: b) { loss(x, W, $0) }
        assertGradient("x", analytic: dx, values: x) { loss($0, W, b) }
    }

    /// Every parameter of the VAE, with reparameterisation noise and an extra dL/dx̂ term.
    func testVAELossGradientMatchesFiniteDifferences() {
        for conditional in [true, false] {
            var vae = FusionVAE(config: Self.tinyVAEConfig(conditionalPrior: conditional), basis: Self.tinyBasis(seed: 3), seed: 1)
            var rng = SeededRNG(seed: 11)
            for n in vae.params.names { vae.params[n] = vae.params[n].map { $0 + 0.2 * rng.nextNormal() } }  // biases, Wo, prior ≠ 0
            let N = 3
            let y = (0..<(N * 4)).map { _ in rng.nextNormal() }, h = (0..<(N * 5)).map { _ in rng.nextNormal() }
            let eps = (0..<(N * 3)).map { _ in rng.nextNormal() }
            let extra = (0..<(N * 4)).map { _ in 0.1 * rng.nextNormal() }
            let scale: [Float] = [0.5, 1.5, 1]
            let (_, g) = vae.lossAndGradients(y: y, h: h, rows: N, eps: eps, extraDy: extra, rowScale: scale)
            func total(_ v: FusionVAE) -> Double {
                let parts = v.lossAndGradients(y: y, h: h, rows: N, eps: eps, rowScale: scale).0
                let cp = v.project(h, rows: N)
                let t = v.encode(y: y, cp: cp, rows: N)
                var z = t.mu
                for i in z.indices { z[i] += exp(0.5 * t.lv[i]) * eps[i] }
                let yh = v.decode(z: z, cp: cp, rows: N).yHat
                return parts.loss + zip(yh, extra).reduce(0) { $0 + Double($1.0 * $1.1) }
            }
            XCTAssertEqual(vae.params.names.contains("prior.W"), conditional)
            for n in vae.params.names {
                assertGradient(n, analytic: g[n], values: vae.params[n]) { vals in
                    var v = vae; v.params[n] = vals; return total(v)
                }
            }
            // dL/dz through the decoder and the basis alone.
            let z = (0..<(N * 3)).map { _ in rng.nextNormal() }
            let dx = (0..<(N * 10)).map { _ in rng.nextNormal() }
            let dz = vae.latentGradient(z: z, h: h, rows: N, dx: dx)
            assertGradient("z", analytic: dz, values: z) { zz in
                zip(vae.decode(z: zz, h: h, rows: N), dx).reduce(0) { $0 + Double($1.0 * $1.1) }
            }
        }
    }

    /// The basis is the weighted PCA of the samples: P the weighted mean, the rows of U
    /// orthonormal (to bf16 rounding), and samples in the span come back from their coordinates.
    func testBasisIsWeightedPCAAndReconstructsItsSpan() throws {
        var rng = SeededRNG(seed: 4)
        let V = 50, N = 6
        let dirs = (0..<3).map { _ in (0..<V).map { _ in rng.nextNormal() } }
        let centre = (0..<V).map { _ in rng.nextNormal() }
        var x = [Float]()
        for _ in 0..<N {
            let a = (0..<3).map { _ in rng.nextNormal() }
            x += (0..<V).map { j in centre[j] + a[0] * dirs[0][j] + a[1] * dirs[1][j] + a[2] * dirs[2][j] }
        }
        let w: [Double] = [0.1, 0.1, 0.2, 0.2, 0.15, 0.25]
        var xc = x
        let b = try ParameterBasis.fit(centering: &xc, count: N, length: V, weights: w, size: 5)
        XCTAssertEqual(b.size, 3, "only three directions carry variance")
        for j in 0..<V {
            let m = (0..<N).reduce(0.0) { $0 + w[$1] * Double(x[$1 * V + j]) }
            XCTAssertEqual(Double(b.mean[j]), m, accuracy: 1e-4)
        }
        for k in 0..<3 {
            for l in 0..<3 {
                let d = (0..<V).reduce(0.0) { $0 + Double(b.vectors[k * V + $1]) * Double(b.vectors[l * V + $1]) }
                XCTAssertEqual(d, k == l ? 1 : 0, accuracy: 1e-2)
            }
        }
        let y = b.coordinates(x, rows: N)
        let back = b.expand(y, rows: N)
        var num = 0.0, den = 0.0
        for i in x.indices { num += Double(back[i] - x[i]) * Double(back[i] - x[i]); den += Double(x[i]) * Double(x[i]) }
        XCTAssertLessThan((num / den).squareRoot(), 1e-2)
        // Weighted coordinates have unit variance per direction.
        for k in 0..<3 {
            let v = (0..<N).reduce(0.0) { $0 + w[$1] * Double(y[$1 * 3 + k]) * Double(y[$1 * 3 + k]) }
            XCTAssertEqual(v, 1, accuracy: 2e-2)
        }
        // coordinateGradient is the adjoint of expand's linear part.
        let dx = (0..<V).map { _ in rng.nextNormal() }, yy = (0..<3).map { _ in rng.nextNormal() }
        let lhs = zip(b.expand(yy, rows: 1), b.mean).enumerated().reduce(0.0) { $0 + Double(($1.1.0 - $1.1.1) * dx[$1.0]) }
        let rhs = zip(b.coordinateGradient(dx, rows: 1), yy).reduce(0.0) { $0 + Double($1.0 * $1.1) }
        XCTAssertEqual(lhs, rhs, accuracy: 1e-3 * max(1, abs(lhs)))
        var same = [Float](repeating: 1, count: 2 * V)
        XCTAssertThrowsError(try ParameterBasis.fit(centering: &same, count: 2, length: V, weights: [0.5, 0.5], size: 2))
    }

    func testSoftmaxWeightGradientMatchesFiniteDifferences() {
        let a: [Float] = [0.3, -0.5, 1.1], s: Float = 0.4
        let g: [Float] = [0.7, -1.2, 0.4]
        let w = ICMFusionParameters.softmaxWeights(logits: a, logScale: s)
        XCTAssertEqual(Double(w.reduce(0, +)), Double(exp(s)), accuracy: 1e-5)
        let (da, ds) = ICMFusionParameters.softmaxGradient(dw: g, logits: a, logScale: s)
        func f(_ aa: [Float], _ ss: Float) -> Double { zip(ICMFusionParameters.softmaxWeights(logits: aa, logScale: ss), g).reduce(0) { $0 + Double($1.0 * $1.1) } }
        assertGradient("a", analytic: da, values: a) { f($0, s) }
        assertGradient("s", analytic: [ds], values: [s]) { f(a, $0[0]) }
        // The weights' starting point 1/n is a = 0, s = 0; init(weights:) inverts the map.
        let p = ICMFusionParameters(weights: [0.2, 0.3, 0.5], rho: [])
        for (x, y) in zip(ICMFusionParameters.softmaxWeights(logits: p.logits, logScale: p.logScale), [0.2, 0.3, 0.5] as [Float]) {
            XCTAssertEqual(x, y, accuracy: 1e-6)
        }
    }

    func testFusionCombineGradientMatchesFiniteDifferences() {
        var rng = SeededRNG(seed: 5)
        let chunks = 4, Z = 3
        let z = (0..<3).map { _ in (0..<(chunks * Z)).map { _ in rng.nextNormal() } }
        let r = (0..<(chunks * Z)).map { _ in rng.nextNormal() }
        let p = ICMFusionParameters(weights: [0.5, -0.3, 0.8], rho: (0..<9).map { _ in rng.nextNormal() })
        let f = ICMGenerator.combine(z, chunks: chunks, latent: Z, params: p, orientation: true)
        XCTAssertFalse(f.proj.isEmpty, "random latents must have some conflicting pairs")
        let g = ICMGenerator.combineBackward(f, dzf: r, params: p)
        func loss(_ q: ICMFusionParameters) -> Double {
            zip(ICMGenerator.combine(z, chunks: chunks, latent: Z, params: q, orientation: true).zf, r).reduce(0) { $0 + Double($1.0 * $1.1) }
        }
        assertGradient("w", analytic: g.weights, values: p.weights) { loss(ICMFusionParameters(weights: $0, rho: p.rho)) }
        assertGradient("rho", analytic: g.rho, values: p.rho) { loss(ICMFusionParameters(weights: p.weights, rho: $0)) }
        // Without orientation the fused latent is exactly Σ w_i z_i.
        let plain = ICMGenerator.combine(z, chunks: chunks, latent: Z, params: p, orientation: false).zf
        for k in plain.indices { XCTAssertEqual(plain[k], 0.5 * z[0][k] - 0.3 * z[1][k] + 0.8 * z[2][k], accuracy: 1e-6) }
    }

    /// Adam's first step moves each entry by lr·sign(g); lazy parameters leave zero-gradient
    /// entries (and their moments) alone, dense ones keep moving them along the momentum.
    func testAdamLazyEntriesStayPut() {
        var p = ParamSet()
        p.add("P", shape: [3], values: [1, 2, 3]); p.add("W", shape: [2], values: [1, 1])
        var adam = ParamAdam(like: p, lr: 0.1)
        adam.lazy = ["P"]
        var g = p.zeros()
        g["P"] = [0.5, 0, -2]; g["W"] = [3, 0]
        adam.update(&p, grads: g)
        XCTAssertEqual(p["P"][0], 0.9, accuracy: 1e-6); XCTAssertEqual(p["P"][1], 2); XCTAssertEqual(p["P"][2], 3.1, accuracy: 1e-6)
        XCTAssertEqual(p["W"][0], 0.9, accuracy: 1e-6); XCTAssertEqual(p["W"][1], 1)
        g["P"] = [0, 0, 0]; g["W"] = [0, 0]
        adam.update(&p, grads: g)
        XCTAssertEqual(p["P"][0], 0.9, accuracy: 1e-6)       // lazy: untouched
        XCTAssertLessThan(p["W"][0], 0.9 - 0.05)             // dense: momentum keeps moving it
    }

    /// θ = x̂·σ·e^γ + μ: dL/dγ for L = ⟨r, θ⟩ against central differences.
    func testFusionGainGradientMatchesFiniteDifferences() {
        let c = TrainFixtures.config()
        let p = TrainFixtures.randomLoRA(c, targets: [.q, .up], rank: 2)
        let layout = ChunkLayout(like: p, chunkSize: 16)
        let e = ParameterEncoding.encode(p, layout: layout)
        let r = TrainFixtures.randomLoRA(c, targets: [.q, .up], rank: 2, seed: 40)
        var g = LoRAGradients(zerosLike: r)
        for m in r.modules.indices { g.dA[m] = r.modules[m].A; g.dB[m] = r.modules[m].B }
        func loss(_ gam: [Float]) -> Double {
            let th = ParameterEncoding.decode(chunks: e.chunks, stats: ICMGenerator.gained(e.stats, layout: layout, logGain: gam), layout: layout)
            var s = 0.0
            for m in th.modules.indices {
                for k in th.modules[m].A.indices { s += Double(th.modules[m].A[k] * g.dA[m][k]) }
                for k in th.modules[m].B.indices { s += Double(th.modules[m].B[k] * g.dB[m][k]) }
            }
            return s
        }
        let gam: [Float] = [0.3, -0.2]
        let st = ICMGenerator.gained(e.stats, layout: layout, logGain: gam)
        let theta = ParameterEncoding.decode(chunks: e.chunks, stats: st, layout: layout)
        assertGradient("logGain", analytic: ICMGenerator.gainGradient(g, theta: theta, stats: st, layout: layout), values: gam, f: loss)
    }

    // MARK: Encoding

    func testEncodeDecodeRoundTripAndLayout() {
        let c = TrainFixtures.config()
        var p = TrainFixtures.randomLoRA(c, targets: [.q, .v, .down])
        for i in p.modules[1].B.indices { p.modules[1].B[i] = 0 }   // a constant tensor
        let layout = ChunkLayout(like: p, chunkSize: 16)
        XCTAssertEqual(layout.tensors.count, 2 * p.modules.count)
        XCTAssertEqual(layout.chunkCount, layout.tensors.reduce(0) { $0 + ($1.count + 15) / 16 })
        XCTAssertEqual(layout.tags[0], ChunkTag(layer: 0, module: 0, isB: false, index: 0))
        let e = ParameterEncoding.encode(p, layout: layout)
        // Each tensor is z-scored: mean 0, population std 1 (the zero tensor stays zero, std 1 stored).
        for (ti, t) in layout.tensors.enumerated() {
            let v = Array(e.chunks[(t.firstChunk * 16)..<(t.firstChunk * 16 + t.count)])
            let m = v.reduce(0, +) / Float(v.count)
            XCTAssertEqual(m, 0, accuracy: 1e-5)
            if ti == 3 { XCTAssertTrue(v.allSatisfy { $0 == 0 }); XCTAssertEqual(e.stats.std[ti], 1) } else {
                XCTAssertEqual((v.map { $0 * $0 }.reduce(0, +) / Float(v.count)).squareRoot(), 1, accuracy: 1e-5)
            }
            // Padding is zero.
            for k in t.count..<(t.chunks * 16) { XCTAssertEqual(e.chunks[t.firstChunk * 16 + k], 0) }
        }
        let back = ParameterEncoding.decode(chunks: e.chunks, stats: e.stats, layout: layout)
        for (a, b) in zip(back.modules, p.modules) {
            XCTAssertEqual(a.layer, b.layer); XCTAssertEqual(a.target, b.target); XCTAssertEqual(a.scale, b.scale)
            for (x, y) in zip(a.A + a.B, b.A + b.B) { XCTAssertEqual(x, y, accuracy: 2e-6 * max(1, abs(y))) }
        }
    }

    // MARK: VAE training, conditions

    /// Trained to convergence on a few samples, the VAE gives each back from its posterior mean,
    /// and the conditional prior learns where each condition's latent is.
    func testVAETrainingReconstructsAndPriorFollowsCondition() {
        var rng = SeededRNG(seed: 7)
        var vae = FusionVAE(config: { var c = Self.tinyVAEConfig(); c.beta = 1e-3; c.hidden = 16; return c }(),
                            basis: Self.tinyBasis(seed: 8), seed: 0)
        let N = 4
        let y = (0..<(N * 4)).map { _ in rng.nextNormal() }
        var h = [Float]()
        for n in 0..<N { h += (0..<5).map { j in j == n ? 2 : 0 } }   // one condition per sample
        let zeroEps = [Float](repeating: 0, count: N * 3)
        let before = vae.lossAndGradients(y: y, h: h, rows: N, eps: zeroEps).0.recon
        var adam = ParamAdam(like: vae.params, lr: 1e-2)
        for _ in 0..<1500 {
            let eps = (0..<(N * 3)).map { _ in rng.nextNormal() }
            adam.update(&vae.params, grads: vae.lossAndGradients(y: y, h: h, rows: N, eps: eps).1)
        }
        let after = vae.lossAndGradients(y: y, h: h, rows: N, eps: zeroEps).0.recon
        XCTAssertLessThan(after, 0.02 * before, "recon \(before) → \(after)")
        // The prior mean of each condition is nearer its own sample's posterior than the others'.
        let q = vae.posterior(y: y, h: h, rows: N).mu, p = vae.prior(h, rows: N).mu
        for n in 0..<N {
            let d = (0..<N).map { m in (0..<3).reduce(Float(0)) { $0 + (p[n * 3 + $1] - q[m * 3 + $1]) * (p[n * 3 + $1] - q[m * 3 + $1]) } }
            XCTAssertEqual(d.indices.min { d[$0] < d[$1] }, n, "prior of condition \(n): distances \(d)")
        }
    }

    /// mean(h_final) · W_lmᵀ = mean(logits), since lm_head is linear and has no bias.
    func testConditionIsMeanLastHiddenState() throws {
        let model = TrainFixtures.model()
        let lora = TrainFixtures.randomLoRA(model.config, targets: [.q, .down])
        let seqs = [[3, 17, 8, 41, 22], [5, 6, 44]]
        let h = try TaskCondition.meanHiddenState(model: model, adapter: lora.adapter(), sequences: seqs)
        let adapted = try model.with([(lora.adapter(), 1)])
        let V = model.config.vocabSize, C = model.config.hiddenSize
        var meanLogits = [Double](repeating: 0, count: V)
        for s in seqs {
            let l = try adapted.logits(tokens: s)
            for t in 0..<s.count { for v in 0..<V { meanLogits[v] += Double(l[t, v]) / 8 } }
        }
        let W = model.base.linears[LlamaWeights.lmHeadID(layers: model.config.numHiddenLayers)].weight
        for v in 0..<V {
            var dot = 0.0
            for j in 0..<C { dot += Double(h[j]) * Double(W[v * C + j]) }
            XCTAssertEqual(dot, meanLogits[v], accuracy: 1e-4 * max(1, abs(meanLogits[v])))
        }
        // Without the adapter the condition differs (the adapter is really applied).
        let h0 = try TaskCondition.meanHiddenState(model: model, adapter: nil, sequences: seqs)
        XCTAssertGreaterThan(zip(h, h0).map { abs($0 - $1) }.max()!, 1e-3)
    }

    // MARK: SG-LoRA

    func testSemanticPriorTopKAndWeightedMoments() throws {
        let c = TrainFixtures.config()
        let p = TrainFixtures.randomLoRA(c, targets: [.q])
        let layout = ChunkLayout(like: p, chunkSize: 32)
        var cfg = FusionVAEConfig(basis: 1, conditionDim: 2)
        cfg.latent = 3
        let nC = 3
        let V = layout.chunkCount * layout.chunkSize
        let basis = ParameterBasis(mean: [Float](repeating: 0, count: V), vectors: [Float](repeating: 0, count: V), sigma: [1])
        // Four tasks whose descriptions are centred on (0, 0) already.
        let descs: [[Float]] = [[2, 0], [0, 2], [-2, 0], [0, -2]]
        func rec(_ i: Int) -> ICMTaskRecord {
            ICMTaskRecord(name: "t\(i)", condition: [Float(i), 1], description: descs[i],
                          stats: TensorStats(mean: [Float](repeating: Float(i), count: layout.tensors.count),
                                             std: [Float](repeating: Float(i + 1), count: layout.tensors.count)),
                          latentMean: [Float](repeating: Float(i) * 2, count: nC), latentVar: [Float](repeating: Float(i) + 0.5, count: nC))
        }
        let g = ICMGenerator(layout: layout, vae: FusionVAE(config: cfg, basis: basis, seed: 0), tasks: (0..<4).map(rec), options: ICMGeneratorOptions(),
                             conditionMean: [0, 0], conditionStd: [1, 1])
        let prior = try g.semanticPrior(description: [1, 0.5], k: 2, temperature: 0.5)
        let cos0 = 1 / 1.25.squareRoot(), cos1 = 0.5 / 1.25.squareRoot()   // t2, t3: negative
        XCTAssertEqual(prior.topK, [0, 1])
        XCTAssertEqual(prior.similarities[0], cos0, accuracy: 1e-9)
        XCTAssertEqual(prior.similarities[1], cos1, accuracy: 1e-9)
        let a0 = 1 / (1 + exp((cos1 - cos0) / 0.5)), a1 = 1 - a0
        XCTAssertEqual(prior.alpha[0], a0, accuracy: 1e-12)
        XCTAssertEqual(prior.alpha[1], a1, accuracy: 1e-12)
        let mu = a0 * 0 + a1 * 2
        let v = a0 * 0.5 + a1 * 1.5 + a0 * (0 - mu) * (0 - mu) + a1 * (2 - mu) * (2 - mu)
        XCTAssertEqual(Double(prior.latentMean[0]), mu, accuracy: 1e-6)
        XCTAssertEqual(Double(prior.latentVar[nC - 1]), v, accuracy: 1e-6)
        XCTAssertEqual(Double(prior.condition[0]), a1, accuracy: 1e-6)
        XCTAssertEqual(Double(prior.stats.std[0]), a0 * 1 + a1 * 2, accuracy: 1e-6)
        // Excluding the best match moves the next one up.
        // (centre (−2/3, 0): t1 (2/3, 2) beats t3 (2/3, −2) for the query (5/3, 1/2)).
        XCTAssertEqual(try g.semanticPrior(description: [1, 0.5], k: 1, exclude: ["t0"]).topK, [1])
    }

    // MARK: End to end on a tiny model

    /// Two "tasks" whose adapters (and one checkpoint each) are random LoRAs on a tiny model.
    static func tinyGenerator(meta: Int?) throws -> (ICMGenerator, LlamaTrainingEngine, [[TrainingSequence]], [LoRAParameters]) {
        let model = TrainFixtures.model()
        let engine = LlamaTrainingEngine(model: model)
        let adapters = [TrainFixtures.randomLoRA(model.config, targets: [.q, .v], rank: 2, seed: 21, std: 0.2),
                        TrainFixtures.randomLoRA(model.config, targets: [.q, .v], rank: 2, seed: 22, std: 0.2)]
        let support: [[TrainingSequence]] = [
            [TrainingSequence(prompt: [3, 17, 8], answer: [9, 30, 2]), TrainingSequence(prompt: [5, 6], answer: [19, 2])],
            [TrainingSequence(prompt: [7, 7, 1], answer: [40, 2]), TrainingSequence(prompt: [11, 12], answer: [13, 14, 2])]]
        var samples: [ICMSample] = [], finals: [Int] = []
        for t in 0..<2 {
            var ckpt = adapters[t]
            for i in ckpt.modules.indices { ckpt.modules[i].B = ckpt.modules[i].B.map { 0.8 * $0 } }
            let cond = try TaskCondition.meanHiddenState(model: model, adapter: adapters[t].adapter(), sequences: TaskCondition.tokens(support[t]))
            let cc = try TaskCondition.meanHiddenState(model: model, adapter: ckpt.adapter(), sequences: TaskCondition.tokens(support[t]))
            samples.append(ICMSample(task: t, parameters: ckpt, condition: cc))
            finals.append(samples.count)
            samples.append(ICMSample(task: t, parameters: adapters[t], condition: cond))
        }
        var o = ICMGeneratorOptions()
        o.chunkSize = 64; o.hidden = 16; o.latent = 4; o.conditionProj = 4; o.basis = 8
        o.steps = 200; o.metaSteps = meta; o.innerSteps = 1; o.metaTokens = 20
        // Texts inside the tiny byte vocabulary ('!' … 'R').
        let descs = try ["ADD+1", "REV=2"].map { try TaskCondition.descriptionEmbedding(model: model, text: $0) }
        let g = try ICMGenerator.train(names: ["a", "b"], samples: samples, finals: finals, descriptions: descs,
                                       support: support, engine: engine, options: o)
        return (g, engine, support, adapters)
    }

    /// The meta-learning default lives in the generator's options: two rounds over the known
    /// tasks, and the trained generator records the number it ran (so a saved state says it).
    func testDefaultMetaStepsAreTwoRoundsOverTheTasks() throws {
        XCTAssertNil(ICMGeneratorOptions().metaSteps)
        XCTAssertEqual(ICMGeneratorOptions.defaultMetaSteps(tasks: 14), 28)
        XCTAssertEqual(ICMGeneratorOptions().metaSteps(tasks: 3), 6)
        var o = ICMGeneratorOptions()
        o.metaSteps = 0
        XCTAssertEqual(o.metaSteps(tasks: 3), 0, "0 turns meta-learning off")
        o.metaSteps = 5
        XCTAssertEqual(o.metaSteps(tasks: 3), 5)

        let (g, _, _, _) = try Self.tinyGenerator(meta: nil)
        XCTAssertEqual(g.log.filter { $0.hasPrefix("meta step") }.count, 4, "2 tasks, two rounds")
        XCTAssertEqual(g.options.metaSteps, 4)
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try g.save(to: dir + "/gen.safetensors")
        XCTAssertEqual(try ICMGenerator.load(path: dir + "/gen.safetensors").options.metaSteps, 4)
    }

    func testFusedAdapterIsValidPEFTAndStateRemakesIt() throws {
        let (g, engine, support, adapters) = try Self.tinyGenerator(meta: 2)
        XCTAssertEqual(g.log.filter { $0.hasPrefix("meta step") }.count, 2)
        var fo = ICMFusionOptions()
        fo.steps = 2; fo.adaptSteps = 1; fo.tokens = 30
        let r = try g.fuse(tasks: ["a", "b"], support: support[0] + support[1], engine: engine, options: fo)
        XCTAssertEqual(r.log.filter { $0.hasPrefix("fusion step") }.count, 2)
        XCTAssertNotEqual(r.fusion.weights, [0.5, 0.5], "the weights were learned")
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PEFTAdapter.write(r.parameters.adapter(), to: dir + "/fused", dtype: .f32)
        let back = try PEFTAdapter.read(directory: dir + "/fused")
        let ref = adapters[0].adapter()
        XCTAssertEqual(back.moduleNames, ref.moduleNames)
        for n in ref.moduleNames {
            XCTAssertEqual(back.modules[n]!.A.rows, ref.modules[n]!.A.rows)
            XCTAssertEqual(back.modules[n]!.A.cols, ref.modules[n]!.A.cols)
            XCTAssertEqual(back.modules[n]!.B.rows, ref.modules[n]!.B.rows)
            XCTAssertEqual(back.modules[n]!.scale, ref.modules[n]!.scale)
        }
        XCTAssertTrue(r.parameters.modules.allSatisfy { ($0.A + $0.B).allSatisfy(\.isFinite) })

        // Save, load: the fused adapter and generated ones are re-made bit for bit.
        try g.save(to: dir + "/gen.safetensors")
        let g2 = try ICMGenerator.load(path: dir + "/gen.safetensors")
        XCTAssertEqual(g2.layout, g.layout)
        XCTAssertEqual(g2.vae.params, g.vae.params)
        XCTAssertEqual(g2.vae.basis, g.vae.basis, "the basis is kept at the precision it was used at")
        // Each checkpoint is its final with B scaled: the same after z-scoring (the scale lives in
        // the statistics), so two tasks leave one direction.
        XCTAssertEqual(g.vae.config.basis, 1)
        let r2 = try g2.fuse(tasks: ["a", "b"], support: support[0] + support[1], engine: engine, options: fo, reuse: true)
        XCTAssertEqual(r2.fusion, r.fusion)
        for (a, b) in zip(r2.parameters.modules, r.parameters.modules) { XCTAssertEqual(a.A, b.A); XCTAssertEqual(a.B, b.B) }
        let h = g.tasks[1].condition
        XCTAssertEqual(g2.generateICMLoRA(condition: h).0.modules.map(\.B), g.generateICMLoRA(condition: h).0.modules.map(\.B))
        let pr = try g.semanticPrior(description: g.tasks[0].description!, k: 1)
        XCTAssertEqual(pr.topK, [0])
        let pr2 = try g2.semanticPrior(description: g.tasks[0].description!, k: 1)
        XCTAssertEqual(g2.generateSGLoRA(prior: pr2).modules.map(\.A), g.generateSGLoRA(prior: pr).modules.map(\.A))
        // A task decoded from its own latent gives its adapter back (the basis holds every
        // sample), and is far from the other task's.
        let own = g.reconstructionError(task: 0, parameters: adapters[0])
        let other = g.reconstructionError(task: 0, parameters: adapters[1])
        XCTAssertLessThan(own.deviation, 0.1, "\(own)")
        XCTAssertLessThan(own.relative, other.relative)
        // Older generator files are refused with the reason.
        var data = try Data(contentsOf: URL(fileURLWithPath: dir + "/gen.safetensors"))
        // The config is a JSON string inside the header's JSON: its quotes are escaped there.
        let vr = try XCTUnwrap(data.range(of: Data("version\\\":2".utf8)))
        data.replaceSubrange(vr, with: Data("version\\\":1".utf8))
        try data.write(to: URL(fileURLWithPath: dir + "/old.safetensors"))
        XCTAssertThrowsError(try ICMGenerator.load(path: dir + "/old.safetensors")) { e in
            XCTAssertTrue("\(e)".contains("version 1"), "\(e)")
        }
    }
}
