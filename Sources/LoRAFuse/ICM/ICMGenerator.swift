import Foundation

// The trained generator: a Fusion VAE over one adapter layout plus, per known task, what
// ICM-Fusion, ICM-LoRA and SG-LoRA need to use it (condition, description embedding, per-tensor
// statistics, posterior mean and variance of its adapters' latents). Saved as one safetensors
// file so adapters can be re-made without retraining.

public struct ICMGeneratorOptions: Sendable, Equatable, Codable {
    /// Values per chunk of the flattened layout (padding granularity of each tensor; the VAE
    /// itself sees whole adapters).
    public var chunkSize = 1024
    /// Principal directions of the training samples kept in the decoder's fixed basis (K; at most
    /// samples − 1). Each costs one adapter's worth of bf16 storage in the generator.
    public var basis = 24
    public var hidden = 128
    public var latent = 16
    public var conditionProj = 32
    public var beta: Float = 1e-3
    /// The prior p(z | c) is learned from the condition (off: N(0, I)).
    public var conditionalPrior = true
    public var steps = 3000            // full-batch VAE steps over every sample
    public var learningRate: Float = 2e-3
    public var seed: UInt64 = 0
    /// Off: conditions are replaced by zeros (the "no task condition" ablation).
    public var useCondition = true
    /// First-order MAML outer steps, round robin over the tasks (0: no meta-learning; nil:
    /// `defaultMetaSteps(tasks:)`, two rounds). `train` records the number it ran in its options.
    public var metaSteps: Int?
    public var innerSteps = 2
    public var innerLR: Float = 1e-4
    public var metaWeight: Float = 1
    public var metaLearningRate: Float = 1e-3
    public var metaTokens = 256          // support tokens per inner step (cost control)
    public init() {}

    /// The round robin of the meta-learning must reach every task, twice: a fixed 6 steps left
    /// 8 of the 14 suite tasks out.
    public static func defaultMetaSteps(tasks: Int) -> Int { 2 * tasks }

    /// The outer steps a generator over `tasks` known tasks runs: `metaSteps`, else the default.
    public func metaSteps(tasks: Int) -> Int { metaSteps ?? Self.defaultMetaSteps(tasks: tasks) }
}

/// One training sample: an adapter (final or a trajectory checkpoint) of a known task.
public struct ICMSample {
    public var task: Int
    public var parameters: LoRAParameters
    public var condition: [Float]
    public init(task: Int, parameters: LoRAParameters, condition: [Float]) {
        self.task = task; self.parameters = parameters; self.condition = condition
    }
}

public struct ICMTaskRecord: Sendable {
    public var name: String
    public var condition: [Float]          // raw condition (Hc)
    public var description: [Float]?       // description embedding (Hc), for SG-LoRA
    public var stats: TensorStats          // of the task's final adapter
    public var latentMean: [Float]         // (Z): mean over the task's samples of μ
    public var latentVar: [Float]          // (Z): total variance (E[σ²] + Var[μ])
}

public final class ICMGenerator {
    public let layout: ChunkLayout
    public internal(set) var vae: FusionVAE
    public internal(set) var tasks: [ICMTaskRecord]
    public let options: ICMGeneratorOptions
    /// Condition standardisation (per dimension over the training samples).
    public internal(set) var conditionMean: [Float]
    public internal(set) var conditionStd: [Float]
    public var baseModel: String?
    /// Learned fusion parameters by task-set key ("a+b+c"), so a fused adapter can be re-made.
    public internal(set) var fusions: [String: ICMFusionParameters] = [:]
    public private(set) var log: [String] = []
    /// Relative squared error of the training samples' deviations that the basis cannot hold
    /// (1 − retained weighted variance), recorded at training.
    public internal(set) var basisResidual: Double = 0
    // The training rows while `train` runs (coordinates (S, K), standardised conditions (S, Hc),
    // task weights (S)); emptied afterwards.
    var trainingY: [Float] = [], trainingH: [Float] = [], rowWeights: [Double] = []

    init(layout: ChunkLayout, vae: FusionVAE, tasks: [ICMTaskRecord], options: ICMGeneratorOptions,
         conditionMean: [Float], conditionStd: [Float]) {
        self.layout = layout; self.vae = vae; self.tasks = tasks; self.options = options
        self.conditionMean = conditionMean; self.conditionStd = conditionStd
    }

    var latentSize: Int { vae.config.latent }

    /// Standardised condition (zeros when the generator was trained without conditions).
    public func standardised(_ h: [Float]) -> [Float] {
        guard options.useCondition else { return [Float](repeating: 0, count: h.count) }
        return h.indices.map { (h[$0] - conditionMean[$0]) / conditionStd[$0] }
    }

    /// Decoded parameters of a latent `z` (Z) under condition h (raw) and stats.
    public func decode(latents z: [Float], condition h: [Float], stats: TensorStats) -> LoRAParameters {
        ParameterEncoding.decode(chunks: vae.decode(z: z, h: standardised(h), rows: 1), stats: stats, layout: layout)
    }

    /// Posterior of `p` under condition h: mean and log-variance (Z), and p's tensor statistics.
    public func encode(_ p: LoRAParameters, condition h: [Float]) -> (mu: [Float], logVar: [Float], stats: TensorStats) {
        let e = ParameterEncoding.encode(p, layout: layout)
        let r = vae.posterior(y: vae.basis.coordinates(e.chunks, rows: 1), h: standardised(h), rows: 1)
        return (r.mu, r.logVar, e.stats)
    }

    /// The conditional prior p(z | c) at raw condition h: mean and log-variance (Z).
    public func prior(condition h: [Float]) -> (mu: [Float], logVar: [Float]) {
        vae.prior(standardised(h), rows: 1)
    }

    // MARK: Training

    /// Fits the decoder's basis to the samples, trains the VAE on them to convergence (full
    /// batch), then meta-optimises it (first-order MAML) when `support` has sequences for the
    /// tasks. `finals[t]` is the sample index of task t's final adapter (its statistics are kept).
    /// Every task weighs the same in the basis and the loss, however many checkpoints it has.
    public static func train(names: [String], samples: [ICMSample], finals: [Int], descriptions: [[Float]?],
                             support: [[TrainingSequence]], engine: LlamaTrainingEngine?,
                             options: ICMGeneratorOptions, progress: ((String) -> Void)? = nil) throws -> ICMGenerator {
        var o = options
        o.metaSteps = options.metaSteps(tasks: names.count)
        guard let first = samples.first else { throw ICMError.badInput(what: "generator training", reason: "no adapters") }
        guard o.basis >= 1, o.latent >= 1, o.hidden >= 1, o.steps >= 0 else {
            throw ICMError.badInput(what: "generator options", reason: "basis, latent and hidden must be at least 1 (got \(o.basis), \(o.latent), \(o.hidden))")
        }
        let layout = ChunkLayout(like: first.parameters, chunkSize: o.chunkSize)
        for (i, s) in samples.enumerated() { try layout.check(s.parameters, source: "sample \(i) (\(names[s.task]))") }
        let Hc = first.condition.count, S = samples.count
        var perTask = [Int](repeating: 0, count: names.count)
        for s in samples { perTask[s.task] += 1 }
        let taskCount = Double(perTask.filter { $0 > 0 }.count)
        let weights = samples.map { 1 / (taskCount * Double(perTask[$0.task])) }
        var cm = [Float](repeating: 0, count: Hc), cs = cm
        for (s, w) in zip(samples, weights) { for j in 0..<Hc { cm[j] += Float(w) * s.condition[j] } }
        for (s, w) in zip(samples, weights) { for j in 0..<Hc { let d = s.condition[j] - cm[j]; cs[j] += Float(w) * d * d } }
        cs = cs.map { max($0.squareRoot(), 1e-3) }

        // The basis: weighted PCA of the normalised samples.
        let V = layout.chunkCount * layout.chunkSize
        var X = [Float](repeating: 0, count: S * V)
        var total = 0.0
        for (n, s) in samples.enumerated() {
            let e = ParameterEncoding.encode(s.parameters, layout: layout)
            X.withUnsafeMutableBufferPointer { xp in for j in 0..<V { xp[n * V + j] = e.chunks[j] } }
        }
        let basis = try ParameterBasis.fit(centering: &X, count: S, length: V, weights: weights, size: min(o.basis, max(S - 1, 1)))
        X.withUnsafeBufferPointer { xp in for v in xp { total += Double(v) * Double(v) } }
        X = []
        let kept = basis.sigma.reduce(0.0) { $0 + Double($1) * Double($1) }
        o.basis = basis.size
        var cfg = FusionVAEConfig(basis: basis.size, conditionDim: Hc)
        cfg.conditionProj = o.conditionProj; cfg.hidden = o.hidden; cfg.latent = o.latent; cfg.beta = o.beta
        cfg.conditionalPrior = o.conditionalPrior
        let vae = FusionVAE(config: cfg, basis: basis, seed: o.seed)
        let gen = ICMGenerator(layout: layout, vae: vae, tasks: [], options: o, conditionMean: cm, conditionStd: cs)
        gen.basisResidual = total > 0 ? max(0, 1 - kept / total) : 0
        gen.note(String(format: "basis: %d directions of %d samples hold %.4f of the weighted variance (residual %.4f)",
                        basis.size, S, 1 - gen.basisResidual, gen.basisResidual))
        progress?(gen.log.last!)

        // Coordinates and conditions of every sample, then full-batch Adam with the task weights
        // as row weights (a row's loss counts wₙ·N).
        var Y = [Float](), Hs = [Float]()
        for s in samples {
            Y += basis.coordinates(ParameterEncoding.encode(s.parameters, layout: layout).chunks, rows: 1)
            Hs += gen.standardised(s.condition)
        }
        gen.trainingY = Y; gen.trainingH = Hs; gen.rowWeights = weights
        var adam = ParamAdam(like: vae.params, lr: o.learningRate, maxGradNorm: 5)
        var rng = SeededRNG(seed: o.seed, stream: "vae-noise")
        for step in 1...max(o.steps, 1) where o.steps > 0 {
            let eps = (0..<(S * o.latent)).map { _ in rng.nextNormal() }
            let (parts, g) = gen.vae.lossAndGradients(y: Y, h: Hs, rows: S, eps: eps,
                                                      rowScale: weights.map { Float($0 * Double(S)) })
            adam.update(&gen.vae.params, grads: g)
            if step % max(o.steps / 10, 1) == 0 || step == 1 {
                let line = String(format: "vae step %d/%d: loss %.5f recon %.5f kl %.3f", step, o.steps, parts.loss, parts.recon, parts.kl)
                gen.log.append(line); progress?(line)
            }
        }

        if o.metaSteps(tasks: names.count) > 0, let engine {
            try gen.metaOptimise(samples: samples, finals: finals, support: support, engine: engine, progress: progress)
        }
        gen.tasks = try gen.records(names: names, samples: samples, finals: finals, descriptions: descriptions)
        gen.trainingY = []; gen.trainingH = []
        return gen
    }

    /// First-order MAML. For a task t (round robin): decode its final adapter's posterior mean
    /// into θ₀, take `innerSteps` AdamW steps on the support half of its shots, and use the loss
    /// gradient on the other (query) half at the adapted θ_K as the gradient at θ₀ (the
    /// first-order approximation; a task with one shot uses it for both). That gradient, mapped to
    /// the decoder's coordinates (·σ, then through the basis), joins the reconstruction gradient
    /// of every sample in the same backward pass. The split is what makes it meta-learning rather
    /// than fitting the shots: the decoder is pushed towards adapters that, adapted on some
    /// examples, do well on others. A fresh Adam (`metaLearningRate`): the VAE phase's moments
    /// belong to another objective. The basis (P, U) is fixed, so the meta phase cannot drift the
    /// mean adapter.
    func metaOptimise(samples: [ICMSample], finals: [Int], support: [[TrainingSequence]],
                      engine: LlamaTrainingEngine, progress: ((String) -> Void)?) throws {
        let o = options
        let tasksWithData = finals.indices.filter { $0 < support.count && !support[$0].isEmpty }
        let steps = o.metaSteps(tasks: finals.count)
        guard !tasksWithData.isEmpty, steps > 0 else { return }
        var adam = ParamAdam(like: vae.params, lr: o.metaLearningRate, maxGradNorm: 5)
        var rng = SeededRNG(seed: o.seed, stream: "meta")
        let S = samples.count, K = vae.config.basis, Z = latentSize
        for step in 1...steps {
            let t = tasksWithData[(step - 1) % tasksWithData.count]
            let si = finals[t]
            let stats = ParameterEncoding.encode(samples[si].parameters, layout: layout).stats
            let y = Array(trainingY[(si * K)..<((si + 1) * K)]), h = Array(trainingH[(si * vae.config.conditionDim)..<((si + 1) * vae.config.conditionDim)])
            let mu = vae.posterior(y: y, h: h, rows: 1).mu
            let theta0 = ParameterEncoding.decode(chunks: vae.decode(z: mu, h: h, rows: 1), stats: stats, layout: layout)
            let (sup, query) = Self.supportQuerySplit(support[t], rng: &rng)
            let batch = Self.tokenBudget(sup, tokens: o.metaTokens, rng: &rng)
            let qbatch = Self.tokenBudget(query, tokens: o.metaTokens, rng: &rng)
            let before = engine.meanLoss(qbatch, lora: theta0)
            let theta = Self.adapt(theta0, engine: engine, batch: batch, steps: o.innerSteps, lr: o.innerLR)
            let (after, g) = engine.meanLossAndGradients(qbatch, lora: theta)
            let dx = ParameterEncoding.chunkGradient(g, stats: stats, layout: layout)
            var extra = [Float](repeating: 0, count: S * K)
            let dy = vae.basis.coordinateGradient(dx, rows: 1)
            for k in 0..<K { extra[si * K + k] = o.metaWeight * dy[k] }
            let eps = [Float](repeating: 0, count: S * Z)
            let (parts, grads) = vae.lossAndGradients(y: trainingY, h: trainingH, rows: S, eps: eps, extraDy: extra,
                                                      rowScale: rowWeights.map { Float($0 * Double(S)) })
            adam.update(&vae.params, grads: grads)
            let line = String(format: "meta step %d/%d (%@): query loss decoded %.4f → adapted on support %.4f, recon %.5f",
                              step, steps, "task \(t)", before, after, parts.recon)
            log.append(line); progress?(line)
        }
    }

    /// A seeded split of a task's shots into support and query halves (query gets ⌊n/2⌋); with one
    /// shot both are that shot.
    static func supportQuerySplit(_ seqs: [TrainingSequence], rng: inout SeededRNG) -> ([TrainingSequence], [TrainingSequence]) {
        guard seqs.count >= 2 else { return (seqs, seqs) }
        let idx = rng.permutation(seqs.count)
        let q = seqs.count / 2
        return (idx[q...].map { seqs[$0] }, idx[..<q].map { seqs[$0] })
    }

    /// `steps` AdamW steps on `batch` from θ₀; returns θ_K (the inner loop of the meta-learning).
    public static func adapt(_ theta0: LoRAParameters, engine: LlamaTrainingEngine, batch: [TrainingSequence],
                             steps: Int, lr: Float) -> LoRAParameters {
        var theta = theta0
        var opt = AdamW(like: theta)
        for _ in 0..<steps {
            opt.update(&theta, grads: engine.meanLossAndGradients(batch, lora: theta).grads, lr: lr)
        }
        return theta
    }

    /// Sequences drawn (seeded, without replacement) until about `tokens` tokens are used.
    static func tokenBudget(_ seqs: [TrainingSequence], tokens: Int, rng: inout SeededRNG) -> [TrainingSequence] {
        var out: [TrainingSequence] = [], n = 0
        for i in rng.permutation(seqs.count) {
            out.append(seqs[i]); n += seqs[i].tokens.count
            if n >= tokens { break }
        }
        return out
    }

    /// Per task: the final adapter's stats and condition; latent mean/variance over its samples.
    func records(names: [String], samples: [ICMSample], finals: [Int], descriptions: [[Float]?]) throws -> [ICMTaskRecord] {
        var out: [ICMTaskRecord] = []
        for t in names.indices {
            let mine = samples.indices.filter { samples[$0].task == t }
            guard !mine.isEmpty, finals[t] < samples.count else {
                throw ICMError.badInput(what: "task \(names[t])", reason: "no adapter sample")
            }
            var mus: [[Float]] = [], vars: [[Float]] = []
            for si in mine {
                let e = encode(samples[si].parameters, condition: samples[si].condition)
                mus.append(e.mu); vars.append(e.logVar.map { exp($0) })
            }
            let n = Float(mine.count), len = mus[0].count
            var m = [Float](repeating: 0, count: len), v = m
            for k in mus.indices { for i in 0..<len { m[i] += mus[k][i] / n } }
            for k in mus.indices { for i in 0..<len { let d = mus[k][i] - m[i]; v[i] += (vars[k][i] + d * d) / n } }
            let fin = ParameterEncoding.encode(samples[finals[t]].parameters, layout: layout)
            out.append(ICMTaskRecord(name: names[t], condition: samples[finals[t]].condition,
                                     description: t < descriptions.count ? descriptions[t] : nil,
                                     stats: fin.stats, latentMean: m, latentVar: v))
        }
        return out
    }

    /// Reconstruction error of a task's adapter decoded from the task's latent mean: relative
    /// Frobenius error ‖θ̂ − θ‖/‖θ‖ over all parameters; the stricter relative error of the
    /// deviation from the mean adapter in the normalised space, ‖x̂ − x‖/‖x − P‖ (what the latent
    /// has to carry: the shared part P is free); and the normalised MSE.
    public func reconstructionError(task t: Int, parameters p: LoRAParameters) -> (relative: Double, deviation: Double, normalisedMSE: Double) {
        let rec = tasks[t]
        let dec = decode(latents: rec.latentMean, condition: rec.condition, stats: rec.stats)
        var num = 0.0, den = 0.0
        for (a, b) in zip(dec.modules, p.modules) {
            for (x, y) in zip(a.A + a.B, b.A + b.B) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
        }
        let e = ParameterEncoding.encode(p, layout: layout)
        let xh = vae.decode(z: rec.latentMean, h: standardised(rec.condition), rows: 1)
        var mse = 0.0, dev = 0.0, n = 0
        let P = vae.basis.mean
        for tt in layout.tensors {
            for i in 0..<tt.count {
                let k = tt.firstChunk * layout.chunkSize + i
                let d = Double(xh[k] - e.chunks[k]), q = Double(e.chunks[k] - P[k])
                mse += d * d; dev += q * q; n += 1
            }
        }
        return ((num / max(den, 1e-30)).squareRoot(), (mse / max(dev, 1e-30)).squareRoot(), mse / Double(max(n, 1)))
    }

    /// Bytes of the generator: its network (F32), its basis (P in F32, U in bf16) and per-task records.
    public var storageBytes: (network: Int, basis: Int, perTask: Int) {
        let net = vae.params.count * 4
        let basis = vae.basis.mean.count * 4 + vae.basis.vectors.count * 2 + vae.basis.sigma.count * 4
        let t = tasks.first.map { ($0.condition.count + ($0.description?.count ?? 0) + 2 * $0.stats.mean.count
                                   + $0.latentMean.count + $0.latentVar.count) * 4 } ?? 0
        return (net, basis, t)
    }

    func note(_ s: String) { log.append(s) }
}
