import Foundation
import XCTest
@testable import LoRAFuse

/// LoRAMoE (`train --variant loramoe`): the dense expert gate, the localized balancing
/// constraint's value and gradients, training, the authors' folder layout, and what refuses it.
final class LoRAMoETests: XCTestCase {
    private func options(steps: Int, rank: Int = 2) -> TrainingOptions { TrainFixtures.mixtureOptions(steps: steps, rank: rank) }

    /// Every expert is kept; its ranks are multiplied by the softmax of the router's logits.
    func testDenseGateWeightsExpertGroups() {
        // in = 2, 2 experts of rank 2: logits of x = (1, 0) are the router's first column (1, 0).
        let gate = RankGate(topK: 2, bias: [0, 0], router: [1, 5, 0, 5], ranksPerExpert: 2)
        XCTAssertTrue(gate.isDense)
        XCTAssertEqual(gate.kindName, "LoRAMoE")
        var u: [Float] = [1, 2, 3, 4]
        var w = [Float](repeating: -1, count: 4)
        let x: [Float] = [1, 0]
        u.withUnsafeMutableBufferPointer { up in
            w.withUnsafeMutableBufferPointer { gate.select(up.baseAddress!, x: x, rows: 1, weights: $0.baseAddress!) }
        }
        let e = expf(1), w0 = e / (e + 1), w1 = 1 / (e + 1)
        for (j, want) in [w0, w0, w1, w1].enumerated() { XCTAssertEqual(w[j], want, accuracy: 1e-6) }
        for (j, want) in [1 * w0, 2 * w0, 3 * w1, 4 * w1].enumerated() { XCTAssertEqual(u[j], want, accuracy: 1e-6) }
    }

    /// The training forward gives the inference engine's loss.
    func testTrainingForwardMatchesInference() throws {
        let model = TrainFixtures.model()
        let v = try LoRAMoEVariant(config: model.config, options: options(steps: 1), experts: 3, balance: ExpertBalance(alpha: 0.1, weight: 0))
        TrainFixtures.randomize(v)
        let r = LlamaTrainingEngine(model: model).loss(TrainFixtures.batch(), lora: v.factors())
        XCTAssertEqual(r.nll / Double(r.tokens), try TrainFixtures.inferenceLoss(model, v.adapter(name: "m", baseModel: nil), TrainFixtures.batch()),
                       accuracy: 1e-5)
    }

    /// With a zero router every weight is 1/E, so Q[m, i] = T_m/E and the constraint has a closed
    /// form: β · var(Z)/mean(Z)² over Z = Q ⊙ (1 ± δ), per module.
    func testBalanceLossValue() throws {
        let model = TrainFixtures.model()
        let E = 4, delta: Float = 0.2, beta: Float = 0.5
        let v = try LoRAMoEVariant(config: model.config, options: options(steps: 1), experts: E, balance: ExpertBalance(alpha: delta, weight: beta))
        for n in v.parameters.names where n.hasSuffix("lora_route") { v.parameters[n] = v.parameters[n].map { _ in 0 } }
        var batch = TrainFixtures.batch()
        batch[1].knowledge = true
        let engine = LlamaTrainingEngine(model: model)
        _ = engine.meanLossAndGradients(batch, lora: v.factors())
        var Z: [Double] = []
        for s in batch {
            for i in 0..<E {
                let knowledgeExpert = i < E / 2
                Z.append(Double(s.tokens.count) / Double(E) * (knowledgeExpert == s.knowledge ? 1 + Double(delta) : 1 - Double(delta)))
            }
        }
        let mu = Z.reduce(0, +) / Double(Z.count)
        let variance = Z.reduce(0) { $0 + ($1 - mu) * ($1 - mu) } / Double(Z.count - 1)
        let modules = v.factors().modules.count
        XCTAssertEqual(engine.balanceLoss, Double(modules) * Double(beta) * variance / (mu * mu), accuracy: 1e-4)
        XCTAssertGreaterThan(engine.balanceLoss, 0)
        // Evaluation (a loss-only pass) does not compute it.
        _ = engine.loss(batch, lora: v.factors())
        XCTAssertEqual(engine.balanceLoss, 0)
    }

    /// A, B and the router against central differences, the constraint included (a strong β and
    /// mixed example types), with and without dropout on the adapter input.
    func testGradientsMatchFiniteDifferences() throws {
        var batch = TrainFixtures.batch()
        batch[0].knowledge = true
        for dropout: Float in [0, 0.3] {
            let model = TrainFixtures.model()
            let v = try LoRAMoEVariant(config: model.config, options: options(steps: 1), experts: 4, balance: ExpertBalance(alpha: 0.3, weight: 2))
            TrainFixtures.randomize(v, seed: 8)
            TrainFixtures.checkVariantGradients(v, model: model, batch: batch, dropout: dropout)
            let g = v.parameterGradients(LlamaTrainingEngine(model: model).meanLossAndGradients(batch, lora: v.factors()).grads)
            XCTAssertTrue(g.names.contains { $0.hasSuffix("lora_route") && g[$0].contains { $0 != 0 } })
        }
        // The constraint alone moves the router: with B = 0 the LM loss does not depend on it.
        let model = TrainFixtures.model()
        let v = try LoRAMoEVariant(config: model.config, options: options(steps: 1), experts: 4, balance: ExpertBalance(alpha: 0.3, weight: 2))
        let (_, g0) = LlamaTrainingEngine(model: model).meanLossAndGradients(batch, lora: v.factors())
        XCTAssertTrue(v.parameterGradients(g0).names.contains { $0.hasSuffix("lora_route") && v.parameterGradients(g0)[$0].contains { $0 != 0 } })
        TrainFixtures.checkVariantGradients(v, model: model, batch: batch)
    }

    /// Training lowers the loss; the folder has the authors' layout, reads back to the same gates
    /// and the trainer's loss; fusion and dense operations refuse it; resume is exact.
    func testTrainWriteReadRefuseAndResume() throws {
        let model = TrainFixtures.model()
        var o = options(steps: 20)
        o.saveEvery = 10
        let data = TrainFixtures.copyData()
        let (v, after) = try TrainFixtures.trainAndResume({
            try LoRAMoEVariant(config: model.config, options: o, experts: 3, balance: ExpertBalance(alpha: 0.1, weight: 0.1))
        }, model: model, options: o, data: data)
        let (dir, back) = try TrainFixtures.writeAndRead(v, expected: v.adapter(name: "m", baseModel: nil))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let st = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        let mod = "base_model.model.model.layers.1.mlp.down_proj"
        for k in ["lora_A0", "lora_A2", "lora_B1", "lora_route"] { XCTAssertTrue(st.names.contains("\(mod).\(k).weight"), k) }
        XCTAssertEqual(try st.info("\(mod).lora_A1.weight").shape, [2, model.config.intermediateSize])
        let config = try String(contentsOfFile: dir + "/adapter_config.json", encoding: .utf8)
        for s in ["\"lora_nums\": 3", "\"r\": 2", "\"blc_weight\": 0.1"] { XCTAssertTrue(config.contains(s), "\(s) in \(config)") }
        XCTAssertEqual(try TrainFixtures.inferenceLoss(model, back, data), after, accuracy: 1e-4)
        XCTAssertThrowsError(try Fuser.fuse([back, back], weights: [0.5, 0.5], method: LinearFusion())) { e in
            XCTAssertTrue("\(e)".contains("LoRAMoE"), "\(e)")
        }
        XCTAssertThrowsError(try model.prepare([(back, 1)], mode: .merged)) { e in
            XCTAssertTrue("\(e)".contains("LoRAMoE"), "\(e)")
        }
    }

    /// The reader names what is wrong in a LoRAMoE folder.
    func testReaderNamesBadFields() throws {
        let model = TrainFixtures.model()
        let v = try LoRAMoEVariant(config: model.config, options: options(steps: 1), experts: 2, balance: ExpertBalance(alpha: 0, weight: 0))
        TrainFixtures.randomize(v)
        let (dir, _) = try TrainFixtures.writeAndRead(v, expected: v.adapter(name: "m", baseModel: nil))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try TrainFixtures.assertConfigEditsRefused(dir, [("\"lora_nums\": 2", "\"lora_nums\": 3", "lora_route"),
                                                         ("\"lora_nums\": 2", "\"lora_nums\": 1", "lora_nums"),
                                                         ("\"r\": 2", "\"r\": 3", "expert 0")])
    }
}
