import ArgumentParser
import Foundation
import LoRAFuse

/// `lorafuse tasks ...`: the built-in multi-task suite used to train and evaluate task adapters.
struct Tasks: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with the built-in multi-task suite.",
        subcommands: [TasksGenerate.self, TasksExperts.self, TasksComposite.self]
    )
}

struct TasksGenerate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write the task suite's train/val/test JSON Lines files, manifest.json and README.md.",
        discussion: """
        Per task: <task>.train.jsonl, <task>.val.jsonl, <task>.test.jsonl, one {"prompt": ..., "answer": ...}
        per line. The output depends only on the seed and the sizes (byte-identical across runs).
        Long-tailed tasks get --long-tail-train training examples (capped by --train).
        """
    )

    @Option(name: [.short, .long], help: "Output folder.")
    var out: String = "tasks"

    @Option(name: .long, help: "Seed of the generator.")
    var seed: UInt64 = TaskSuiteConfig.defaultSeed

    @Option(name: .long, help: "Training examples per task.")
    var train: Int = 200

    @Option(name: .long, help: "Validation examples per task.")
    var val: Int = 50

    @Option(name: .long, help: "Test examples per task.")
    var test: Int = 50

    @Option(name: .customLong("long-tail-train"), help: "Training examples of long-tailed tasks.")
    var longTailTrain: Int = 8

    @Flag(name: .long, help: "Print a JSON summary instead of text.")
    var json = false

    @OptionGroup var overwrite: OverwriteOptions

    func validate() throws {
        if train < 1 { throw ValidationError("--train must be at least 1, got \(train)") }
        if val < 0 { throw ValidationError("--val must be at least 0, got \(val)") }
        if test < 1 { throw ValidationError("--test must be at least 1, got \(test)") }
        if longTailTrain < 1 { throw ValidationError("--long-tail-train must be at least 1, got \(longTailTrain)") }
    }

    func run() throws {
        let config = TaskSuiteConfig(seed: seed, train: train, val: val, test: test, longTailTrain: longTailTrain)
        let paths: [String]
        do {
            paths = try TaskSuite.write(to: out, config: config, force: overwrite.force)
        } catch let e as TaskSuiteError {
            if case .exhausted = e { throw ValidationError(e.description) }  // sizes too large: a usage error
            throw e
        }
        if json {
            struct Summary: Encodable {
                var out: String
                var seed: UInt64
                var generatorVersion: Int
                var tasks: [String]
                var files: [String]
            }
            try printJSON(Summary(out: out, seed: seed, generatorVersion: TaskSuite.generatorVersion,
                                  tasks: TaskSuite.tasks.map(\.name), files: paths))
        } else {
            print("wrote \(TaskSuite.tasks.count) tasks (\(paths.count) files) to \(out), seed \(seed)")
            for t in TaskSuite.tasks {
                let n = config.size(of: .train, for: t)
                print("  \(t.name): train \(n), val \(val), test \(test)\(t.longTailed ? " (long-tailed)" : "")")
            }
        }
    }
}

struct TasksExperts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "experts",
        abstract: "Score each task's adapter against the base model on that task's held-out split.",
        discussion: """
        For every <task>.<split>.jsonl in --tasks that has an adapter folder --adapters/<task>/, evaluates \
        the base model on all of them (loss, accuracy as `lorafuse eval`), then each adapter on its own task. \
        An adapter is "clearly better" when its loss is at most half the base's and its accuracy is higher. \
        With --manifest, also writes a JSON manifest: each adapter's training.json (how it was made), its \
        file size and these results.
        """
    )

    @Option(name: .long, help: "Model GGUF file or HF directory (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?
    @OptionGroup var weights: WeightComputeOptions
    @OptionGroup var overwrite: OverwriteOptions
    @Option(name: .long, help: "Task folder with <task>.<split>.jsonl files.") var tasks = "tasks"
    @Option(name: .long, help: "Folder with one PEFT adapter folder per task, named after the task.") var adapters = "adapters"
    @Option(name: .long, help: "Which split to score (test or val).") var split = "test"
    @Option(name: .long, help: "Only the first N examples of each task (default: all).") var limit: Int?
    @Option(name: [.short, .customLong("output")], help: "Write the markdown table to this file (default: print it).")
    var output: String?
    @Option(name: .long, help: "Write a manifest JSON of the adapters (training records, sizes, these results) here.")
    var manifest: String?
    @Flag(name: .long, help: "Print the results as JSON.") var json = false
    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if let l = limit, l < 1 { throw ValidationError("--limit must be at least 1, got \(l)") }
    }

    func run() throws {
        compute.apply()
        let found: ExpertInputs
        do { found = try ExpertInputs.find(tasks: tasks, adapters: adapters, split: split, limit: limit) } catch let e as ExpertInputsError {
            throw ValidationError(e.description)   // nothing to score with these flags: a usage error
        }
        // Checked before the long measurement. The manifest's usual place is the adapters folder
        // itself (beside the adapters, not inside one), so the inputs are each adapter, the task
        // folder and the model.
        let inputs = found.adapterPaths + [tasks, model ?? ModelLocator.defaultModelPath()]
        let tableTarget = try output.map { try OutputGuard.check($0, kind: .file, inputs: inputs, force: overwrite.force) }
        let manifestTarget = try manifest.map { try OutputGuard.check($0, kind: .file, inputs: inputs, force: overwrite.force, what: "--manifest") }
        let evalTasks = found.tasks
        let lm = try loadModel(modelPath: model, compute: weights.compute)
        let hints = (try? ModelHints.load(path: model ?? ModelLocator.defaultModelPath())) ?? ModelHints()
        let loaded = try found.adapterPaths.map { try AdapterIO.read(path: $0, hints: hints) }
        let bar = ProgressBar(total: 2 * evalTasks.reduce(0) { $0 + $1.examples.count }, label: "experts", enabled: !compute.quiet)
        let table = try ExpertTable.measure(model: lm, tasks: evalTasks, adapters: loaded, split: split) { done, _, label in
            bar.update(done, detail: label)
        }
        let md = table.markdown()
        if let t = tableTarget { try OutputGuard.writeFile(t) { try md.write(to: $0, atomically: false, encoding: .utf8) } }
        if let t = manifestTarget {
            let text = try AdapterManifest.make(table: table, adaptersDir: adapters, model: lm.sourcePath).json()
            try OutputGuard.writeFile(t) { try text.write(to: $0, atomically: false, encoding: .utf8) }
        }
        if json { try printJSON(table) } else if output == nil { print(md) } else { print(md); print("table written to \(output!)") }
    }
}

struct TasksComposite: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "composite",
        abstract: "Write composite prompts: each asks several tasks in sequence (\"1) … 2) …\"), answers joined by newlines.",
        discussion: """
        MeteoRA's composite-n evaluation: a routed model must switch adapters inside one answer, a fused \
        adapter must hold every skill at once. Each example draws --parts distinct tasks from the \
        <task>.<split>.jsonl files in --tasks and one example of each (seeded). The prompt starts with: \
        "\(CompositeTasks.instruction)". Score it with lorafuse eval --data OUT.
        """
    )

    @Option(name: .long, help: "Task folder with <task>.<split>.jsonl files.") var tasks = "tasks"
    @Option(name: .long, help: "Which split the parts come from (use test: the composite prompts are held out too).") var split = "test"
    @Option(name: .long, help: "Tasks per prompt (2 or more).") var parts = 2
    @Option(name: .long, help: "Number of composite examples.") var count = 50
    @Option(name: .long, help: "Seed of the draws.") var seed: UInt64 = 1
    @Option(name: [.short, .customLong("output")], help: "Output .jsonl file.") var output: String
    @OptionGroup var overwrite: OverwriteOptions

    func validate() throws {
        if parts < 2 { throw ValidationError("--parts must be at least 2, got \(parts)") }
        if count < 1 { throw ValidationError("--count must be at least 1, got \(count)") }
    }

    func run() throws {
        let suffix = ".\(split).jsonl"
        let files = try FileManager.default.contentsOfDirectory(atPath: tasks).filter { $0.hasSuffix(suffix) }.sorted()
            .map { (tasks as NSString).appendingPathComponent($0) }
        guard !files.isEmpty else { throw ValidationError("\(tasks): no *\(suffix) files") }
        let target = try OutputGuard.check(output, kind: .file, inputs: files + [tasks], force: overwrite.force)
        let composite = try CompositeTasks.make(from: try TaskData.read(paths: files), parts: parts, count: count, seed: seed)
        try OutputGuard.writeFile(target) { try CompositeTasks.jsonl(composite).write(to: $0, atomically: false, encoding: .utf8) }
        print("wrote \(composite.examples.count) composite examples of \(parts) tasks each (from \(files.count) tasks) to \(output)")
    }
}
