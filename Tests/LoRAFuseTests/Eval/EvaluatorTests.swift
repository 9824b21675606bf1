import Foundation
import XCTest
@testable import LoRAFuse

final class EvaluatorTests: XCTestCase {
    private let c: Float = 3
    private var n: Double { Double(TinyChat.tokenizer.vocabSize) }
    /// −log p when the target is the boosted next token, when another token is boosted, and when the
    /// row is flat: log(n − 1 + e^c) − c, log(n − 1 + e^c), log n.
    private var hit: Double { log(n - 1 + exp(Double(c))) - Double(c) }
    private var miss: Double { log(n - 1 + exp(Double(c))) }
    private var flat: Double { log(n) }

    /// After the prompt's final "\n" the model says "5" then ends its turn; after "1" it says "2", after
    /// "2" it ends its turn.
    private func arithModel() -> FakeBigramModel {
        let id = TinyChat.id
        return FakeBigramModel(next: [id("Ċ"): id("5"), id("5"): TinyChat.eot, id("1"): id("2"), id("2"): TinyChat.eot],
                               boost: c)
    }

    private let arith = EvalTask(name: "arith", examples: [
        EvalExample(prompt: "What is 2+3?", answer: "5", line: 1),
        EvalExample(prompt: "What is 3+4?", answer: "7", line: 2),
        EvalExample(prompt: "What is 6+6?", answer: "12", line: 3),
    ])
    private let spaced = EvalTask(name: "spaced", examples: [EvalExample(prompt: "Say five.", answer: " 5 ", line: 1)])

    func testPromptIsOneUserTurnWithDefaultSystemAndGenerationPrompt() throws {
        let ev = Evaluator(model: arithModel())
        let p = try ev.promptTokens("Hi?")
        let text = "<|im_start|>system\nYou are a test bot.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        XCTAssertEqual(TinyChat.tokenizer.decode(p), text)
        XCTAssertEqual(p.first, 1)
        XCTAssertEqual(p.last, TinyChat.id("Ċ"))
    }

    func testAnswerTokensAreAnswerTextThenEndOfTurn() throws {
        let ev = Evaluator(model: arithModel())
        XCTAssertEqual(try ev.answerTokens("12"), [TinyChat.id("1"), TinyChat.id("2"), TinyChat.eot])
        XCTAssertEqual(try ev.answerTokens(" 5 "), [TinyChat.id("Ġ"), TinyChat.id("5"), TinyChat.id("Ġ"), TinyChat.eot])
        XCTAssertEqual(try ev.answerTokens(""), [TinyChat.eot])
        XCTAssertEqual(try ev.endOfTurnId(), 2, "<|im_end|>, not EOS <|endoftext|>")
        // The loss feed is the prompt then the answer tokens without the last (which is only predicted),
        // in one batch. Greedy's first token "5" comes from the loss pass's last prompt row; it is not
        // "1", so without early stop the session is cut back to the prompt and "5" fed alone (the
        // prompt is never fed twice); with early stop "5" already rules out "12" and nothing is fed.
        let m = arithModel()
        let full = try Evaluator(model: m, options: EvalOptions(earlyStop: false))
            .score(EvalExample(prompt: "What is 6+6?", answer: "12"))
        let p = try Evaluator(model: m).promptTokens("What is 6+6?")
        XCTAssertEqual(m.feeds, [p + [TinyChat.id("1"), TinyChat.id("2")], [TinyChat.id("5")]])
        XCTAssertEqual(m.truncations, [p.count])
        XCTAssertEqual(full.output, "5")
        XCTAssertEqual(m.sessionsMade, 1, "one session per example")
        let m2 = arithModel()
        let early = try Evaluator(model: m2).score(EvalExample(prompt: "What is 6+6?", answer: "12"))
        XCTAssertEqual(m2.feeds, [p + [TinyChat.id("1"), TinyChat.id("2")]])
        XCTAssertEqual(early.output, "5")
        XCTAssertEqual(early.correct, false)
    }

    func testLossPerplexityAccuracyByHand() throws {
        let m = arithModel()
        var seen: [EvalProgress] = []
        let report = try Evaluator(model: m).evaluate([arith, spaced]) { seen.append($0) }

        // arith: "5" → [5, eot]: hit, hit.  "7" → [7, eot]: miss, flat (nothing follows 7).
        // "12" → [1, 2, eot]: miss, hit, hit.  Greedy always answers "5": 1 of 3 correct.
        let a = try XCTUnwrap(report.tasks["arith"])
        let arithLoss = (2 * hit + miss + flat + miss + 2 * hit) / 7
        XCTAssertEqual(a.loss, arithLoss, accuracy: 1e-12)
        XCTAssertEqual(a.perplexity, exp(arithLoss), accuracy: 1e-9)
        XCTAssertEqual(a.tokens, 7)
        XCTAssertEqual(a.examples, 3)
        XCTAssertEqual(try XCTUnwrap(a.accuracy), 1.0 / 3.0, accuracy: 1e-15)

        // spaced: " 5 " → [Ġ, 5, Ġ, eot]: miss, flat, miss, flat; greedy "5" equals " 5 " trimmed.
        let s = try XCTUnwrap(report.tasks["spaced"])
        let spacedLoss = (2 * miss + 2 * flat) / 4
        XCTAssertEqual(s.loss, spacedLoss, accuracy: 1e-12)
        XCTAssertEqual(s.accuracy, 1)
        XCTAssertEqual(s.tokens, 4)

        XCTAssertEqual(report.meanLoss, (arithLoss + spacedLoss) / 2, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(report.meanAccuracy), (1.0 / 3.0 + 1) / 2, accuracy: 1e-15)
        XCTAssertEqual(report.order, ["arith", "spaced"])

        XCTAssertEqual(seen.map(\.done), [1, 2, 3, 4])
        XCTAssertEqual(seen.map(\.total), [4, 4, 4, 4])
        XCTAssertEqual(seen.map(\.task), ["arith", "arith", "arith", "spaced"])
        XCTAssertEqual(seen.map(\.taskDone), [1, 2, 3, 1])
    }

    func testLossIsTokenWeightedAcrossExamples() throws {
        let ev = Evaluator(model: arithModel(), options: EvalOptions(computeAccuracy: false))
        let s = try arith.examples.map { try ev.score($0) }
        XCTAssertEqual(s.map(\.tokens), [2, 2, 3])
        XCTAssertEqual(s[0].nll, 2 * hit, accuracy: 1e-12)
        XCTAssertEqual(s[1].nll, miss + flat, accuracy: 1e-12)
        XCTAssertEqual(s[2].nll, miss + 2 * hit, accuracy: 1e-12)
        let r = try ev.evaluate(arith)
        let weighted = s.map(\.nll).reduce(0, +) / 7
        let perExampleMean = s.map { $0.nll / Double($0.tokens) }.reduce(0, +) / 3
        XCTAssertEqual(r.loss, weighted, accuracy: 1e-12)
        XCTAssertGreaterThan(abs(weighted - perExampleMean), 1e-3, "the two averages differ on this data")
        XCTAssertNil(r.accuracy)
        XCTAssertNil(s[0].correct)
    }

    func testGreedyStopsAtEndOfTurn() throws {
        let m = arithModel()
        let s = try Evaluator(model: m).score(EvalExample(prompt: "What is 2+3?", answer: "5"))
        XCTAssertEqual(s.output, "5")
        XCTAssertEqual(s.correct, true)
        // Greedy follows the answer's tokens "5", end-of-turn: both come from the loss pass's rows.
        XCTAssertEqual(m.feeds.count, 1, "only the loss feed; a right answer costs no decoding pass")
        XCTAssertEqual(m.truncations, [])
    }

    func testGreedyStopsAfter32Tokens() throws {
        let a = TinyChat.id("a")
        let m = FakeBigramModel(next: [TinyChat.id("Ċ"): a, a: a], boost: c)
        let s = try Evaluator(model: m, options: EvalOptions(earlyStop: false)).score(EvalExample(prompt: "Go", answer: "a"))
        XCTAssertEqual(s.output, String(repeating: "a", count: 32))
        XCTAssertEqual(s.correct, false)
        // One loss feed of p + "a"; tokens 1 and 2 come from its rows; tokens 2…31 are fed one at a
        // time (the 32nd is never fed).
        XCTAssertEqual(m.feeds.count, 1 + 30)
        XCTAssertTrue(m.feeds[1...].allSatisfy { $0 == [a] })
        // Early stop: "aa" can no longer trim to "a"; same verdict, no decoding pass.
        let m2 = FakeBigramModel(next: [TinyChat.id("Ċ"): a, a: a], boost: c)
        let e = try Evaluator(model: m2).score(EvalExample(prompt: "Go", answer: "a"))
        XCTAssertEqual(e.output, "aa")
        XCTAssertEqual(e.correct, false)
        XCTAssertEqual(m2.feeds.count, 1)
        // The limit is an option.
        let short = try Evaluator(model: m, options: EvalOptions(maxNewTokens: 3)).score(EvalExample(prompt: "Go", answer: "aaa"))
        XCTAssertEqual(short.output, "aaa")
        XCTAssertEqual(short.correct, true)
    }

    func testEvaluateFeedsTheCommonPromptPrefixOnce() throws {
        let m = arithModel()
        let ev = Evaluator(model: m, options: EvalOptions(earlyStop: false))
        let report = try ev.evaluate([arith, spaced])
        let ps = try (arith.examples + spaced.examples).map { try ev.promptTokens($0.prompt) }
        let shared = zip(ps[0], ps[3]).prefix { $0 == $1 }.count
        XCTAssertGreaterThan(shared, 10, "system message and user header")
        XCTAssertEqual(m.sessionsMade, 1)
        XCTAssertEqual(m.feeds[0], Array(ps[0][..<shared]), "the prefix is fed first, once")
        XCTAssertFalse(m.feeds.dropFirst().contains { Array($0.prefix(shared)) == Array(ps[0][..<shared]) })
        XCTAssertTrue(m.truncations.contains(shared))
        // Same numbers as scoring each example on its own session.
        let alone = try (arith.examples).map { try ev.score($0) }
        XCTAssertEqual(try XCTUnwrap(report.tasks["arith"]).loss, alone.map(\.nll).reduce(0, +) / 7, accuracy: 1e-12)
        XCTAssertEqual(report.tasks["arith"]?.accuracy, 1.0 / 3.0)
    }

    func testCanStillMatch() {
        func ok(_ g: String, _ t: String) -> Bool { Evaluator.canStillMatch(generated: Array(g.utf8), target: Array(t.utf8)) }
        XCTAssertTrue(ok("", "12"))
        XCTAssertTrue(ok(" \n", "12"))
        XCTAssertTrue(ok(" 1", "12"))
        XCTAssertTrue(ok("12", "12"))
        XCTAssertTrue(ok("\t12 \n", "12"))
        XCTAssertFalse(ok("13", "12"))
        XCTAssertFalse(ok("123", "12"))
        XCTAssertFalse(ok("12 3", "12"))
        XCTAssertFalse(ok("1 ", "12"), "inner whitespace is not trimmed")
        XCTAssertTrue(ok("1 ", "1 2"))
        // Unicode could still trim or compare equal: keep decoding.
        XCTAssertTrue(ok("\u{A0}12", "12"), "no-break space is trimmed by matches")
        XCTAssertTrue(ok("\u{212A}", "K"), "Kelvin sign equals K canonically")
        XCTAssertTrue(ok("x", "é"))
        XCTAssertTrue(ok("1\u{1F}", "12"))
        XCTAssertTrue(Evaluator.canStillMatch(generated: [0x31, 0xC2], target: Array("12".utf8)), "unfinished UTF-8")
        // The claims behind it, checked against `matches` itself.
        XCTAssertTrue(Evaluator.matches("\u{A0}12", "12"))
        XCTAssertTrue(Evaluator.matches("\u{212A}", "K"))
        XCTAssertTrue(Evaluator.matches("\u{0B}\u{0C}12\r", "12"))
    }

    /// Early stop never changes a verdict: random bigram models and answers that are right, prefixes,
    /// extensions, with whitespace around or inside, or unrelated; every example is scored with and
    /// without early stop and must get the same `correct`, the early output being a prefix of the full one.
    func testEarlyStopKeepsAccuracyOfFullDecoding() throws {
        var rng = SeededRNG(seed: 7)
        let alphabet = ["1", "2", "3", "a", "b", "Ġ", "Ċ"].map(TinyChat.id)
        func pick(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
        var checked = 0, differentFeeds = 0
        for _ in 0..<40 {
            var next: [Int: Int] = [:]
            for t in alphabet + [TinyChat.id("Ċ")] {
                next[t] = pick(5) == 0 ? TinyChat.eot : alphabet[pick(alphabet.count)]
            }
            let probe = FakeBigramModel(next: next, boost: c)
            let out = try XCTUnwrap(Evaluator(model: probe, options: EvalOptions(maxNewTokens: 8, earlyStop: false))
                .score(EvalExample(prompt: "q", answer: "")).output)
            var answers = [out, " " + out + " ", out + "\n", String(out.prefix(1)), out + "1", "12", "a b", "", " "]
            let pieces = ["1", "2", "a", "b", " "]
            answers.append((0..<3).map { _ in pieces[pick(pieces.count)] }.joined())
            for ans in answers {
                let ex = EvalExample(prompt: "q", answer: ans)
                let mf = FakeBigramModel(next: next, boost: c), me = FakeBigramModel(next: next, boost: c)
                let full = try Evaluator(model: mf, options: EvalOptions(maxNewTokens: 8, earlyStop: false)).score(ex)
                let early = try Evaluator(model: me, options: EvalOptions(maxNewTokens: 8)).score(ex)
                XCTAssertEqual(early.correct, full.correct, "answer \(ans.debugDescription), full output \(full.output!.debugDescription)")
                XCTAssertTrue(full.output!.hasPrefix(early.output!))
                XCTAssertEqual(early.nll, full.nll)
                XCTAssertLessThanOrEqual(me.feeds.count, mf.feeds.count)
                if me.feeds.count < mf.feeds.count { differentFeeds += 1 }
                checked += 1
            }
        }
        XCTAssertEqual(checked, 400)
        XCTAssertGreaterThan(differentFeeds, 50, "early stop saved passes on many examples")
    }

    func testStableNegativeLogLikelihood() {
        let logits = Matrix([[1000, 0, -1000], [0, 0, 0], [-5e30, 2, 2]])
        let nll = Evaluator.negativeLogLikelihoods(logits, rows: 0..<3, targets: [0, 2, 1])
        XCTAssertEqual(nll[0], 0, accuracy: 1e-12)
        XCTAssertEqual(nll[1], log(3), accuracy: 1e-12)
        XCTAssertEqual(nll[2], log(2), accuracy: 1e-12)
        let wrong = Evaluator.negativeLogLikelihoods(logits, rows: 0..<1, targets: [1])
        XCTAssertEqual(wrong[0], 1000, accuracy: 1e-9)
    }

    func testReportJSONShape() throws {
        let m = arithModel()
        func json(_ r: EvalReport) throws -> [String: Any] {
            let data = try JSONEncoder().encode(r)
            return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        }
        let withAcc = try json(try Evaluator(model: m).evaluate([arith]))
        XCTAssertEqual(Set(withAcc.keys), ["tasks", "mean_loss", "mean_accuracy"])
        let tasks = try XCTUnwrap(withAcc["tasks"] as? [String: Any])
        let t = try XCTUnwrap(tasks["arith"] as? [String: Any])
        XCTAssertEqual(Set(t.keys), ["loss", "perplexity", "accuracy", "examples", "tokens"])
        XCTAssertEqual(t["examples"] as? Int, 3)
        XCTAssertEqual(t["tokens"] as? Int, 7)
        XCTAssertEqual(try XCTUnwrap(t["accuracy"] as? Double), 1.0 / 3.0, accuracy: 1e-15)
        XCTAssertEqual(try XCTUnwrap(withAcc["mean_accuracy"] as? Double), 1.0 / 3.0, accuracy: 1e-15)

        let noAcc = try json(try Evaluator(model: m, options: EvalOptions(computeAccuracy: false)).evaluate([arith]))
        XCTAssertTrue(noAcc["mean_accuracy"] is NSNull, "accuracy is null, not absent, without accuracy")
        let t2 = try XCTUnwrap((noAcc["tasks"] as? [String: Any])?["arith"] as? [String: Any])
        XCTAssertTrue(t2["accuracy"] is NSNull)
        XCTAssertEqual(try XCTUnwrap(t2["loss"] as? Double), try XCTUnwrap(t["loss"] as? Double), accuracy: 1e-15)

        // Round trip.
        let r = try Evaluator(model: m).evaluate([arith])
        let back = try JSONDecoder().decode(EvalReport.self, from: JSONEncoder().encode(r))
        XCTAssertEqual(back.tasks, r.tasks)
        XCTAssertEqual(back.meanLoss, r.meanLoss)
    }

    func testNoTasksAndNoEndOfTurn() throws {
        XCTAssertThrowsError(try Evaluator(model: arithModel()).evaluate([])) { XCTAssertEqual($0 as? EvalError, .noTasks) }
        let bare = try BPETokenizer(tokens: TinyChat.chars, merges: [], preTokenizer: .gpt2, chatTemplate: TinyChat.template)
        let m = FakeBigramModel(tokenizer: bare, next: [:], boost: 0)
        XCTAssertThrowsError(try Evaluator(model: m).answerTokens("a")) { XCTAssertEqual($0 as? EvalError, .noEndOfTurnToken) }
    }

    func testTable() throws {
        let r = try Evaluator(model: arithModel()).evaluate([arith, spaced])
        let lines = r.table().split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 4)
        XCTAssertEqual(lines[0].split(separator: " "), ["task", "examples", "tokens", "loss", "ppl", "accuracy"])
        let row = lines[1].split(separator: " ").map(String.init)
        XCTAssertEqual(row[0...2], ["arith", "3", "7"])
        XCTAssertEqual(row[3], String(format: "%.4f", r.tasks["arith"]!.loss))
        XCTAssertEqual(row[5], "0.333")
        let mean = lines[3].split(separator: " ").map(String.init)
        XCTAssertEqual(mean[0...2], ["mean", "4", "11"])
        XCTAssertEqual(mean[5], "0.667")
        let noAcc = try Evaluator(model: arithModel(), options: EvalOptions(computeAccuracy: false)).evaluate([arith])
        XCTAssertEqual(noAcc.table().split(separator: "\n").last?.split(separator: " ").last, "-")
    }
}
