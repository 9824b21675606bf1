import Foundation

/// The suite's own-task check: each task's adapter (its "expert") against the base model on that
/// task's held-out split. This is what `lorafuse tasks experts` prints and `docs/adapters.md` quotes.
public struct ExpertRow: Codable, Sendable, Equatable {
    public var task: String
    public var base: TaskEvalResult
    public var expert: TaskEvalResult
    public var clearlyBetter: Bool

    /// "Clearly better" means both: the expert's test loss is at most half the base's, and its
    /// accuracy is higher (or both are 1). Loss alone can fall a lot while no answer comes out right,
    /// and accuracy alone is coarse on 50 examples, so the rule asks for both.
    public static func isClearlyBetter(base: TaskEvalResult, expert: TaskEvalResult) -> Bool {
        let lossOK = expert.loss <= 0.5 * base.loss
        let accOK: Bool
        switch (base.accuracy, expert.accuracy) {
        case let (b?, e?): accOK = e > b || (b == 1 && e == 1)
        default: accOK = true      // accuracy not measured: the loss rule decides
        }
        return lossOK && accOK
    }
}

public struct ExpertTable: Codable, Sendable, Equatable {
    public var split: String
    public var rows: [ExpertRow]

    public var meanBaseLoss: Double { rows.isEmpty ? .nan : rows.map(\.base.loss).reduce(0, +) / Double(rows.count) }
    public var meanExpertLoss: Double { rows.isEmpty ? .nan : rows.map(\.expert.loss).reduce(0, +) / Double(rows.count) }

    /// Evaluates the base model once over every task, then each task's adapter on its own task.
    /// `adapters[i]` belongs to `tasks[i]`.
    public static func measure(model: LlamaModel, tasks: [EvalTask], adapters: [LoRAAdapter], split: String,
                               options: EvalOptions = EvalOptions(),
                               progress: ((_ done: Int, _ total: Int, _ label: String) -> Void)? = nil) throws -> ExpertTable {
        precondition(tasks.count == adapters.count, "one adapter per task")
        let total = 2 * tasks.reduce(0) { $0 + $1.examples.count }
        var done = 0
        let evaluator = Evaluator(model: model, options: options)
        let base = try evaluator.evaluate(tasks) { p in progress?(p.done, total, "base \(p.task)") }
        done = tasks.reduce(0) { $0 + $1.examples.count }
        var rows: [ExpertRow] = []
        for (task, adapter) in zip(tasks, adapters) {
            let expert = Evaluator(model: try model.with([(adapter, 1)], mode: .unmerged), options: options)
            let offset = done
            let r = try expert.evaluate(task) { p in progress?(offset + p.taskDone, total, "expert \(task.name)") }
            done += task.examples.count
            let b = base.tasks[task.name]!
            rows.append(ExpertRow(task: task.name, base: b, expert: r, clearlyBetter: ExpertRow.isClearlyBetter(base: b, expert: r)))
        }
        return ExpertTable(split: split, rows: rows)
    }

    /// A markdown table: per task, base and expert loss and accuracy, and whether the expert is
    /// clearly better; then the means and a sentence naming any task where it is not.
    public func markdown() -> String {
        func f(_ x: Double?, _ fmt: String) -> String { x.map { String(format: fmt, $0) } ?? "–" }
        var s = "| task | base loss | expert loss | base accuracy | expert accuracy | clearly better |\n"
        s += "|---|---:|---:|---:|---:|:---:|\n"
        for r in rows {
            s += "| \(r.task) | \(f(r.base.loss, "%.3f")) | \(f(r.expert.loss, "%.3f")) | \(f(r.base.accuracy, "%.2f")) | "
            s += "\(f(r.expert.accuracy, "%.2f")) | \(r.clearlyBetter ? "yes" : "**no**") |\n"
        }
        let acc = { (k: KeyPath<ExpertRow, TaskEvalResult>) -> Double? in
            let a = rows.compactMap { $0[keyPath: k].accuracy }
            return a.count == rows.count && !a.isEmpty ? a.reduce(0, +) / Double(a.count) : nil
        }
        s += "| **mean** | \(f(meanBaseLoss, "%.3f")) | \(f(meanExpertLoss, "%.3f")) | \(f(acc(\.base), "%.2f")) | \(f(acc(\.expert), "%.2f")) | "
        s += "\(rows.filter(\.clearlyBetter).count)/\(rows.count) |\n"
        let weak = rows.filter { !$0.clearlyBetter }.map(\.task)
        s += weak.isEmpty
            ? "\nEvery adapter is clearly better than the base model on its own task (test loss at most half the base's and higher accuracy).\n"
            : "\nNot clearly better than the base (test loss at most half and higher accuracy): \(weak.joined(separator: ", ")).\n"
        return s
    }
}

/// `adapters/manifest.json`: for every suite adapter, how it was trained (its training.json), the
/// size of its weights file, and its measured own-task results against the base model.
public struct AdapterManifest: Codable, Sendable {
    public struct Entry: Codable, Sendable {
        public var path: String
        public var weightsBytes: Int
        public var training: TrainingRecord?
        public var result: ExpertRow
    }
    public var recipe = "scripts/train_adapters.sh (make adapters)"
    public var baseModel: String
    public var split: String
    public var adapters: [String: Entry]

    public static func make(table: ExpertTable, adaptersDir: String, model: String) throws -> AdapterManifest {
        var entries: [String: Entry] = [:]
        for row in table.rows {
            let dir = (adaptersDir as NSString).appendingPathComponent(row.task)
            let weights = (dir as NSString).appendingPathComponent("adapter_model.safetensors")
            let size = (try? FileManager.default.attributesOfItem(atPath: weights)[.size] as? Int) ?? 0
            let recordPath = (dir as NSString).appendingPathComponent(TrainingRecord.fileName)
            let record = FileManager.default.contents(atPath: recordPath).flatMap { try? JSONDecoder().decode(TrainingRecord.self, from: $0) }
            entries[row.task] = Entry(path: dir, weightsBytes: size, training: record, result: row)
        }
        return AdapterManifest(baseModel: (model as NSString).lastPathComponent, split: table.split, adapters: entries)
    }

    public func json() throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try enc.encode(self), as: UTF8.self) + "\n"
    }
}
