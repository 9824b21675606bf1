import Foundation
import XCTest
@testable import LoRAFuse

/// SMoRA (`train --variant smora`): the router's choice and weights, gradients of A, B and the
/// router, training, the folder, and what refuses it.
final class SMoRATests: XCTestCase {
    private func options(steps: Int, rank: Int = 6, seed: UInt64 = 4) -> TrainingOptions {
        TrainFixtures.variantOptions(steps: steps, rank: rank, seed: seed)
    }

    private func data(_ shift: Int = 0) -> [TrainingSequence] { TrainFixtures.copyData(shift: shift) }

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

    /// The training forward gives the inference engine's loss.
    func testTrainingForwardMatchesInference() throws {
        let model = TrainFixtures.model()
        let v = try SMoRAVariant(config: model.config, options: options(steps: 1), topK: 2, biasRate: 0.01)
        TrainFixtures.randomize(v)
        let r = LlamaTrainingEngine(model: model).loss(TrainFixtures.batch(), lora: v.factors())
        XCTAssertEqual(r.nll / Double(r.tokens), try TrainFixtures.inferenceLoss(model, v.adapter(name: "s", baseModel: nil), TrainFixtures.batch()),
                       accuracy: 1e-5)
    }

    /// A, B and the router against central differences (kinks where a top-k flips skipped, at
    /// most a quarter), with and without dropout on the adapter input.
    func testGradientsMatchFiniteDifferences() throws {
        for dropout: Float in [0, 0.3] {
            let model = TrainFixtures.model()
            let v = try SMoRAVariant(config: model.config, options: options(steps: 1), topK: 3, biasRate: 0.01)
            TrainFixtures.randomize(v, seed: 8)
            TrainFixtures.checkVariantGradients(v, model: model, batch: TrainFixtures.batch(), dropout: dropout)
            let g = v.parameterGradients(LlamaTrainingEngine(model: model).meanLossAndGradients(TrainFixtures.batch(), lora: v.factors()).grads)
            XCTAssertTrue(g.names.contains { $0.hasSuffix("lora_router") && g[$0].contains { $0 != 0 } })
        }
    }

    /// Training lowers the loss and moves the router; the folder reads back with the router and
    /// gives the trainer's loss; fusion and dense operations refuse it; resume is exact.
    func testTrainWriteReadRefuseAndResume() throws {
        let model = TrainFixtures.model()
        var o = options(steps: 20)
        o.saveEvery = 10
        let router0 = try SMoRAVariant(config: model.config, options: o, topK: 2, biasRate: 0.01).parameters
        let (v, after) = try TrainFixtures.trainAndResume({
            try SMoRAVariant(config: model.config, options: o, topK: 2, biasRate: 0.01)
        }, model: model, options: o, data: data())
        let routers = v.parameters.names.filter { $0.hasSuffix("lora_router") }
        XCTAssertNotEqual(routers.map { v.parameters[$0] }, routers.map { router0[$0] })

        let (dir, back) = try TrainFixtures.writeAndRead(v, expected: v.adapter(name: "s", baseModel: nil))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let st = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        XCTAssertTrue(st.names.contains("base_model.model.model.layers.1.mlp.down_proj.lora_router.weight"))
        XCTAssertEqual(try TrainFixtures.inferenceLoss(model, back, data()), after, accuracy: 1e-4)
        XCTAssertThrowsError(try Fuser.fuse([back, back], weights: [0.5, 0.5], method: LinearFusion())) { e in
            XCTAssertTrue("\(e)".contains("a router is trained per adapter"), "\(e)")
        }
        XCTAssertThrowsError(try model.prepare([(back, 1)], mode: .merged)) { e in
            XCTAssertTrue("\(e)".contains("SMoRA adapter"), "\(e)")
        }
    }
}
