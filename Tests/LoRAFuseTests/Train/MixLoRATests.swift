import Foundation
import XCTest
@testable import LoRAFuse

/// MixLoRA (`train --variant mixlora`): Mixtral routing, the mixture FFN against plain LoRA, the
/// auxiliary losses' value and gradients, training, the authors' file layout, and refusals.
final class MixLoRATests: XCTestCase {
    private func options(steps: Int, rank: Int = 2) -> TrainingOptions { TrainFixtures.mixtureOptions(steps: steps, rank: rank) }

    /// Top-k of the softmax (ties to the lower index), renormalised over the kept experts.
    func testRouteIsMixtralTopK() {
        let logits: [Float] = [1, 3, 2, 3]
        var chosen = [Int](repeating: -1, count: 2), w = [Float](repeating: 0, count: 2), p = [Float](repeating: 0, count: 4)
        chosen.withUnsafeMutableBufferPointer { c in
            w.withUnsafeMutableBufferPointer { wp in
                p.withUnsafeMutableBufferPointer { MixtureFFN.route(logits, experts: 4, topK: 2, chosen: c.baseAddress!, weights: wp.baseAddress!, probs: $0.baseAddress!) }
            }
        }
        XCTAssertEqual(chosen, [1, 3])
        XCTAssertEqual(w[0], 0.5, accuracy: 1e-6)
        XCTAssertEqual(w[1], 0.5, accuracy: 1e-6)
        let z = logits.map { expf($0) }.reduce(0, +)
        for j in 0..<4 { XCTAssertEqual(p[j], expf(logits[j]) / z, accuracy: 1e-6) }
        // k = 1 of three distinct logits: the largest, weight 1.
        var c1 = [0], w1: [Float] = [0]
        c1.withUnsafeMutableBufferPointer { c in w1.withUnsafeMutableBufferPointer { MixtureFFN.route([0.5, -1, 2], experts: 3, topK: 1, chosen: c.baseAddress!, weights: $0.baseAddress!) } }
        XCTAssertEqual(c1, [2]); XCTAssertEqual(w1[0], 1, accuracy: 1e-7)
    }

    /// Rows grouped by expert (the decode path's counting sort): each expert's rows in row order
    /// with their weights; an expert nobody chose gets an empty range.
    func testRowsGroupedByExpert() {
        // 3 rows, k = 2, 4 experts: row 0 → (2, 0), row 1 → (0, 3), row 2 → (2, 3); expert 1 unused.
        let chosen = [2, 0, 0, 3, 2, 3], w: [Float] = [0.6, 0.4, 0.7, 0.3, 0.5, 0.5]
        let groups = chosen.withUnsafeBufferPointer { c in
            w.withUnsafeBufferPointer { MixtureFFN.assignments(chosen: c.baseAddress!, weights: $0.baseAddress!, rows: 3, experts: 4, topK: 2) }
        }
        XCTAssertEqual(groups.map(\.rows), [[0, 1], [], [0, 2], [1, 2]])
        XCTAssertEqual(groups.map(\.weights), [[0.4, 0.7], [], [0.6, 0.5], [0.3, 0.5]])
    }

    /// With every expert equal, the routing weights sum to 1 and the mixture is that one expert:
    /// the same logits as a plain LoRA with its factors on gate, up and down (the plain path).
    func testEqualExpertsEqualPlainLoRA() throws {
        let model = TrainFixtures.model()
        let E = 3, r = 2
        let v = try MixLoRAVariant(config: model.config, options: options(steps: 1, rank: r), experts: E, topK: 2, loss: MixtureLoss(aux: 0, z: 0))
        TrainFixtures.randomize(v)
        for n in v.parameters.names where n.hasSuffix("_proj.lora_A") || n.hasSuffix("_proj.lora_B") {
            let isFFN = ["gate_proj", "up_proj", "down_proj"].contains { n.contains($0) }
            guard isFFN else { continue }
            var x = v.parameters[n]
            if n.hasSuffix("lora_A") {            // (E·r, in): copy expert 0's rows
                let block = x.count / E
                for e in 1..<E { for j in 0..<block { x[e * block + j] = x[j] } }
            } else {                              // (out, E·r): copy expert 0's columns
                let R = E * r, out = x.count / R
                for o in 0..<out { for e in 1..<E { for j in 0..<r { x[o * R + e * r + j] = x[o * R + j] } } }
            }
            v.parameters[n] = x
        }
        let mix = v.adapter(name: "mix", baseModel: nil)
        var plain = mix
        for (n, m) in mix.modules where m.rankGate != nil {
            let R = m.rank, out = m.outFeatures
            let A = Matrix(rows: r, cols: m.inFeatures, data: Array(m.A.data[0..<(r * m.inFeatures)]))
            let B = Matrix(rows: out, cols: r, data: (0..<(out * r)).map { m.B.data[($0 / r) * R + $0 % r] })
            plain.modules[n] = LoRAModule(A: A, B: B, scale: m.scale)
        }
        let tokens = [3, 17, 8, 41, 22, 9, 30]
        let a = try model.with([(mix, 1)]).logits(tokens: tokens), b = try model.with([(plain, 1)]).logits(tokens: tokens)
        XCTAssertLessThan(zip(a.data, b.data).map { abs($0 - $1) }.max()!, 1e-4)
        // And the mixture is not the base model.
        let base = try model.logits(tokens: tokens)
        XCTAssertGreaterThan(zip(a.data, base.data).map { abs($0 - $1) }.max()!, 1e-2)
    }

    /// The training forward gives the inference engine's loss.
    func testTrainingForwardMatchesInference() throws {
        for qwen in [false, true] {
            let model = TrainFixtures.model(qwen: qwen)
            let v = try MixLoRAVariant(config: model.config, options: options(steps: 1), experts: 4, topK: 2, loss: MixtureLoss(aux: 0.01, z: 0))
            TrainFixtures.randomize(v)
            let r = LlamaTrainingEngine(model: model).loss(TrainFixtures.batch(), lora: v.factors())
            XCTAssertEqual(r.nll / Double(r.tokens), try TrainFixtures.inferenceLoss(model, v.adapter(name: "m", baseModel: nil), TrainFixtures.batch()),
                           accuracy: 1e-5, "qwen \(qwen)")
        }
    }

    /// A zero router gives p = 1/E and (ties to the lower index) experts 0…k−1 for every row, so
    /// f_e = 1 for those, and aux = coef·E·Σ_{e<k} 1·(1/E) = coef·k; the z-loss is (log E)².
    func testAuxiliaryLossValue() throws {
        let model = TrainFixtures.model()
        let E = 4, k = 2
        let v = try MixLoRAVariant(config: model.config, options: options(steps: 1), experts: E, topK: k, loss: MixtureLoss(aux: 0.3, z: 0.05))
        for n in v.parameters.names where n.hasSuffix(".gate") { v.parameters[n] = v.parameters[n].map { _ in 0 } }
        let engine = LlamaTrainingEngine(model: model)
        let (loss, _) = engine.meanLossAndGradients(TrainFixtures.batch(), lora: v.factors())
        let lnE = log(Double(E)), want = 0.3 * Double(k) + 0.05 * lnE * lnE
        XCTAssertEqual(engine.balanceLoss, want, accuracy: 1e-5)
        // The returned loss includes it; a loss-only pass (evaluation) leaves it out.
        let r = engine.loss(TrainFixtures.batch(), lora: v.factors())
        XCTAssertEqual(loss, r.nll / Double(r.tokens) + want, accuracy: 1e-5)
        XCTAssertEqual(engine.balanceLoss, 0)
    }

    /// A, B and the routers against central differences, both auxiliary losses on and strong,
    /// with and without dropout (on the attention LoRA); the aux loss alone moves the routers.
    func testGradientsMatchFiniteDifferences() throws {
        for dropout: Float in [0, 0.3] {
            let model = TrainFixtures.model()
            let v = try MixLoRAVariant(config: model.config, options: options(steps: 1), experts: 4, topK: 2, loss: MixtureLoss(aux: 0.5, z: 0.2))
            TrainFixtures.randomize(v, seed: 8)
            TrainFixtures.checkVariantGradients(v, model: model, batch: TrainFixtures.batch(), dropout: dropout)
        }
        let model = TrainFixtures.model()
        let v = try MixLoRAVariant(config: model.config, options: options(steps: 1), experts: 4, topK: 1, loss: MixtureLoss(aux: 1, z: 0))
        // B = 0 (the initialisation): the LM loss does not depend on the routers, the aux loss does.
        for n in v.parameters.names where n.hasSuffix(".gate") { v.parameters[n] = v.parameters[n].map { $0 * 50 } }
        let g = v.parameterGradients(LlamaTrainingEngine(model: model).meanLossAndGradients(TrainFixtures.batch(), lora: v.factors()).grads)
        XCTAssertTrue(g.names.contains { $0.hasSuffix(".gate") && g[$0].contains { $0 != 0 } })
        TrainFixtures.checkVariantGradients(v, model: model, batch: TrainFixtures.batch())
    }

    /// Training lowers the loss; the folder has the authors' layout and reads back to the same
    /// modules and loss; fusion, merged mode and sets with other adapters refuse it; resume is exact.
    func testTrainWriteReadRefuseAndResume() throws {
        let model = TrainFixtures.model()
        var o = options(steps: 20)
        o.saveEvery = 10
        let data = TrainFixtures.copyData()
        let (v, after) = try TrainFixtures.trainAndResume({
            try MixLoRAVariant(config: model.config, options: o, experts: 3, topK: 2, loss: MixtureLoss(aux: 0.01, z: 0))
        }, model: model, options: o, data: data)
        let (dir, back) = try TrainFixtures.writeAndRead(v, expected: v.adapter(name: "m", baseModel: nil))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let st = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        for k in ["mixlora.layers.1.gate.weight", "mixlora.layers.0.self_attn.q_proj.lora_A.weight",
                  "mixlora.layers.1.experts.2.down_proj.lora_B.weight", "mixlora.layers.0.experts.0.up_proj.lora_A.weight"] {
            XCTAssertTrue(st.names.contains(k), k)
        }
        XCTAssertEqual(try st.info("mixlora.layers.1.gate.weight").shape, [3, model.config.hiddenSize])
        XCTAssertEqual(try st.info("mixlora.layers.1.experts.1.down_proj.lora_A.weight").shape, [2, model.config.intermediateSize])
        let config = try String(contentsOfFile: dir + "/adapter_config.json", encoding: .utf8)
        for s in ["\"peft_type\": \"MIXLORA\"", "\"num_experts\": 3", "\"top_k\": 2", "\"r\": 2", "\"routing_strategy\": \"mixtral\"",
                  "\"router_aux_loss_coef\": 0.01"] {
            XCTAssertTrue(config.contains(s), "\(s) in \(config)")
        }
        XCTAssertEqual(try TrainFixtures.inferenceLoss(model, back, data), after, accuracy: 1e-4)
        XCTAssertThrowsError(try Fuser.fuse([back, back], weights: [0.5, 0.5], method: LinearFusion())) { e in
            XCTAssertTrue("\(e)".contains("MixLoRA"), "\(e)")
        }
        XCTAssertThrowsError(try model.prepare([(back, 1)], mode: .merged)) { e in XCTAssertTrue("\(e)".contains("MixLoRA"), "\(e)") }
        let other = TrainFixtures.randomLoRA(model.config).adapter()
        XCTAssertThrowsError(try model.prepare([(back, 1), (other, 1)])) { e in XCTAssertTrue("\(e)".contains("MixLoRA"), "\(e)") }
    }

    /// The trainer logs the auxiliary loss beside the LM loss (loss.csv's aux_loss column, which
    /// reads back); a plain LoRA run leaves it empty, and the 7-column lines of older runs still parse.
    func testTrainerLogsTheAuxiliaryLoss() throws {
        let model = TrainFixtures.model()
        let o = options(steps: 2)
        let v = try MixLoRAVariant(config: model.config, options: o, experts: 3, topK: 1, loss: MixtureLoss(aux: 0.5, z: 0))
        let t = try LoRATrainer(model: model, train: TrainFixtures.copyData(), options: o, variant: v)
        let row = t.trainStep()
        let aux = try XCTUnwrap(row.auxLoss)
        XCTAssertGreaterThanOrEqual(aux, 0.5 - 1e-6, "coef·E·Σ f·P ≥ coef (equality when balanced)")
        XCTAssertEqual(StepLog.parse(csvLine: row.csvLine)?.auxLoss, row.auxLoss)
        let plain = try LoRATrainer(model: model, train: TrainFixtures.copyData(), options: o)
        let p = plain.trainStep()
        XCTAssertNil(p.auxLoss)
        XCTAssertTrue(p.csvLine.hasSuffix(","))
        XCTAssertEqual(StepLog.parse(csvLine: "3,0.001,1.5,,0.2,40,0.5")?.trainLoss, 1.5)
    }

    /// The options a MixLoRA run cannot take are refused by name.
    func testVariantRefusesBadOptions() throws {
        let c = TrainFixtures.model().config
        var o = options(steps: 1)
        XCTAssertThrowsError(try MixLoRAVariant(config: c, options: o, experts: 1, topK: 1, loss: MixtureLoss(aux: 0, z: 0))) { XCTAssertTrue("\($0)".contains("experts")) }
        XCTAssertThrowsError(try MixLoRAVariant(config: c, options: o, experts: 3, topK: 4, loss: MixtureLoss(aux: 0, z: 0))) { XCTAssertTrue("\($0)".contains("top-k")) }
        XCTAssertThrowsError(try MixLoRAVariant(config: c, options: o, experts: 3, topK: 2, loss: MixtureLoss(aux: -1, z: 0))) { XCTAssertTrue("\($0)".contains("aux-loss")) }
        o.targets = [.q, .v]
        XCTAssertThrowsError(try MixLoRAVariant(config: c, options: o, experts: 3, topK: 2, loss: MixtureLoss(aux: 0, z: 0))) { XCTAssertTrue("\($0)".contains("FFN")) }
    }

    /// The reader names what is wrong in a MixLoRA folder.
    func testReaderNamesBadFields() throws {
        let model = TrainFixtures.model()
        let v = try MixLoRAVariant(config: model.config, options: options(steps: 1), experts: 2, topK: 1, loss: MixtureLoss(aux: 0, z: 0))
        TrainFixtures.randomize(v)
        let (dir, _) = try TrainFixtures.writeAndRead(v, expected: v.adapter(name: "m", baseModel: nil))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try TrainFixtures.assertConfigEditsRefused(dir, [("\"num_experts\": 2", "\"num_experts\": 3", "gate.weight"),
                                                         ("\"num_experts\": 2", "\"num_experts\": 1", "experts.1"),
                                                         ("\"mixtral\"", "\"mixlora-switch\"", "routing_strategy"),
                                                         ("\"r\": 2", "\"r\": 3", "rank 3")])
    }
}
