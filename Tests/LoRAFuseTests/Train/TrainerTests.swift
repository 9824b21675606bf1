import Foundation
import XCTest
@testable import LoRAFuse

final class TrainerTests: XCTestCase {
    /// A first AdamW step moves each weight by lr·sign(g) (m̂/√v̂ = g/|g|, up to ε), after the
    /// decoupled decay p·(1 − lr·λ).
    func testAdamWFirstStepAndDecay() {
        let c = TrainFixtures.config()
        var p = TrainFixtures.randomLoRA(c, targets: [.q])
        let before = p
        var g = LoRAGradients(zerosLike: p)
        for i in g.dA[0].indices { g.dA[0][i] = i % 2 == 0 ? 0.3 : -2 }
        for i in g.dB[0].indices { g.dB[0][i] = 1e-3 }
        var opt = AdamW(like: p, weightDecay: 0.1)
        opt.update(&p, grads: g, lr: 0.01)
        for i in p.modules[0].A.indices {
            let want = before.modules[0].A[i] * (1 - 0.01 * 0.1) - 0.01 * (i % 2 == 0 ? 1 : -1)
            XCTAssertEqual(p.modules[0].A[i], want, accuracy: 1e-6)
        }
        XCTAssertEqual(p.modules[0].B[0], before.modules[0].B[0] * 0.999 - 0.01, accuracy: 1e-6)
        // Second step, same gradient: m̂ = g, v̂ = g², so again lr·sign(g).
        let mid = p
        opt.update(&p, grads: g, lr: 0.01)
        XCTAssertEqual(p.modules[0].A[1], mid.modules[0].A[1] * 0.999 + 0.01, accuracy: 1e-6)
        XCTAssertEqual(opt.step, 2)
    }

    func testScheduleWarmupThenCosine() {
        let s = LRSchedule(peak: 1, warmup: 2, total: 10)
        XCTAssertEqual(s.lr(step: 1), 0)
        XCTAssertEqual(s.lr(step: 2), 0.5)
        XCTAssertEqual(s.lr(step: 3), 1)
        XCTAssertEqual(s.lr(step: 7), Float(0.5 * (1 + cos(Double.pi * 4 / 8))), accuracy: 1e-6)
        XCTAssertEqual(s.lr(step: 10), Float(0.5 * (1 + cos(Double.pi * 7 / 8))), accuracy: 1e-6)
        XCTAssertEqual(LRSchedule(peak: 2, warmup: 0, total: 5).lr(step: 1), 2)
    }

    func testClipByGlobalNorm() {
        let p = TrainFixtures.randomLoRA(TrainFixtures.config(), targets: [.v])
        var g = LoRAGradients(zerosLike: p)
        g.dA[0][0] = 3; g.dB[0][0] = 4
        XCTAssertEqual(g.clip(maxNorm: 1), 5, accuracy: 1e-9)
        XCTAssertEqual(g.globalNorm, 1, accuracy: 1e-5)
        XCTAssertEqual(g.dA[0][0] / g.dB[0][0], 0.75, accuracy: 1e-6)
        XCTAssertEqual(g.clip(maxNorm: 10), 1, accuracy: 1e-5)    // under the limit: unchanged
        XCTAssertEqual(g.globalNorm, 1, accuracy: 1e-5)
    }

    private func data() -> [TrainingSequence] {
        // A small mapping to memorise: prompt (a, b, sep) → answer (b, a, end).
        (0..<6).map { i in TrainingSequence(prompt: [10 + i, 20 + i, 1], answer: [20 + i, 10 + i, 2]) }
    }

    private func options(steps: Int) -> TrainingOptions {
        var o = TrainingOptions()
        o.rank = 4; o.alpha = 8; o.steps = steps; o.batchSize = 2; o.gradAccum = 2
        o.learningRate = 3e-2; o.warmup = 2; o.seed = 4; o.dropout = 0.1; o.weightDecay = 0.01
        return o
    }

    func testTrainingLowersLossAndWritesUsableAdapter() throws {
        let model = TrainFixtures.model()
        let t = try LoRATrainer(model: model, train: data(), val: data(), options: options(steps: 25))
        let before = t.validationLoss()!
        try t.run()
        let after = t.log.last!.valLoss!
        XCTAssertLessThan(after, 0.5 * before, "loss \(before) → \(after)")
        XCTAssertEqual(t.log.count, 25)
        XCTAssertTrue(t.log.allSatisfy { $0.tokens == 4 * 5 })
        // The written adapter, applied by the inference engine, gives the same loss.
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PEFTAdapter.write(t.adapter(), to: dir, dtype: .f32)
        let back = try PEFTAdapter.read(directory: dir)
        XCTAssertEqual(back.metadata.rank, 4)
        XCTAssertEqual(back.metadata.alpha, 8)
        let adapted = try model.with([(back, 1)])
        var nll = 0.0, n = 0
        for s in data() {
            let logits = try adapted.logits(tokens: s.tokens)
            let v = Evaluator.negativeLogLikelihoods(logits, rows: 2..<5, targets: Array(s.targets[2...]))
            nll += v.reduce(0, +); n += v.count
        }
        XCTAssertEqual(nll / Double(n), after, accuracy: 1e-4)
    }

    /// A warm start takes another adapter's ΔW exactly (B rescaled when α/r differs), so the first
    /// step's loss is that adapter's loss; a different rank is refused by name.
    func testWarmStartBeginsAtTheGivenAdapter() throws {
        let model = TrainFixtures.model()
        var o = options(steps: 1)
        o.dropout = 0
        let src = TrainFixtures.randomLoRA(model.config, rank: 4, std: 0.2)   // α 8, scale 2
        var given = src.adapter()
        for k in given.modules.keys { given.modules[k]!.scale = 0.5 }    // α/r differs from the run's 2
        o.alpha = 8
        let t = try LoRATrainer(model: model, train: data(), options: o)
        try t.warmStart(from: given)
        let want = given.modules[t.params.modules[0].name]!
        let got = t.params.modules[0]
        let dGiven = want.B.scaled(by: want.scale) * want.A
        let dGot = Matrix(rows: got.outFeatures, cols: got.rank, data: got.B).scaled(by: got.scale)
            * Matrix(rows: got.rank, cols: got.inFeatures, data: got.A)
        XCTAssertLessThanOrEqual(dGot.maxAbsDifference(dGiven), 1e-6)
        // Step 1's loss is measured before the update: the given adapter's loss on that batch.
        let row = t.trainStep()
        var ref = given
        ref.name = "ref"
        let adapted = try model.with([(ref, 1)])
        var nll = 0.0, n = 0
        for i in t.batchIndices(step: 1, micro: 0) + t.batchIndices(step: 1, micro: 1) {
            let s = data()[i]
            let logits = try adapted.logits(tokens: s.tokens)
            let v = Evaluator.negativeLogLikelihoods(logits, rows: 2..<5, targets: Array(s.targets[2...]))
            nll += v.reduce(0, +); n += v.count
        }
        XCTAssertEqual(row.trainLoss, nll / Double(n), accuracy: 1e-4)

        var o3 = o
        o3.rank = 3
        let other = try LoRATrainer(model: model, train: data(), options: o3)
        XCTAssertThrowsError(try other.warmStart(from: given)) { e in
            XCTAssertTrue("\(e)".contains("rank 4, this run's --rank is 3"), "\(e)")
        }
    }

    /// Stopping at a checkpoint and resuming gives the same parameters, moments and losses as an
    /// uninterrupted run (data order and dropout masks depend only on seed and step).
    func testResumeEqualsUninterruptedRun() throws {
        let model = TrainFixtures.model()
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = options(steps: 7)
        o.saveEvery = 2; o.keep = 2
        let full = try LoRATrainer(model: model, train: data(), options: o)
        try full.run(checkpointDir: dir)
        XCTAssertEqual(LoRATrainer.checkpointSteps(in: dir), [4, 6])
        XCTAssertNoThrow(try PEFTAdapter.read(directory: dir + "/checkpoint-6"))

        let resumed = try LoRATrainer(model: model, train: data(), options: o)
        try resumed.resume(from: dir + "/checkpoint-4")
        XCTAssertEqual(resumed.step, 4)
        XCTAssertEqual(resumed.log.map(\.trainLoss), Array(full.log.prefix(4)).map(\.trainLoss))
        try resumed.run()
        XCTAssertEqual(resumed.step, 7)
        XCTAssertEqual(resumed.log.map(\.trainLoss), full.log.map(\.trainLoss))
        for (a, b) in zip(resumed.params.modules, full.params.modules) {
            XCTAssertEqual(a.A, b.A, a.name)
            XCTAssertEqual(a.B, b.B, a.name)
        }
        XCTAssertEqual(resumed.optimizer.vB, full.optimizer.vB)

        // A checkpoint from other options is refused with the field named.
        var other = o
        other.seed = 99
        let wrong = try LoRATrainer(model: model, train: data(), options: other)
        XCTAssertThrowsError(try wrong.resume(from: dir + "/checkpoint-4")) { e in
            XCTAssertTrue("\(e)".contains("seed"), "\(e)")
        }
    }

    func testBatchOrderIsASeededPermutationPerEpoch() throws {
        var o = options(steps: 3)
        o.gradAccum = 1; o.batchSize = 3
        let t = try LoRATrainer(model: TrainFixtures.model(), train: data(), options: o)
        let epoch0 = t.batchIndices(step: 1, micro: 0) + t.batchIndices(step: 2, micro: 0)
        XCTAssertEqual(Set(epoch0), Set(0..<6))
        XCTAssertNotEqual(epoch0, Array(0..<6))
        let epoch1 = t.batchIndices(step: 3, micro: 0) + t.batchIndices(step: 4, micro: 0)
        XCTAssertEqual(Set(epoch1), Set(0..<6))
        XCTAssertNotEqual(epoch0, epoch1)
    }

    func testTargetListAndInitOptions() throws {
        XCTAssertEqual(try Projection.parseList("v,q,down_proj"), [.q, .v, .down])
        XCTAssertEqual(try Projection.parseList("all"), Projection.allCases)
        XCTAssertThrowsError(try Projection.parseList("q,lm_head"))
        let c = TrainFixtures.config()
        XCTAssertEqual(LoRAParameters.initialize(config: c, rank: 4, alpha: 16, targets: [.q], rsLoRA: true, seed: 0).modules[0].scale, 8)
        XCTAssertEqual(LoRAParameters.initialize(config: c, rank: 4, alpha: 16, targets: [.q], seed: 0).modules[0].scale, 4)
        let a = LoRAParameters.initialize(config: c, rank: 2, alpha: 4, targets: [.q, .v], seed: 7)
        let b = LoRAParameters.initialize(config: c, rank: 2, alpha: 4, targets: [.v], seed: 7)
        XCTAssertEqual(a.modules[1].A, b.modules[0].A, "a module's init does not depend on the other targets")
    }

    func testSVGChart() {
        XCTAssertEqual(SVGLineChart.niceTicks(0.13, 0.92, count: 5), [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0])
        let svg = SVGLineChart(title: "t <1>", xLabel: "step", yLabel: "loss",
                               series: [.init(name: "train", points: [(1, 3), (2, 2.5), (3, .nan), (4, 1)]),
                                        .init(name: "val", points: [(2, 2.8)], markers: true)]).render()
        XCTAssertTrue(svg.hasPrefix("<svg "))
        XCTAssertTrue(svg.hasSuffix("</svg>\n"))
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 1)
        XCTAssertEqual(svg.components(separatedBy: "<circle").count - 1, 1)
        XCTAssertTrue(svg.contains("t &lt;1&gt;"))
        XCTAssertTrue(svg.contains(">train</text>") && svg.contains(">val</text>"))
    }
}
