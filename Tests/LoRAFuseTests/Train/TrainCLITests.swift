import Foundation
import XCTest
@testable import LoRAFuse

/// `lorafuse train` end to end on the real SmolLM2 model (2 tiny steps): outputs, checkpoints, and
/// that the loss before training equals `lorafuse eval`'s (B = 0 at init, so the adapter is a no-op).
final class TrainCLITests: XCTestCase {
    private func run(_ args: [String]) throws -> CLITests.Run { try CLITests.run(args) }

    func testTrainWritesAdapterCurveAndCheckpoints() throws {
        let modelPath = ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: modelPath) else {
            return XCTFail("SmolLM2 model missing at \(modelPath): run scripts/setup.sh (or `make test`) to fetch it")
        }
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-train-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let data = tmp + "/d.jsonl"
        try """
        {"prompt": "What is 2 + 3? Reply with the number only.", "answer": "5"}
        {"prompt": "What is 10 + 4? Reply with the number only.", "answer": "14"}
        """.write(toFile: data, atomically: true, encoding: .utf8)
        let out = tmp + "/out"
        let r = try run(["train", "--data", data, "--val", data, "-o", out, "--rank", "2", "--targets", "q,v",
                             "--steps", "2", "--batch", "1", "--lr", "1e-3", "--save-every", "1", "--keep", "1",
                             "--eval-every", "1", "--dtype", "bf16", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("trained 2 steps"), r.stdout)
        let ad = try PEFTAdapter.read(directory: out)
        XCTAssertEqual(ad.modules.count, 2 * 30)
        XCTAssertEqual(ad.sourceDType, .bf16)
        XCTAssertEqual(Set(ad.metadata.targetModules), ["q_proj", "v_proj"])
        XCTAssertEqual(LoRATrainer.checkpointSteps(in: out), [2])
        let csv = try String(contentsOfFile: out + "/loss.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.count, 3)
        XCTAssertTrue(csv[0].hasPrefix("step,lr,train_loss,val_loss"))
        // Step 1 trains with B = 0: its train loss is the base model's loss on the same examples
        // (batch 1: one example), which eval computes through the inference engine.
        let s1 = try XCTUnwrap(StepLog.parse(csvLine: String(csv[1])))
        let model = try SmolLM2ParityTests.model()     // shared with the parity tests
        let task = try TaskData.read(path: data)
        let ev = Evaluator(model: model, options: EvalOptions(computeAccuracy: false))
        let losses = try task.examples.map { ex -> Double in let s = try ev.score(ex); return s.nll / Double(s.tokens) }
        XCTAssertTrue(losses.contains { abs($0 - s1.trainLoss) < 1e-3 }, "step-1 loss \(s1.trainLoss) vs eval \(losses)")
        XCTAssertNotNil(s1.valLoss)
        let svg = try String(contentsOfFile: out + "/loss.svg", encoding: .utf8)
        XCTAssertTrue(svg.contains("<polyline") && svg.contains("val loss"))
    }
}
