import ArgumentParser
import Foundation
import LoRAFuse

struct Continual: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "continual",
        abstract: "Train one LoRA on tasks that arrive one after another and measure forgetting.",
        discussion: """
        Each TASK.train.jsonl is trained in the order given, --steps steps each, never seen again; \
        after each task the held-out loss on every task (TASK.test.jsonl beside it, or --test) is \
        measured, so the matrix shows what each new task costs the earlier ones.

        --method ranks (default) gives every task its own block of --rank fresh ranks and freezes the \
        blocks of earlier tasks (a rank-wise mixture grown per task, as the MoRA-style continual \
        methods); every block is active for every token unless --top-k K self-activates the ranks: \
        per token only the K ranks of largest |x·a_j| among the blocks activated so far pass (each \
        rank scored by its own A row, no router), so a later task's ranks can stay silent on an \
        earlier task's inputs; the adapter is then a rank-gated folder (FlyLoRA's layout, applied \
        unmerged by eval, generate, report and serve). --method lora trains one LoRA of the same \
        final rank (tasks × --rank) on each task in turn, all of its ranks each time: the sequential \
        baseline. Training once on the union is `lorafuse train` on the concatenated files. The \
        output is a plain PEFT adapter (rank tasks × --rank), continual.json (the matrix, the base \
        model's losses, forgetting per task) and continual.md (the same as a table).
        """
    )

    @Argument(help: "Training files in task order (.jsonl), at least two.")
    var tasks: [String]

    @Option(name: .long, parsing: .upToNextOption, help: "Held-out files, one per task in the same order (default: each TASK.test.jsonl beside TASK.train.jsonl).")
    var test: [String] = []

    @Option(name: [.short, .customLong("output")], help: "Output adapter directory.")
    var output: String

    @Option(name: .long, help: "ranks (a new block of ranks per task, earlier blocks frozen) or lora (every rank trained on each task in turn).")
    var method: ContinualMethod = .ranks

    @Option(name: .long, help: "Model GGUF file or HF directory (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?
    @OptionGroup var weights: WeightComputeOptions
    @Option(name: .long, help: "Ranks per task (the adapter ends with tasks × rank).") var rank = 8
    @Option(name: .customLong("top-k"), help: "--method ranks: self-activation, the ranks each token keeps among the blocks activated so far (default: every rank).")
    var topK: Int?
    @Option(name: .long, help: "LoRA alpha of one task's block (scale α/rank).") var alpha = 16.0
    @Option(name: .long, help: "Target projections, comma-separated, of q,k,v,o,gate,up,down (or all).") var targets = "all"
    @Option(name: .long, help: "Optimizer steps per task.") var steps = 100
    @Option(name: .long, help: "Sequences per step.") var batch = 8
    @Option(name: .long, help: "Peak learning rate (linear warm-up, then cosine, per task).") var lr: Float = 1e-3
    @Option(name: .long, help: "Warm-up steps per task.") var warmup = 10
    @Option(name: .long, help: "Seed of initialisation and data order.") var seed: UInt64 = 0
    @Option(name: .customLong("test-examples"), help: "Held-out examples per task the losses are measured on (the first N; 0: all).") var testExamples = 50
    @OptionGroup var compute: ComputeOptions
    @OptionGroup var overwrite: OverwriteOptions

    func validate() throws {
        guard tasks.count >= 2 else { throw ValidationError("give at least two training files, in the order the tasks arrive (got \(tasks.count))") }
        guard test.isEmpty || test.count == tasks.count else {
            throw ValidationError("--test takes one held-out file per task: \(tasks.count) tasks, \(test.count) --test files")
        }
        // Each task is a column of the matrix, named after its file: a task given twice would make
        // two columns of one name and count its second pass as another task.
        var seen: [String: String] = [:]
        for t in tasks {
            let name = TaskData.taskName(forPath: t)
            if let other = seen[name] { throw ValidationError("task '\(name)' is given twice (\(other) and \(t)); each task arrives once") }
            seen[name] = t
        }
        _ = try Projection.parseList(targets)
        if rank < 1 { throw ValidationError("--rank must be ≥ 1, got \(rank)") }
        if steps < 1 { throw ValidationError("--steps must be ≥ 1, got \(steps)") }
        if batch < 1 { throw ValidationError("--batch must be ≥ 1, got \(batch)") }
        if !(lr.isFinite && lr > 0) { throw ValidationError("--lr must be finite and > 0, got \(lr)") }
        if testExamples < 0 { throw ValidationError("--test-examples must be ≥ 0, got \(testExamples)") }
        if let k = topK {
            if method != .ranks { throw ValidationError("--top-k self-activates the task blocks of --method ranks; --method lora has none") }
            if k < 1 || k >= tasks.count * rank {
                throw ValidationError("--top-k must be in 1…\(tasks.count * rank - 1) (ranks kept per token, of \(tasks.count) tasks × --rank \(rank)), got \(k)")
            }
        }
    }

    /// NAME.train.jsonl → NAME.test.jsonl beside it.
    static func testFile(for train: String) throws -> String {
        guard train.hasSuffix(".train.jsonl") else {
            throw ValidationError("\(train): cannot find its held-out file (it is not NAME.train.jsonl); give --test, one file per task")
        }
        let t = String(train.dropLast(".train.jsonl".count)) + ".test.jsonl"
        guard FileManager.default.fileExists(atPath: t) else {
            throw ValidationError("\(train): no held-out file \(t) beside it; give --test, one file per task")
        }
        return t
    }

    func run() throws {
        compute.apply()
        let tests = try test.isEmpty ? tasks.map(Self.testFile) : test
        let inputs = [model ?? ModelLocator.defaultModelPath()] + tasks + tests
        let target = try OutputGuard.check(output, kind: .directory, inputs: inputs, force: overwrite.force)
        let lm = try loadModel(modelPath: model, compute: weights.compute)
        var list: [ContinualTask] = []
        for (tr, te) in zip(tasks, tests) {
            let train = try TaskData.read(path: tr), held = try TaskData.read(path: te)
            let heldSeqs = try TrainingData.sequences(held, model: lm)
            list.append(ContinualTask(name: train.name, train: try TrainingData.sequences(train, model: lm),
                                      test: testExamples > 0 ? Array(heldSeqs.prefix(testExamples)) : heldSeqs))
        }
        var o = TrainingOptions()
        o.rank = rank; o.alpha = alpha; o.targets = try Projection.parseList(targets)
        o.steps = steps; o.batchSize = batch; o.learningRate = lr; o.warmup = warmup; o.seed = seed
        FileHandle.standardError.write(Data("continual (\(method.rawValue)): \(list.count) tasks × \(steps) steps, rank \(rank) per task, the adapter ends at rank \(list.count * rank)\n".utf8))
        let bar = ProgressBar(total: list.count * steps, label: "continual", enabled: !compute.quiet)
        let (factors, result) = try ContinualTraining.run(model: lm, tasks: list, method: method, options: o, topK: topK) { t, row in
            // The base model's losses come first; the rate is of the steps (and the evaluations after each task).
            if t == 0 && row.step == 1 { bar.restartClock() }
            bar.update(t * steps + row.step, detail: String(format: "%@ loss %.4f", list[t].name, row.trainLoss))
        }
        let name = (output as NSString).lastPathComponent
        let adapter = factors.adapter(name: name, baseModel: lm.sourcePath)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        var json = try enc.encode(result)
        json.append(contentsOf: Data("\n".utf8))
        try OutputGuard.writeDirectory(target) { tmp in
            try PEFTAdapter.writeFiles(adapter, into: tmp, dtype: .f32, path: output)
            try json.write(to: tmp.appendingPathComponent("continual.json"))
            try Data(result.markdown.utf8).write(to: tmp.appendingPathComponent("continual.md"))
        }
        print(result.markdown, terminator: "")
        print(String(format: "wrote %@ (adapter, continual.json, continual.md) in %.0f s", output, result.seconds))
    }
}

extension ContinualMethod: ExpressibleByArgument {}
