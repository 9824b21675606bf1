import Foundation
import XCTest
@testable import LoRAFuse

/// A tiny random Llama with the ChatML test tokenizer, random adapters on every projection, and
/// three tasks whose prompts the tokenizer can spell (one with Markdown/HTML metacharacters in its name).
enum ReportFixtures {
    static let taskNames = ["add", "t|<b>_1", "count"]

    static func model(seed: UInt64 = 3) -> LlamaModel {
        let tok = TinyChat.tokenizer
        let c = LlamaConfig(modelType: "llama", hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 2,
                            numAttentionHeads: 2, numKeyValueHeads: 1, headDim: 8, vocabSize: tok.vocabSize)
        return LlamaModel(config: c, weights: .random(c, seed: seed, std: 0.3), tokenizer: tok)
    }

    static func adapter(_ model: LlamaModel, name: String, seed: UInt64, rank: Int = 2) -> LoRAAdapter {
        var rng = SeededRNG(seed: seed)
        var modules: [String: LoRAModule] = [:]
        for l in 0..<model.config.numHiddenLayers {
            for p in Projection.allCases {
                let lw = model.base.linears[LlamaWeights.linearID(layer: l, p)]
                modules[ModuleAddress.projection(layer: l, p).peft] = LoRAModule(
                    A: .randomNormal(rank, lw.inFeatures, std: 0.3, rng: &rng),
                    B: .randomNormal(lw.outFeatures, rank, std: 0.3, rng: &rng), scale: 0.5)
            }
        }
        return LoRAAdapter(name: name, modules: modules)
    }

    static func tasks() -> [EvalTask] {
        [EvalTask(name: taskNames[0], examples: [.init(prompt: "What is 2+3?", answer: "5"),
                                                 .init(prompt: "What is 4+4?", answer: "8"),
                                                 .init(prompt: "What is 1+6?", answer: "7")]),
         EvalTask(name: taskNames[1], examples: [.init(prompt: "Say hi.", answer: "hi"),
                                                 .init(prompt: "Say ok.", answer: "ok"),
                                                 .init(prompt: "Say no!", answer: "no")]),
         EvalTask(name: taskNames[2], examples: [.init(prompt: "Count abc.", answer: "3"),
                                                 .init(prompt: "Count ab.", answer: "2"),
                                                 .init(prompt: "Count abcd.", answer: "4")])]
    }

    static func inputs(_ model: LlamaModel) -> ReportInputs {
        ReportInputs(adapters: taskNames.enumerated().map { adapter(model, name: $1, seed: 100 + UInt64($0)) }, test: tasks(),
                     shots: shots())
    }

    /// Shot pools: different examples from the test ones.
    static func shots() -> [EvalTask] {
        [EvalTask(name: taskNames[0], examples: [.init(prompt: "What is 3+3?", answer: "6"), .init(prompt: "What is 1+1?", answer: "2")]),
         EvalTask(name: taskNames[1], examples: [.init(prompt: "Say yes.", answer: "yes"), .init(prompt: "Say go.", answer: "go")]),
         EvalTask(name: taskNames[2], examples: [.init(prompt: "Count a.", answer: "1"), .init(prompt: "Count abcde.", answer: "5")])]
    }

    static func tempDir() -> String {
        let d = NSTemporaryDirectory() + "lorafuse-report-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    /// `data-value` of the heatmap cell (row, col) in an SVG, nil when the cell is missing.
    static func cellValue(_ svg: String, row: Int, col: Int) -> Double? {
        guard let r = svg.range(of: "data-row=\"\(row)\" data-col=\"\(col)\"") else { return nil }
        let rest = svg[r.upperBound...]
        guard rest.hasPrefix(" data-value=\""), let end = rest.dropFirst(13).firstIndex(of: "\"") else { return nil }
        return Double(rest[rest.index(rest.startIndex, offsetBy: 13)..<end])
    }
}

final class ReportTests: XCTestCase {
    let methods = [ReportMethods.base, ReportMethods.experts,
                   ReportMethods.staticMethod("linear", rank: 2), ReportMethods.staticMethod("ties", rank: 2)]

    func testEndToEndNumbersEqualDirectEvaluation() throws {
        let model = ReportFixtures.model()
        let inputs = ReportFixtures.inputs(model)
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let settings = ReportSettings(testPerTask: 2, accuracy: true, rank: 2, model: "tiny")
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        var last: ReportProgress?
        let r = try runner.run { last = $0 }
        XCTAssertEqual(last?.done, last?.total)
        XCTAssertEqual(last?.total, 4 * 3 * 2, "4 rows × 3 tasks × 2 examples")
        XCTAssertEqual(runner.evaluationsRun, 4 * 3)
        XCTAssertEqual(r.rows.map(\.method.id), ["base", "experts", "linear", "ties"])
        XCTAssertEqual(r.testExamples, ["add": 2, "t|<b>_1": 2, "count": 2])

        // The same numbers straight from the Evaluator, task by task (as `lorafuse eval --data FILE`),
        // on the first two examples of each task.
        let test = ReportInputs.firstExamples(inputs.test, 2)
        let ev = Evaluator(model: model, options: EvalOptions(computeAccuracy: true))
        let withAccuracy = EvalOptions(computeAccuracy: true)
        func direct(_ lm: any CausalLM) throws -> EvalReport {
            let ev = Evaluator(model: lm, options: withAccuracy)
            return EvalReport(tasks: Dictionary(uniqueKeysWithValues: try test.map { ($0.name, try ev.evaluate($0)) }), order: test.map(\.name))
        }
        let base = try direct(model)
        for t in test {
            XCTAssertEqual(r.rows[0].tasks[t.name], base.tasks[t.name], "base \(t.name)")
        }
        XCTAssertEqual(r.rows[0].meanLoss!, base.meanLoss, accuracy: 1e-12)
        // All tasks in one call share one session, so only float rounding differs.
        XCTAssertEqual(try ev.evaluate(test).meanLoss, base.meanLoss, accuracy: 1e-5 * base.meanLoss)
        for (t, a) in zip(test, inputs.adapters) {
            XCTAssertEqual(r.rows[1].tasks[t.name], try Evaluator(model: try model.with([(a, 1)], mode: .merged), options: withAccuracy).evaluate(t), "expert \(t.name)")
        }
        let (fused, _) = try Fuser.fuse(inputs.adapters, weights: [1, 1, 1].map { $0 / Float(3) }, method: LinearFusion(rank: nil))
        let linear = try direct(try model.with([(fused, 1)], mode: .merged))
        for t in test { XCTAssertEqual(r.rows[2].tasks[t.name], linear.tasks[t.name], "linear \(t.name)") }
        XCTAssertEqual(r.rows[2].meanLoss!, linear.meanLoss, accuracy: 1e-12)
        XCTAssertNotEqual(r.rows[2].meanLoss, r.rows[0].meanLoss, "the fused adapter changes the model")
        let (tiesFused, _) = try Fuser.fuse(inputs.adapters, weights: [1, 1, 1],
                                            method: try FusionMethods.make(name: "ties", parameters: FusionParameters(rank: 2, density: 0.2)))
        XCTAssertEqual(r.rows[3].tasks["count"], try Evaluator(model: try model.with([(tiesFused, 1)], mode: .merged), options: withAccuracy).evaluate(test[2]))

        // Files, and results.json holds the same numbers.
        try ReportRenderer.write(r, to: dir)
        for f in ["index.html", "report.md", "results.json", "mean-loss.svg", "cosine.svg", "sign-conflicts.svg"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/" + f), f)
        }
        let decoded = try JSONDecoder().decode(ReportResults.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/results.json")))
        XCTAssertEqual(decoded, r)

        // Tables: the HTML and Markdown show every row's mean loss, and the best fused mean loss is highlighted.
        let html = try String(contentsOfFile: dir + "/index.html", encoding: .utf8)
        let md = try String(contentsOfFile: dir + "/report.md", encoding: .utf8)
        let fusedRows = r.rows.filter { $0.method.family != .expert }
        let best = fusedRows.min { $0.meanLoss! < $1.meanLoss! }!
        XCTAssertTrue(html.contains("<td class=\"num best\">\(String(format: "%.4f", best.meanLoss!))</td>"), "best mean loss highlighted")
        XCTAssertTrue(md.contains("**\(String(format: "%.4f", best.meanLoss!))**"))
        for row in r.rows { XCTAssertTrue(md.contains(String(format: "%.4f", row.meanLoss!)), row.method.id) }
        XCTAssertTrue(html.contains("<h2 id=\"targets\">Targets</h2>") && html.contains("How to read this"))
        XCTAssertTrue(html.contains("No learned method was run"), "the targets section says it was not assessed")
        XCTAssertEqual(html.components(separatedBy: "<svg ").count - 1, 3, "charts are inline")
        XCTAssertTrue(md.contains("![Mean held-out loss per method (lower is better)](mean-loss.svg)"))
    }

    func testHeatmapsEqualAdapterAnalysis() throws {
        let model = ReportFixtures.model()
        let inputs = ReportFixtures.inputs(model)
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try ReportRunner(model: model, inputs: inputs, settings: ReportSettings(testPerTask: 1, accuracy: false, rank: 2),
                                 methods: [ReportMethods.base], directory: dir).run()
        let a = AdapterAnalyzer.analyze(inputs.adapters)
        let charts = Dictionary(uniqueKeysWithValues: ReportRenderer.charts(r).map { ($0.file, $0.svg) })
        let cos = try XCTUnwrap(charts["cosine.svg"]), sign = try XCTUnwrap(charts["sign-conflicts.svg"])
        var k = 0
        for i in 0..<3 {
            XCTAssertEqual(ReportFixtures.cellValue(cos, row: i, col: i), 1)
            XCTAssertNil(ReportFixtures.cellValue(sign, row: i, col: i), "no sign conflict of an adapter with itself")
            for j in (i + 1)..<3 {
                let p = a.pairs[k]
                k += 1
                XCTAssertEqual(ReportFixtures.cellValue(cos, row: i, col: j), p.cosine)
                XCTAssertEqual(ReportFixtures.cellValue(cos, row: j, col: i), p.cosine)
                XCTAssertEqual(ReportFixtures.cellValue(sign, row: i, col: j), p.signConflictRate)
                XCTAssertNotNil(p.signConflictRate)
            }
        }
        // The sign-conflict rate of two independent random adapters is about one half.
        XCTAssertEqual(a.pairs[0].signConflictRate!, 0.5, accuracy: 0.1)
    }

    func testCacheIsReusedAndInvalidated() throws {
        let model = ReportFixtures.model()
        let inputs = ReportFixtures.inputs(model)
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let settings = ReportSettings(testPerTask: 2, accuracy: false, rank: 2)
        let first = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        let r1 = try first.run()
        XCTAssertEqual(first.evaluationsRun, 12)

        let second = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        var last: ReportProgress?
        let r2 = try second.run { last = $0 }
        XCTAssertEqual(second.evaluationsRun, 0, "everything comes from the cache")
        XCTAssertEqual(last?.done, last?.total, "cached work still fills the progress bar")
        XCTAssertEqual(r2.rows, r1.rows)

        // One more test example per task: every task's data changed, so everything reruns.
        let more = try ReportRunner(model: model, inputs: inputs, settings: ReportSettings(testPerTask: 3, accuracy: false, rank: 2),
                                    methods: methods, directory: dir)
        _ = try more.run()
        XCTAssertEqual(more.evaluationsRun, 12)

        // A changed adapter invalidates the static rows and its own expert cell, not the base row.
        var changed = inputs
        changed.adapters[1] = ReportFixtures.adapter(model, name: ReportFixtures.taskNames[1], seed: 999)
        let after = try ReportRunner(model: model, inputs: changed, settings: ReportSettings(testPerTask: 3, accuracy: false, rank: 2),
                                     methods: methods, directory: dir)
        _ = try after.run()
        XCTAssertEqual(after.evaluationsRun, 1 + 3 + 3, "one expert task and two static rows of three tasks")

        let forced = try ReportRunner(model: model, inputs: changed, settings: ReportSettings(testPerTask: 3, accuracy: false, rank: 2),
                                      methods: methods, directory: dir, force: true)
        _ = try forced.run()
        XCTAssertEqual(forced.evaluationsRun, 12)
    }

    func testEscapingOfTaskNames() throws {
        let model = ReportFixtures.model()
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try ReportRunner(model: model, inputs: ReportFixtures.inputs(model), settings: ReportSettings(testPerTask: 1, accuracy: false, rank: 2),
                                 methods: [ReportMethods.base, ReportMethods.experts], directory: dir).run()
        let html = ReportRenderer.html(r), md = ReportRenderer.markdown(r)
        XCTAssertFalse(html.contains("<b>"), "a task name never becomes markup")
        XCTAssertTrue(html.contains("<th class=\"num\">t|&lt;b&gt;_1</th>") || html.contains("<th>t|&lt;b&gt;_1</th>"))
        XCTAssertTrue(html.contains(">t|&lt;b&gt;_1</text>"), "escaped in the SVG labels too")
        XCTAssertTrue(md.contains("| t\\|&lt;b&gt;\\_1 |"), "a pipe would split the Markdown cell")
        XCTAssertEqual(ReportRenderer.escapeMarkdown("a*b`c[d]#"), "a\\*b\\`c\\[d\\]\\#")
        XCTAssertEqual(ReportRenderer.escapeHTML("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;")
    }

    func testTargetsInWords() {
        func row(_ id: String, _ f: ReportFamily, _ losses: [Double]) -> ReportRow {
            let names = ["a", "b"]
            var t: [String: TaskEvalResult] = [:]
            for (n, l) in zip(names, losses) { t[n] = TaskEvalResult(loss: l, perplexity: exp(l), accuracy: nil, examples: 1, tokens: 1) }
            return ReportRow(method: ReportMethod(id: id, family: f, method: id), tasks: t, order: names)
        }
        let rows = [row("base", .base, [3, 3]), row("experts", .expert, [0.5, 0.7]), row("linear", .static, [1.2, 1.0]),
                    row("ties", .static, [1.0, 1.0]), row("good", .learned, [0.8, 0.9]), row("bad", .learned, [1.1, 1.3])]
        let r = ReportResults(generated: "now", settings: ReportSettings(), tasks: ["a", "b"], testExamples: ["a": 1, "b": 1],
                              adapters: ["a", "b"], rows: rows, analysis: nil, expertMatrix: nil, shotsCurves: [:], warnings: [])
        XCTAssertEqual(r.targets.map(\.beatsBestStatic), [true, false])
        XCTAssertEqual(r.targets[0].bestStatic, "ties")
        XCTAssertEqual(r.targets[0].gapToExperts!, 0.85 - 0.6, accuracy: 1e-12)
        let s = ReportRenderer.targetSentences(r)
        XCTAssertTrue(s[0].contains("good: mean held-out loss 0.8500 against 1.0000 for the best static method (ties): target met (lower by 0.1500)"), s[0])
        XCTAssertTrue(s[1].contains("target MISSED (higher by 0.2000)"), s[1])
        XCTAssertTrue(s[0].contains("Gap to the experts: +0.2500"), s[0])
        XCTAssertTrue(s.contains { $0.contains("The best static method, ties, has mean held-out loss 1.0000; the experts (each task's own adapter) 0.6000") })
        let html = ReportRenderer.html(r)
        XCTAssertTrue(html.contains("<li class=\"missed\">bad:"))
        XCTAssertTrue(html.contains("<li class=\"met\">good:"))
    }

    /// A learned row is exactly LearnedFusion.fuse (same options) then the Evaluator; the curve has
    /// one fit per shots count; the coefficient heatmap shows the per-layer means; reruns are cached.
    func testLearnedRowsCurveAndCoefficients() throws {
        let model = ReportFixtures.model()
        let inputs = ReportFixtures.inputs(model)
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let settings = ReportSettings(testPerTask: 2, accuracy: false, rank: 2, shotsPerTask: 2, shotsCurve: [1, 2], steps: 2)
        let methods = [ReportMethods.experts, ReportMethods.staticMethod("linear", rank: 2), ReportMethods.learned("atlas")]
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        var last: ReportProgress?
        let r = try runner.run { last = $0 }
        XCTAssertEqual(last?.done, last?.total)
        XCTAssertEqual(runner.evaluationsRun, 3 + 3 + 2 * 3, "experts, linear, two atlas fits")
        let row = try XCTUnwrap(r.rows.first { $0.method.id == "atlas" })
        XCTAssertEqual(row.shots, 2)

        let (method, options) = try runner.learnedOptions(ReportMethods.learned("atlas"), shots: 2)
        XCTAssertEqual(options.steps, 2)
        XCTAssertEqual(options.initialCoefficient, 1.0 / 3, "learned rows start at the mean, the linear row")
        XCTAssertEqual(options.catScale, 1)
        let fit = try LearnedFusion.fuse(method: method, adapters: inputs.adapters, model: model,
                                         shots: ReportInputs.firstExamples(inputs.shots, 2), val: [], options: options, progress: nil)
        let ev = Evaluator(model: try model.with([(fit.adapter, 1)], mode: .merged), options: EvalOptions(computeAccuracy: false))
        for t in ReportInputs.firstExamples(inputs.test, 2) {
            XCTAssertEqual(row.tasks[t.name]!.loss, try ev.evaluate(t).loss, accuracy: 1e-9, t.name)
        }
        XCTAssertEqual(r.shotsCurves["atlas"]?.map(\.shots), [1, 2])
        XCTAssertEqual(r.shotsCurves["atlas"]?.last?.meanLoss, row.meanLoss)
        XCTAssertNotEqual(r.shotsCurves["atlas"]?.first?.meanLoss, row.meanLoss, "one shot fits other coefficients")

        // Coefficients: per adapter and layer, the mean over the projections.
        let c = try XCTUnwrap(row.coefficients)
        XCTAssertEqual(c.adapters, ReportFixtures.taskNames)
        XCTAssertEqual(c.layers, [0, 1])
        let q = fit.coefficients.coefficient(adapter: 1, layer: 1, module: "q_proj")
        let all = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            .map { fit.coefficients.coefficient(adapter: 1, layer: 1, module: $0) }
        XCTAssertEqual(c.values[1][1]!, all.reduce(0, +) / 7, accuracy: 1e-12)
        XCTAssertNotEqual(q, 1.0 / 3, "two Adam steps moved the coefficients from their start")
        XCTAssertEqual(c.start, 1.0 / 3)
        let charts = Dictionary(uniqueKeysWithValues: ReportRenderer.charts(r).map { ($0.file, $0.svg) })
        XCTAssertEqual(ReportFixtures.cellValue(try XCTUnwrap(charts["coefficients-atlas.svg"]), row: 1, col: 1), c.values[1][1])
        XCTAssertNotNil(charts["shots-curve.svg"])

        // Targets: atlas against linear, the only static row.
        XCTAssertEqual(r.targets.count, 1)
        XCTAssertEqual(r.targets[0].bestStatic, "linear")
        XCTAssertEqual(r.targets[0].beatsBestStatic, row.meanLoss! < r.rows[1].meanLoss!)
        let html = ReportRenderer.html(r)
        XCTAssertTrue(html.contains("atlas: mean held-out loss \(String(format: "%.4f", row.meanLoss!))"))
        XCTAssertTrue(html.contains("Learned methods: loss against shots"))

        let again = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        let r2 = try again.run()
        XCTAssertEqual(again.evaluationsRun, 0, "no fit and no evaluation on a rerun")
        XCTAssertEqual(r2.rows, r.rows)
        XCTAssertEqual(r2.shotsCurves, r.shotsCurves)
    }

    func testBestOfColumnSkipsTiesAndReferenceRows() {
        var t = ReportRenderer.Table(header: ["m", "a", "b", "c"], rows: [["x", "", "", ""], ["y", "", "", ""], ["ref", "", "", ""]])
        ReportRenderer.markBest(&t, values: [[0, 1, 2], [0, 2, 2.0000001], [0, 0.5, 1]], competing: [true, true, false],
                                lowerIsBetter: true, fromColumn: 1)
        // Column a: every competing row ties; b: row 0 (the reference row's 0.5 does not compete);
        // c: rows 0 and 1 agree at the printed precision, so there is no best either.
        XCTAssertEqual(t.best, [[0, 2]])
    }

    func testInputResolution() throws {
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for f in ["b.test.jsonl", "a.test.jsonl", "a.train.jsonl", "manifest.json"] {
            _ = FileManager.default.createFile(atPath: dir + "/" + f, contents: Data())
        }
        XCTAssertEqual(try ReportInputs.taskFiles([dir], suffix: ".test.jsonl"), [dir + "/a.test.jsonl", dir + "/b.test.jsonl"])
        XCTAssertThrowsError(try ReportInputs.taskFiles([dir], suffix: ".val.jsonl"))
        let ads = dir + "/adapters"
        for n in ["x", "y"] {
            try FileManager.default.createDirectory(atPath: ads + "/" + n, withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: ads + "/\(n)/adapter_config.json", contents: Data("{}".utf8))
        }
        try FileManager.default.createDirectory(atPath: ads + "/checkpoints", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: ads + "/manifest.json", contents: Data())
        // A NOLA folder (nola_config.json, no PEFT config) is an adapter too.
        try FileManager.default.createDirectory(atPath: ads + "/z", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: ads + "/z/nola_config.json", contents: Data("{}".utf8))
        XCTAssertEqual(try ReportInputs.adapterPaths([ads]), [ads + "/x", ads + "/y", ads + "/z"])
        XCTAssertEqual(try ReportInputs.adapterPaths([ads + "/z"]), [ads + "/z"])
        XCTAssertEqual(try ReportInputs.adapterPaths([ads + "/y"]), [ads + "/y"])
        XCTAssertThrowsError(try ReportInputs.adapterPaths([ads + "/checkpoints"]))
    }

    /// A LoRAMoE `--trained` row: its load is the router's weight per expert (every expert is kept),
    /// so each task's profile sums to 1 over the experts, not the ranks.
    func testTrainedLoRAMoERowLoadIsPerExpert() throws {
        let model = ReportFixtures.model()
        var inputs = ReportFixtures.inputs(model)
        var moe = ReportFixtures.adapter(model, name: "union-moe", seed: 9, rank: 4)
        var rng = SeededRNG(seed: 2)
        for n in moe.moduleNames {
            let nIn = moe.modules[n]!.inFeatures
            moe.modules[n]!.rankGate = RankGate(topK: 2, bias: [0, 0], router: (0..<(2 * nIn)).map { _ in rng.nextNormal() }, ranksPerExpert: 2)
        }
        inputs.trained = [moe]
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let settings = ReportSettings(testPerTask: 2, accuracy: false, rank: 2)
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: [ReportMethods.trained("union-moe")], directory: dir)
        let row = try XCTUnwrap(try runner.run().rows.first { $0.method.id == "trained-union-moe" })
        let u = try XCTUnwrap(row.rankUsage)
        XCTAssertEqual(u.topK, 2)
        XCTAssertEqual(u.ranks, 2)
        for p in u.loadProfile {
            XCTAssertEqual(p.reduce(0, +), 1, accuracy: 1e-6)
            XCTAssertGreaterThan(p[0], 0.5, "a random router is not exactly even")
        }
        let share = try XCTUnwrap(u.firstHalfShare)
        XCTAssertEqual(share.count, u.tasks.count)
        for v in share { XCTAssertTrue(v > 0 && v < 1, "\(share)") }
        XCTAssertTrue(ReportRenderer.markdown(try runner.run()).contains("world-knowledge group"))
    }

    /// A MixLoRA `--trained` row: its load is the count of whole-FFN experts chosen per token at
    /// each layer's router (k of E per token), and the chart says so.
    func testTrainedMixLoRARowLoadIsPerFFNExpert() throws {
        let model = ReportFixtures.model()
        var inputs = ReportFixtures.inputs(model)
        var o = TrainingOptions()
        o.rank = 2; o.alpha = 4; o.targets = [.q, .gate, .up, .down]
        let v = try MixLoRAVariant(config: model.config, options: o, experts: 3, topK: 1, loss: MixtureLoss(aux: 0, z: 0))
        var rng = SeededRNG(seed: 4)
        for n in v.parameters.names { v.parameters[n] = v.parameters[n].map { _ in rng.nextNormal() * 0.5 } }
        inputs.trained = [v.adapter(name: "union-mix", baseModel: nil)]
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let settings = ReportSettings(testPerTask: 2, accuracy: false, rank: 2)
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: [ReportMethods.trained("union-mix")], directory: dir)
        let results = try runner.run()
        let row = try XCTUnwrap(results.rows.first { $0.method.id == "trained-union-mix" })
        XCTAssertNotNil(row.meanLoss)
        let u = try XCTUnwrap(row.rankUsage)
        XCTAssertEqual(u.topK, 1)
        XCTAssertEqual(u.ranks, 3)
        XCTAssertEqual(u.ffnExperts, true)
        for p in u.loadProfile { XCTAssertEqual(p.reduce(0, +), 1, accuracy: 1e-6) }
        XCTAssertNil(u.firstHalfShare)
        XCTAssertTrue(ReportRenderer.rankUsageCharts(results).contains { $0.caption.contains("whole-FFN expert") })
    }

    /// `--trained` rows: a FlyLoRA adapter trained "on every task" scored on every task, unmerged
    /// (it has no merged form), equal to evaluating it directly; its section in the Markdown; its
    /// cache keyed by the adapter's content; a row without its adapter refused.
    func testTrainedRowsScoreEveryTaskAndHaveTheirSection() throws {
        let model = ReportFixtures.model()
        var inputs = ReportFixtures.inputs(model)
        var fly = ReportFixtures.adapter(model, name: "union-fly", seed: 7, rank: 3)
        for n in fly.moduleNames { fly.modules[n]!.rankGate = RankGate(topK: 1, bias: [0, 0.1, 0]) }
        inputs.trained = [fly]
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let settings = ReportSettings(testPerTask: 2, accuracy: false, rank: 2)
        let methods = [ReportMethods.experts, ReportMethods.staticMethod("linear", rank: 2, seed: 0), ReportMethods.trained("union-fly")]
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        let r = try runner.run()
        let row = try XCTUnwrap(r.rows.first { $0.method.id == "trained-union-fly" })
        XCTAssertEqual(row.method.family, .trained)
        let direct = Evaluator(model: try model.with([(fly, 1)]), options: EvalOptions(computeAccuracy: false))
        for t in ReportInputs.firstExamples(inputs.test, 2) {
            XCTAssertEqual(try XCTUnwrap(row.tasks[t.name]).loss, try direct.evaluate(t).loss, accuracy: 1e-9, t.name)
        }
        let md = ReportRenderer.markdown(r)
        XCTAssertTrue(md.contains("## Trained as multi-task") && md.contains("trained-union-fly"), md)
        // Rank use: top-1 of 3 ranks, every task's sorted load sums to 1 per module; overlap is a
        // symmetric cosine with 1 on the diagonal; both drawn.
        let u = try XCTUnwrap(row.rankUsage)
        XCTAssertEqual(u.topK, 1)
        XCTAssertEqual(u.ranks, 3)
        for p in u.loadProfile {
            XCTAssertEqual(p.reduce(0, +), 1, accuracy: 1e-9)
            XCTAssertEqual(p, p.sorted(by: >))
        }
        for i in u.overlap.indices {
            XCTAssertEqual(u.overlap[i][i], 1, accuracy: 1e-9)
            for j in u.overlap.indices { XCTAssertEqual(u.overlap[i][j], u.overlap[j][i], accuracy: 1e-12) }
        }
        let files = try ReportRenderer.write(r, to: dir)
        XCTAssertTrue(files.contains { $0.hasSuffix("ranks-load-trained-union-fly.svg") }, "\(files)")
        XCTAssertTrue(files.contains { $0.hasSuffix("ranks-overlap-trained-union-fly.svg") }, "\(files)")
        let again = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        _ = try again.run()
        XCTAssertEqual(again.evaluationsRun, 0)
        fly.modules[fly.moduleNames[0]]!.rankGate = RankGate(topK: 2, bias: [0, 0.1, 0])
        inputs.trained = [fly]
        let changed = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        _ = try changed.run()
        XCTAssertEqual(changed.evaluationsRun, 3, "only the trained row reruns")
        inputs.trained = []
        XCTAssertThrowsError(try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)) { e in
            XCTAssertTrue("\(e)".contains("not among the --trained adapters"), "\(e)")
        }
    }
}
