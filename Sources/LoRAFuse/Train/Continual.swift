import Foundation

// The continual setting (`lorafuse continual`): tasks arrive one after another and one adapter is
// trained on each in turn, never seeing an earlier task's data again. Forgetting is the loss on
// the earlier tasks after each new one.
//
// - `ranks`: a mixture of ranks grown task by task, in the manner of the MoRA-style continual
//   methods (Little by Little; rank-wise experts): task t gets its own block of r fresh ranks
//   (A rows, B columns t·r…(t+1)·r), trained alone; the blocks of earlier tasks are frozen. Every
//   block stays active for every token (no self-activation gate: that is not built), so the
//   final adapter is a plain LoRA of rank T·r that PEFT, llama.cpp and mlx-lm load. Each block is
//   scaled α/r, so a block means the same after later ones join.
// - `lora`: the baseline, one LoRA of rank T·r (the same final size) whose every rank is trained
//   on each task in turn, starting from where the previous task left it.
//
// A fresh AdamW per task (the optimizer state of one task is not carried to the next). The third
// comparison, training once on the union of the tasks, is `lorafuse train` on their concatenation.

public enum ContinualMethod: String, CaseIterable, Sendable, Codable {
    case ranks, lora
}

/// A LoRA whose ranks `trainable` are trained and the others held fixed at `start`'s values.
final class RankSliceVariant: TrainingVariant {
    let name = "continual"
    var parameters = ParamSet()
    private let start: LoRAParameters
    private let trainable: Range<Int>

    init(start: LoRAParameters, trainable: Range<Int>) {
        precondition(trainable.lowerBound >= 0 && trainable.upperBound <= start.rank && !trainable.isEmpty)
        self.start = start
        self.trainable = trainable
        for m in start.modules {
            parameters.add("\(m.name).lora_A", shape: [trainable.count, m.inFeatures],
                           values: Array(m.A[(trainable.lowerBound * m.inFeatures)..<(trainable.upperBound * m.inFeatures)]))  // (k, in)
            parameters.add("\(m.name).lora_B", shape: [m.outFeatures, trainable.count],
                           values: (0..<m.outFeatures).flatMap { o in m.B[(o * m.rank + trainable.lowerBound)..<(o * m.rank + trainable.upperBound)] })  // (out, k)
        }
    }

    func factors() -> LoRAParameters {
        var p = start
        let k = trainable.count, lo = trainable.lowerBound
        for i in p.modules.indices {
            let m = p.modules[i], a = parameters["\(m.name).lora_A"], b = parameters["\(m.name).lora_B"]
            p.modules[i].A.replaceSubrange((lo * m.inFeatures)..<((lo + k) * m.inFeatures), with: a)
            for o in 0..<m.outFeatures {
                p.modules[i].B.replaceSubrange((o * m.rank + lo)..<(o * m.rank + lo + k), with: b[(o * k)..<((o + 1) * k)])
            }
        }
        return p
    }

    func parameterGradients(_ g: LoRAGradients) -> ParamSet {
        var out = parameters.zeros()
        let k = trainable.count, lo = trainable.lowerBound
        for (i, m) in start.modules.enumerated() {
            out["\(m.name).lora_A"] = Array(g.dA[i][(lo * m.inFeatures)..<((lo + k) * m.inFeatures)])
            out["\(m.name).lora_B"] = (0..<m.outFeatures).flatMap { o in g.dB[i][(o * m.rank + lo)..<(o * m.rank + lo + k)] }
        }
        return out
    }

    var storedBytes: Int { 4 * start.parameterCount }

    func writeFiles(into dir: URL, name: String, baseModel: String?, path: String) throws {
        try PEFTAdapter.writeFiles(factors().adapter(name: name, baseModel: baseModel), into: dir, dtype: .f32, path: path)
    }
}

/// One task of a continual run: its training examples and the held-out ones forgetting is
/// measured on.
public struct ContinualTask: Sendable {
    public var name: String
    public var train: [TrainingSequence]
    public var test: [TrainingSequence]

    public init(name: String, train: [TrainingSequence], test: [TrainingSequence]) {
        self.name = name
        self.train = train
        self.test = test
    }
}

/// What a continual run measured: `loss[t][j]` is the mean held-out loss on task j after training
/// on tasks 0…t (j > t: a task not seen yet).
public struct ContinualResult: Codable, Sendable, Equatable {
    public var method: ContinualMethod
    public var tasks: [String]
    public var rankPerTask: Int
    public var stepsPerTask: Int
    /// Loss of the base model (no adapter) on each task.
    public var baseLoss: [Double]
    public var loss: [[Double]]
    public var seconds: Double

    /// Per task but the last: its loss at the end minus its loss right after it was trained.
    public var forgetting: [Double] { (0..<max(tasks.count - 1, 0)).map { loss[tasks.count - 1][$0] - loss[$0][$0] } }
    public var meanForgetting: Double { forgetting.isEmpty ? 0 : forgetting.reduce(0, +) / Double(forgetting.count) }
    /// Mean loss over every task at the end.
    public var finalMeanLoss: Double { loss.last.map { $0.reduce(0, +) / Double(max($0.count, 1)) } ?? 0 }

    /// The matrix as Markdown: one row per stage, one column per task, then the summary.
    public var markdown: String {
        func f(_ x: Double) -> String { String(format: "%.3f", x) }
        var s = "| after \\ loss on | " + tasks.joined(separator: " | ") + " | mean |\n"
        s += "|---|" + String(repeating: "---:|", count: tasks.count + 1) + "\n"
        s += "| base model | " + baseLoss.map(f).joined(separator: " | ") + " | \(f(baseLoss.reduce(0, +) / Double(max(baseLoss.count, 1)))) |\n"
        for (t, row) in loss.enumerated() {
            s += "| \(tasks[t]) | " + row.map(f).joined(separator: " | ") + " | \(f(row.reduce(0, +) / Double(max(row.count, 1)))) |\n"
        }
        s += "\nMethod `\(method.rawValue)`, rank \(rankPerTask) per task, \(stepsPerTask) steps per task. "
        s += "Forgetting (final loss − loss right after the task was trained): "
        s += zip(tasks, forgetting).map { "\($0) \(String(format: "%+.3f", $1))" }.joined(separator: ", ")
        s += "; mean \(String(format: "%+.3f", meanForgetting)). Final mean loss \(f(finalMeanLoss)).\n"
        return s
    }
}

public enum ContinualTraining {
    /// Trains on `tasks` in order with `method`; `options.rank` is the rank per task (the adapter
    /// ends with rank tasks·rank either way), `options.steps` the steps per task. `progress` sees
    /// each task's index and every step's log row. Returns the final factors and the matrix.
    public static func run(model: LlamaModel, tasks: [ContinualTask], method: ContinualMethod, options o: TrainingOptions,
                           progress: ((Int, StepLog) -> Void)? = nil) throws -> (LoRAParameters, ContinualResult) {
        guard tasks.count >= 2 else {
            throw TrainError.badOption(option: "tasks", reason: "the continual setting needs at least 2 tasks, got \(tasks.count)")
        }
        if let t = tasks.first(where: { $0.test.isEmpty }) {
            throw TrainError.badData(file: t.name, reason: "no held-out examples to measure forgetting on")
        }
        let start = Date()
        let T = tasks.count, r = o.rank
        var full = LoRAParameters.initialize(config: model.config, rank: T * r, alpha: o.alpha, targets: o.targets,
                                             rsLoRA: o.rsLoRA, seed: o.seed, layers: o.layers)
        // Every block is scaled as a rank-r LoRA: a block's update means the same once others join.
        let s = LoRAParameters.scale(rank: r, alpha: o.alpha, rsLoRA: o.rsLoRA)
        for i in full.modules.indices { full.modules[i].scale = s }
        let engine = LlamaTrainingEngine(model: model)
        let none = LoRAParameters(modules: [], rank: 1, alpha: 1, rsLoRA: false, targets: [])
        let base = tasks.map { engine.meanLoss($0.test, lora: none) }
        var matrix: [[Double]] = []
        for (t, task) in tasks.enumerated() {
            var opt = o
            opt.rank = T * r
            opt.seed = o.seed &+ UInt64(t)       // another data order per task
            let slice = method == .ranks ? (t * r)..<((t + 1) * r) : 0..<(T * r)
            let v = RankSliceVariant(start: full, trainable: slice)
            let trainer = try LoRATrainer(model: model, train: task.train, options: opt, variant: v)
            try trainer.run { progress?(t, $0) }
            full = v.factors()
            matrix.append(tasks.map { engine.meanLoss($0.test, lora: full) })
        }
        let result = ContinualResult(method: method, tasks: tasks.map(\.name), rankPerTask: r, stepsPerTask: o.steps ?? 0,
                                     baseLoss: base, loss: matrix, seconds: Date().timeIntervalSince(start))
        return (full, result)
    }
}
