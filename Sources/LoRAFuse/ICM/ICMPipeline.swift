import Foundation

/// File-level entry points of the ICM methods, for the CLI (`fuse --method icm-fusion`,
/// `generate-adapter`) and the report.
public enum ICMPipeline {
    /// One known task: its adapter directory (PEFT; `checkpoint-<step>/` sub-folders, as
    /// `lorafuse train --save-every` writes them, are the training trajectory), its few-shot
    /// examples and, for SG-LoRA, a description.
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

    /// Reads every task's final adapter and up to `maxCheckpoints` checkpoints, computes each
    /// one's in-context condition on the task's shots and trains the generator.
    public static func trainGenerator(model: LlamaModel, tasks: [TaskInput], maxCheckpoints: Int = 4,
                                      options: ICMGeneratorOptions, progress: ((String) -> Void)? = nil) throws -> ICMGenerator {
        var samples: [ICMSample] = [], finals: [Int] = [], support: [[TrainingSequence]] = [], descs: [[Float]?] = []
        for (t, task) in tasks.enumerated() {
            let seqs = try TrainingData.sequences(task.shots, model: model)
            guard !seqs.isEmpty else { throw ICMError.badInput(what: "shots of \(task.name)", reason: "no examples") }
            support.append(seqs)
            let toks = TaskCondition.tokens(seqs)
            for path in task.samplePaths(maxCheckpoints: maxCheckpoints) {
                let a = try path.map { try PEFTAdapter.read(directory: $0) } ?? task.adapter ?? PEFTAdapter.read(directory: task.adapterPath)
                let p = try LoRAParameters(adapter: a, config: model.config)
                let h = try TaskCondition.meanHiddenState(model: model, adapter: a, sequences: toks)
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

    /// ICM-Fusion of the tasks' adapters: trains the generator (or loads `generatorPath`), learns
    /// the fusion on the union of the shots and returns the fused adapter. With a loaded generator
    /// that already holds fusion parameters for this task set, they are reused (no learning).
    public static func fuse(model: LlamaModel, tasks: [TaskInput], generatorPath: String?, generatorOptions: ICMGeneratorOptions,
                            fusionOptions: ICMFusionOptions, maxCheckpoints: Int = 4, selectionFraction: Double = 0.25,
                            progress: ((String) -> Void)? = nil) throws -> (adapter: LoRAAdapter, generator: ICMGenerator, result: ICMFusionResult) {
        var learn = tasks, select: [EvalTask] = []
        for i in learn.indices {
            let (l, s) = selectionSplit(tasks[i].shots, fraction: selectionFraction)
            learn[i].shots = l
            select.append(s)
        }
        let gen: ICMGenerator
        if let generatorPath {
            gen = try ICMGenerator.load(path: generatorPath)
        } else {
            gen = try trainGenerator(model: model, tasks: learn, maxCheckpoints: maxCheckpoints, options: generatorOptions, progress: progress)
        }
        let support = try learn.flatMap { try TrainingData.sequences($0.shots, model: model) }
        let selection = try select.flatMap { try TrainingData.sequences($0, model: model) }
        let r = try gen.fuse(tasks: tasks.map(\.name), support: support, selection: selection, engine: LlamaTrainingEngine(model: model),
                             options: fusionOptions, reuse: generatorPath != nil, progress: progress)
        let adapter = r.parameters.adapter(name: "icm-fusion", baseModel: gen.baseModel ?? model.sourcePath)
        return (adapter, gen, r)
    }
}
