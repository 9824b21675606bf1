import Foundation

/// The ICM-Fusion experiment: held-out multi-task loss/accuracy of ICM-Fusion against the
/// experts, the base model and the static fusion methods; ablations; a long-tailed setting;
/// VAE reconstruction error; generator storage. `markdown()` is what `lorafuse report` prints.
public struct ICMExperiment {
    public struct Task: Sendable {
        public var name: String
        public var adapterPath: String
        public var trainPath: String     // shots are its first `shots` lines
        public var testPath: String
        public var description: String?
        public init(name: String, adapterPath: String, trainPath: String, testPath: String, description: String? = nil) {
            self.name = name; self.adapterPath = adapterPath; self.trainPath = trainPath; self.testPath = testPath
            self.description = description
        }
    }

    public struct Options: Sendable {
        public var shots = 4
        public var longTailShots = 2
        public var testExamples = 25
        public var accuracy = true
        public var staticMethods: [String] = FusionMethods.names
        public var generator = ICMGeneratorOptions()
        public var fusion = ICMFusionOptions()
        public var maxCheckpoints = 4
        public var ablations = true
        public var longTail = true
        public init() {}
    }

    public struct Row: Sendable {
        public var method: String
        public var perTask: [TaskEvalResult]
        public var meanLoss: Double { perTask.map(\.loss).reduce(0, +) / Double(max(perTask.count, 1)) }
        public var meanAccuracy: Double? {
            let a = perTask.compactMap(\.accuracy)
            return a.count == perTask.count && !a.isEmpty ? a.reduce(0, +) / Double(a.count) : nil
        }
        public var seconds: Double
        public var note: String = ""
    }

    public var tasks: [String] = []
    public var rows: [Row] = []
    public var reconstruction: [(task: String, relative: Double, normalisedMSE: Double)] = []
    public var generatorBytes = 0
    public var generatorNetworkBytes = 0
    public var adapterBytes = 0
    public var log: [String] = []

    static func firstLines(_ t: EvalTask, _ n: Int) -> EvalTask {
        EvalTask(name: t.name, path: t.path, examples: Array(t.examples.prefix(n)))
    }

    public static func run(model: LlamaModel, tasks: [Task], options o: Options, progress: ((String) -> Void)? = nil) throws -> ICMExperiment {
        var out = ICMExperiment()
        out.tasks = tasks.map(\.name)
        func say(_ s: String) { out.log.append(s); progress?(s) }
        let tests = try tasks.map { firstLines(try TaskData.read(path: $0.testPath), o.testExamples) }
        let trains = try tasks.map { try TaskData.read(path: $0.trainPath) }
        let experts = try tasks.map { try PEFTAdapter.read(directory: $0.adapterPath) }
        out.adapterBytes = experts.reduce(0) { $0 + $1.parameterCount * 4 }
        let ev = Evaluator(model: model, options: EvalOptions(computeAccuracy: o.accuracy))

        func evaluate(_ method: String, _ adapter: LoRAAdapter?, seconds: Double, note: String = "") throws {
            if let adapter { try model.setAdapters([(adapter, 1)]) } else { model.clearAdapters() }
            defer { model.clearAdapters() }
            let r = try tests.map { try ev.evaluate($0) }
            out.rows.append(Row(method: method, perTask: r, seconds: seconds, note: note))
            let row = out.rows.last!
            say(String(format: "%@: mean held-out loss %.4f%@", method, row.meanLoss,
                       row.meanAccuracy.map { String(format: ", accuracy %.3f", $0) } ?? ""))
        }

        try evaluate("base", nil, seconds: 0)
        // Experts: each adapter on its own task only.
        do {
            var r: [TaskEvalResult] = []
            for (i, t) in tests.enumerated() {
                try model.setAdapters([(experts[i], 1)])
                r.append(try ev.evaluate(t))
                model.clearAdapters()
            }
            out.rows.append(Row(method: "experts (own task)", perTask: r, seconds: 0))
            say(String(format: "experts: mean own-task loss %.4f", out.rows.last!.meanLoss))
        }
        let n = Float(tasks.count)
        for m in o.staticMethods {
            // Averaging methods get weights 1/n; the sign-consensus and pruning methods (whose own
            // divisor normalises) and task arithmetic get 1.
            let averaging: Set<String> = ["linear", "cat", "svd", "lego"]
            let w: Float = averaging.contains(m) ? 1 / n : 1
            do {
                let start = Date()
                let method = try FusionMethods.make(name: m, parameters: FusionParameters(rank: m == "linear" ? experts[0].metadata.rank : nil))
                let (fused, _) = try Fuser.fuse(experts, weights: [Float](repeating: w, count: tasks.count), method: method)
                try evaluate(m + (w == 1 ? " (w=1)" : " (w=1/n)"), fused, seconds: Date().timeIntervalSince(start))
            } catch {
                say("\(m): skipped (\(error))")
            }
            if m == "cat" {
                let start = Date()
                let (fused, _) = try Fuser.fuse(experts, weights: [Float](repeating: 1, count: tasks.count), method: CatFusion())
                try evaluate("task arithmetic (cat, w=1)", fused, seconds: Date().timeIntervalSince(start))
            }
        }

        func inputs(shots: [Int]) -> [ICMPipeline.TaskInput] {
            tasks.indices.map { ICMPipeline.TaskInput(name: tasks[$0].name, adapterPath: tasks[$0].adapterPath,
                                                      shots: firstLines(trains[$0], shots[$0]), description: tasks[$0].description) }
        }
        let fewShot = inputs(shots: [Int](repeating: o.shots, count: tasks.count))
        func runICM(_ label: String, gen g: ICMGeneratorOptions, fusion f: ICMFusionOptions, input: [ICMPipeline.TaskInput],
                    reuse: ICMGenerator? = nil) throws -> ICMGenerator {
            let start = Date()
            say("\(label): training generator and fusing")
            let gen = try reuse ?? ICMPipeline.trainGenerator(model: model, tasks: input, maxCheckpoints: o.maxCheckpoints, options: g, progress: progress)
            let support = try input.flatMap { try TrainingData.sequences($0.shots, model: model) }
            let r = try gen.fuse(tasks: input.map(\.name), support: support, engine: LlamaTrainingEngine(model: model), options: f, progress: progress)
            try evaluate(label, r.parameters.adapter(name: label), seconds: Date().timeIntervalSince(start),
                         note: "w = [" + r.fusion.weights.map { String(format: "%.3f", $0) }.joined(separator: ", ") + "]")
            return gen
        }
        let full = try runICM("icm-fusion", gen: o.generator, fusion: o.fusion, input: fewShot)
        for (i, t) in tasks.enumerated() {
            let e = full.reconstructionError(task: i, parameters: try LoRAParameters(adapter: experts[i], config: model.config))
            out.reconstruction.append((t.name, e.relative, e.normalisedMSE))
        }
        let st = full.storageBytes
        out.generatorNetworkBytes = st.network
        out.generatorBytes = st.network + st.perTask * tasks.count
        if o.ablations {
            var f = o.fusion; f.adaptSteps = 0
            _ = try runICM("icm-fusion: decode only (no in-context adaptation)", gen: o.generator, fusion: f, input: fewShot, reuse: full)
            f = o.fusion; f.orientation = false
            _ = try runICM("icm-fusion: no orientation projection", gen: o.generator, fusion: f, input: fewShot, reuse: full)
            var g = o.generator; g.metaSteps = 0
            _ = try runICM("icm-fusion: no meta-learning", gen: g, fusion: o.fusion, input: fewShot)
            g = o.generator; g.useCondition = false
            _ = try runICM("icm-fusion: no task condition", gen: g, fusion: o.fusion, input: fewShot)
        }
        if o.longTail {
            var shots = [Int](repeating: o.shots, count: tasks.count); shots[0] = o.longTailShots
            _ = try runICM("icm-fusion: long-tailed (\(tasks[0].name) with \(o.longTailShots) shots)", gen: o.generator,
                           fusion: o.fusion, input: inputs(shots: shots))
        }
        return out
    }

    public func markdown() -> String {
        var s = "### ICM-Fusion on \(tasks.joined(separator: ", "))\n\n"
        s += "| method | mean held-out loss | mean accuracy | " + tasks.map { "\($0) loss" }.joined(separator: " | ") + " | seconds | note |\n"
        s += "|---|---|---|" + tasks.map { _ in "---|" }.joined() + "---|---|\n"
        for r in rows {
            s += "| \(r.method) | " + String(format: "%.4f", r.meanLoss) + " | " + (r.meanAccuracy.map { String(format: "%.3f", $0) } ?? "–")
            s += " | " + r.perTask.map { String(format: "%.4f", $0.loss) }.joined(separator: " | ")
            s += " | " + String(format: "%.1f", r.seconds) + " | \(r.note) |\n"
        }
        let staticRows = rows.filter { !$0.method.hasPrefix("icm") && $0.method != "base" && !$0.method.hasPrefix("experts") }
        if let best = staticRows.min(by: { $0.meanLoss < $1.meanLoss }), let icm = rows.first(where: { $0.method == "icm-fusion" }),
           let ex = rows.first(where: { $0.method.hasPrefix("experts") }) {
            s += "\nTargets: ICM-Fusion \(String(format: "%.4f", icm.meanLoss)) vs best static (\(best.method)) "
            s += String(format: "%.4f", best.meanLoss) + (icm.meanLoss < best.meanLoss ? " — below (met)" : " — not below (missed)")
            s += "; vs experts' own-task loss " + String(format: "%.4f", ex.meanLoss) + String(format: " (%.1f%% above; target ≤ 10%%: %@)\n",
                100 * (icm.meanLoss / ex.meanLoss - 1), icm.meanLoss <= 1.1 * ex.meanLoss ? "met" : "missed")
        }
        s += "\nVAE reconstruction of each expert from its latent mean: "
        s += reconstruction.map { String(format: "%@ relative ‖θ̂−θ‖/‖θ‖ = %.3f (normalised MSE %.4f)", $0.task, $0.relative, $0.normalisedMSE) }
            .joined(separator: "; ") + "\n"
        s += String(format: "\nStorage: generator %.2f MB (network %.2f MB + per-task records) vs the %d adapters it replaces %.2f MB (F32).\n",
                    Double(generatorBytes) / 1e6, Double(generatorNetworkBytes) / 1e6, tasks.count, Double(adapterBytes) / 1e6)
        return s
    }
}
