import ArgumentParser
import Foundation
import LoRAFuse

/// `lorafuse tasks ...`: the built-in multi-task suite used to train and evaluate task adapters.
struct Tasks: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with the built-in multi-task suite.",
        subcommands: [TasksGenerate.self]
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
            paths = try TaskSuite.write(to: out, config: config)
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
