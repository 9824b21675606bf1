import Foundation
import XCTest
@testable import LoRAFuse

/// Loss and LoRA gradients against PEFT + torch autograd (scripts/make_train_fixtures.py): the tiny
/// Llama (untied) and Qwen 2 (tied, q/k/v biases, rsLoRA) model fixtures with a rank-4 LoRA on all
/// seven projections, batch of two sequences, mean cross-entropy over the answer positions.
final class PEFTGradientParityTests: XCTestCase {
    static func path(_ name: String) -> String {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures/train/\(name)").path
    }

    /// Tolerance: max |Δ| ≤ 1e-4 · max |g| over each tensor (plus 1e-6 absolute for the tiniest
    /// tensors); the loss to 1e-5. Float32 on both sides; the observed worst is printed.
    private func check(_ tag: String, modelDir: String) throws {
        let model = try LlamaModel.load(path: ModelFixtures.path(modelDir))
        let ref = try SafetensorsFile(path: Self.path("\(tag)-grads.safetensors"))
        let adapter = try PEFTAdapter.read(directory: Self.path("\(tag)-lora"))
        let lora = try LoRAParameters(adapter: adapter, config: model.config)
        XCTAssertEqual(lora.modules.count, 7 * model.config.numHiddenLayers)
        var batch: [TrainingSequence] = []
        for i in 0..<2 {
            batch.append(TrainingSequence(tokens: try ref.floats("tokens\(i)").map { Int($0) },
                                          targets: try ref.floats("targets\(i)").map { Int($0) }))
        }
        let (loss, grads) = LlamaTrainingEngine(model: model).meanLossAndGradients(batch, lora: lora)
        XCTAssertEqual(loss, Double(try ref.floats("loss")[0]), accuracy: 1e-5, tag)
        var worst = 0.0
        for (i, m) in lora.modules.enumerated() {
            for (mine, key) in [(grads.dA[i], m.name + ".lora_A"), (grads.dB[i], m.name + ".lora_B")] {
                let theirs = try ref.floats(key)
                XCTAssertEqual(mine.count, theirs.count, key)
                let scale = Double(theirs.map(abs).max() ?? 0)
                let diff = Double(zip(mine, theirs).map { abs($0 - $1) }.max() ?? 0)
                worst = max(worst, diff / max(scale, 1e-12))
                XCTAssertLessThanOrEqual(diff, 1e-4 * scale + 1e-6, "\(tag) \(key): max |Δ| \(diff), scale \(scale)")
            }
        }
        print("PEFT gradient parity \(tag): loss \(loss), worst max|Δ|/max|g| = \(worst)")
    }

    func testLlamaMatchesPEFT() throws { try check("llama", modelDir: "tiny-llama") }
    func testQwen2TiedBiasedRSLoRAMatchesPEFT() throws { try check("qwen2", modelDir: "tiny-qwen2") }
}
