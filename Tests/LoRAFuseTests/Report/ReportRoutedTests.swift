import Foundation
import XCTest
@testable import LoRAFuse

/// Routed rows of the report: numbers equal a direct evaluation of the same router, the gate
/// statistics and heatmap come out, and a rerun is served from the cache.
final class ReportRoutedTests: XCTestCase {
    func testRoutedRowsEqualDirectEvaluationAndAreCached() throws {
        let model = ReportFixtures.model()
        let inputs = ReportFixtures.inputs(model)
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let settings = ReportSettings(testPerTask: 2, accuracy: false, rank: 2, shotsPerTask: 2, shotsCurve: [])
        let methods = [ReportMethods.experts, ReportMethods.staticMethod("linear", rank: 2),
                       ReportMethods.routed("route-arrow"), ReportMethods.routed("route-hidden"), ReportMethods.routed("route-sequence")]
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        var last: ReportProgress?
        let r = try runner.run { last = $0 }
        XCTAssertEqual(last?.done, last?.total)

        // route-arrow is training-free: the same router built directly gives the same losses.
        let arrow = try XCTUnwrap(r.rows.first { $0.method.id == "route-arrow" })
        XCTAssertEqual(arrow.method.family, .routed)
        let routed = try RouterBuilder.build(model: model, adapters: inputs.adapters, shots: [], options: RouteOptions(method: .arrow))
        let ev = Evaluator(model: model.with(try model.prepare(routed: routed)), options: EvalOptions(computeAccuracy: false))
        for t in ReportInputs.firstExamples(inputs.test, 2) {
            XCTAssertEqual(arrow.tasks[t.name]!.loss, try ev.evaluate(t).loss, accuracy: 1e-9, t.name)
        }
        let g = try XCTUnwrap(arrow.routing)
        XCTAssertEqual(Set(g.ownTopOne.keys), Set(ReportFixtures.taskNames))
        XCTAssertTrue(g.ownTopOne.values.allSatisfy { (0...1).contains($0) })
        XCTAssertEqual(g.ownWeightByLayer[ReportFixtures.taskNames[0]]?.count, model.config.numHiddenLayers)
        XCTAssertNotNil(r.rows.first { $0.method.id == "route-hidden" }?.routing)
        // The per-request router: own top-1 is the share of prompts sent to the task's adapter, and
        // there is no per-layer weight to draw.
        let seq = try XCTUnwrap(r.rows.first { $0.method.id == "route-sequence" }?.routing)
        XCTAssertEqual(Set(seq.ownTopOne.keys), Set(ReportFixtures.taskNames))
        XCTAssertTrue(seq.ownTopOne.values.allSatisfy { (0...1).contains($0) })
        XCTAssertTrue(seq.ownWeightByLayer.isEmpty)

        let charts = Dictionary(uniqueKeysWithValues: ReportRenderer.charts(r).map { ($0.file, $0.svg) })
        XCTAssertNil(charts["gates-route-sequence.svg"])
        let hm = try XCTUnwrap(charts["gates-route-arrow.svg"])
        XCTAssertEqual(ReportFixtures.cellValue(hm, row: 0, col: 1)!, g.ownWeightByLayer[ReportFixtures.taskNames[0]]![1], accuracy: 1e-9)
        let md = ReportRenderer.markdown(r)
        XCTAssertTrue(md.contains("## Routing"))
        XCTAssertTrue(md.contains("Δ vs best fused (linear)"))

        let again = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        XCTAssertEqual(try again.run().rows, r.rows)
        XCTAssertEqual(again.evaluationsRun, 0, "routed rows come from the cache on a rerun")
    }

    /// route-arrow-gks: Arrow after subtracting the routed adapters' own mean (GenKnowSub), run
    /// as a loaded folder runs (−mean once per projection): equal to the router built with the
    /// mean materialised in every expert, different from plain Arrow, needing no shots, cached.
    func testArrowAfterGenKnowSubRowEqualsTheMaterialisedRouter() throws {
        let model = ReportFixtures.model()
        let inputs = ReportFixtures.inputs(model)
        let dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let settings = ReportSettings(testPerTask: 2, accuracy: false, rank: 2, shotsPerTask: 2, shotsCurve: [])
        XCTAssertFalse(ReportMethods.routedNeedsShots("route-arrow-gks"))
        XCTAssertTrue(ReportMethods.routedNames.contains("route-arrow-gks"))
        let methods = [ReportMethods.routed("route-arrow"), ReportMethods.routed("route-arrow-gks")]
        let r = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir).run()
        let gks = try XCTUnwrap(r.rows.first { $0.method.id == "route-arrow-gks" })
        let arrow = try XCTUnwrap(r.rows.first { $0.method.id == "route-arrow" })
        let general = inputs.adapters.map { a -> LoRAAdapter in var g = a; g.sourcePath = nil; return g }
        let materialised = try RouterBuilder.build(model: model, adapters: inputs.adapters, shots: [], options: RouteOptions(method: .arrow),
                                                   general: general)
        let ev = Evaluator(model: model.with(try model.prepare(routed: materialised)), options: EvalOptions(computeAccuracy: false))
        var differs = false
        for t in ReportInputs.firstExamples(inputs.test, 2) {
            XCTAssertEqual(gks.tasks[t.name]!.loss, try ev.evaluate(t).loss, accuracy: 1e-4, t.name)
            if abs(gks.tasks[t.name]!.loss - arrow.tasks[t.name]!.loss) > 1e-4 { differs = true }
        }
        XCTAssertTrue(differs, "subtracting the mean changes the routed model")
        XCTAssertNotNil(gks.routing)
        let again = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        XCTAssertEqual(try again.run().rows, r.rows)
        XCTAssertEqual(again.evaluationsRun, 0)
    }

    /// `--composite`: every row but the experts is scored on the composite prompts, apart from the
    /// means (which equal a run without them), each adapter alone too; the X-LoRA row takes part;
    /// a rerun is served from the cache; a composite task named like a suite task is refused.
    func testCompositeTasksAreScoredApartFromTheMeans() throws {
        let model = ReportFixtures.model()
        var inputs = ReportFixtures.inputs(model)
        let settings = ReportSettings(testPerTask: 2, accuracy: false, rank: 2, shotsPerTask: 2, shotsCurve: [])
        let methods = [ReportMethods.base, ReportMethods.experts, ReportMethods.staticMethod("linear", rank: 2),
                       ReportMethods.routed("route-arrow"), ReportMethods.routed("route-xlora")]
        let plainDir = ReportFixtures.tempDir(), dir = ReportFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: plainDir); try? FileManager.default.removeItem(atPath: dir) }
        let plain = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: plainDir).run()
        let composite = try CompositeTasks.make(from: inputs.test, parts: 2, count: 3, seed: 1)
        inputs.composite = [composite]
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        var last: ReportProgress?
        let r = try runner.run { last = $0 }
        XCTAssertEqual(last?.done, last?.total)
        XCTAssertEqual(r.composite, [composite.name])
        for (a, b) in zip(r.rows, plain.rows) {
            XCTAssertEqual(a.meanLoss, b.meanLoss, "\(a.method.id): the composite prompts are not in the means")
            XCTAssertEqual(a.tasks, b.tasks)
            XCTAssertEqual(a.composite == nil, a.method.family == .expert, a.method.id)
        }
        XCTAssertNotNil(r.rows.first { $0.method.id == "route-xlora" }?.routing)
        // The training-free router and one adapter alone, evaluated directly.
        let arrow = try RouterBuilder.build(model: model, adapters: inputs.adapters, shots: [], options: RouteOptions(method: .arrow))
        let direct = try Evaluator(model: model.with(try model.prepare(routed: arrow)), options: EvalOptions(computeAccuracy: false)).evaluate(composite)
        XCTAssertEqual(r.rows.first { $0.method.id == "route-arrow" }!.composite![composite.name]!.loss, direct.loss, accuracy: 1e-9)
        let a0 = inputs.adapters[0]
        let alone = try Evaluator(model: model.with(try model.prepare([(a0, 1)], mode: .merged)), options: EvalOptions(computeAccuracy: false)).evaluate(composite)
        XCTAssertEqual(r.compositeExperts?[a0.name]?[composite.name]?.loss ?? -1, alone.loss, accuracy: 1e-9)
        XCTAssertEqual(Set(r.compositeExperts!.keys), Set(inputs.adapters.map(\.name)))
        let md = ReportRenderer.markdown(r)
        XCTAssertTrue(md.contains("## Composite prompts"), md)
        XCTAssertTrue(md.contains("best single expert ("), md)
        XCTAssertFalse(ReportRenderer.markdown(plain).contains("Composite prompts"))

        let again = try ReportRunner(model: model, inputs: inputs, settings: settings, methods: methods, directory: dir)
        XCTAssertEqual(try again.run().rows, r.rows)
        XCTAssertEqual(again.evaluationsRun, 0)

        var clash = inputs
        clash.composite = [EvalTask(name: inputs.test[0].name, examples: composite.examples)]
        XCTAssertThrowsError(try ReportRunner(model: model, inputs: clash, settings: settings, methods: methods, directory: dir)) {
            XCTAssertTrue("\($0)".contains(inputs.test[0].name), "\($0)")
        }
    }

    func testRoutedRowsNeedShotsForEveryAdapter() throws {
        let model = ReportFixtures.model()
        var inputs = ReportFixtures.inputs(model)
        inputs.shots.removeLast()
        let settings = ReportSettings(testPerTask: 1, accuracy: false, rank: 2, shotsPerTask: 2, shotsCurve: [])
        let runner = try ReportRunner(model: model, inputs: inputs, settings: settings,
                                      methods: [ReportMethods.routed("route-meteora")], directory: ReportFixtures.tempDir())
        XCTAssertThrowsError(try runner.run()) { XCTAssertEqual($0 as? ReportError, .emptyShots(task: ReportFixtures.taskNames[2], file: nil)) }
    }
}
