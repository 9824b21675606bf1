import Foundation
import XCTest
@testable import LoRAFuse

/// The continual setting: rank blocks frozen task by task against sequential LoRA, and the
/// forgetting matrix.
final class ContinualTests: XCTestCase {
    private func tasks() -> [ContinualTask] {
        (0..<3).map { t in
            let d = TrainFixtures.copyData(shift: t)
            return ContinualTask(name: "t\(t)", train: d, test: Array(d.prefix(3)))
        }
    }

    private func options() -> TrainingOptions {
        var o = TrainFixtures.variantOptions(steps: 8, rank: 2)
        o.gradAccum = 1
        return o
    }

    /// A slice's gradients are the slice of the full gradients, and its factors put the slice back.
    func testRankSliceRoundTrip() {
        let model = TrainFixtures.model()
        var full = TrainFixtures.randomLoRA(model.config)
        full.rank = full.modules[0].rank
        let v = RankSliceVariant(start: full, trainable: 1..<2)
        let f = v.factors()
        for (a, b) in zip(f.modules, full.modules) { XCTAssertEqual(a.A, b.A); XCTAssertEqual(a.B, b.B) }
        let (_, g) = LlamaTrainingEngine(model: model).meanLossAndGradients(TrainFixtures.batch(), lora: full)
        let pg = v.parameterGradients(g)
        for (i, m) in full.modules.enumerated() {
            XCTAssertEqual(pg["\(m.name).lora_A"], Array(g.dA[i][m.inFeatures..<(2 * m.inFeatures)]))
            XCTAssertEqual(pg["\(m.name).lora_B"], (0..<m.outFeatures).map { g.dB[i][$0 * m.rank + 1] })
        }
        // The leading ranks out, changed, and back in: only they change.
        var lead = full.leadingRanks(1)
        for i in lead.modules.indices {
            let m = full.modules[i]
            XCTAssertEqual(lead.modules[i].A, Array(m.A[0..<m.inFeatures]))
            XCTAssertEqual(lead.modules[i].B, (0..<m.outFeatures).map { m.B[$0 * m.rank] })
            lead.modules[i].A = lead.modules[i].A.map { $0 + 1 }
            lead.modules[i].B = lead.modules[i].B.map { $0 - 1 }
        }
        var back = full
        back.setLeadingRanks(from: lead)
        for (i, m) in full.modules.enumerated() {
            let b = back.modules[i]
            for r in 0..<m.rank {
                for j in 0..<m.inFeatures { XCTAssertEqual(b.A[r * m.inFeatures + j], m.A[r * m.inFeatures + j] + (r == 0 ? 1 : 0)) }
                for o in 0..<m.outFeatures { XCTAssertEqual(b.B[o * m.rank + r], m.B[o * m.rank + r] - (r == 0 ? 1 : 0)) }
            }
        }
    }

    /// `ranks`: each task trains only its block; earlier blocks come out bit-identical, later ones
    /// stay at B = 0 until their task; `lora` moves every rank on every task. Both fill the matrix,
    /// and each task's loss right after its training is below the base model's.
    func testRanksFreezeEarlierBlocksAndLoRAMovesAll() throws {
        let model = TrainFixtures.model()
        var afterFirst: [LoRAParameters] = []
        let (final, result) = try ContinualTraining.run(model: model, tasks: Array(tasks().prefix(2)), method: .ranks, options: options())
        XCTAssertEqual(final.rank, 4)
        XCTAssertEqual(result.loss.count, 2)
        XCTAssertEqual(result.loss[0].count, 2)
        for t in 0..<2 { XCTAssertLessThan(result.loss[t][t], result.baseLoss[t]) }
        // Rerun the first task alone: the final adapter's block 0 must equal it exactly.
        let (one, _) = try ContinualTraining.run(model: model, tasks: [tasks()[0], ContinualTask(name: "none", train: tasks()[0].train, test: tasks()[0].test)],
                                                 method: .ranks, options: options())
        afterFirst.append(one)
        for (m, m1) in zip(final.modules, afterFirst[0].modules) {
            XCTAssertEqual(Array(m.A[0..<(2 * m.inFeatures)]), Array(m1.A[0..<(2 * m.inFeatures)]), m.name)
            for o in 0..<m.outFeatures { XCTAssertEqual(Array(m.B[(o * 4)..<(o * 4 + 2)]), Array(m1.B[(o * 4)..<(o * 4 + 2)]), m.name) }
            XCTAssertTrue(m.B.contains { $0 != 0 })
        }
        let (seq, r2) = try ContinualTraining.run(model: model, tasks: Array(tasks().prefix(2)), method: .lora, options: options())
        XCTAssertEqual(seq.rank, 4)
        XCTAssertEqual(r2.method, .lora)
        // Sequential LoRA's second task moved block 0 too.
        let m = seq.modules[0], m1 = afterFirst[0].modules[0]
        XCTAssertNotEqual(Array(m.A[0..<(2 * m.inFeatures)]), Array(m1.A[0..<(2 * m.inFeatures)]))
        XCTAssertEqual(r2.forgetting.count, 1)
        XCTAssertTrue(r2.markdown.contains("| after \\ loss on | t0 | t1 | mean |"), r2.markdown)
    }

    /// Self-activated ranks (`topK`): the final adapter is gated to k ranks per token over every
    /// block; the first task trained with only its own block (so with k ≥ r no gate yet) equals
    /// an ungated run's first block; earlier blocks stay frozen; the gated adapter's loss is what
    /// the inference engine gives it; and the loss after each task was measured with the gate.
    func testSelfActivatedRanksGateEveryBlockAndKeepEarlierOnesFrozen() throws {
        let model = TrainFixtures.model()
        let three = tasks()
        let (gated, result) = try ContinualTraining.run(model: model, tasks: three, method: .ranks, options: options(), topK: 2)
        XCTAssertEqual(gated.rank, 6)
        XCTAssertEqual(result.topK, 2)
        XCTAssertTrue(result.markdown.contains("self-activated: the top 2 ranks"), result.markdown)
        for m in gated.modules { XCTAssertEqual(m.rankGate, RankGate(topK: 2, bias: [Float](repeating: 0, count: 6)), m.name) }
        // Task 0 ran with its own 2 ranks only (k = 2 of 2: no gate), as without self-activation
        // (there the later blocks ride along at B = 0: the same values up to the GEMMs' summation order).
        let (plain, _) = try ContinualTraining.run(model: model, tasks: three, method: .ranks, options: options())
        func close(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Bool { zip(a, b).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($1)) } }
        for (m, p) in zip(gated.modules, plain.modules) {
            XCTAssertTrue(close(m.A[0..<(2 * m.inFeatures)], p.A[0..<(2 * p.inFeatures)]), m.name)
            for o in 0..<m.outFeatures { XCTAssertTrue(close(m.B[(o * 6)..<(o * 6 + 2)], p.B[(o * 6)..<(o * 6 + 2)]), m.name) }
        }
        let engine = LlamaTrainingEngine(model: model)
        let adapter = gated.adapter(name: "g")
        for (j, t) in three.enumerated() {
            XCTAssertEqual(result.loss[2][j], engine.meanLoss(t.test, lora: gated), accuracy: 1e-9)
            XCTAssertEqual(result.loss[2][j], try TrainFixtures.inferenceLoss(model, adapter, t.test), accuracy: 1e-4)
        }
        XCTAssertThrowsError(try ContinualTraining.run(model: model, tasks: three, method: .lora, options: options(), topK: 2)) { e in
            XCTAssertTrue("\(e)".contains("--method lora has none"), "\(e)")
        }
        XCTAssertThrowsError(try ContinualTraining.run(model: model, tasks: three, method: .ranks, options: options(), topK: 6)) { e in
            XCTAssertTrue("\(e)".contains("1…5"), "\(e)")
        }
    }

    func testRefusesOneTaskAndEmptyHeldOut() {
        let model = TrainFixtures.model()
        XCTAssertThrowsError(try ContinualTraining.run(model: model, tasks: [tasks()[0]], method: .ranks, options: options())) { e in
            XCTAssertTrue("\(e)".contains("at least 2 tasks"), "\(e)")
        }
        var t = tasks()
        t[1].test = []
        XCTAssertThrowsError(try ContinualTraining.run(model: model, tasks: t, method: .ranks, options: options())) { e in
            XCTAssertTrue("\(e)".contains("t1") && "\(e)".contains("no held-out examples"), "\(e)")
        }
    }
}
