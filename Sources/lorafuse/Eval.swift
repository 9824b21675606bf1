import ArgumentParser
import Foundation
import LoRAFuse

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Loss, perplexity and exact-match accuracy of the model (and adapters) on JSONL tasks.",
        discussion: """
        Task files hold one example per line: {"prompt": "...", "answer": "..."}; the task is named after
        the file (up to its first dot). Each prompt is rendered by the chat template as one user turn;
        the answer's tokens plus the end-of-turn token are scored.
        loss = mean cross-entropy over all answer tokens of a task (token-weighted); ppl = exp(loss);
        accuracy = greedy output (≤ 32 tokens, stops at end of turn), trimmed, equal to the trimmed answer.
        The mean row averages over tasks (unweighted). With --no-accuracy, accuracy is null in --json.
        JSON: {"tasks": {NAME: {"loss", "perplexity", "accuracy", "examples", "tokens"}},
               "mean_loss", "mean_accuracy"}
        """
    )

    @Option(name: .long, help: "Model GGUF file (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?

    @Option(name: .long, help: "Adapter as DIR[:WEIGHT], applied unmerged (repeatable).")
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
        let lm = try loadModel(modelPath: model, adapters: adapter)
        let evaluator = Evaluator(model: lm, options: EvalOptions(computeAccuracy: !noAccuracy))
        let total = tasks.reduce(0) { $0 + $1.examples.count }
        let bar = ProgressBar(total: total, label: "eval", enabled: !compute.quiet)
        let report = try evaluator.evaluate(tasks) { p in
            bar.update(p.done, detail: "\(p.task) \(p.taskDone)/\(p.taskTotal)")
        }
        if json {
            try printJSON(report)
        } else {
            print(Eval.table(report))
        }
    }

    static func table(_ r: EvalReport) -> String {
        func num(_ x: Double?, _ f: String) -> String { x.map { $0.isFinite ? String(format: f, $0) : "inf" } ?? "-" }
        let width = max(8, (r.order.map(\.count).max() ?? 0) + 2)
        var lines = [pad("task", width) + pad("examples", 10) + pad("tokens", 8) + pad("loss", 9) + pad("ppl", 10) + "accuracy"]
        for name in r.order {
            guard let t = r.tasks[name] else { continue }
            lines.append(pad(name, width) + pad(String(t.examples), 10) + pad(String(t.tokens), 8)
                         + pad(num(t.loss, "%.4f"), 9) + pad(num(t.perplexity, "%.3f"), 10) + num(t.accuracy, "%.3f"))
        }
        let ex = r.tasks.values.reduce(0) { $0 + $1.examples }
        let tk = r.tasks.values.reduce(0) { $0 + $1.tokens }
        lines.append(pad("mean", width) + pad(String(ex), 10) + pad(String(tk), 8) + pad(num(r.meanLoss, "%.4f"), 9)
                     + pad(num(Foundation.exp(r.meanLoss), "%.3f"), 10) + num(r.meanAccuracy, "%.3f"))
        return lines.joined(separator: "\n")
    }
}
