import Foundation

// The continual setting (`lorafuse continual`): tasks arrive one after another and one adapter is
// trained on each in turn, never seeing an earlier task's data again. Forgetting is the loss on
// the earlier tasks after each new one.
//
// - `ranks`: a mixture of ranks grown task by task, in the manner of the MoRA-style continual
//   methods (Little by Little; rank-wise experts): task t gets its own block of r fresh ranks
//   (A rows, B columns t·r…(t+1)·r), trained alone; the blocks of earlier tasks are frozen. Each
//   block is scaled α/r, so a block means the same after later ones join. Without `topK` every
//   block is active for every token and the final adapter is a plain LoRA of rank T·r that PEFT,
//   llama.cpp and mlx-lm load. With `topK` the ranks are self-activated: per token only the k
//   ranks of largest |x·a_j| among the blocks activated so far pass (no router: each rank's own A
//   row scores it, FlyLoRA's selection with a trained A), so a new task's ranks can stay silent on
//   an earlier task's inputs; the adapter is then rank-gated (a FlyLoRA-layout folder, applied
//   unmerged) and, while task t trains, holds only the blocks 0…t.
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
    /// Self-activation: ranks kept per token (nil or ≥ the rank: every rank).
    private let topK: Int?

    init(start: LoRAParameters, trainable: Range<Int>, topK: Int? = nil) {
        precondition(trainable.lowerBound >= 0 && trainable.upperBound <= start.rank && !trainable.isEmpty)
        self.start = start
        self.trainable = trainable
        self.topK = topK
        for m in start.modules {
            let (a, b) = RankSlice.read(A: m.A, B: m.B, rank: m.rank, ranks: trainable)
            parameters.add("\(m.name).lora_A", shape: [trainable.count, m.inFeatures], values: a)   // (k, in)
            parameters.add("\(m.name).lora_B", shape: [m.outFeatures, trainable.count], values: b)  // (out, k)
        }
    }

    func factors() -> LoRAParameters {
        var p = start
        for i in p.modules.indices {
            let m = p.modules[i]
            RankSlice.write(&p.modules[i], ranks: trainable, from: parameters["\(m.name).lora_A"], parameters["\(m.name).lora_B"])
            if let k = topK, k < m.rank { p.modules[i].rankGate = RankGate(topK: k, bias: [Float](repeating: 0, count: m.rank)) }
        }
        return p
    }

    func parameterGradients(_ g: LoRAGradients) -> ParamSet {
        var out = parameters.zeros()
        for (i, m) in start.modules.enumerated() {
            (out["\(m.name).lora_A"], out["\(m.name).lora_B"]) = RankSlice.read(A: g.dA[i], B: g.dB[i], rank: m.rank, ranks: trainable)
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
    /// Self-activation: ranks kept per token (nil: every rank of every block).
    public var topK: Int? = nil
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
        s += "\nMethod `\(method.rawValue)`, rank \(rankPerTask) per task, \(stepsPerTask) steps per task"
        s += topK.map { ", self-activated: the top \($0) ranks by |x·a_j| per token. " } ?? ". "
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
    /// `topK` (method `ranks` only) self-activates the ranks: see the top of this file.
    public static func run(model: LlamaModel, tasks: [ContinualTask], method: ContinualMethod, options o: TrainingOptions,
                           topK: Int? = nil, progress: ((Int, StepLog) -> Void)? = nil) throws -> (LoRAParameters, ContinualResult) {
        guard tasks.count >= 2 else {
            throw TrainError.badOption(option: "tasks", reason: "the continual setting needs at least 2 tasks, got \(tasks.count)")
        }
        if let k = topK {
            guard method == .ranks else {
                throw TrainError.badOption(option: "top-k", reason: "self-activation chooses among the task blocks of --method ranks; --method lora has none")
            }
            guard k >= 1 && k < tasks.count * o.rank else {
                throw TrainError.badOption(option: "top-k", reason: "ranks kept per token must be in 1…\(tasks.count * o.rank - 1) (of \(tasks.count) tasks × rank \(o.rank)), got \(k)")
            }
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
        var stage = full
        for (t, task) in tasks.enumerated() {
            // Self-activated, only the blocks activated so far compete for a token's k ranks
            // (a future block's random A would take slots while its B is still 0).
            let active = topK == nil ? T * r : (t + 1) * r
            var opt = o
            opt.rank = active
            opt.seed = o.seed &+ UInt64(t)       // another data order per task
            let slice = method == .ranks ? (t * r)..<((t + 1) * r) : 0..<(T * r)
            let v = RankSliceVariant(start: full.leadingRanks(active), trainable: slice, topK: topK)
            let trainer = try LoRATrainer(model: model, train: task.train, options: opt, variant: v)
            try trainer.run { progress?(t, $0) }
            stage = v.factors()
            full.setLeadingRanks(from: stage)
            matrix.append(tasks.map { engine.meanLoss($0.test, lora: stage) })
        }
        var result = ContinualResult(method: method, tasks: tasks.map(\.name), rankPerTask: r, stepsPerTask: o.steps ?? 0,
                                     baseLoss: base, loss: matrix, seconds: Date().timeIntervalSince(start))
        result.topK = topK
        return (stage, result)
    }
}

extension LoRAParameters {
    /// The first `k` ranks of every module: A's first k rows, B's first k columns.
    func leadingRanks(_ k: Int) -> LoRAParameters {
        guard k != rank else { return self }
        var p = self
        p.rank = k
        for i in p.modules.indices {
            let m = modules[i]
            let (a, b) = RankSlice.read(A: m.A, B: m.B, rank: m.rank, ranks: 0..<k)
            p.modules[i] = TrainableLoRAModule(layer: m.layer, target: m.target, rank: k, inFeatures: m.inFeatures,
                                               outFeatures: m.outFeatures, scale: m.scale, A: a, B: b)
        }
        return p
    }

    /// Copies `other`'s ranks (fewer or as many) into this one's leading ranks, gates left out.
    mutating func setLeadingRanks(from other: LoRAParameters) {
        for i in modules.indices {
            let m = modules[i], o = other.modules[i]
            precondition(o.layer == m.layer && o.target == m.target && o.rank <= m.rank)
            RankSlice.write(&modules[i], ranks: 0..<o.rank, from: o.A, o.B)
        }
    }
}

/// A range of ranks of one module's factors: rows of A (r, in), columns of B (out, r). The one
/// place the continual trainer cuts ranks out of a LoRA or puts them back.
enum RankSlice {
    /// (A[ranks, :], B[:, ranks]) as (k, in) and (out, k).
    static func read(A: [Float], B: [Float], rank r: Int, ranks: Range<Int>) -> ([Float], [Float]) {
        let nIn = A.count / r, out = B.count / r
        return (Array(A[(ranks.lowerBound * nIn)..<(ranks.upperBound * nIn)]),
                (0..<out).flatMap { o in B[(o * r + ranks.lowerBound)..<(o * r + ranks.upperBound)] })
    }

    /// Writes (k, in) `a` and (out, k) `b` into those ranks of the module's A and B.
    static func write(_ m: inout TrainableLoRAModule, ranks: Range<Int>, from a: [Float], _ b: [Float]) {
        let r = m.rank, nIn = m.inFeatures, out = m.outFeatures, k = ranks.count
        precondition(a.count == k * nIn && b.count == out * k, "rank slice of \(k) ranks: A \(a.count) / B \(b.count) values")
        m.A.replaceSubrange((ranks.lowerBound * nIn)..<(ranks.upperBound * nIn), with: a)
        for o in 0..<out { m.B.replaceSubrange((o * r + ranks.lowerBound)..<(o * r + ranks.upperBound), with: b[(o * k)..<((o + 1) * k)]) }
    }
}
