import Foundation

/// Hyper-parameters of a LoRA training run.
public struct TrainingOptions: Sendable, Equatable {
    public var rank = 8
    public var alpha = 16.0
    public var targets: [Projection] = Projection.allCases
    /// The layers that get LoRA modules (nil: all; PEFT's `layers_to_transform`).
    public var layers: [Int]?
    public var rsLoRA = false
    /// Dropout on the LoRA branch's input (PEFT's `lora_dropout`).
    public var dropout: Float = 0
    /// Optimizer steps; when nil, `epochs` passes over the data decide.
    public var steps: Int?
    public var epochs = 1.0
    /// Sequences per micro-batch, micro-batches per optimizer step.
    public var batchSize = 4
    public var gradAccum = 1
    public var learningRate: Float = 2e-4
    public var warmup = 0
    public var weightDecay: Float = 0
    /// Global gradient-norm clip (0: off).
    public var maxGradNorm = 1.0
    public var seed: UInt64 = 0
    /// Validation loss every this many steps (and after the last); 0: only after the last.
    public var evalEvery = 0
    /// Checkpoint every this many steps into `checkpoint-<step>/`, keeping the last `keep` (0: none).
    public var saveEvery = 0
    public var keep = 2
    /// Storage type of the adapter weights written (checkpoints' optimizer state is always F32).
    public var dtype: DType = .f32
    /// How A and B are updated from their gradients (`--variant lora-pro` picks LoRA-Pro).
    public var optimizer: LoRAOptimizerKind = .adamw

    public init() {}

    /// Steps of the run for `examples` training sequences.
    public func totalSteps(examples: Int) -> Int {
        if let s = steps { return s }
        let perStep = batchSize * gradAccum
        return max(1, Int((epochs * Double(examples) / Double(perStep)).rounded(.up)))
    }

    func validate() throws {
        func bad(_ o: String, _ r: String) -> TrainError { .badOption(option: o, reason: r) }
        if rank < 1 { throw bad("rank", "must be ≥ 1, got \(rank)") }
        if batchSize < 1 { throw bad("batch", "must be ≥ 1, got \(batchSize)") }
        if gradAccum < 1 { throw bad("grad-accum", "must be ≥ 1, got \(gradAccum)") }
        if !(0..<1).contains(dropout) { throw bad("dropout", "must be in [0, 1), got \(dropout)") }
        if let s = steps, s < 1 { throw bad("steps", "must be ≥ 1, got \(s)") }
        if steps == nil && !(epochs > 0) { throw bad("epochs", "must be > 0, got \(epochs)") }
        if warmup < 0 { throw bad("warmup", "must be ≥ 0, got \(warmup)") }
        if keep < 1 { throw bad("keep", "must be ≥ 1, got \(keep)") }
        if targets.isEmpty { throw bad("targets", "no target modules") }
        if let l = layers {
            if l.isEmpty { throw bad("layers", "no layers") }
            if Set(l).count != l.count { throw bad("layers", "a layer is named twice in \(l)") }
            if let n = l.first(where: { $0 < 0 }) { throw bad("layers", "must be ≥ 0, got \(n)") }
        }
        // NaN passes every `<` check above; these would give an `inf` loss or NaN factors.
        if !(alpha.isFinite && alpha > 0) { throw bad("alpha", "must be finite and > 0, got \(alpha)") }
        if !(learningRate.isFinite && learningRate > 0) { throw bad("lr", "must be finite and > 0, got \(learningRate)") }
        if !(weightDecay.isFinite && weightDecay >= 0) { throw bad("weight-decay", "must be finite and ≥ 0, got \(weightDecay)") }
        if !(maxGradNorm.isFinite && maxGradNorm >= 0) { throw bad("max-grad-norm", "must be finite and ≥ 0, got \(maxGradNorm)") }
        if steps == nil && !epochs.isFinite { throw bad("epochs", "must be finite, got \(epochs)") }
        if evalEvery < 0 { throw bad("eval-every", "must be ≥ 0, got \(evalEvery)") }
        if saveEvery < 0 { throw bad("save-every", "must be ≥ 0, got \(saveEvery)") }
        if optimizer == .loraPro && weightDecay > 0 {
            throw bad("weight-decay", "lora-pro takes SGD steps along its adjusted gradients, as the authors' code does, without weight decay; got \(weightDecay)")
        }
    }
}

/// The update rule of A and B.
public enum LoRAOptimizerKind: String, Sendable, Equatable {
    /// AdamW on the gradients of A and B.
    case adamw
    /// LoRA-Pro (`LoRAPro.swift`): A and B moved so that the low-rank step follows AdamW's full-size step.
    case loraPro = "lora-pro"
}

/// One row of the loss curve.
public struct StepLog: Sendable, Equatable {
    public var step: Int
    public var lr: Float
    /// Mean cross-entropy over the step's answer tokens, before the update.
    public var trainLoss: Double
    /// Token-weighted validation loss after the update (when computed at this step).
    public var valLoss: Double?
    /// Global gradient norm before clipping.
    public var gradNorm: Double
    /// Input tokens processed by the step (forward + backward).
    public var tokens: Int
    public var seconds: Double
    /// The step's auxiliary loss (LoRAMoE's balancing constraint, MixLoRA's load-balance and
    /// z-loss), a mean over its micro-batches; nil for variants without one. Not in `trainLoss`.
    public var auxLoss: Double? = nil

    static let csvHeader = "step,lr,train_loss,val_loss,grad_norm,tokens,seconds,aux_loss"
    var csvLine: String {
        "\(step),\(lr),\(trainLoss),\(valLoss.map { "\($0)" } ?? ""),\(gradNorm),\(tokens),\(String(format: "%.4f", seconds)),\(auxLoss.map { "\($0)" } ?? "")"
    }
    /// A line of the current header, or of the 7-column one written before `aux_loss`.
    static func parse(csvLine s: String) -> StepLog? {
        let f = s.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard f.count == 7 || f.count == 8, let st = Int(f[0]), let lr = Float(f[1]), let tl = Double(f[2]), let gn = Double(f[4]),
              let tk = Int(f[5]), let sec = Double(f[6]) else { return nil }
        return StepLog(step: st, lr: lr, trainLoss: tl, valLoss: Double(f[3]), gradNorm: gn, tokens: tk, seconds: sec,
                       auxLoss: f.count == 8 ? Double(f[7]) : nil)
    }
}

/// Tokenized prompt/answer examples, as `Evaluator` scores them.
public enum TrainingData {
    public static func sequences(_ task: EvalTask, model: any CausalLM) throws -> [TrainingSequence] {
        let ev = Evaluator(model: model)
        return try task.examples.map {
            let (p, a) = try ev.exampleTokens($0, file: task.path ?? task.name)
            return TrainingSequence(prompt: p, answer: a)
        }
    }
}

/// LoRA fine-tuning of a frozen `LlamaModel`: seeded PEFT initialisation, AdamW, warmup + cosine
/// learning rate, global-norm clipping, gradient accumulation, answer-token loss, checkpoints
/// that resume to the same result as an uninterrupted run.
///
/// Data order: the training sequences are read as one endless stream of epochs, each a seeded
/// permutation; update k's micro-batch j takes stream positions
/// ((k−1)·accum + j)·batch ..< +batch. Dropout masks come from a generator seeded by (seed, k, j).
/// So a step's inputs depend only on (seed, k), never on how the run got there.
public final class LoRATrainer {
    public let engine: LlamaTrainingEngine
    public let options: TrainingOptions
    public let train: [TrainingSequence]
    public let val: [TrainingSequence]
    public let totalSteps: Int
    public let schedule: LRSchedule
    public internal(set) var params: LoRAParameters
    /// AdamW over A and B (empty when a variant trains its own parameters).
    public internal(set) var optimizer: AdamW
    /// What is trained when it is not A and B themselves (`--variant`); `params` then holds the
    /// factors of its current parameters.
    public let variant: (any TrainingVariant)?
    /// AdamW over the variant's parameters (its lr set from the schedule at every step).
    private var variantOptimizer: ParamAdam?
    /// LoRA-Pro's optimizer, when `options.optimizer` is `.loraPro` (A and B are the trained values).
    public private(set) var loraPro: LoRAProOptimizer?
    /// Updates done so far.
    public internal(set) var step = 0
    public internal(set) var log: [StepLog] = []
    private var permutations: [Int: [Int]] = [:]

    public init(model: LlamaModel, train: [TrainingSequence], val: [TrainingSequence] = [], options: TrainingOptions,
                variant: (any TrainingVariant)? = nil) throws {
        try options.validate()
        if let bad = options.layers?.first(where: { $0 >= model.config.numHiddenLayers }) {
            throw TrainError.badOption(option: "layers", reason: "layer \(bad) is beyond the model's \(model.config.numHiddenLayers) layers (0…\(model.config.numHiddenLayers - 1))")
        }
        guard !train.isEmpty else { throw TrainError.badData(file: "(train)", reason: "no training examples") }
        engine = LlamaTrainingEngine(model: model)
        self.options = options
        self.train = train
        self.val = val
        totalSteps = options.totalSteps(examples: train.count)
        schedule = LRSchedule(peak: options.learningRate, warmup: options.warmup, total: totalSteps)
        params = LoRAParameters.initialize(config: model.config, rank: options.rank, alpha: options.alpha,
                                           targets: options.targets, rsLoRA: options.rsLoRA, seed: options.seed,
                                           layers: options.layers)
        optimizer = AdamW(like: params, weightDecay: options.weightDecay)
        self.variant = variant
        if let v = variant {
            let f = v.factors()
            guard f.modules.map(\.name) == params.modules.map(\.name), f.rank == options.rank else {
                throw TrainError.badOption(option: "variant", reason: "\(v.name) was built for other modules or another rank than this run's --rank/--targets")
            }
            params = f
            var opt = ParamAdam(like: v.parameters, lr: options.learningRate)
            opt.weightDecay = options.weightDecay
            variantOptimizer = opt
            // A and B are not optimised themselves: no moments for them (40 MB for SmolLM2 at rank 8).
            optimizer = Self.noMoments(options)
        }
        if options.optimizer == .loraPro {
            if let v = variant {
                throw TrainError.badOption(option: "variant", reason: "lora-pro optimises A and B; it does not combine with \(v.name)")
            }
            loraPro = LoRAProOptimizer(like: params)
            optimizer = Self.noMoments(options)
        }
    }

    /// An AdamW without moments, for runs whose A and B are not updated by AdamW (40 MB saved for
    /// SmolLM2 at rank 8).
    private static func noMoments(_ o: TrainingOptions) -> AdamW {
        AdamW(like: LoRAParameters(modules: [], rank: o.rank, alpha: o.alpha, rsLoRA: o.rsLoRA, targets: o.targets),
              weightDecay: o.weightDecay)
    }

    /// What the run trains, as `--variant` and checkpoints name it.
    public var variantName: String {
        variant?.name ?? (options.optimizer == .loraPro ? LoRAOptimizerKind.loraPro.rawValue : "lora")
    }

    /// Values trained: the variant's parameters, or every A and B entry.
    public var trainableCount: Int { variant?.parameters.count ?? params.parameterCount }

    /// Starts from an existing adapter's factors instead of PEFT's initialisation (a warm start,
    /// e.g. a long-tailed task from a related task's adapter). Its modules must be exactly the ones
    /// being trained, with the same ranks; B is rescaled when its scale differs from this run's, so
    /// the starting ΔW is the adapter's own. Call before the first step.
    public func warmStart(from adapter: LoRAAdapter) throws {
        if let v = variant {
            throw TrainError.badOption(option: "init-from", reason: "a \(v.name) run trains its own parameters, not A and B; start it from its initialisation")
        }
        precondition(step == 0, "warmStart must come before the first step")
        let given = try LoRAParameters(adapter: adapter, config: engine.model.config)
        let path = adapter.sourcePath ?? adapter.name
        if let d = AdapterNames.duplicates(given.modules.map(\.name)).first {
            throw TrainError.badAdapter(path: path, module: d, reason: "appears twice (under two tensor names)")
        }
        let byName = Dictionary(uniqueKeysWithValues: given.modules.map { ($0.name, $0) })
        guard byName.count == params.modules.count else {
            throw TrainError.badAdapter(path: path, module: "(all)",
                                        reason: "has \(byName.count) LoRA modules; this run trains \(params.modules.count) (same --targets needed)")
        }
        for i in params.modules.indices {
            let m = params.modules[i]
            guard let g = byName[m.name] else {
                throw TrainError.badAdapter(path: path, module: m.name, reason: "missing; this run trains it (same --targets needed)")
            }
            guard g.rank == m.rank else {
                throw TrainError.badAdapter(path: path, module: m.name, reason: "rank \(g.rank), this run's --rank is \(m.rank)")
            }
            params.modules[i].A = g.A
            let f = g.scale / m.scale
            params.modules[i].B = f == 1 ? g.B : g.B.map { $0 * f }
        }
        if loraPro == nil { optimizer = AdamW(like: params, weightDecay: options.weightDecay) }
    }

    private func permutation(_ epoch: Int) -> [Int] {
        if let p = permutations[epoch] { return p }
        var rng = SeededRNG(seed: options.seed, stream: "data-epoch-\(epoch)")
        let p = rng.permutation(train.count)
        permutations = [epoch: p]     // epochs are read in order; keep one
        return p
    }

    /// Indices of the training sequences of update `step` (1-based), micro-batch `micro`.
    public func batchIndices(step: Int, micro: Int) -> [Int] {
        let first = ((step - 1) * options.gradAccum + micro) * options.batchSize
        return (first..<(first + options.batchSize)).map { pos in permutation(pos / train.count)[pos % train.count] }
    }

    /// Runs one update; returns its log row (validation loss not included).
    @discardableResult
    public func trainStep() -> StepLog {
        let start = Date()
        let k = step + 1
        let micro = (0..<options.gradAccum).map { batchIndices(step: k, micro: $0).map { train[$0] } }
        let answerTokens = micro.joined().reduce(0) { $0 + $1.lossTokens }
        let scale = 1 / Float(max(answerTokens, 1))
        var grads = LoRAGradients(zerosLike: params)
        var nll = 0.0, tokens = 0, aux = 0.0
        let hasAux = params.expertBalance != nil || params.mixtureLoss != nil
        for (j, mb) in micro.enumerated() {
            let dr = options.dropout > 0
                ? LlamaTrainingEngine.Dropout(p: options.dropout, rng: SeededRNG(seed: options.seed, stream: "dropout-\(k)-\(j)")) : nil
            // LoRAMoE's balance term is a mean over the step's micro-batches, as the LM loss is.
            var stepParams = params
            stepParams.expertBalance?.scale = 1 / Float(options.gradAccum)
            stepParams.mixtureLoss?.scale = 1 / Float(options.gradAccum)
            nll += engine.accumulateGradients(mb, lora: stepParams, into: &grads, gradScale: scale, dropout: dr).nll
            aux += engine.balanceLoss / Double(options.gradAccum)
            tokens += mb.reduce(0) { $0 + $1.tokens.count }
        }
        let lr = schedule.lr(step: k)
        let norm: Double
        if let v = variant {
            v.observe(grads)
            var g = v.parameterGradients(grads)
            norm = options.maxGradNorm > 0 ? g.clip(maxNorm: options.maxGradNorm) : g.globalNorm
            variantOptimizer!.lr = lr
            variantOptimizer!.update(&v.parameters, grads: g)
            params = v.factors()
        } else if let pro = loraPro {
            // Clipped as DeepSpeed does for the authors: the raw gradients' norm scales the final step.
            norm = grads.globalNorm
            let coef = options.maxGradNorm > 0 ? min(1, options.maxGradNorm / (norm + 1e-6)) : 1
            pro.update(&params, grads: grads, lr: lr, clip: Float(coef))
        } else {
            norm = options.maxGradNorm > 0 ? grads.clip(maxNorm: options.maxGradNorm) : grads.globalNorm
            optimizer.update(&params, grads: grads, lr: lr)
        }
        step = k
        let row = StepLog(step: k, lr: lr, trainLoss: nll / Double(max(answerTokens, 1)), valLoss: nil, gradNorm: norm,
                          tokens: tokens, seconds: Date().timeIntervalSince(start), auxLoss: hasAux ? aux : nil)
        log.append(row)
        return row
    }

    /// Token-weighted mean loss over `val` (nil without validation data).
    public func validationLoss() -> Double? {
        guard !val.isEmpty else { return nil }
        var nll = 0.0, n = 0
        var i = 0
        while i < val.count {
            let r = engine.loss(Array(val[i..<min(i + options.batchSize, val.count)]), lora: params)
            nll += r.nll; n += r.tokens
            i += options.batchSize
        }
        return nll / Double(max(n, 1))
    }

    /// Trains to `totalSteps`: validation every `evalEvery` steps and at the end, checkpoints into
    /// `checkpointDir` every `saveEvery` steps. `progress` sees every row.
    public func run(checkpointDir: String? = nil, progress: ((StepLog) -> Void)? = nil) throws {
        while step < totalSteps {
            var row = trainStep()
            if !val.isEmpty && ((options.evalEvery > 0 && step % options.evalEvery == 0) || step == totalSteps) {
                row.valLoss = validationLoss()
                log[log.count - 1] = row
            }
            progress?(row)
            if let dir = checkpointDir, options.saveEvery > 0, step % options.saveEvery == 0 {
                try saveCheckpoint(into: dir)
            }
        }
    }

    /// The adapter as trained so far.
    public func adapter(name: String = "lora") -> LoRAAdapter {
        params.adapter(name: name, baseModel: engine.model.sourcePath)
    }

    // MARK: Checkpoints

    public static let stateFile = "trainer_state.safetensors"
    static let stateFormat = "lorafuse-lora-train-1"

    /// Writes `<dir>/checkpoint-<step>/` (PEFT adapter + `trainer_state.safetensors` with the F32
    /// factors, AdamW moments, step and log) and removes all but the newest `keep` checkpoints.
    /// The folder is built under a temporary name and renamed, so a killed run never leaves a
    /// checkpoint that `--resume` would pick and fail on.
    @discardableResult
    public func saveCheckpoint(into dir: String) throws -> String {
        let ck = (dir as NSString).appendingPathComponent("checkpoint-\(step)")
        var tensors: [SafetensorsTensor] = []
        if let v = variant, let opt = variantOptimizer {
            for n in v.parameters.names {
                let shape = v.parameters.shapes[n]!
                tensors += [SafetensorsTensor(name: "\(n)", shape: shape, values: v.parameters[n]),
                            SafetensorsTensor(name: "\(n).m", shape: shape, values: opt.m[n]),
                            SafetensorsTensor(name: "\(n).v", shape: shape, values: opt.v[n])]
            }
            let aux = v.auxiliaryState
            for n in aux.names { tensors.append(SafetensorsTensor(name: "aux.\(n)", shape: aux.shapes[n]!, values: aux[n])) }
        } else if let pro = loraPro {
            for (i, m) in params.modules.enumerated() {
                let full = [m.outFeatures, m.inFeatures]
                tensors += [SafetensorsTensor(name: "\(m.name).A", shape: [m.rank, m.inFeatures], values: m.A),
                            SafetensorsTensor(name: "\(m.name).B", shape: [m.outFeatures, m.rank], values: m.B),
                            SafetensorsTensor(name: "\(m.name).m", shape: full, values: pro.m[i]),
                            SafetensorsTensor(name: "\(m.name).v", shape: full, values: pro.v[i])]
            }
        } else {
            for (i, m) in params.modules.enumerated() {
                let a = [m.rank, m.inFeatures], b = [m.outFeatures, m.rank]
                tensors += [SafetensorsTensor(name: "\(m.name).A", shape: a, values: m.A),
                            SafetensorsTensor(name: "\(m.name).B", shape: b, values: m.B),
                            SafetensorsTensor(name: "\(m.name).mA", shape: a, values: optimizer.mA[i]),
                            SafetensorsTensor(name: "\(m.name).vA", shape: a, values: optimizer.vA[i]),
                            SafetensorsTensor(name: "\(m.name).mB", shape: b, values: optimizer.mB[i]),
                            SafetensorsTensor(name: "\(m.name).vB", shape: b, values: optimizer.vB[i])]
            }
        }
        var meta = ["format": Self.stateFormat, "step": "\(step)", "optimizer_step": "\(variantOptimizer?.step ?? loraPro?.step ?? optimizer.step)",
                    "total_steps": "\(totalSteps)", "seed": "\(options.seed)", "rank": "\(options.rank)",
                    "modules": "\(params.modules.count)",
                    "log": ([StepLog.csvHeader] + log.map(\.csvLine)).joined(separator: "\n")]
        if variantName != "lora" { meta["variant"] = variantName }
        let target = try OutputGuard.check(ck, kind: .directory, inputs: [], force: true)
        let adapter = adapter()
        try OutputGuard.writeDirectory(target) { tmp in
            try PEFTAdapter.writeFiles(adapter, into: tmp, dtype: options.dtype, path: ck)
            try SafetensorsWriter.write(tensors: tensors, metadata: meta, dtype: .f32,
                                        to: tmp.appendingPathComponent(Self.stateFile))
        }
        try pruneCheckpoints(in: dir)
        return ck
    }

    /// Steps of the complete `checkpoint-<step>` folders in `dir` (adapter and, unless
    /// `adapterOnly`, trainer state present), ascending. Folders missing a file, such as those
    /// left by a run killed before checkpoints were written atomically, are skipped.
    /// `adapterOnly` serves readers that want the adapters only (ICM's trajectory samples).
    public static func checkpointSteps(in dir: String, adapterOnly: Bool = false) -> [Int] {
        let fm = FileManager.default
        let names = (try? fm.contentsOfDirectory(atPath: dir)) ?? []
        return names.compactMap { name -> Int? in
            guard name.hasPrefix("checkpoint-"), let s = Int(name.dropFirst("checkpoint-".count)) else { return nil }
            let ck = (dir as NSString).appendingPathComponent(name)
            let complete = ((adapterOnly ? [] : [stateFile]) + [PEFTAdapter.configFile, PEFTAdapter.weightsFile]).allSatisfy {
                fm.fileExists(atPath: (ck as NSString).appendingPathComponent($0))
            }
            return complete ? s : nil
        }.sorted()
    }

    /// The checkpoint `--resume PATH` means: PATH itself when it holds a trainer state, else the
    /// newest complete `checkpoint-<step>` folder in it.
    public static func checkpoint(resuming path: String) throws -> String {
        if FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(stateFile)) { return path }
        if let last = checkpointSteps(in: path).last { return (path as NSString).appendingPathComponent("checkpoint-\(last)") }
        throw TrainError.badCheckpoint(path: path, field: stateFile, expected: "a checkpoint folder, or a folder holding complete checkpoint-<step> folders",
                                       actual: "none found")
    }

    private func pruneCheckpoints(in dir: String) throws {
        let steps = Self.checkpointSteps(in: dir)
        for s in steps.dropLast(options.keep) {
            try FileManager.default.removeItem(atPath: (dir as NSString).appendingPathComponent("checkpoint-\(s)"))
        }
    }

    /// Continues from a checkpoint written by `saveCheckpoint` with the same options and data.
    public func resume(from checkpoint: String) throws {
        let path = (checkpoint as NSString).appendingPathComponent(Self.stateFile)
        let f = try SafetensorsFile(path: path)
        func meta(_ k: String) throws -> String {
            guard let v = f.metadata[k] else { throw TrainError.badCheckpoint(path: path, field: k, expected: "a value", actual: "nothing") }
            return v
        }
        guard try meta("format") == Self.stateFormat else {
            throw TrainError.badCheckpoint(path: path, field: "format", expected: Self.stateFormat, actual: try meta("format"))
        }
        for (k, want) in [("seed", "\(options.seed)"), ("rank", "\(options.rank)"), ("modules", "\(params.modules.count)"),
                          ("total_steps", "\(totalSteps)")] where try meta(k) != want {
            throw TrainError.badCheckpoint(path: path, field: k, expected: want, actual: try meta(k))
        }
        guard let s = Int(try meta("step")), let os = Int(try meta("optimizer_step")) else {
            throw TrainError.badCheckpoint(path: path, field: "step", expected: "an integer", actual: try meta("step"))
        }
        let saved = f.metadata["variant"] ?? "lora"
        guard saved == variantName else {
            throw TrainError.badCheckpoint(path: path, field: "variant", expected: variantName, actual: saved)
        }
        if let v = variant {
            var p = v.parameters, m = p.zeros(), vv = p.zeros()
            for n in p.names {
                func read(_ name: String) throws -> [Float] {
                    let x = try f.floats(name)
                    guard x.count == p[n].count else { throw TrainError.badCheckpoint(path: path, field: name, expected: "\(p[n].count) values", actual: "\(x.count)") }
                    return x
                }
                p[n] = try read(n); m[n] = try read("\(n).m"); vv[n] = try read("\(n).v")
            }
            v.parameters = p
            var aux = v.auxiliaryState
            for n in aux.names {
                let x = try f.floats("aux.\(n)")
                guard x.count == aux[n].count else { throw TrainError.badCheckpoint(path: path, field: "aux.\(n)", expected: "\(aux[n].count) values", actual: "\(x.count)") }
                aux[n] = x
            }
            v.auxiliaryState = aux
            variantOptimizer!.restore(step: os, m: m, v: vv)
            params = v.factors()
        } else {
            try restoreFactors(from: f, path: path, optimizerStep: os)
        }
        step = s
        log = (try meta("log")).split(separator: "\n").dropFirst().compactMap { StepLog.parse(csvLine: String($0)) }
    }

    /// Plain LoRA's and LoRA-Pro's part of `resume`: A, B and their optimizer's moments.
    private func restoreFactors(from f: SafetensorsFile, path: String, optimizerStep os: Int) throws {
        var mA: [[Float]] = [], vA: [[Float]] = [], mB: [[Float]] = [], vB: [[Float]] = []
        var mFull: [[Float]] = [], vFull: [[Float]] = []
        for i in params.modules.indices {
            let m = params.modules[i]
            func read(_ suffix: String, _ n: Int) throws -> [Float] {
                let v = try f.floats("\(m.name).\(suffix)")
                guard v.count == n else { throw TrainError.badCheckpoint(path: path, field: "\(m.name).\(suffix)", expected: "\(n) values", actual: "\(v.count)") }
                return v
            }
            params.modules[i].A = try read("A", m.A.count)
            params.modules[i].B = try read("B", m.B.count)
            if loraPro != nil {
                mFull.append(try read("m", m.outFeatures * m.inFeatures)); vFull.append(try read("v", m.outFeatures * m.inFeatures))
            } else {
                mA.append(try read("mA", m.A.count)); vA.append(try read("vA", m.A.count))
                mB.append(try read("mB", m.B.count)); vB.append(try read("vB", m.B.count))
            }
        }
        if let pro = loraPro { pro.restore(step: os, m: mFull, v: vFull) } else { optimizer.restore(step: os, mA: mA, vA: vA, mB: mB, vB: vB) }
    }

    // MARK: Outputs

    /// The loss curve as CSV: step, lr, train_loss, val_loss (empty when not computed), grad_norm, tokens, seconds.
    public func lossCSV() -> String {
        ([StepLog.csvHeader] + log.map(\.csvLine)).joined(separator: "\n") + "\n"
    }

    /// The loss curve as an SVG line chart (train loss; validation loss when present).
    public func lossChartSVG(title: String = "LoRA training loss") -> String {
        var series = [SVGLineChart.Series(name: "train loss", points: log.map { (Double($0.step), $0.trainLoss) })]
        let v = log.compactMap { r in r.valLoss.map { (Double(r.step), $0) } }
        if !v.isEmpty { series.append(SVGLineChart.Series(name: "val loss", points: v, markers: true)) }
        return SVGLineChart(title: title, xLabel: "step", yLabel: "loss (nats / answer token)", series: series).render()
    }
}
