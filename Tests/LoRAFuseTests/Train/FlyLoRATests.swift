import Foundation
import XCTest
@testable import LoRAFuse

/// FlyLoRA (`train --variant flylora`): the per-token rank choice, its gradient, training through
/// the shared trainer, the PEFT-fork folder, the operations that refuse it and the one fusion that
/// takes it.
final class FlyLoRATests: XCTestCase {
    private func options(steps: Int, rank: Int = 6, seed: UInt64 = 4) -> TrainingOptions {
        TrainFixtures.variantOptions(steps: steps, rank: rank, seed: seed)
    }

    private func data(_ shift: Int = 0) -> [TrainingSequence] { TrainFixtures.copyData(shift: shift) }

    private func randomState(_ v: FlyLoRAVariant, seed: UInt64 = 3) {
        var rng = SeededRNG(seed: seed)
        for n in v.parameters.names { v.parameters[n] = v.parameters[n].map { _ in rng.nextNormal() * 0.5 } }
        var aux = v.auxiliaryState
        for n in aux.names { aux[n] = aux[n].map { _ in rng.nextNormal() * 0.05 } }
        v.auxiliaryState = aux
    }

    /// Magnitude of u + d decides; d shifts it but is not added to what passes; ties keep the
    /// lower rank; counts add up per rank.
    func testSelectKeepsTopKOfBiasedMagnitude() {
        let gate = RankGate(topK: 2, bias: [0, 0, 0.5, 0])
        var u: [Float] = [1.0, -3.0, 0.2, 0.9,     // |u+d| = 1, 3, 0.7, 0.9 → ranks 1, 0
                          0.5, 0.5, 0.0, 0.5]      // 0.5, 0.5, 0.5, 0.5 → ties: ranks 0, 1
        var keep = [Float](repeating: -1, count: 8)
        var counts = [Int](repeating: 0, count: 4)
        u.withUnsafeMutableBufferPointer { up in
            keep.withUnsafeMutableBufferPointer { kp in
                counts.withUnsafeMutableBufferPointer { gate.select(up.baseAddress!, rows: 2, weights: kp.baseAddress!, counts: $0.baseAddress!) }
            }
        }
        XCTAssertEqual(u, [1.0, -3.0, 0, 0, 0.5, 0.5, 0, 0])
        XCTAssertEqual(keep, [1, 1, 0, 0, 1, 1, 0, 0])
        XCTAssertEqual(counts, [2, 2, 0, 0])
        // A bias large enough moves the choice to rank 2.
        var u2: [Float] = [1.0, -3.0, 0.2, 0.9]
        RankGate(topK: 2, bias: [0, 0, 2, 0]).select(&u2, rows: 1)
        XCTAssertEqual(u2, [0, -3.0, 0.2, 0])
        // Balance: ranks used less than the mean go up, more go down, equal stay.
        var g = RankGate(topK: 2, bias: [0, 0, 0, 0])
        g.balance(counts: [4, 0, 2, 2], rate: 0.1)
        XCTAssertEqual(g.bias, [-0.1, 0.1, 0, 0])
    }

    /// The sparse router: ⌊in·k/r⌋ non-zeros per row, none elsewhere, same for the same seed.
    func testSparseRouterShape() throws {
        let c = TrainFixtures.config()
        let v = try FlyLoRAVariant(config: c, options: options(steps: 1), topK: 2, biasRate: 0.01)
        let f = v.factors()
        for m in f.modules {
            let p = m.inFeatures * 2 / 6
            for i in 0..<m.rank {
                XCTAssertEqual(m.A[(i * m.inFeatures)..<((i + 1) * m.inFeatures)].filter { $0 != 0 }.count, p, m.name)
            }
            XCTAssertTrue(m.B.allSatisfy { $0 == 0 })
            XCTAssertEqual(m.rankGate?.topK, 2)
        }
        let again = try FlyLoRAVariant(config: c, options: options(steps: 1), topK: 2, biasRate: 0.01).factors()
        XCTAssertEqual(again.modules.map(\.A), f.modules.map(\.A))
        XCTAssertEqual(v.parameters.count, f.modules.reduce(0) { $0 + $1.B.count })
        XCTAssertThrowsError(try FlyLoRAVariant(config: c, options: options(steps: 1), topK: 6, biasRate: 0)) { e in
            XCTAssertTrue("\(e)".contains("1 ≤ k < --rank (6)"), "\(e)")
        }
    }

    /// The training forward gives the inference engine's loss with the same gated adapter, and
    /// the gate changes the loss (it is not silently dropped on either side).
    func testTrainingForwardMatchesInference() throws {
        let model = TrainFixtures.model()
        let v = try FlyLoRAVariant(config: model.config, options: options(steps: 1), topK: 2, biasRate: 0.01)
        randomState(v)
        let adapter = v.adapter(name: "fly", baseModel: nil)
        let r = LlamaTrainingEngine(model: model).loss(TrainFixtures.batch(), lora: v.factors())
        let inference = try TrainFixtures.inferenceLoss(model, adapter, TrainFixtures.batch())
        XCTAssertEqual(r.nll / Double(r.tokens), inference, accuracy: 1e-5)
        var dense = adapter
        for n in dense.moduleNames { dense.modules[n]!.rankGate = nil }
        XCTAssertGreaterThan(abs(try TrainFixtures.inferenceLoss(model, dense, TrainFixtures.batch()) - inference), 1e-3, "every rank applied must differ from top-2")
    }

    /// dB against central differences of the mean loss on every module's largest coordinate;
    /// A gets no trained gradient.
    func testBGradientsMatchFiniteDifferences() throws {
        let model = TrainFixtures.model()
        let v = try FlyLoRAVariant(config: model.config, options: options(steps: 1), topK: 3, biasRate: 0.01)
        randomState(v, seed: 8)
        let batch = TrainFixtures.batch()
        let grads = LlamaTrainingEngine(model: model).meanLossAndGradients(batch, lora: v.factors()).grads
        XCTAssertEqual(v.parameterGradients(grads).names, v.parameters.names)
        XCTAssertTrue(grads.rankCounts.allSatisfy { $0.reduce(0, +) == 3 * batch.reduce(0) { $0 + $1.tokens.count } })
        TrainFixtures.checkVariantGradients(v, model: model, batch: batch)
    }

    private func trained(seed: UInt64 = 4, shift: Int = 0, steps: Int = 20) throws -> (FlyLoRAVariant, LoRATrainer) {
        let model = TrainFixtures.model()
        let o = options(steps: steps, seed: seed)
        let v = try FlyLoRAVariant(config: model.config, options: o, topK: 2, biasRate: 0.01)
        let t = try LoRATrainer(model: model, train: data(shift), val: data(shift), options: o, variant: v)
        try t.run()
        return (v, t)
    }

    /// Training lowers the loss, moves the bias, leaves A alone; the folder is the authors' PEFT
    /// fork layout, reads back as the same gated adapter and gives the trainer's loss at inference.
    func testTrainWriteReadRoundTrip() throws {
        let model = TrainFixtures.model()
        let a0 = try FlyLoRAVariant(config: model.config, options: options(steps: 1), topK: 2, biasRate: 0.01).factors()
        let (v, t) = try trained()
        let first = t.log.first!.trainLoss, after = t.log.last!.valLoss!
        XCTAssertLessThan(after, 0.7 * first, "loss \(first) → \(after)")
        XCTAssertEqual(v.factors().modules.map(\.A), a0.modules.map(\.A), "A is frozen")
        XCTAssertTrue(v.auxiliaryState.names.contains { v.auxiliaryState[$0].contains { $0 != 0 } }, "the bias moved")

        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try v.writeFiles(into: URL(fileURLWithPath: dir), name: "fly", baseModel: "tiny", path: dir)
        let config = try String(contentsOfFile: dir + "/adapter_config.json", encoding: .utf8)
        for needle in ["\"top_k\": 2", "\"bias_u\": 0.01", "\"init_lora_weights\": \"sparse\"", "\"r\": 6"] {
            XCTAssertTrue(config.contains(needle), "\(needle) in \(config)")
        }
        let st = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        XCTAssertTrue(st.names.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_topk_bias"))
        let back = try AdapterIO.read(path: dir)
        let mine = v.adapter(name: "fly", baseModel: "tiny")
        for (n, m) in mine.modules {
            XCTAssertEqual(back.modules[n]?.rankGate, m.rankGate, n)
            XCTAssertEqual(back.modules[n]?.B.data, m.B.data, n)
        }
        XCTAssertEqual(try TrainFixtures.inferenceLoss(model, back, data()), after, accuracy: 1e-4)
    }

    /// A bias tensor without top_k, or of the wrong size, is named.
    func testReaderNamesBadFields() throws {
        let (v, _) = try trained(steps: 2)
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try v.writeFiles(into: URL(fileURLWithPath: dir), name: "fly", baseModel: nil, path: dir)
        let cfgPath = dir + "/adapter_config.json"
        let cfg = try String(contentsOfFile: cfgPath, encoding: .utf8)
        try cfg.replacingOccurrences(of: "\"top_k\": 2,", with: "").write(toFile: cfgPath, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PEFTAdapter.read(directory: dir)) { e in
            XCTAssertTrue("\(e)".contains("top_k") && "\(e)".contains("lora_topk_bias"), "\(e)")
        }
        try cfg.replacingOccurrences(of: "\"top_k\": 2", with: "\"top_k\": 0").write(toFile: cfgPath, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PEFTAdapter.read(directory: dir)) { e in XCTAssertTrue("\(e)".contains("top_k"), "\(e)") }
    }

    /// Dense-only operations refuse a FlyLoRA adapter by name; `linear` averages two that share A
    /// (B weighted and summed, d averaged), and refuses two that do not.
    func testDenseOperationsRefuseAndLinearAverages() throws {
        let model = TrainFixtures.model()
        let (v1, _) = try trained(shift: 0, steps: 6)
        let (v2, _) = try trained(shift: 1, steps: 6)
        let a1 = v1.adapter(name: "one", baseModel: nil), a2 = v2.adapter(name: "two", baseModel: nil)
        func refuses(_ what: String, _ body: () throws -> Void) {
            XCTAssertThrowsError(try body(), what) { e in
                XCTAssertTrue("\(e)".contains("FlyLoRA adapter") && "\(e)".contains("'one'"), "\(what): \(e)")
            }
        }
        refuses("merged") { _ = try model.prepare([(a1, 1)], mode: .merged) }
        refuses("gguf") { _ = try GGUFLoRA.serialize(a1, dtype: .f32) }
        refuses("ties") { _ = try Fuser.fuse([a1, a2], weights: [1, 1], method: TIESFusion()) }
        refuses("routing") { _ = try model.expertFactors([a1, a2]) }

        let (fused, _) = try Fuser.fuse([a1, a2], weights: [0.5, 0.5], method: LinearFusion(), name: "avg")
        for (n, m) in fused.modules {
            let m1 = a1.modules[n]!, m2 = a2.modules[n]!
            XCTAssertEqual(m.A, m1.A, n)
            XCTAssertEqual(m.scale, 1)
            for i in m.B.data.indices {
                XCTAssertEqual(m.B.data[i], 0.5 * m1.scale * m1.B.data[i] + 0.5 * m2.scale * m2.B.data[i], accuracy: 1e-6)
            }
            for j in 0..<m.rank {
                XCTAssertEqual(m.rankGate!.bias[j], 0.5 * (m1.rankGate!.bias[j] + m2.rankGate!.bias[j]), accuracy: 1e-7)
            }
        }
        _ = try model.prepare([(fused, 1)])   // runs unmerged
        let (v3, _) = try trained(seed: 9, steps: 2)
        XCTAssertThrowsError(try Fuser.fuse([a1, v3.adapter(name: "three", baseModel: nil)], weights: [1, 1], method: LinearFusion())) { e in
            XCTAssertTrue("\(e)".contains("different A"), "\(e)")
        }
    }

    /// A resumed run ends where an uninterrupted one does (the bias is checkpointed).
    func testResumeRestoresTheBias() throws {
        let model = TrainFixtures.model()
        var o = options(steps: 6)
        o.saveEvery = 3
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let full = try FlyLoRAVariant(config: model.config, options: o, topK: 2, biasRate: 0.01)
        let t1 = try LoRATrainer(model: model, train: data(), options: o, variant: full)
        try t1.run(checkpointDir: dir)
        let half = try FlyLoRAVariant(config: model.config, options: o, topK: 2, biasRate: 0.01)
        let t2 = try LoRATrainer(model: model, train: data(), options: o, variant: half)
        try t2.resume(from: dir + "/checkpoint-3")
        try t2.run()
        XCTAssertEqual(half.auxiliaryState, full.auxiliaryState)
        XCTAssertEqual(half.parameters, full.parameters)
    }
}
