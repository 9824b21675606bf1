import Foundation
import XCTest
@testable import LoRAFuse

final class ExpertTableTests: XCTestCase {
    private func r(_ loss: Double, _ acc: Double?) -> TaskEvalResult {
        TaskEvalResult(loss: loss, perplexity: exp(loss), accuracy: acc, examples: 50, tokens: 200)
    }

    func testClearlyBetterNeedsHalfTheLossAndHigherAccuracy() {
        XCTAssertTrue(ExpertRow.isClearlyBetter(base: r(2.0, 0.1), expert: r(1.0, 0.5)))
        XCTAssertFalse(ExpertRow.isClearlyBetter(base: r(2.0, 0.1), expert: r(1.01, 0.9)), "loss not halved")
        XCTAssertFalse(ExpertRow.isClearlyBetter(base: r(2.0, 0.3), expert: r(0.2, 0.3)), "accuracy not higher")
        XCTAssertTrue(ExpertRow.isClearlyBetter(base: r(0.4, 1), expert: r(0.1, 1)), "both perfect: loss decides")
        XCTAssertTrue(ExpertRow.isClearlyBetter(base: r(2.0, nil), expert: r(0.9, nil)))
    }

    func testMarkdownTableMeansAndVerdict() {
        let t = ExpertTable(split: "test", rows: [
            ExpertRow(task: "a", base: r(2, 0), expert: r(0.5, 0.8), clearlyBetter: true),
            ExpertRow(task: "b", base: r(1, 0.2), expert: r(0.8, 0.2), clearlyBetter: false),
        ])
        XCTAssertEqual(t.meanBaseLoss, 1.5)
        XCTAssertEqual(t.meanExpertLoss, 0.65, accuracy: 1e-12)
        let md = t.markdown()
        XCTAssertTrue(md.contains("| a | 2.000 | 0.500 | 0.00 | 0.80 | yes |"), md)
        XCTAssertTrue(md.contains("| b | 1.000 | 0.800 | 0.20 | 0.20 | **no** |"), md)
        XCTAssertTrue(md.contains("| **mean** | 1.500 | 0.650 | 0.10 | 0.50 | 1/2 |"), md)
        XCTAssertTrue(md.contains("Not clearly better than the base (test loss at most half and higher accuracy): b."), md)
    }

    func testTrainingRecordRoundTripsAndSummarisesTheLog() throws {
        var o = TrainingOptions()
        o.rank = 4; o.steps = 2; o.dtype = .bf16; o.targets = [.q, .v]
        let log = [StepLog(step: 1, lr: 1e-3, trainLoss: 2.5, valLoss: nil, gradNorm: 1, tokens: 100, seconds: 0.5),
                   StepLog(step: 2, lr: 5e-4, trainLoss: 1.5, valLoss: 1.7, gradNorm: 1, tokens: 120, seconds: 0.7)]
        let rec = TrainingRecord(options: o, data: "t.jsonl", val: nil, model: "/m/x.gguf", examples: 8, log: log,
                                 wallSeconds: 2, finished: Date(timeIntervalSince1970: 0))
        XCTAssertEqual(rec.baseModel, "x.gguf")
        XCTAssertEqual(rec.steps, 2)
        XCTAssertEqual(rec.trainedTokens, 220)
        XCTAssertEqual(rec.stepSeconds, 1.2, accuracy: 1e-12)
        XCTAssertEqual(rec.firstTrainLoss, 2.5)
        XCTAssertEqual(rec.finalTrainLoss, 1.5)
        XCTAssertEqual(rec.finalValLoss, 1.7)
        XCTAssertEqual(rec.targets, ["q", "v"])
        XCTAssertEqual(rec.dtype, "bf16")
        XCTAssertEqual(rec.started, "1970-01-01T00:00:00Z")
        let back = try JSONDecoder().decode(TrainingRecord.self, from: Data(try rec.json().utf8))
        XCTAssertEqual(back, rec)
    }
}
