import Foundation
import XCTest
@testable import LoRAFuse

/// The per-request router (Routing/SequenceRouter.swift): fitting, choosing, the folder, and the
/// evaluator running each example on the adapters chosen for its prompt.
final class SequenceRouterTests: XCTestCase {
    /// A tiny Llama with a chat template, so tasks of text examples run through it.
    static func chatModel() -> LlamaModel {
        var c = TrainFixtures.config()
        c.vocabSize = TinyChat.tokenizer.vocabSize
        return LlamaModel(config: c, weights: .random(c, seed: 12, std: 0.3), tokenizer: TinyChat.tokenizer)
    }

    /// Two tasks whose prompts use disjoint letters.
    static func tasks(split: String, count: Int) -> [EvalTask] {
        var rng = SeededRNG(seed: split == "train" ? 1 : 2)
        let alphabets = [Array("abcdefgh"), Array("QRSTUVWX")]
        return alphabets.enumerated().map { i, letters in
            EvalTask(name: "task\(i)", examples: (0..<count).map { _ in
                let p = String((0..<14).map { _ in letters[Int(rng.next() % UInt64(letters.count))] })
                return EvalExample(prompt: p, answer: i == 0 ? "ab" : "QR")
            })
        }
    }

    func testFitSeparatesLabelledClustersAndChoosesTopK() {
        var rng = SeededRNG(seed: 3)
        let centres: [[Float]] = (0..<3).map { _ in (0..<6).map { _ in rng.nextNormal() * 3 } }
        var features: [[Float]] = [], labels: [Int] = []
        for (i, c) in centres.enumerated() {
            for _ in 0..<20 { features.append(c.map { $0 + rng.nextNormal() * 0.3 }); labels.append(i) }
        }
        let r = SequenceRouter.fit(features: features, labels: labels, experts: 3, topK: 1, temperature: 1)
        for (f, y) in zip(features, labels) {
            XCTAssertEqual(r.choose(f).map(\.index), [y])
            XCTAssertEqual(r.choose(f)[0].weight, 1)
        }
        var r2 = r
        r2.topK = 2
        let c = r2.choose(features[0])
        XCTAssertEqual(c.count, 2)
        XCTAssertEqual(c[0].index, 0)
        XCTAssertEqual(c[0].weight + c[1].weight, 1, accuracy: 1e-6)
        XCTAssertGreaterThanOrEqual(c[0].weight, c[1].weight)
        // The stored table reads raw features: probabilities sum to 1 and follow the fit.
        XCTAssertEqual(r.probabilities(features[25]).reduce(0, +), 1, accuracy: 1e-5)
        XCTAssertGreaterThan(r.probabilities(features[25])[1], 0.9)
    }

    /// Fitted on the tasks' training prompts, the router sends each held-out prompt to its task's
    /// adapter, and evaluating the routed model equals evaluating each task with its own adapter.
    func testEvaluatorRunsEachPromptOnTheChosenAdapter() throws {
        let m = Self.chatModel()
        let ads = (0..<2).map { RoutingTests.adapter(m, "task\($0)", seed: UInt64(80 + $0)) }
        let routed = try RouterBuilder.build(model: m, adapters: ads, shots: Self.tasks(split: "train", count: 16),
                                             options: RouteOptions(method: .sequence))
        XCTAssertEqual(routed.config.gate, .sequence)
        XCTAssertEqual(routed.config.topK, 1)
        let set = try m.prepare(routed: routed)
        XCTAssertNotNil(set.perRequestRouter)
        // An unresolved per-request set cannot run.
        XCTAssertThrowsError(try m.makeLlamaSession(maxTokens: 8, adapters: set)) { e in
            XCTAssertEqual(e as? LoRARuntimeError, .unresolvedSequenceRouter)
        }
        let test = Self.tasks(split: "test", count: 6)
        let own = try RoutingSummary.ownTopOne(model: m, set: set, tasks: test, shotsPerTask: 6)
        XCTAssertEqual(own, [1, 1])
        let routedReport = try Evaluator(model: m.with(set)).evaluate(test)
        for (i, t) in test.enumerated() {
            let alone = try Evaluator(model: m.with([(ads[i], 1)], mode: .unmerged)).evaluate([t])
            let a = alone.tasks[t.name]!, r = routedReport.tasks[t.name]!
            XCTAssertEqual(r.loss, a.loss, accuracy: 1e-6, t.name)
            XCTAssertEqual(r.accuracy, a.accuracy, t.name)
            // …and it is not what the other adapter gives.
            let other = try Evaluator(model: m.with([(ads[1 - i], 1)], mode: .unmerged)).evaluate([t]).tasks[t.name]!
            XCTAssertGreaterThan(abs(other.loss - r.loss), 1e-4, t.name)
        }
        // The single-example path routes too.
        let one = try Evaluator(model: m.with(set)).score(test[1].examples[0], task: "task1")
        let want = try Evaluator(model: m.with([(ads[1], 1)], mode: .unmerged)).score(test[1].examples[0], task: "task1")
        XCTAssertEqual(one.nll, want.nll, accuracy: 1e-6)
    }

    /// top-k = 2 merges the two adapters with the router's renormalised probabilities.
    func testTopTwoMergesByProbability() throws {
        let m = Self.chatModel()
        let ads = (0..<3).map { RoutingTests.adapter(m, "a\($0)", seed: UInt64(90 + $0)) }
        var tasks = Self.tasks(split: "train", count: 6)
        tasks.append(EvalTask(name: "task2", examples: tasks[0].examples.map { EvalExample(prompt: $0.prompt.uppercased(), answer: "x") }))
        var o = RouteOptions(method: .sequence)
        o.topK = 2
        let set = try m.prepare(routed: try RouterBuilder.build(model: m, adapters: ads, shots: tasks, options: o))
        let prompt = try Evaluator(model: m).promptTokens("abcabc")
        let r = try set.perRequestRouter!.resolve(model: m, prompt: prompt)
        XCTAssertEqual(r.choice.count, 2)
        let merged = try m.prepare(r.choice.map { (ads[$0.index], $0.weight) })
        XCTAssertLessThan(try m.logits(tokens: prompt, adapters: r.set).maxAbsDifference(try m.logits(tokens: prompt, adapters: merged)), 1e-5)
    }

    func testFolderRoundTripAndBadClassifierShape() throws {
        let m = Self.chatModel()
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var paths: [String] = [], ads: [LoRAAdapter] = []
        for i in 0..<2 {
            let p = dir + "/adapters/task\(i)"
            try AdapterIO.write(RoutingTests.adapter(m, "task\(i)", seed: UInt64(95 + i)), to: p, format: .peft, dtype: .f32)
            var a = try AdapterIO.read(path: p)
            a.name = "task\(i)"
            paths.append(p); ads.append(a)
        }
        let routed = try RouterBuilder.build(model: m, adapters: ads, shots: Self.tasks(split: "train", count: 6),
                                             options: RouteOptions(method: .sequence))
        let out = dir + "/seq"
        try OutputGuard.buildDirectory(out, inputs: paths, force: false) { tmp in
            try routed.write(into: tmp, finalPath: out, sources: paths, copyAdapters: false)
        }
        let back = try RoutedModel.load(directory: out)
        XCTAssertEqual(back.config.method, "sequence")
        XCTAssertEqual(back.gates[SequenceRouter.tensorName]?.data, routed.gates[SequenceRouter.tensorName]?.data)
        let prompt = try Evaluator(model: m).promptTokens("QRSTQR")
        XCTAssertEqual(try m.prepare(routed: back).perRequestRouter!.resolve(model: m, prompt: prompt).key, "1")
        // A classifier of the wrong width is refused naming the tensor.
        let bad = out + "/" + RouterConfig.gatesFileName
        try SafetensorsWriter.write(tensors: [SafetensorsTensor(name: "sequence.gate", matrix: Matrix(rows: 2, cols: 5))],
                                    metadata: [:], dtype: .f32, to: URL(fileURLWithPath: bad))
        XCTAssertThrowsError(try RoutedModel.load(directory: out)) { e in
            XCTAssertTrue("\(e)".contains("sequence.gate"), "\(e)")
        }
    }
}
