import Foundation

// The trained generator: a Fusion VAE over one adapter layout plus, per known task, what
// ICM-Fusion, ICM-LoRA and SG-LoRA need to use it (condition, description embedding, per-tensor
// statistics, posterior mean and variance of its chunks' latents). Saved as one safetensors
// file so adapters can be re-made without retraining.

public struct ICMGeneratorOptions: Sendable, Equatable, Codable {
    public var chunkSize = 1024
    public var hidden = 256
    public var latent = 32
    public var conditionProj = 32
    public var positionDim = 16
    public var beta: Float = 1e-3
    public var steps = 1500            // VAE steps (random chunk mini-batches)
    public var batchRows = 64
    public var learningRate: Float = 1e-3
    public var seed: UInt64 = 0
    public var positionOffset = true
    /// Off: conditions are replaced by zeros (the "no task condition" ablation).
    public var useCondition = true
    /// First-order MAML outer steps, round robin over the tasks (0: no meta-learning; nil:
    /// `defaultMetaSteps(tasks:)`, two rounds). `train` records the number it ran in its options.
    public var metaSteps: Int?
    public var innerSteps = 2
    public var innerLR: Float = 1e-4
    public var metaWeight: Float = 1
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
    public var condition: [Float]          // raw mean hidden state (Hc)
    public var description: [Float]?       // description embedding (Hc), for SG-LoRA
    public var stats: TensorStats          // of the task's final adapter
    public var latentMean: [Float]         // (chunks, Z): mean over the task's samples of μ
    public var latentVar: [Float]          // (chunks, Z): total variance (E[σ²] + Var[μ])
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

    init(layout: ChunkLayout, vae: FusionVAE, tasks: [ICMTaskRecord], options: ICMGeneratorOptions,
         conditionMean: [Float], conditionStd: [Float]) {
        self.layout = layout; self.vae = vae; self.tasks = tasks; self.options = options
        self.conditionMean = conditionMean; self.conditionStd = conditionStd
    }

    // MARK: Batches

    /// Standardised condition (zeros when the generator was trained without conditions).
    public func standardised(_ h: [Float]) -> [Float] {
        guard options.useCondition else { return [Float](repeating: 0, count: h.count) }
        return h.indices.map { (h[$0] - conditionMean[$0]) / conditionStd[$0] }
    }

    /// All chunks of one adapter (x may be empty for decoding) with condition h (raw).
    func fullBatch(x: [Float], condition h: [Float]) -> VAEBatch {
        let hs = standardised(h), n = layout.chunkCount
        var hh = [Float](); hh.reserveCapacity(n * hs.count)
        for _ in 0..<n { hh += hs }
        return VAEBatch(x: x, h: hh, tags: layout.tags, positions: Array(0..<n))
    }

    /// Decoded parameters of per-chunk latents `z` (chunks, Z) under condition h and stats.
    public func decode(latents z: [Float], condition h: [Float], stats: TensorStats) -> LoRAParameters {
        let b = fullBatch(x: [], condition: h)
        return ParameterEncoding.decode(chunks: vae.decode(z: z, b), stats: stats, layout: layout)
    }

    /// Posterior mean of every chunk of `p` under condition h: (chunks, Z).
    public func encode(_ p: LoRAParameters, condition h: [Float]) -> (mu: [Float], logVar: [Float], stats: TensorStats) {
        let e = ParameterEncoding.encode(p, layout: layout)
        let r = vae.posterior(fullBatch(x: e.chunks, condition: h))
        return (r.mu, r.logVar, e.stats)
    }

    // MARK: Training

    /// Trains the VAE on the samples (each a task's adapter or checkpoint, with its condition),
    /// then meta-optimises it (first-order MAML) when `support` has sequences for the tasks.
    /// `finals[t]` is the sample index of task t's final adapter (its statistics are kept).
    public static func train(names: [String], samples: [ICMSample], finals: [Int], descriptions: [[Float]?],
                             support: [[TrainingSequence]], engine: LlamaTrainingEngine?,
                             options: ICMGeneratorOptions, progress: ((String) -> Void)? = nil) throws -> ICMGenerator {
        var o = options
        o.metaSteps = options.metaSteps(tasks: names.count)
        guard let first = samples.first else { throw ICMError.badInput(what: "generator training", reason: "no adapters") }
        let layout = ChunkLayout(like: first.parameters, chunkSize: o.chunkSize)
        for (i, s) in samples.enumerated() { try layout.check(s.parameters, source: "sample \(i) (\(names[s.task]))") }
        let Hc = first.condition.count
        var cm = [Float](repeating: 0, count: Hc), cs = cm
        for s in samples { for j in 0..<Hc { cm[j] += s.condition[j] / Float(samples.count) } }
        for s in samples { for j in 0..<Hc { let d = s.condition[j] - cm[j]; cs[j] += d * d / Float(samples.count) } }
        cs = cs.map { max($0.squareRoot(), 1e-3) }

        var cfg = FusionVAEConfig(chunkSize: o.chunkSize, conditionDim: Hc, numLayers: layout.numLayers,
                                  maxChunkIndex: layout.maxChunksPerTensor, chunkCount: layout.chunkCount)
        cfg.conditionProj = o.conditionProj; cfg.positionDim = o.positionDim; cfg.hidden = o.hidden
        cfg.latent = o.latent; cfg.beta = o.beta; cfg.positionOffset = o.positionOffset
        var vae = FusionVAE(config: cfg, seed: o.seed)
        let encoded = samples.map { ParameterEncoding.encode($0.parameters, layout: layout) }
        let D = o.chunkSize, nC = layout.chunkCount
        if o.positionOffset {
            // P starts at the position-wise mean of the training chunks: the decoder then only
            // learns deviations from it (sparse per-position updates alone would take thousands
            // of steps to get there).
            var P = [Float](repeating: 0, count: nC * D)
            for e in encoded { BLAS.axpy(count: P.count, alpha: 1 / Float(encoded.count), x: e.chunks, y: &P) }
            vae.params["dec.P"] = P
        }
        let gen = ICMGenerator(layout: layout, vae: vae, tasks: [], options: o, conditionMean: cm, conditionStd: cs)
        gen.baseModel = nil
        let stdConds = samples.map { gen.standardised($0.condition) }

        var adam = ParamAdam(like: vae.params, lr: o.learningRate, maxGradNorm: 5)
        adam.lazy = ["dec.P", "emb.index", "emb.layer"]
        var rng = SeededRNG(seed: o.seed, stream: "vae-batches")
        let Z = o.latent
        for step in 1...max(o.steps, 1) where o.steps > 0 {
            var x = [Float](), h = [Float](), tags: [ChunkTag] = [], pos: [Int] = []
            for _ in 0..<o.batchRows {
                let si = Int(rng.next() % UInt64(samples.count)), ci = Int(rng.next() % UInt64(nC))
                x += encoded[si].chunks[(ci * D)..<((ci + 1) * D)]
                h += stdConds[si]; tags.append(layout.tags[ci]); pos.append(ci)
            }
            let eps = (0..<(o.batchRows * Z)).map { _ in rng.nextNormal() }
            let (parts, g) = gen.vae.lossAndGradients(VAEBatch(x: x, h: h, tags: tags, positions: pos), eps: eps)
            adam.update(&gen.vae.params, grads: g)
            if step % max(o.steps / 10, 1) == 0 || step == 1 {
                let line = String(format: "vae step %d/%d: loss %.5f recon %.5f kl %.3f", step, o.steps, parts.loss, parts.recon, parts.kl)
                gen.log.append(line); progress?(line)
            }
        }

        if o.metaSteps(tasks: names.count) > 0, let engine {
            try gen.metaOptimise(samples: samples, finals: finals, encoded: encoded, support: support, engine: engine,
                                 adam: &adam, progress: progress)
        }
        gen.tasks = try gen.records(names: names, samples: samples, finals: finals, descriptions: descriptions)
        return gen
    }

    /// First-order MAML. For a task t (round robin): decode its final adapter's posterior mean
    /// into θ₀, take `innerSteps` AdamW steps on the support half of its shots, and use the loss
    /// gradient on the other (query) half at the adapted θ_K as the gradient at θ₀ (the
    /// first-order approximation; a task with one shot uses it for both). That gradient, mapped to
    /// normalised chunks (·σ), joins the reconstruction gradient in the same backward pass through
    /// decoder and encoder. The split is what makes it meta-learning rather than fitting the
    /// shots: the decoder is pushed towards adapters that, adapted on some examples, do well on
    /// others.
    func metaOptimise(samples: [ICMSample], finals: [Int], encoded: [EncodedAdapter], support: [[TrainingSequence]],
                      engine: LlamaTrainingEngine, adam: inout ParamAdam, progress: ((String) -> Void)?) throws {
        let o = options
        let tasksWithData = finals.indices.filter { $0 < support.count && !support[$0].isEmpty }
        let steps = o.metaSteps(tasks: finals.count)
        guard !tasksWithData.isEmpty, steps > 0 else { return }
        var rng = SeededRNG(seed: o.seed, stream: "meta")
        for step in 1...steps {
            let t = tasksWithData[(step - 1) % tasksWithData.count]
            let si = finals[t]
            let b = fullBatch(x: encoded[si].chunks, condition: samples[si].condition)
            let stats = encoded[si].stats
            let mu = vae.posterior(b).mu
            let theta0 = ParameterEncoding.decode(chunks: vae.decode(z: mu, b), stats: stats, layout: layout)
            let (sup, query) = Self.supportQuerySplit(support[t], rng: &rng)
            let batch = Self.tokenBudget(sup, tokens: o.metaTokens, rng: &rng)
            let qbatch = Self.tokenBudget(query, tokens: o.metaTokens, rng: &rng)
            let before = engine.meanLoss(qbatch, lora: theta0)
            let theta = Self.adapt(theta0, engine: engine, batch: batch, steps: o.innerSteps, lr: o.innerLR)
            let (after, g) = engine.meanLossAndGradients(qbatch, lora: theta)
            var dx = ParameterEncoding.chunkGradient(g, stats: stats, layout: layout)
            for i in dx.indices { dx[i] *= o.metaWeight }
            let eps = [Float](repeating: 0, count: layout.chunkCount * o.latent)
            let (parts, grads) = vae.lossAndGradients(b, eps: eps, extraDx: dx)
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

    /// Reconstruction error of a task's final adapter decoded from its latent mean: relative
    /// Frobenius error ‖θ̂ − θ‖/‖θ‖ over all parameters, and the normalised-chunk MSE.
    public func reconstructionError(task t: Int, parameters p: LoRAParameters) -> (relative: Double, normalisedMSE: Double) {
        let rec = tasks[t]
        let dec = decode(latents: rec.latentMean, condition: rec.condition, stats: rec.stats)
        var num = 0.0, den = 0.0
        for (a, b) in zip(dec.modules, p.modules) {
            for (x, y) in zip(a.A + a.B, b.A + b.B) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
        }
        let e = ParameterEncoding.encode(p, layout: layout)
        let xh = vae.decode(z: rec.latentMean, fullBatch(x: [], condition: rec.condition))
        var mse = 0.0, n = 0
        for tt in layout.tensors {
            for i in 0..<tt.count { let k = tt.firstChunk * layout.chunkSize + i; let d = Double(xh[k] - e.chunks[k]); mse += d * d; n += 1 }
        }
        return ((num / max(den, 1e-30)).squareRoot(), mse / Double(max(n, 1)))
    }

    /// Bytes of the generator's own weights (Float32) plus per-task records.
    public var storageBytes: (network: Int, perTask: Int) {
        let net = vae.params.count * 4
        let t = tasks.first.map { ($0.condition.count + ($0.description?.count ?? 0) + 2 * $0.stats.mean.count
                                   + $0.latentMean.count + $0.latentVar.count) * 4 } ?? 0
        return (net, t)
    }

    func note(_ s: String) { log.append(s) }
}
