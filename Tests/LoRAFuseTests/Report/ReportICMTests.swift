import Foundation
import XCTest
@testable import LoRAFuse

/// The ICM-Fusion rows of `lorafuse report` on the tiny model: every variant, the numbers
/// re-made from the cached generator, what the section reports, and the cache.
final class ReportICMTests: XCTestCase {
    static func settings(trajectories: String?, selection: Double = 0) -> ReportSettings {
        var g = ICMGeneratorOptions()
        g.chunkSize = 16; g.hidden = 8; g.latent = 4; g.conditionProj = 4; g.basis = 4
        g.steps = 12; g.innerSteps = 1; g.metaTokens = 24; g.metaSteps = 2
        var f = ICMFusionOptions()
        f.steps = 2; f.adaptSteps = 1; f.tokens = 40
        f.selectEvery = 1
        let icm = ReportICMSettings(generator: g, fusion: f, fewShots: 1, longTailShots: 1, trajectories: trajectories,
                                    selectionFraction: selection)
        return ReportSettings(testPerTask: 2, accuracy: false, rank: 2, shotsPerTask: 2, shotsCurve: [1, 2], steps: 2, icm: icm)
    }

    func testICMRowsSectionAndCache() throws {
        let model = ReportFixtures.model()
        let inputs = ReportFixtures.inputs(model)
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // One training checkpoint for the first task: B halved.
        let traj = dir + "/trajectories"
        var ckpt = inputs.adapters[0]
        for n in ckpt.moduleNames { ckpt.modules[n]!.B.data = ckpt.modules[n]!.B.data.map { 0.5 * $0 } }
        try PEFTAdapter.write(ckpt, to: traj + "/\(ReportFixtures.taskNames[0])/checkpoint-5", dtype: .f32)

        let settings = Self.settings(trajectories: traj)
        let methods = [ReportMethods.base, ReportMethods.experts, ReportMethods.staticMethod("linear", rank: 2), ReportMethods.learned("atlas")]
            + ReportMethods.icmNames.map(ReportMethods.icm)
        let out = dir + "/report"
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: out)
        var last: ReportProgress?
        let r = try runner.run { last = $0 }
        XCTAssertEqual(last?.done, last?.total)

        let icm = r.rows.filter { $0.method.family == .icm }
        XCTAssertEqual(icm.map(\.method.id), ICMVariant.allCases.map(\.rawValue))
        for row in icm {
            XCTAssertEqual(row.tasks.count, 3, row.method.id)
            XCTAssertTrue(row.meanLoss!.isFinite, row.method.id)
            XCTAssertNotNil(row.icm, row.method.id)
        }
        let main = try XCTUnwrap(icm.first { $0.method.id == "icm-fusion" })
        let d = try XCTUnwrap(main.icm)
        XCTAssertEqual(d.samples, 4, "3 finals + 1 checkpoint")
        XCTAssertEqual(d.checkpoints, 1)
        XCTAssertEqual(d.metaSteps, 2)
        XCTAssertEqual(d.reconstruction.map(\.task), ReportFixtures.taskNames)
        XCTAssertTrue(d.reconstruction.allSatisfy { $0.relative > 0 && $0.relative.isFinite })
        XCTAssertEqual(d.shots, Dictionary(uniqueKeysWithValues: ReportFixtures.taskNames.map { ($0, 2) }))
        XCTAssertEqual(d.adaptersF32Bytes, inputs.adapters.reduce(0) { $0 + $1.parameterCount * 4 })
        XCTAssertEqual(icm.first { $0.method.id == "icm-fusion/few-shot" }?.icm?.shots.values.sorted(), [1, 1, 1])
        // Every pool has 2 examples: the long-tailed task is the first with the smallest pool.
        XCTAssertEqual(icm.first { $0.method.id == "icm-fusion/long-tail" }?.icm?.shots[ReportFixtures.taskNames[0]], 1)
        XCTAssertEqual(icm.first { $0.method.id == "icm-fusion/no-meta" }?.icm?.metaSteps, 0)

        // Generators: the main one (shared by no-orientation and no-adaptation), no-meta,
        // no-condition, few-shot, long-tail.
        let files = try FileManager.default.contentsOfDirectory(atPath: out + "/cache").filter { $0.hasSuffix(".safetensors") }
        XCTAssertEqual(files.count, 5, "\(files)")

        // The main row re-made from its cached generator with the row's fusion: the same losses.
        var g = settings.icm.generator
        g.metaSteps = 2; g.seed = settings.seed
        let shots = ReportInputs.firstExamples(inputs.shots, 2)
        let key = runner.icmGeneratorKey(options: g, tasks: shots.map {
            ICMPipeline.TaskInput(name: $0.name, adapterPath: $0.name, shots: $0, trajectoryDir: traj + "/" + $0.name)
        })
        let gen = try ICMGenerator.load(path: out + "/cache/icm-generator-\(key).safetensors")
        XCTAssertEqual(gen.storageBytes.network, d.generatorNetworkBytes)
        var fo = settings.icm.fusion
        fo.seed = settings.seed
        let support = try shots.flatMap { try TrainingData.sequences($0, model: model) }
        let fused = try gen.fuse(tasks: ReportFixtures.taskNames, support: support, engine: LlamaTrainingEngine(model: model), options: fo)
        let ev = Evaluator(model: try model.with([(fused.parameters.adapter(name: "x"), 1)], mode: .merged),
                           options: EvalOptions(computeAccuracy: false))
        for t in ReportInputs.firstExamples(inputs.test, 2) {
            XCTAssertEqual(main.tasks[t.name]!.loss, try ev.evaluate(t).loss, accuracy: 1e-9, t.name)
        }

        // Targets: atlas and icm-fusion (not its ablations); ICM's carries the experts' 10% target.
        XCTAssertEqual(r.targets.map(\.method), ["atlas", "icm-fusion"])
        let t = r.targets[1]
        XCTAssertTrue(t.expertsTarget)
        XCTAssertEqual(t.ratioToExperts!, main.meanLoss! / r.rows[1].meanLoss!, accuracy: 1e-12)
        let sentences = ReportRenderer.targetSentences(r)
        XCTAssertTrue(sentences.contains { $0.hasPrefix("icm-fusion:") && $0.contains("within 10% of the experts") }, "\(sentences)")

        let html = ReportRenderer.html(r)
        for s in ["<h2 id=\"icm\">ICM-Fusion</h2>", "Reconstruction: ", "Storage: the generator takes", "Long-tailed: with ",
                  "Few-shot: with 1 shots per task", "3 finals and 1 training checkpoints", "Control: the same adaptation (up to 1 steps"] {
            XCTAssertTrue(html.contains(s), s)
        }
        XCTAssertNotNil(ReportRenderer.charts(r).first { $0.file == "icm.svg" })
        XCTAssertTrue(ReportRenderer.markdown(r).contains("## ICM-Fusion"))

        // Rerun: nothing trained, fused or evaluated again.
        let again = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: out)
        let r2 = try again.run()
        XCTAssertEqual(again.evaluationsRun, 0)
        XCTAssertEqual(r2.rows, r.rows)

        // A new checkpoint changes the generator's key: the ICM rows are redone.
        try PEFTAdapter.write(ckpt, to: traj + "/\(ReportFixtures.taskNames[1])/checkpoint-5", dtype: .f32)
        let third = try ReportRunner(model: model, inputs: inputs, settings: settings,
                                     methods: [ReportMethods.icm("icm-fusion")], directory: out)
        let r3 = try third.run()
        XCTAssertEqual(third.evaluationsRun, 3)
        XCTAssertEqual(r3.rows[0].icm?.checkpoints, 2)
    }

    /// With a selection fraction, the last shot of each task is held out of the generator and the
    /// fusion and only picks the adaptation step: the row says which, and the curve starts at 0.
    func testSelectionShotsChooseTheAdaptationStep() throws {
        let model = ReportFixtures.model()
        let inputs = ReportFixtures.inputs(model)
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let settings = Self.settings(trajectories: nil, selection: 0.25)
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings,
                                      methods: [ReportMethods.icm("icm-fusion"), ReportMethods.icm("icm-fusion/mean-init")], directory: dir)
        let r = try runner.run()
        for row in r.rows {
            let d = try XCTUnwrap(row.icm)
            XCTAssertEqual(d.selectionShots, Dictionary(uniqueKeysWithValues: ReportFixtures.taskNames.map { ($0, 1) }), row.method.id)
            XCTAssertEqual(d.shots.values.sorted(), [2, 2, 2])
            XCTAssertEqual(d.adaptation!.selectionCurve.map { Int($0[0]) }, [0, 1], row.method.id)
            let best = d.adaptation!.selectionCurve.min { $0[1] < $1[1] }!
            XCTAssertEqual(d.adaptation!.stepKept, Int(best[0]), row.method.id)
        }
        XCTAssertTrue(ReportRenderer.icmParagraphs(r).contains { $0.contains("of each task's shots (3 examples, never used to learn") },
                      "\(ReportRenderer.icmParagraphs(r))")
    }

    /// The report's ICM-Fusion row is `ICMPipeline.fuse`: the pipeline run as `fuse --method
    /// icm-fusion` runs it (whole shots pools cut to the report's shots per task, the row's
    /// generator and fusion settings, one seed) makes the row's adapter bit for bit, with the same
    /// learned weights and adaptation step.
    func testRowAdapterIsICMPipelineFuse() throws {
        let model = ReportFixtures.model()
        var inputs = ReportFixtures.inputs(model)
        // Pools longer than the report's 2 shots per task: both must take the first two.
        for i in inputs.shots.indices { inputs.shots[i].examples.append(EvalExample(prompt: "Say x.", answer: "x")) }
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var settings = Self.settings(trajectories: nil, selection: 0.25)
        settings.seed = 7
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: [ReportMethods.icm("icm-fusion")], directory: dir)
        let row = try runner.run().rows[0]
        // The row's adapter (its generator now comes from cache/).
        let (rowAdapter, details) = try runner.icmFused(.full, label: "icm-fusion", say: { _ in })
        XCTAssertEqual(details, row.icm)

        var options = ICMPipelineOptions(generator: settings.icm.generator, fusion: settings.icm.fusion,
                                         selectionFraction: settings.icm.selectionFraction, shotsPerTask: settings.shotsPerTask)
        options.seed = settings.seed
        let tasks = ReportFixtures.taskNames.map { n in
            ICMPipeline.TaskInput(name: n, adapterPath: n, shots: inputs.shots.first { $0.name == n }!, adapter: inputs.adapters.first { $0.name == n }!)
        }
        let p = try ICMPipeline.fuse(model: model, tasks: tasks, options: options)
        XCTAssertEqual(rowAdapter.moduleNames, p.adapter.moduleNames)
        for n in p.adapter.moduleNames {
            let a = try XCTUnwrap(rowAdapter.modules[n]), b = try XCTUnwrap(p.adapter.modules[n])
            XCTAssertEqual(a.A.data, b.A.data, n)
            XCTAssertEqual(a.B.data, b.B.data, n)
            XCTAssertEqual(a.scale, b.scale, n)
        }
        XCTAssertEqual(details.weights, p.result.fusion.weights.map(Double.init))
        XCTAssertEqual(details.adaptation, p.result.adaptation)
        XCTAssertEqual(details.selectionShots, Dictionary(uniqueKeysWithValues: ReportFixtures.taskNames.map { ($0, 1) }))
        XCTAssertEqual(details.metaSteps, p.generator.options.metaSteps)
    }

    /// What each row runs: the variant's ablation, the meta-learning steps resolved from the
    /// generator's default (two rounds), one seed for generator and fusion.
    func testPipelineOptionsOfEachVariant() {
        var s = ReportICMSettings()
        XCTAssertNil(s.generator.metaSteps)
        XCTAssertEqual(s.maxCheckpoints, ICMPipelineOptions().maxCheckpoints)
        XCTAssertEqual(s.selectionFraction, ICMPipelineOptions().selectionFraction)
        let full = s.pipelineOptions(.full, tasks: 14, seed: 3)
        XCTAssertEqual(full.generator.metaSteps, 28)
        XCTAssertEqual(full.generator.seed, 3)
        XCTAssertEqual(full.fusion.seed, 3)
        XCTAssertNil(full.shotsPerTask, "the report cuts the pools itself (few-shot and long-tail rows)")
        XCTAssertEqual(s.pipelineOptions(.noMeta, tasks: 14, seed: 3).generator.metaSteps, 0)
        XCTAssertFalse(s.pipelineOptions(.noCondition, tasks: 14, seed: 3).generator.useCondition)
        XCTAssertFalse(s.pipelineOptions(.noOrientation, tasks: 14, seed: 3).fusion.orientation)
        XCTAssertEqual(s.pipelineOptions(.noAdaptation, tasks: 14, seed: 3).fusion.adaptSteps, 0)
        s.generator.metaSteps = 5
        XCTAssertEqual(s.pipelineOptions(.fewShot, tasks: 14, seed: 3).generator.metaSteps, 5)
    }

    func testSelectionSplit() {
        func split(_ n: Int, _ f: Double) -> (Int, Int) {
            let t = EvalTask(name: "t", examples: (0..<n).map { EvalExample(prompt: "p\($0)", answer: "a") })
            let (l, s) = ICMPipeline.selectionSplit(t, fraction: f)
            XCTAssertEqual(l.examples.map(\.prompt) + s.examples.map(\.prompt), t.examples.map(\.prompt), "the split keeps the order")
            return (l.examples.count, s.examples.count)
        }
        XCTAssertTrue(split(16, 0.25) == (12, 4))
        XCTAssertTrue(split(8, 0.25) == (6, 2))
        XCTAssertTrue(split(4, 0.25) == (3, 1))
        XCTAssertTrue(split(2, 0.25) == (1, 1))
        XCTAssertTrue(split(1, 0.25) == (1, 0), "a single shot is never held out")
        XCTAssertTrue(split(16, 0) == (16, 0))
    }

    func testUnknownLongTailTaskIsNamed() throws {
        let model = ReportFixtures.model()
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var settings = Self.settings(trajectories: nil)
        settings.icm.longTailTask = "nope"
        let runner = try ReportRunner(model: model, inputs: ReportFixtures.inputs(model), settings: settings,
                                      methods: [ReportMethods.icm("icm-fusion/long-tail")], directory: dir)
        XCTAssertThrowsError(try runner.run()) { e in
            XCTAssertTrue("\(e)".contains("'nope'"), "\(e)")
        }
    }
}
