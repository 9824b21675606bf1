import Foundation
import XCTest
@testable import LoRAFuse

/// Examples and context sizes are checked against the model's context length before anything is
/// allocated for them: eval, train (and fuse / ICM, which read examples through the same
/// `TrainingData.sequences`), generate.
final class ContextLengthTests: XCTestCase {
    private func model(context: Int) -> FakeBigramModel {
        let m = FakeBigramModel(next: [:], boost: 1)
        m.contextLength = context
        return m
    }

    private func task(_ answers: [String], path: String = "/data/t.jsonl") -> EvalTask {
        EvalTask(name: "t", path: path,
                 examples: answers.enumerated().map { EvalExample(prompt: "hi", answer: $1, line: $0 + 1) })
    }

    /// Tokens of a "hi" prompt + `answer` + end of turn with the tiny one-token-per-character tokenizer.
    private func length(_ answer: String) throws -> Int {
        let ev = Evaluator(model: FakeBigramModel(next: [:], boost: 1))
        return try ev.promptTokens("hi").count + ev.answerTokens(answer).count
    }

    func testEvalRejectsTooLongExampleNamingFileAndLine() throws {
        let fits = try length("ok")
        let m = model(context: fits + 3)
        let long = String(repeating: "a", count: 20)
        let ev = Evaluator(model: m, options: EvalOptions(computeAccuracy: false))
        XCTAssertThrowsError(try ev.evaluate([task(["ok", long])])) { error in
            XCTAssertEqual(error as? ContextLengthError,
                           .exampleTooLong(file: "/data/t.jsonl", line: 2, tokens: try! self.length(long), contextLength: fits + 3))
            XCTAssertTrue("\(error)".hasPrefix("/data/t.jsonl:2: example is"), "\(error)")
        }
        XCTAssertEqual(m.sessionsMade, 0, "nothing is allocated for a run that cannot fit")
        // An example of exactly the context length is fine.
        XCTAssertNoThrow(try Evaluator(model: model(context: fits), options: EvalOptions(computeAccuracy: false))
            .evaluate([task(["ok"])]))
    }

    func testGreedyDecodingStopsAtTheContextLength() throws {
        // Accuracy decoding may want up to 32 new tokens; the session never exceeds the context.
        let fits = try length("ok")
        let m = FakeBigramModel(next: [TinyChat.id("a"): TinyChat.id("a"), TinyChat.id("Ċ"): TinyChat.id("a")], boost: 5)
        m.contextLength = fits
        let r = try Evaluator(model: m).evaluate([task(["ok"])])
        XCTAssertEqual(r.tasks["t"]?.examples, 1)
    }

    func testHugeTextIsRejectedBeforeTokenizing() throws {
        // Every byte has a token here (in TinyChat's alphabet most bytes have none and would be dropped,
        // so no bytes-per-token bound holds: `longestTokenBytes` is nil there).
        XCTAssertNil(TinyChat.tokenizer.longestTokenBytes)
        let bytes = (0..<256).map { String(Character(ByteLevel.byteToScalar[$0])) }
        let tok = try BPETokenizer(tokens: TinyChat.specials + bytes, merges: [],
                                   tokenTypes: TinyChat.specials.map { _ in 3 } + bytes.map { _ in 1 },
                                   preTokenizer: .gpt2, eosId: 0, chatTemplate: TinyChat.template)
        let m = FakeBigramModel(tokenizer: tok, next: [:], boost: 1)
        m.contextLength = 64
        let longest = try XCTUnwrap(m.tokenizer.longestTokenBytes)
        XCTAssertEqual(longest, "<|endoftext|>".utf8.count)
        let huge = String(repeating: "a", count: 64 * longest + 1)
        XCTAssertThrowsError(try Evaluator(model: m).evaluate([task([huge])])) { error in
            XCTAssertEqual(error as? ContextLengthError,
                           .exampleTooLarge(file: "/data/t.jsonl", line: 1, bytes: huge.utf8.count + 2, contextLength: 64,
                                            longestToken: longest))
        }
        XCTAssertTrue(m.tokenizer.surelyExceeds(bytes: 10_000_000, limit: 8192))
        XCTAssertFalse(m.tokenizer.surelyExceeds(bytes: 64 * longest, limit: 64))
        XCTAssertFalse(m.tokenizer.surelyExceeds(bytes: 10_000_000, limit: Int.max), "no context limit, no bound")
    }

    func testTrainingDataRejectsTooLongExample() throws {
        let fits = try length("ok")
        let long = String(repeating: "b", count: 50)
        XCTAssertThrowsError(try TrainingData.sequences(task(["ok", "ok", long], path: "train.jsonl"), model: model(context: fits))) { error in
            XCTAssertEqual(error as? ContextLengthError,
                           .exampleTooLong(file: "train.jsonl", line: 3, tokens: try! self.length(long), contextLength: fits))
        }
        XCTAssertEqual(try TrainingData.sequences(task(["ok"]), model: model(context: fits)).count, 1)
    }

    func testChatContextLargerThanModelIsRejected() throws {
        let m = model(context: 100)
        let gen = Generator(model: m, sampler: try Sampler(temperature: 0, topP: 1, seed: 0), maxTokens: 4)
        XCTAssertThrowsError(try ChatConversation(model: m, generator: gen, contextSize: 101)) { error in
            XCTAssertEqual(error as? ContextLengthError, .contextTooLarge(option: "context size", requested: 101, contextLength: 100))
        }
        XCTAssertNoThrow(try ChatConversation(model: m, generator: gen, contextSize: 100))
    }

    func testLlamaContextLengthIsMaxPositionEmbeddings() throws {
        let dir = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/model/tiny-llama").path
        let m = try LlamaModel.load(path: dir)
        XCTAssertEqual(m.contextLength, 128)
        XCTAssertThrowsError(try m.checkContext(129)) { error in
            XCTAssertEqual("\(error)", "--context 129 is larger than the model's context length 128")
        }
        XCTAssertNoThrow(try m.checkContext(128))
    }

    // MARK: CLI (the real SmolLM2 model: 8192 positions)

    private func smolOrSkip() throws -> String {
        let path = ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: path) else {
            // Setup always fetches it; a missing model is a failure, not a skip.
            struct MissingModel: Error, CustomStringConvertible { var description: String }
            throw MissingModel(description: "SmolLM2 model missing at \(path): run scripts/setup.sh (or `make test`)")
        }
        return path
    }

    private func tmpDir() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("lf-ctx-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func testGenerateRejectsContextLargerThanModel() throws {
        let model = try smolOrSkip()
        let r = try CLITests.run(["generate", "--model", model, "--prompt", "hi", "--context", "100000"])
        XCTAssertNotEqual(r.code, 0)
        XCTAssertTrue(r.stderr.contains("--context 100000 is larger than the model's context length 8192"), r.stderr)
    }

    func testEvalAndTrainNameTheTooLongLine() throws {
        let model = try smolOrSkip()
        let dir = try tmpDir()
        let data = dir + "/long.jsonl"
        // Line 2: ~9000 tokens ("a" repeated with spaces is one token per word); line 3: 3 MB, refused
        // before tokenizing. Line 1 is fine.
        let long = String(repeating: " a", count: 9000)
        let huge = String(repeating: "x", count: 3_000_000)
        try ("{\"prompt\": \"What is 2 + 3?\", \"answer\": \"5\"}\n"
             + "{\"prompt\": \"Repeat.\", \"answer\": \"\(long)\"}\n"
             + "{\"prompt\": \"\(huge)\", \"answer\": \"5\"}\n").write(toFile: data, atomically: true, encoding: .utf8)
        for args in [["eval", "--model", model, "--data", data, "--no-accuracy"],
                     ["train", "--model", model, "--data", data, "-o", dir + "/out", "--steps", "1", "--quiet"]] {
            let r = try CLITests.run(args)
            XCTAssertNotEqual(r.code, 0, args[0])
            XCTAssertTrue(r.stderr.contains("\(data):2: example is"), "\(args[0]): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("the model's context length is 8192"), "\(args[0]): \(r.stderr)")
        }
        // Without line 2 the 3 MB line is the error, found without tokenizing it.
        let data3 = dir + "/huge.jsonl"
        try ("{\"prompt\": \"What is 2 + 3?\", \"answer\": \"5\"}\n\n"
             + "{\"prompt\": \"\(huge)\", \"answer\": \"5\"}\n").write(toFile: data3, atomically: true, encoding: .utf8)
        let r = try CLITests.run(["eval", "--model", model, "--data", data3, "--no-accuracy"])
        XCTAssertNotEqual(r.code, 0)
        XCTAssertTrue(r.stderr.contains("\(data3):3: example text is 3000001 bytes"), r.stderr)
    }
}
