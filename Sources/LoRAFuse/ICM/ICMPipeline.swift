import Foundation

/// Everything an ICM-Fusion run is set by: the generator's and the fusion's options and the
/// pipeline's own (trajectory checkpoints, the selection hold-out, shots per task). `lorafuse
/// fuse --method icm-fusion`, `generate-adapter --method icm-fusion` and the report's ICM rows
/// all start from these defaults.
public struct ICMPipelineOptions: Sendable, Equatable, Codable {
    public var generator: ICMGeneratorOptions
    public var fusion: ICMFusionOptions
    /// Trajectory checkpoints (`checkpoint-<step>/`) per task used as extra VAE samples, the last
    /// ones (`scripts/train_tails.sh` writes 20 from the converged tail of each suite adapter).
    public var maxCheckpoints: Int
    /// Part of each task's shots held out of the generator and the fusion, used only to choose
    /// how many in-context adaptation steps to keep (`ICMPipeline.selectionSplit`; 0: keep the last).
    public var selectionFraction: Double
    /// Use only the first N shots of each task (nil: all), before the selection split.
    public var shotsPerTask: Int?

    public init(generator: ICMGeneratorOptions = ICMGeneratorOptions(), fusion: ICMFusionOptions = ICMFusionOptions(),
                maxCheckpoints: Int = 20, selectionFraction: Double = 0.25, shotsPerTask: Int? = nil) {
        self.generator = generator; self.fusion = fusion; self.maxCheckpoints = maxCheckpoints
        self.selectionFraction = selectionFraction; self.shotsPerTask = shotsPerTask
    }

    /// The seed of both the generator (VAE initialisation, batches, meta-learning) and the fusion
    /// (minibatches): one `--seed` sets both.
    public var seed: UInt64 {
        get { generator.seed }
        set { generator.seed = newValue; fusion.seed = newValue }
    }

    /// Why these options cannot run, or nil (the CLI reports it as a usage error).
    public func problem() -> String? {
        if maxCheckpoints < 0 { return "max-checkpoints must not be negative, got \(maxCheckpoints)" }
        if !(0..<1).contains(selectionFraction) { return "selection fraction must be in [0, 1), got \(selectionFraction)" }
        if let n = shotsPerTask, n < 1 { return "shots per task must be at least 1, got \(n)" }
        return nil
    }
}

/// What `generate-adapter --method` makes with the ICM generator.
public enum ICMGenerationMethod: String, CaseIterable, Sendable {
    /// From a task condition: a known task's, or the mean hidden state over a new task's shots.
    case icmLoRA = "icm-lora"
    /// From a description: the latent prior of the most similar known tasks.
    case sgLoRA = "sg-lora"
    /// The known tasks' adapters fused in the latent space (`ICMPipeline.fuse`).
    case icmFusion = "icm-fusion"
}

extension LearnedFusionMethod {
    /// Every method `lorafuse fuse --method` takes: the learned fusions, then ICM-Fusion.
    public static var fuseMethodNames: [String] { allCases.map(\.rawValue) + [ICMPipeline.method] }
}

/// File-level entry points of the ICM methods, for the CLI (`fuse --method icm-fusion`,
/// `generate-adapter`) and the report.
public enum ICMPipeline {
    /// The method's name in `lorafuse fuse --method` and in the report.
    public static let method = ICMGenerationMethod.icmFusion.rawValue
    /// Tasks a fusion needs at least.
    public static let minimumTasks = 2

    /// One known task: its adapter (any format `AdapterIO` reads; in a PEFT directory,
    /// `checkpoint-<step>/` sub-folders, as `lorafuse train --save-every` writes them, are the
    /// training trajectory), its few-shot examples and, for SG-LoRA, a description.
    public struct TaskInput: Sendable {
        public var name: String
        public var adapterPath: String
        public var shots: EvalTask
        public var description: String?
        /// The final adapter when the caller has already read it (`adapterPath` is then only a label).
        public var adapter: LoRAAdapter?
        /// Where the `checkpoint-<step>/` folders are (nil: inside `adapterPath`).
        public var trajectoryDir: String?
        public init(name: String, adapterPath: String, shots: EvalTask, description: String? = nil,
                    adapter: LoRAAdapter? = nil, trajectoryDir: String? = nil) {
            self.name = name; self.adapterPath = adapterPath; self.shots = shots; self.description = description
            self.adapter = adapter; self.trajectoryDir = trajectoryDir
        }

        /// Checkpoint directories (ascending step, at most `max`, the last ones) then nil for the final adapter.
        func samplePaths(maxCheckpoints: Int) -> [String?] {
            let dir = trajectoryDir ?? adapterPath
            let steps = LoRATrainer.checkpointSteps(in: dir, adapterOnly: true).suffix(max(maxCheckpoints, 0))
            return steps.map { Optional((dir as NSString).appendingPathComponent("checkpoint-\($0)")) } + [nil]
        }
    }

    /// A task's name from its adapter's path: the folder's name (PEFT, mlx-lm) or the file's
    /// without its extension (`math.gguf` → `math`), so a suite task is called the same in every format.
    public static func taskName(adapterPath: String) -> String {
        let last = ((adapterPath as NSString).standardizingPath as NSString).lastPathComponent
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: adapterPath, isDirectory: &isDir), !isDir.boolValue {
            return (last as NSString).deletingPathExtension
        }
        return last
    }

    /// Why `adapters` adapters with `shots` shots files cannot be fused, or nil.
    public static func fusionInputProblem(adapters: Int, shots: Int) -> String? {
        if adapters < minimumTasks || adapters != shots {
            return "icm-fusion needs at least \(minimumTasks) adapters and one shots file per adapter, in the same order (got \(adapters) adapters, \(shots) shots files)"
        }
        return nil
    }

    /// Task inputs from adapter paths and shots files, paired in order: every adapter read
    /// through `AdapterIO` (PEFT, GGUF LoRA or mlx-lm; `hints` as for `AdapterIO.read`), each
    /// task named after its adapter's path (`taskName`; the same name twice is told apart as
    /// `AdapterNames` does), descriptions looked up by that name (`TaskManifest.descriptions`).
    public static func taskInputs(adapters: [String], shots: [String], descriptions: [String: String] = [:],
                                  hints: ModelHints = ModelHints()) throws -> [TaskInput] {
        guard adapters.count == shots.count else {
            throw ICMError.badInput(what: "tasks", reason: "one shots file per adapter is needed (\(adapters.count) adapters, \(shots.count) shots files)")
        }
        var loaded = try adapters.map { p in
            var a = try AdapterIO.read(path: p, hints: hints)
            try a.requireDense("ICM-Fusion (it encodes each adapter's ΔW)")
            a.name = taskName(adapterPath: p)
            return a
        }
        loaded = AdapterNames.disambiguated(loaded)
        return try zip(zip(adapters, shots), loaded).map { ps, a in
            TaskInput(name: a.name, adapterPath: ps.0, shots: try TaskData.read(path: ps.1), description: descriptions[a.name], adapter: a)
        }
    }

    /// Reads every task's final adapter and up to `maxCheckpoints` checkpoints (all through
    /// `AdapterIO`), computes each one's in-context condition on the task's shots and trains the generator.
    public static func trainGenerator(model: LlamaModel, tasks: [TaskInput], maxCheckpoints: Int = ICMPipelineOptions().maxCheckpoints,
                                      options: ICMGeneratorOptions, progress: ((String) -> Void)? = nil) throws -> ICMGenerator {
        var samples: [ICMSample] = [], finals: [Int] = [], support: [[TrainingSequence]] = [], descs: [[Float]?] = []
        var hints: ModelHints?
        func read(_ path: String) throws -> LoRAAdapter {
            if hints == nil { hints = (try? ModelHints.load(path: model.sourcePath)) ?? ModelHints() }
            return try AdapterIO.read(path: path, hints: hints!)
        }
        for (t, task) in tasks.enumerated() {
            let seqs = try TrainingData.sequences(task.shots, model: model)
            guard !seqs.isEmpty else { throw ICMError.badInput(what: "shots of \(task.name)", reason: "no examples") }
            support.append(seqs)
            for path in task.samplePaths(maxCheckpoints: maxCheckpoints) {
                let a = try path.map(read) ?? task.adapter ?? read(task.adapterPath)
                let p = try LoRAParameters(adapter: a, config: model.config)
                let h = try TaskCondition.answerCondition(model: model, adapter: a, shots: seqs)
                if path == nil { finals.append(samples.count) }
                samples.append(ICMSample(task: t, parameters: p, condition: h))
            }
            descs.append(try task.description.map { try TaskCondition.descriptionEmbedding(model: model, text: $0) })
            progress?("\(task.name): \(samples.filter { $0.task == t }.count) adapters (final + checkpoints), \(seqs.count) shots")
        }
        let g = try ICMGenerator.train(names: tasks.map(\.name), samples: samples, finals: finals, descriptions: descs,
                                       support: support, engine: LlamaTrainingEngine(model: model), options: options, progress: progress)
        g.baseModel = model.sourcePath
        return g
    }

    /// Splits each task's shots into the part everything learns from and a held-out part (the
    /// last ⌊fraction·n⌋ lines, at least one when n ≥ 2; none for a single shot) that only chooses
    /// how many in-context adaptation steps to keep.
    public static func selectionSplit(_ shots: EvalTask, fraction: Double) -> (learn: EvalTask, select: EvalTask) {
        let n = shots.examples.count
        let k = n >= 2 && fraction > 0 ? min(n - 1, max(1, Int(Double(n) * fraction))) : 0
        return (EvalTask(name: shots.name, path: shots.path, examples: Array(shots.examples.prefix(n - k))),
                EvalTask(name: shots.name, path: shots.path, examples: Array(shots.examples.suffix(k))))
    }

    /// The tasks as the generator and the fusion see them (the first `shotsPerTask` shots, minus
    /// the selection hold-out) and the held-out shots per task: what `fuse` learns from, for
    /// callers that key a cache on it.
    public static func learningTasks(_ tasks: [TaskInput], options: ICMPipelineOptions) -> (learn: [TaskInput], selection: [EvalTask]) {
        var learn = tasks, select: [EvalTask] = []
        for i in learn.indices {
            var shots = tasks[i].shots
            if let n = options.shotsPerTask { shots.examples = Array(shots.examples.prefix(n)) }
            let (l, s) = selectionSplit(shots, fraction: options.selectionFraction)
            learn[i].shots = l
            select.append(s)
        }
        return (learn, select)
    }

    /// Where `fuse` gets its generator.
    public enum GeneratorSource {
        /// Trained on the tasks' learning shots (`trainGenerator` with the options' generator options).
        case train
        /// A saved state (`--generator`); fusion parameters it holds for this task set are reused.
        case saved(path: String)
        /// Given the learning tasks (what `.train` would train on), returns a generator trained on
        /// them: the report's cache of generators. The fusion is learned anew.
        case provided((_ learn: [TaskInput]) throws -> ICMGenerator)
    }

    /// ICM-Fusion of the tasks' adapters: takes the generator from `generator`, learns the fusion
    /// on the union of the learning shots (choosing the adaptation step on the held-out ones),
    /// and returns the fused adapter, named `adapterName`.
    public static func fuse(model: LlamaModel, tasks: [TaskInput], options: ICMPipelineOptions = ICMPipelineOptions(),
                            generator source: GeneratorSource = .train, adapterName: String = method,
                            progress: ((String) -> Void)? = nil) throws -> (adapter: LoRAAdapter, generator: ICMGenerator, result: ICMFusionResult) {
        if let p = options.problem() { throw ICMError.badInput(what: "icm-fusion options", reason: p) }
        guard tasks.count >= minimumTasks else {
            throw ICMError.badInput(what: "icm-fusion", reason: "needs at least \(minimumTasks) tasks, got \(tasks.count)")
        }
        let (learn, select) = learningTasks(tasks, options: options)
        let gen: ICMGenerator
        switch source {
        case .train:
            gen = try trainGenerator(model: model, tasks: learn, maxCheckpoints: options.maxCheckpoints,
                                     options: options.generator, progress: progress)
        case .saved(let path):
            gen = try ICMGenerator.load(path: path)
        case .provided(let make):
            gen = try make(learn)
        }
        let support = try learn.flatMap { try TrainingData.sequences($0.shots, model: model) }
        let selection = try select.flatMap { try TrainingData.sequences($0, model: model) }
        var reuse = false
        if case .saved = source { reuse = true }
        let r = try gen.fuse(tasks: tasks.map(\.name), support: support, selection: selection, engine: LlamaTrainingEngine(model: model),
                             options: options.fusion, reuse: reuse, progress: progress)
        let adapter = r.parameters.adapter(name: adapterName, baseModel: gen.baseModel ?? model.sourcePath)
        return (adapter, gen, r)
    }

    // MARK: Generation from a trained generator

    /// ICM-LoRA: the adapter for a task condition, `task`'s stored one when only `task` is given,
    /// else the mean hidden state of the base model over `taskShots`. Returns the parameters and
    /// the known task whose tensor statistics they take (the nearest condition).
    public static func generateICMLoRA(model: LlamaModel, generator g: ICMGenerator, task: String?, taskShots: EvalTask?,
                                       temperature: Float = 0, seed: UInt64 = 0) throws -> (parameters: LoRAParameters, nearest: String) {
        let h: [Float]
        if let taskShots {
            let seqs = try TrainingData.sequences(taskShots, model: model)
            h = try TaskCondition.answerCondition(model: model, adapter: nil, shots: seqs)
        } else if let task {
            h = g.tasks[try g.taskIndex(task)].condition
        } else {
            throw ICMError.badInput(what: "icm-lora", reason: "needs a known task or the new task's shots")
        }
        let (p, nearest) = g.generateICMLoRA(condition: h, temperature: temperature, seed: seed)
        return (p, nearest)
    }

    /// SG-LoRA's defaults: the known tasks combined and the softmax temperature τ over their similarities.
    public static let sgLoRATopK = 4
    public static let sgLoRASimilarityTemperature = 0.1

    /// SG-LoRA: the adapter for a description, from the latent prior of the `topK` known tasks
    /// whose description embeddings are most similar (softmax over similarity / `similarityTemperature`).
    public static func generateSGLoRA(model: LlamaModel, generator g: ICMGenerator, description: String, topK: Int = sgLoRATopK,
                                      similarityTemperature: Double = sgLoRASimilarityTemperature, temperature: Float = 0,
                                      seed: UInt64 = 0) throws -> (parameters: LoRAParameters, prior: ICMGenerator.SemanticPrior) {
        let d = try TaskCondition.descriptionEmbedding(model: model, text: description)
        let prior = try g.semanticPrior(description: d, k: topK, temperature: similarityTemperature)
        return (g.generateSGLoRA(prior: prior, temperature: temperature, seed: seed), prior)
    }
}
