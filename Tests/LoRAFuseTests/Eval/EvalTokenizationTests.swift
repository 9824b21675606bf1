import Foundation
import XCTest
@testable import LoRAFuse

/// The evaluator's prompt and answer token ids for the parity task, checked against the ids
/// scripts/make_eval_fixtures.py used with transformers (SmolLM2's tokenizer and chat template, with
/// the model's own "smollm" pre-tokenizer). Needs only the tokenizer fixture, not the model.
final class EvalTokenizationTests: XCTestCase {
    private static func fixture(_ path: String) -> URL {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures/\(path)")
    }

    func testPromptAndAnswerIdsMatchTransformers() throws {
        let metaData = try Data(contentsOf: Self.fixture("tokenizer/smollm2_vocab.json"))
        let meta = try XCTUnwrap(JSONSerialization.jsonObject(with: metaData) as? [String: Any])
        let smol = try BPETokenizer.fromGGUFMetadata { meta[$0].flatMap { $0 is NSNull ? nil : $0 } }
        let ev = Evaluator(model: FakeBigramModel(tokenizer: smol, next: [:], boost: 0))

        let expData = try Data(contentsOf: Self.fixture("eval/expected.json"))
        let expected = try XCTUnwrap(JSONSerialization.jsonObject(with: expData) as? [String: Any])
        XCTAssertEqual(try ev.endOfTurnId(), (expected["eot_id"] as! NSNumber).intValue)
        let task = try TaskData.read(path: Self.fixture("eval/arith.jsonl").path)
        XCTAssertEqual(task.name, expected["task"] as? String)
        for key in ["base", "with_adapter"] {
            let examples = try XCTUnwrap((expected[key] as? [String: Any])?["examples"] as? [[String: Any]])
            XCTAssertEqual(examples.count, task.examples.count)
            for (ex, want) in zip(task.examples, examples) {
                func ints(_ k: String) -> [Int] { (want[k] as! [Any]).map { ($0 as! NSNumber).intValue } }
                XCTAssertEqual(ex.line, (want["line"] as! NSNumber).intValue)
                XCTAssertEqual(try smol.applyChatTemplate([ChatMessage(role: "user", content: ex.prompt)]), want["rendered"] as? String)
                XCTAssertEqual(try ev.promptTokens(ex.prompt), ints("prompt_ids"), "line \(ex.line)")
                XCTAssertEqual(try ev.answerTokens(ex.answer), ints("answer_ids"), "line \(ex.line)")
                // The reference's greedy text is the plain decoding of its ids, as the Generator streams it.
                XCTAssertEqual(smol.decode(ints("greedy_ids")), want["greedy_text"] as? String)
                XCTAssertEqual(Evaluator.matches(want["greedy_text"] as! String, ex.answer), want["correct"] as? Bool)
            }
        }
    }
}
