import Foundation
import XCTest
@testable import LoRAFuse

/// SMoRA (`train --variant smora`): the router's choice and weights, gradients of A, B and the
/// router, training, the folder, and what refuses it.
final class SMoRATests: XCTestCase {
    private func options(steps: Int, rank: Int = 6, seed: UInt64 = 4) -> TrainingOptions {
        var o = TrainingOptions()
        o.rank = rank; o.alpha = Double(2 * rank); o.steps = steps; o.batchSize = 2; o.gradAccum = 2
        o.learningRate = 3e-2; o.warmup = 2; o.seed = seed
        return o
    }

    private func data() -> [TrainingSequence] {
        (0..<6).map { i in TrainingSequence(prompt: [10 + i, 20 + i, 1], answer: [20 + i, 10 + i, 2]) }
    }

    /// Router logits + bias choose; the kept ranks get the softmax of their logits (the bias is
    /// not in it); everything else is zeroed.
    func testRouterChoosesAndWeights() {
        // in = 2, r = 3: logits of x = (1, 0) are the router's first column.
        let gate = RankGate(topK: 2, bias: [0, 0, 1.5], router: [2, 0, 1, 0, 0.5, 0])
        var u: [Float] = [10, 20, 30]
        var w = [Float](repeating: -1, count: 3)
        var counts = [0, 0, 0]
        let x: [Float] = [1, 0]
        u.withUnsafeMutableBufferPointer { up in
            w.withUnsafeMutableBufferPointer { wp in
                counts.withUnsafeMutableBufferPointer { gate.select(up.baseAddress!, x: x, rows: 1, weights: wp.baseAddress!, counts: $0.baseAddress!) }
            }
        }
        // l = (2, 1, 0.5); l + d = (2, 1, 2) → ranks 0 and 2 kept; weights softmax(2, 0.5).
        let e = expf(1.5)
        XCTAssertEqual(w[0], e / (e + 1), accuracy: 1e-6)
        XCTAssertEqual(w[1], 0)
        XCTAssertEqual(w[2], 1 / (e + 1), accuracy: 1e-6)
        XCTAssertEqual(u[0], 10 * w[0], accuracy: 1e-5)
        XCTAssertEqual(u[1], 0)
        XCTAssertEqual(u[2], 30 * w[2], accuracy: 1e-5)
        XCTAssertEqual(counts, [1, 0, 1])
    }

    private func randomState(_ v: SMoRAVariant, seed: UInt64 = 3) {
        var rng = SeededRNG(seed: seed)
        for n in v.parameters.names { v.parameters[n] = v.parameters[n].map { _ in rng.nextNormal() * 0.5 } }
    }

    /// The training forward gives the inference engine's loss.
    func testTrainingForwardMatchesInference() throws {
        let model = TrainFixtures.model()
        let v = try SMoRAVariant(config: model.config, options: options(steps: 1), topK: 2, biasRate: 0.01)
        randomState(v)
        let adapted = try model.with([(v.adapter(name: "s", baseModel: nil), 1)])
        var nll = 0.0, n = 0
        for s in TrainFixtures.batch() {
            let logits = try adapted.logits(tokens: s.tokens)
            let rows = s.targets.indices.filter { s.targets[$0] >= 0 }
            let r = Evaluator.negativeLogLikelihoods(logits, rows: rows.first!..<(rows.last! + 1), targets: rows.map { s.targets[$0] })
            nll += r.reduce(0, +); n += r.count
        }
        let r = LlamaTrainingEngine(model: model).loss(TrainFixtures.batch(), lora: v.factors())
        XCTAssertEqual(r.nll / Double(r.tokens), nll / Double(n), accuracy: 1e-5)
    }

    /// A, B and the router against central differences (kinks where a top-k flips skipped, at
    /// most a quarter), with and without dropout on the adapter input.
    func testGradientsMatchFiniteDifferences() throws {
        for dropout: Float in [0, 0.3] {
            let model = TrainFixtures.model()
            let engine = LlamaTrainingEngine(model: model)
            let v = try SMoRAVariant(config: model.config, options: options(steps: 1), topK: 3, biasRate: 0.01)
            randomState(v, seed: 8)
            let batch = TrainFixtures.batch()
            func drop() -> LlamaTrainingEngine.Dropout? { dropout > 0 ? .init(p: dropout, rng: SeededRNG(seed: 77)) : nil }
            let (_, grads) = engine.meanLossAndGradients(batch, lora: v.factors(), dropout: drop())
            let g = v.parameterGradients(grads)
            func loss() -> Double {
                let (l, _) = engine.meanLossAndGradients(batch, lora: v.factors(), dropout: drop())
                return l
            }
            let eps: Float = 1e-3
            let l0 = loss()
            var checked = 0, kinks = 0
            for n in g.names {
                let j = g[n].indices.max { abs(g[n][$0]) < abs(g[n][$1]) }!
                let orig = v.parameters[n][j]
                v.parameters[n][j] = orig + eps; let lp = loss()
                v.parameters[n][j] = orig - eps; let lm = loss()
                v.parameters[n][j] = orig
                let right = (lp - l0) / Double(eps), left = (l0 - lm) / Double(eps)
                if abs(right - left) > 0.2 * max(abs(right), abs(left)) + 1e-2 { kinks += 1; continue }
                let fd = (lp - lm) / Double(2 * eps)
                XCTAssertLessThanOrEqual(abs(fd - Double(g[n][j])), 3e-2 * abs(Double(g[n][j])) + 1e-3,
                                         "dropout \(dropout) \(n)[\(j)]: fd \(fd) vs \(g[n][j])")
                checked += 1
            }
            XCTAssertGreaterThanOrEqual(checked, g.names.count * 3 / 4, "\(kinks) kinks")
            XCTAssertTrue(g.names.contains { $0.hasSuffix("lora_router") && g[$0].contains { $0 != 0 } })
        }
    }

    /// Training lowers the loss and moves the router; the folder reads back with the router and
    /// gives the trainer's loss; fusion and dense operations refuse it; resume is exact.
    func testTrainWriteReadRefuseAndResume() throws {
        let model = TrainFixtures.model()
        var o = options(steps: 20)
        o.saveEvery = 10
        let ck = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: ck) }
        let v = try SMoRAVariant(config: model.config, options: o, topK: 2, biasRate: 0.01)
        let router0 = v.parameters.names.filter { $0.hasSuffix("lora_router") }.map { v.parameters[$0] }
        let t = try LoRATrainer(model: model, train: data(), val: data(), options: o, variant: v)
        try t.run(checkpointDir: ck)
        let first = t.log.first!.trainLoss, after = t.log.last!.valLoss!
        XCTAssertLessThan(after, 0.7 * first, "loss \(first) → \(after)")
        XCTAssertNotEqual(v.parameters.names.filter { $0.hasSuffix("lora_router") }.map { v.parameters[$0] }, router0)

        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try v.writeFiles(into: URL(fileURLWithPath: dir), name: "s", baseModel: nil, path: dir)
        let st = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        XCTAssertTrue(st.names.contains("base_model.model.model.layers.1.mlp.down_proj.lora_router.weight"))
        let back = try AdapterIO.read(path: dir)
        for (n, m) in v.adapter(name: "s", baseModel: nil).modules { XCTAssertEqual(back.modules[n]?.rankGate, m.rankGate, n) }
        let adapted = try model.with([(back, 1)])
        var nll = 0.0, n = 0
        for s in data() {
            let logits = try adapted.logits(tokens: s.tokens)
            let r = Evaluator.negativeLogLikelihoods(logits, rows: 2..<5, targets: Array(s.targets[2...]))
            nll += r.reduce(0, +); n += r.count
        }
        XCTAssertEqual(nll / Double(n), after, accuracy: 1e-4)
        XCTAssertThrowsError(try Fuser.fuse([back, back], weights: [0.5, 0.5], method: LinearFusion())) { e in
            XCTAssertTrue("\(e)".contains("SMoRA router"), "\(e)")
        }
        XCTAssertThrowsError(try model.prepare([(back, 1)], mode: .merged)) { e in
            XCTAssertTrue("\(e)".contains("FlyLoRA or SMoRA adapter"), "\(e)")
        }

        let again = try SMoRAVariant(config: model.config, options: o, topK: 2, biasRate: 0.01)
        let t2 = try LoRATrainer(model: model, train: data(), val: data(), options: o, variant: again)
        try t2.resume(from: ck + "/checkpoint-10")
        try t2.run()
        XCTAssertEqual(again.parameters, v.parameters)
        XCTAssertEqual(again.auxiliaryState, v.auxiliaryState)
    }
}
