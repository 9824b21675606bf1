import Foundation

// ICM-Fusion's latent fusion, ICM-LoRA and SG-LoRA generation.
//
// Fusion (z_i = task i's posterior-mean latent, one per adapter):
//   conflict(i, j) = cos(z_i, z_j) < 0                         (fixed from the task latents)
//   γ_ij = sigmoid(ρ_ij)                                       learned fraction per ordered pair
//   z_i' = z_i − Σ_{j: conflict} γ_ij · (⟨z_i, z_j⟩/‖z_j‖²) z_j  (remove part of the conflicting
//          component, PCGrad-style but in latent space, all projections against the originals)
//   z_f  = Σ_i w_i z_i',  w = e^s·softmax(a)                  learned combination weights
// Learned on the union of the tasks' support sets: L(θ(z_f)) with θ = decode(z_f); the engine
// gives dL/dθ, the chunk encoding turns it into dL/dx̂ (·σ), the basis and decoder backward into
// dL/dz_f, and then dL/dw_i = ⟨dz_f, z_i'⟩, dL/dρ_ij = −w_i γ(1−γ) ⟨dz_f, proj_ij⟩ (where they
// conflict), and dL/da, dL/ds through the softmax.
// The fused condition is the mean of the tasks' conditions. The fused tensor statistics are the
// mean of the tasks', with the standard deviations of all A tensors and of all B tensors scaled by
// learned gains e^γ_A, e^γ_B (θ = x̂·σ·e^γ + μ, so dL/dγ = Σ dL/dθ·(θ − μ)): averaging z-scored
// chunks of unrelated B's shrinks them by about 1/√n, which no latent weight can undo when the
// latents carry little (see docs/icm-fusion.md).

public struct ICMFusionParameters: Sendable, Equatable {
    public var weights: [Float]     // w_i (= e^s·softmax(a)_i when learned)
    public var rho: [Float]         // ρ_ij, row-major (n, n); diagonal unused
    /// Learned log-gains of the fused tensor statistics, [A tensors, B tensors]: σ_f ← σ_f·e^γ.
    public var logGain: [Float]
    /// The learned parametrisation of the weights, w = e^s·softmax(a): Adam's bounded step then
    /// moves the weights' ratios and their total on their own scales (stepping w directly moved
    /// all of them in lockstep by the same absolute amount).
    public var logits: [Float]
    public var logScale: Float
    public init(weights: [Float], rho: [Float], logGain: [Float] = [0, 0]) {
        self.weights = weights; self.rho = rho; self.logGain = logGain
        let s = weights.reduce(0, +)
        logScale = s > 0 ? log(s) : 0
        logits = weights.map { s > 0 && $0 > 0 ? log($0 / s) : 0 }
    }
    public init(logits: [Float], logScale: Float, rho: [Float], logGain: [Float] = [0, 0]) {
        self.logits = logits; self.logScale = logScale; self.rho = rho; self.logGain = logGain
        weights = Self.softmaxWeights(logits: logits, logScale: logScale)
    }

    static func softmaxWeights(logits a: [Float], logScale s: Float) -> [Float] {
        let m = a.max() ?? 0
        let e = a.map { exp($0 - m) }, z = e.reduce(0, +)
        return e.map { exp(s) * $0 / z }
    }

    /// dL/da and dL/ds from dL/dw for w = e^s·softmax(a): dL/da_i = w_i (g_i − Σ_j w̃_j g_j),
    /// dL/ds = Σ_i w_i g_i (w̃ = softmax(a)).
    static func softmaxGradient(dw g: [Float], logits a: [Float], logScale s: Float) -> (dLogits: [Float], dLogScale: Float) {
        let w = softmaxWeights(logits: a, logScale: s)
        let wt = softmaxWeights(logits: a, logScale: 0)
        let mean = zip(wt, g).reduce(Float(0)) { $0 + $1.0 * $1.1 }
        return (w.indices.map { w[$0] * (g[$0] - mean) }, zip(w, g).reduce(Float(0)) { $0 + $1.0 * $1.1 })
    }
}

public struct ICMFusionOptions: Sendable, Equatable, Codable {
    public var steps = 24
    /// Adam step of the weights' logits a (w = e^s·softmax(a)); the log-scale s steps by
    /// `projectionLearningRate`.
    public var learningRate: Float = 0.2
    /// Adam step of the projection logits ρ_ij and the log-gains (absolute).
    public var projectionLearningRate: Float = 0.1
    public var orientation = true
    /// Learn the gains of the fused A and B statistics (off: the plain mean statistics).
    public var learnGains = true
    /// Most AdamW steps on the union of support sets after decoding (the in-context adaptation
    /// the meta-learning prepared the decoder for); 0 turns it off. With selection shots (a held-out
    /// part of the shots, see `ICMPipeline.selectionSplit`), θ is checked every `selectEvery`
    /// steps and the best one kept; without, the last.
    public var adaptSteps = 64
    public var selectEvery = 8
    public var adaptLR: Float = 1e-4
    public var tokens = 1024              // support tokens per step (fusion and adaptation)
    public var seed: UInt64 = 0
    public init() {}
}

public struct ICMFusionResult {
    public var parameters: LoRAParameters
    public var fusion: ICMFusionParameters
    public var log: [String]
    public var adaptation = ICMAdaptation()
}

/// What the in-context adaptation did: the step whose θ was kept and the selection loss along the way.
public struct ICMAdaptation: Sendable, Equatable, Codable {
    public var stepsRun = 0
    public var stepKept = 0
    /// (step, mean selection loss) at step 0 and every `selectEvery` steps (empty without selection shots).
    public var selectionCurve: [[Double]] = []
    public init() {}
}

extension ICMGenerator {
    public static func fusionKey(_ names: [String]) -> String { names.joined(separator: "+") }

    public func taskIndex(_ name: String) throws -> Int {
        guard let i = tasks.firstIndex(where: { $0.name == name }) else {
            throw ICMError.badInput(what: "task \(name)", reason: "not known to the generator (known: \(tasks.map(\.name).joined(separator: ", ")))")
        }
        return i
    }

    /// z_f per chunk and the intermediates the gradient needs (the Fusion VAE has one latent
    /// per adapter: `chunks` is 1 there; the tests use more).
    struct FusedLatents {
        var zf: [Float]                 // (chunks, Z)
        var zPrime: [[Float]]           // per task (chunks, Z)
        var proj: [Int: [Float]]        // key i*n+j → (chunks, Z) projection of z_i on z_j (0 where no conflict)
    }

    static func combine(_ z: [[Float]], chunks: Int, latent Z: Int, params p: ICMFusionParameters, orientation: Bool) -> FusedLatents {
        let n = z.count
        var zPrime = z
        var proj: [Int: [Float]] = [:]
        if orientation && n > 1 {
            for i in 0..<n {
                for j in 0..<n where j != i {
                    var pr = [Float](repeating: 0, count: chunks * Z)
                    let g = 1 / (1 + exp(-p.rho[i * n + j]))
                    var any = false
                    for c in 0..<chunks {
                        var dij: Float = 0, djj: Float = 0
                        for k in 0..<Z { dij += z[i][c * Z + k] * z[j][c * Z + k]; djj += z[j][c * Z + k] * z[j][c * Z + k] }
                        guard dij < 0, djj > 0 else { continue }   // cos < 0 ⇔ ⟨z_i, z_j⟩ < 0
                        any = true
                        let f = dij / djj
                        for k in 0..<Z {
                            pr[c * Z + k] = f * z[j][c * Z + k]
                            zPrime[i][c * Z + k] -= g * pr[c * Z + k]
                        }
                    }
                    if any { proj[i * n + j] = pr }
                }
            }
        }
        var zf = [Float](repeating: 0, count: chunks * Z)
        for i in 0..<n { BLAS.axpy(count: zf.count, alpha: p.weights[i], x: zPrime[i], y: &zf) }
        return FusedLatents(zf: zf, zPrime: zPrime, proj: proj)
    }

    /// Gradients of (w, ρ) from dL/dz_f.
    static func combineBackward(_ f: FusedLatents, dzf: [Float], params p: ICMFusionParameters) -> ICMFusionParameters {
        let n = p.weights.count
        var dw = [Float](repeating: 0, count: n), drho = [Float](repeating: 0, count: n * n)
        for i in 0..<n {
            dw[i] = BLAS.dot(dzf, f.zPrime[i], count: dzf.count)
        }
        for (key, pr) in f.proj {
            let i = key / n
            let g = 1 / (1 + exp(-p.rho[key]))
            drho[key] = -p.weights[i] * g * (1 - g) * BLAS.dot(dzf, pr, count: dzf.count)
        }
        return ICMFusionParameters(weights: dw, rho: drho, logGain: [0, 0])
    }

    /// Statistics with the A and B standard deviations scaled by e^γ.
    static func gained(_ s: TensorStats, layout: ChunkLayout, logGain: [Float]) -> TensorStats {
        var out = s
        for (i, t) in layout.tensors.enumerated() { out.std[i] *= exp(logGain[t.isB ? 1 : 0]) }
        return out
    }

    /// dL/dγ_A, dL/dγ_B = Σ over the A (B) tensors of Σ dL/dθ · (θ − μ).
    static func gainGradient(_ g: LoRAGradients, theta: LoRAParameters, stats: TensorStats, layout: ChunkLayout) -> [Float] {
        var d: [Double] = [0, 0]
        for (i, t) in layout.tensors.enumerated() {
            let m = i / 2, mu = Double(stats.mean[i])
            let gv = t.isB ? g.dB[m] : g.dA[m], tv = t.isB ? theta.modules[m].B : theta.modules[m].A
            for k in gv.indices { d[t.isB ? 1 : 0] += Double(gv[k]) * (Double(tv[k]) - mu) }
        }
        return d.map(Float.init)
    }

    /// Fuses the named known tasks. `support` is the union of their few-shot examples; with
    /// `reuse` and stored parameters for the same task set, no learning happens (the stored
    /// weights are decoded again).
    public func fuse(tasks names: [String], support: [TrainingSequence], selection: [TrainingSequence] = [], engine: LlamaTrainingEngine?,
                     options o: ICMFusionOptions, reuse: Bool = false, progress: ((String) -> Void)? = nil) throws -> ICMFusionResult {
        let idx = try names.map { try taskIndex($0) }
        let n = idx.count, Z = latentSize
        let z = idx.map { tasks[$0].latentMean }
        let h = meanVector(idx.map { tasks[$0].condition })
        let hs = standardised(h)
        let stats0 = TensorStats.weighted(idx.map { tasks[$0].stats }, [Double](repeating: 1 / Double(n), count: n))
        let key = Self.fusionKey(names)
        var p = ICMFusionParameters(logits: [Float](repeating: 0, count: n), logScale: 0, rho: [Float](repeating: 0, count: n * n))
        var log: [String] = []
        if reuse, let stored = fusions[key] {
            p = stored
            log.append("fusion parameters reused from the generator state")
        } else if let engine, o.steps > 0, !support.isEmpty {
            var rng = SeededRNG(seed: o.seed, stream: "icm-fusion")
            var mA = [Float](repeating: 0, count: n), vA = mA, mR = [Float](repeating: 0, count: n * n), vR = mR
            var mS: [Float] = [0], vS: [Float] = [0], mG: [Float] = [0, 0], vG: [Float] = [0, 0]
            for step in 1...o.steps {
                let f = Self.combine(z, chunks: 1, latent: Z, params: p, orientation: o.orientation)
                let stats = Self.gained(stats0, layout: layout, logGain: p.logGain)
                let theta = ParameterEncoding.decode(chunks: vae.decode(z: f.zf, h: hs, rows: 1), stats: stats, layout: layout)
                let batch = Self.tokenBudget(support, tokens: o.tokens, rng: &rng)
                let (loss, g) = engine.meanLossAndGradients(batch, lora: theta)
                let dx = ParameterEncoding.chunkGradient(g, stats: stats, layout: layout)
                let dz = vae.latentGradient(z: f.zf, h: hs, rows: 1, dx: dx)
                let gp = Self.combineBackward(f, dzf: dz, params: p)
                let (da, ds) = ICMFusionParameters.softmaxGradient(dw: gp.weights, logits: p.logits, logScale: p.logScale)
                let gg = Self.gainGradient(g, theta: theta, stats: stats, layout: layout)
                // Adam on the few fusion scalars.
                func upd(_ x: inout [Float], _ g: [Float], _ m: inout [Float], _ v: inout [Float], _ lr: Float) {
                    AdamRule.step(&x, g, &m, &v, t: step, lr: lr)
                }
                var ls = [p.logScale]
                upd(&p.logits, da, &mA, &vA, o.learningRate)
                upd(&ls, [ds], &mS, &vS, o.projectionLearningRate)
                p.logScale = ls[0]
                p.weights = ICMFusionParameters.softmaxWeights(logits: p.logits, logScale: p.logScale)
                if o.orientation { upd(&p.rho, gp.rho, &mR, &vR, o.projectionLearningRate) }
                if o.learnGains { upd(&p.logGain, gg, &mG, &vG, o.projectionLearningRate) }
                let line = String(format: "fusion step %d/%d: support loss %.4f, w = [%@], gains A %.3f B %.3f", step, o.steps, loss,
                                  p.weights.map { String(format: "%.3f", $0) }.joined(separator: ", "), exp(p.logGain[0]), exp(p.logGain[1]))
                log.append(line); progress?(line)
            }
            fusions[key] = p
        }
        let f = Self.combine(z, chunks: 1, latent: Z, params: p, orientation: o.orientation)
        var theta = decode(latents: f.zf, condition: h, stats: Self.gained(stats0, layout: layout, logGain: p.logGain))
        if let engine, o.adaptSteps > 0, !support.isEmpty {
            let line: String
            let a: ICMAdaptation
            (theta, line, a) = Self.adaptOnSupport(theta, support: support, selection: selection, engine: engine, options: o)
            log.append(line); progress?(line)
            return ICMFusionResult(parameters: theta, fusion: p, log: log, adaptation: a)
        }
        return ICMFusionResult(parameters: theta, fusion: p, log: log)
    }

    /// The in-context adaptation: up to `adaptSteps` AdamW steps on the support set, a fresh
    /// seeded minibatch of about `tokens` tokens every step (one fixed batch of a few hundred
    /// tokens out of 14 tasks' shots was memorised in a few steps and the held-out loss went up).
    /// With `selection` sequences (shots held out of everything else), θ is scored on them at
    /// step 0 and every `selectEvery` steps and the best is kept: the step count is chosen on data
    /// the fit did not see, never on the test set.
    public static func adaptOnSupport(_ theta0: LoRAParameters, support: [TrainingSequence], selection: [TrainingSequence] = [],
                                      engine: LlamaTrainingEngine, options o: ICMFusionOptions) -> (LoRAParameters, String, ICMAdaptation) {
        var theta = theta0
        var rng = SeededRNG(seed: o.seed, stream: "icm-fusion-adapt")
        var opt = AdamW(like: theta)
        var a = ICMAdaptation()
        func score(_ t: LoRAParameters) -> Double { engine.meanLoss(selection, lora: t) }
        let selecting = !selection.isEmpty && o.selectEvery > 0
        var best = theta0, bestLoss = selecting ? score(theta0) : .infinity
        if selecting { a.selectionCurve.append([0, bestLoss]) }
        var first = 0.0, last = 0.0
        for step in 1...max(o.adaptSteps, 1) where o.adaptSteps > 0 {
            let batch = tokenBudget(support, tokens: o.tokens, rng: &rng)
            let (l, g) = engine.meanLossAndGradients(batch, lora: theta)
            opt.update(&theta, grads: g, lr: o.adaptLR)
            if step == 1 { first = l }
            last = l
            a.stepsRun = step
            if selecting && (step % o.selectEvery == 0 || step == o.adaptSteps) {
                let s = score(theta)
                a.selectionCurve.append([Double(step), s])
                if s < bestLoss { best = theta; bestLoss = s; a.stepKept = step }
            }
        }
        if !selecting { a.stepKept = a.stepsRun; best = theta }
        var line = String(format: "in-context adaptation: %d steps, minibatch support loss %.4f (first) → %.4f (last, before its step)",
                          a.stepsRun, first, last)
        if selecting {
            line += String(format: "; kept step %d (selection loss %.4f at step 0 → %.4f)", a.stepKept, a.selectionCurve[0][1], bestLoss)
        }
        return (best, line, a)
    }

    func meanVector(_ v: [[Float]]) -> [Float] {
        var m = [Float](repeating: 0, count: v[0].count)
        for x in v { BLAS.axpy(count: m.count, alpha: 1 / Float(v.count), x: x, y: &m) }
        return m
    }

    // MARK: ICM-LoRA

    /// ICM-LoRA: decode z = μp(c) + temperature·σp(c)·ε from the conditional prior p(z | c) (the
    /// standard normal when the generator has none) under the task's in-context condition. The
    /// tensor statistics are those of the known task whose condition is nearest by cosine of the
    /// conditions centred on the known tasks' mean (raw mean hidden states all have cosine ≈ 1),
    /// since a condition alone does not fix the scale of the weights.
    public func generateICMLoRA(condition h: [Float], temperature: Float = 0, seed: UInt64 = 0) -> (LoRAParameters, nearest: String) {
        var rng = SeededRNG(seed: seed, stream: "icm-lora")
        let pr = prior(condition: h)
        let z = pr.mu.indices.map { i in pr.mu[i] + (temperature == 0 ? 0 : temperature * exp(0.5 * pr.logVar[i]) * rng.nextNormal()) }
        let best = nearestTask(condition: h)
        return (decode(latents: z, condition: h, stats: tasks[best].stats), tasks[best].name)
    }

    /// The known task whose condition is nearest to h by centred cosine.
    public func nearestTask(condition h: [Float], excluding: Set<String> = []) -> Int {
        let known = tasks.indices.filter { !excluding.contains(tasks[$0].name) }
        let center = meanVector(tasks.map(\.condition))
        func c(_ v: [Float]) -> [Float] { v.indices.map { v[$0] - center[$0] } }
        let hc = c(h)
        let sims = known.map { Self.cosine(c(tasks[$0].condition), hc) }
        return known[sims.indices.max { sims[$0] < sims[$1] }!]
    }

    // MARK: SG-LoRA

    public struct SemanticPrior: Sendable {
        public var topK: [Int]                 // known-task indices, most similar first
        public var similarities: [Double]
        public var alpha: [Double]             // softmax(sim/τ) over the top k
        public var latentMean: [Float]         // μ* (chunks, Z)
        public var latentVar: [Float]          // σ*²
        public var condition: [Float]
        public var stats: TensorStats
    }

    static func cosine(_ a: [Float], _ b: [Float]) -> Double {
        var ab = 0.0, aa = 0.0, bb = 0.0
        for i in a.indices { ab += Double(a[i]) * Double(b[i]); aa += Double(a[i]) * Double(a[i]); bb += Double(b[i]) * Double(b[i]) }
        return ab / max((aa * bb).squareRoot(), 1e-30)
    }

    /// SG-LoRA's prior from a description embedding: cosine similarity to the known tasks'
    /// description embeddings (both centred on the known tasks' mean, since mean hidden states
    /// share a large common component that makes every raw cosine ≈ 1), top k, α = softmax(s/τ),
    /// μ* = Σ α_k μ_k, σ*² = Σ α_k σ_k² + Σ α_k (μ_k − μ*)² (law of total variance), over the
    /// tasks' latent means/variances; condition and tensor statistics are α-weighted too.
    public func semanticPrior(description d: [Float], k: Int = 4, temperature tau: Double = 0.1,
                              exclude: Set<String> = []) throws -> SemanticPrior {
        let known = tasks.indices.filter { tasks[$0].description != nil && !exclude.contains(tasks[$0].name) }
        guard !known.isEmpty else { throw ICMError.badInput(what: "sg-lora", reason: "the generator has no task descriptions") }
        let center = meanVector(known.map { tasks[$0].description! })
        func c(_ v: [Float]) -> [Float] { v.indices.map { v[$0] - center[$0] } }
        let dc = c(d)
        let sims = known.map { Self.cosine(c(tasks[$0].description!), dc) }
        let order = sims.indices.sorted { sims[$0] > sims[$1] }.prefix(max(1, min(k, known.count)))
        let top = order.map { known[$0] }, s = order.map { sims[$0] }
        let mx = s.max()!
        let e = s.map { exp(($0 - mx) / tau) }, sum = e.reduce(0, +)
        let alpha = e.map { $0 / sum }
        let len = tasks[top[0]].latentMean.count
        var mu = [Double](repeating: 0, count: len), v = mu
        for (a, t) in zip(alpha, top) { for i in 0..<len { mu[i] += a * Double(tasks[t].latentMean[i]) } }
        for (a, t) in zip(alpha, top) {
            for i in 0..<len { let dd = Double(tasks[t].latentMean[i]) - mu[i]; v[i] += a * (Double(tasks[t].latentVar[i]) + dd * dd) }
        }
        var cond = [Double](repeating: 0, count: tasks[top[0]].condition.count)
        for (a, t) in zip(alpha, top) { for i in cond.indices { cond[i] += a * Double(tasks[t].condition[i]) } }
        return SemanticPrior(topK: top, similarities: s, alpha: alpha, latentMean: mu.map(Float.init), latentVar: v.map(Float.init),
                             condition: cond.map(Float.init), stats: TensorStats.weighted(top.map { tasks[$0].stats }, alpha))
    }

    /// SG-LoRA generation: z = μ* + temperature·σ*·ε, decoded under the prior's condition.
    public func generateSGLoRA(prior: SemanticPrior, temperature: Float = 0, seed: UInt64 = 0) -> LoRAParameters {
        var rng = SeededRNG(seed: seed, stream: "sg-lora")
        let z = prior.latentMean.indices.map { i in
            prior.latentMean[i] + (temperature == 0 ? 0 : temperature * prior.latentVar[i].squareRoot() * rng.nextNormal())
        }
        return decode(latents: z, condition: prior.condition, stats: prior.stats)
    }
}
