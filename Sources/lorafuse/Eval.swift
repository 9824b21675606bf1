import ArgumentParser
import Foundation
import LoRAFuse

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Loss, perplexity and exact-match accuracy of the model (and adapters) on JSONL tasks.",
        discussion: """
        Task files hold one example per line, {"prompt": "...", "answer": "..."}; a task is named \
        after its file (up to the first dot). Each prompt is rendered by the chat template as one \
        user turn; the answer's tokens followed by the end-of-turn token are scored.

        loss: mean cross-entropy over all answer tokens of a task (token-weighted); ppl: exp(loss); \
        accuracy: the greedy output (at most 32 tokens, stopped at end of turn), trimmed, equals \
        the trimmed answer. The mean row averages over tasks, unweighted (its ppl is exp(mean loss)).

        --json prints {"tasks": {NAME: {"loss", "perplexity", "accuracy", "examples", "tokens"}}, \
        "mean_loss", "mean_accuracy"}; with --no-accuracy both accuracies are null.
        """
    )

    @Option(name: .long, help: "Model GGUF file (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?
    @OptionGroup var weights: WeightComputeOptions

    @Option(name: .long, help: "Adapter as DIR[:WEIGHT], applied unmerged (repeatable).", transform: AdapterSpec.parse)
    var adapter: [AdapterSpec] = []

    @Option(name: .long, parsing: .upToNextOption, help: "Task files (.jsonl), one or more.")
    var data: [String] = []

    @Flag(name: .customLong("no-accuracy"), help: "Skip greedy decoding (loss and perplexity only).")
    var noAccuracy = false

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if data.isEmpty { throw ValidationError("give at least one task file with --data FILE.jsonl") }
    }

    func run() throws {
        compute.apply()
        let tasks = try TaskData.read(paths: data)
        let lm = try loadModel(modelPath: model, compute: weights.compute, adapters: adapter)
        let evaluator = Evaluator(model: lm, options: EvalOptions(computeAccuracy: !noAccuracy))
        let total = tasks.reduce(0) { $0 + $1.examples.count }
        let bar = ProgressBar(total: total, label: "eval", enabled: !compute.quiet)
        let report = try evaluator.evaluate(tasks) { p in
            bar.update(p.done, detail: "\(p.task) \(p.taskDone)/\(p.taskTotal)")
        }
        if json {
            try printJSON(report)
        } else {
            print(report.table())
        }
    }
}
