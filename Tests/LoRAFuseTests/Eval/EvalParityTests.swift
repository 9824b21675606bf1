import Foundation
import XCTest
@testable import LoRAFuse

/// Evaluator parity with transformers + PEFT on the real SmolLM2-135M-Instruct GGUF.
/// Reference: scripts/make_eval_fixtures.py → Tests/LoRAFuseTests/Fixtures/eval/expected.json
/// (transformers dequantizes the same GGUF to float32; the adapter is a random r=4 PEFT LoRA on
/// q_proj/v_proj saved as float16, applied unmerged here).
final class EvalParityTests: XCTestCase {
    private static func fixture(_ name: String) -> URL {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures/eval/\(name)")
    }

    private static func loadModel() throws -> LlamaModel {
        let path = ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("model file missing at \(path): run scripts/setup.sh (make test does)")
            throw CocoaError(.fileNoSuchFile)
        }
        return try LlamaModel.load(path: path, compute: .f32)   // the reference path, as transformers computes
    }

    private struct Expected {
        struct Example {
            var promptIds: [Int], answerIds: [Int], nll: Double, greedyIds: [Int], greedyMargins: [Double]
            var greedyText: String, correct: Bool
        }
        var examples: [Example]
        var loss: Double, perplexity: Double, accuracy: Double, tokens: Int
    }

    private static func expected(_ key: String) throws -> Expected {
        let data = try Data(contentsOf: fixture("expected.json"))
        let root = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let cfg = try XCTUnwrap(root[key] as? [String: Any])
        let task = try XCTUnwrap(cfg["task"] as? [String: Any])
        func ints(_ v: Any?) -> [Int] { (v as! [Any]).map { ($0 as! NSNumber).intValue } }
        func doubles(_ v: Any?) -> [Double] { (v as! [Any]).map { ($0 as! NSNumber).doubleValue } }
        let examples = (cfg["examples"] as! [[String: Any]]).map { e in
            Expected.Example(promptIds: ints(e["prompt_ids"]), answerIds: ints(e["answer_ids"]),
                             nll: (e["nll"] as! NSNumber).doubleValue, greedyIds: ints(e["greedy_ids"]),
                             greedyMargins: doubles(e["greedy_margins"]), greedyText: e["greedy_text"] as! String,
                             correct: e["correct"] as! Bool)
        }
        return Expected(examples: examples, loss: (task["loss"] as! NSNumber).doubleValue,
                        perplexity: (task["perplexity"] as! NSNumber).doubleValue,
                        accuracy: (task["accuracy"] as! NSNumber).doubleValue, tokens: (task["tokens"] as! NSNumber).intValue)
    }

    /// Compares one configuration: token ids first, then per-example NLL, the task's loss/perplexity/
    /// accuracy, and greedy tokens up to the first step whose top-2 logit gap in the reference is too
    /// small for float32 differences (accumulation order, quantized weights) to be sure of the argmax.
    private func check(_ model: any CausalLM, _ key: String) throws {
        let want = try Self.expected(key)
        let task = try TaskData.read(path: Self.fixture("arith.jsonl").path)
        XCTAssertEqual(task.examples.count, want.examples.count)
        let ev = Evaluator(model: model)
        for (ex, w) in zip(task.examples, want.examples) {
            XCTAssertEqual(try ev.promptTokens(ex.prompt), w.promptIds, "\(key) line \(ex.line): prompt ids")
            XCTAssertEqual(try ev.answerTokens(ex.answer), w.answerIds, "\(key) line \(ex.line): answer ids")
        }
        var totalNLL = 0.0, tokens = 0
        for (ex, w) in zip(task.examples, want.examples) {
            let s = try Evaluator(model: model, options: EvalOptions(computeAccuracy: false)).score(ex)
            XCTAssertEqual(s.tokens, w.answerIds.count)
            XCTAssertEqual(s.nll, w.nll, accuracy: 2e-3 * Double(w.answerIds.count), "\(key) line \(ex.line): NLL")
            totalNLL += s.nll
            tokens += s.tokens

            var gen = Generator(model: model, sampler: .greedy, maxTokens: 32, stopIds: [2], skipSpecial: false)
            let session = try model.makeSession(maxTokens: w.promptIds.count + 32)
            let r = try gen.generate(session: session, prompt: w.promptIds)
            let sure = w.greedyMargins.firstIndex(where: { $0 < 0.05 }) ?? w.greedyMargins.count
            let n = min(sure, w.greedyIds.count)
            XCTAssertEqual(Array(r.tokens.prefix(n)), Array(w.greedyIds.prefix(n)), "\(key) line \(ex.line): greedy ids")
            if sure == w.greedyMargins.count {
                XCTAssertEqual(r.tokens, w.greedyIds, "\(key) line \(ex.line)")
                XCTAssertEqual(r.text, w.greedyText, "\(key) line \(ex.line)")
            }
        }
        XCTAssertEqual(tokens, want.tokens)
        XCTAssertEqual(totalNLL / Double(tokens), want.loss, accuracy: 2e-3)

        let report = try ev.evaluate([task])
        let t = try XCTUnwrap(report.tasks["arith"])
        // The bar: task loss within 1e-3 relative of transformers + PEFT.
        XCTAssertEqual(t.loss, want.loss, accuracy: 1e-3 * want.loss, key)
        XCTAssertEqual(t.perplexity, want.perplexity, accuracy: 2e-3 * want.perplexity, key)
        XCTAssertEqual(t.tokens, want.tokens)
        XCTAssertEqual(try XCTUnwrap(t.accuracy), want.accuracy, accuracy: 1e-12, key)
    }

    func testBaseModelMatchesTransformers() throws {
        try check(try Self.loadModel(), "base")
    }

    func testUnmergedAdapterMatchesPEFT() throws {
        let model = try Self.loadModel()
        let adapter = try AdapterIO.read(path: Self.fixture("adapter").path)
        try check(try model.with([(adapter, 1)], mode: .unmerged), "with_adapter")
        // The adapter changes the loss by more than the tolerance, so the test would notice it missing.
        let want = try Self.expected("with_adapter"), base = try Self.expected("base")
        XCTAssertGreaterThan(abs(want.loss - base.loss), 1e-2)
    }
}
