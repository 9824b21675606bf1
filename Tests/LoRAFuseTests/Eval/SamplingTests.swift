import Foundation
import XCTest
@testable import LoRAFuse

final class SamplingTests: XCTestCase {
    /// p = [0.3, 0.05, 0.5, 0.15] as logits (ids deliberately not in probability order).
    private let probs: [Float] = [0.3, 0.05, 0.5, 0.15]
    private var logits: [Float] { probs.map { Foundation.log($0) + 7 } }

    func testGreedyIsArgmaxFirstOnTies() throws {
        var s = Sampler.greedy
        XCTAssertEqual(s.sample(logits), 2)
        XCTAssertEqual(Sampler.argmax([1, 3, 3, 2] as [Float]), 1)
        XCTAssertEqual(Sampler.argmax([Float.nan, -1, -2]), 1)
        // Works on a row slice of a matrix (indices not starting at 0).
        let m = Matrix([[9, 0, 0], [0, 0, 5]])
        XCTAssertEqual(s.sample(m.row(1)), 2)
        XCTAssertEqual(s.sample(m.row(0)), 0)
    }

    func testTemperatureToZeroEqualsGreedy() throws {
        var rng = SeededRNG(seed: 11)
        for trial in 0..<50 {
            let row = (0..<40).map { _ in rng.nextNormal() * 3 }
            let greedy = Sampler.argmax(row)
            var sorted = row.sorted(by: >)
            guard sorted[0] - sorted[1] > 1e-2 else { continue }
            sorted.removeAll()
            var cold = try Sampler(temperature: 1e-4, topP: 1, seed: UInt64(trial))
            for _ in 0..<5 { XCTAssertEqual(cold.sample(row), greedy) }
            var zero = try Sampler(temperature: 0, topP: 0.3, seed: UInt64(trial))
            XCTAssertEqual(zero.sample(row), greedy)
        }
        // The same through the generator on the fake model: identical tokens.
        let id = TinyChat.id
        let m = FakeBigramModel(next: [id("Ċ"): id("h"), id("h"): id("i"), id("i"): id("!"), id("!"): TinyChat.eot], boost: 4)
        let p = try Evaluator(model: m).promptTokens("Hello")
        var g0 = Generator(model: m, sampler: .greedy, maxTokens: 10)
        var g1 = Generator(model: m, sampler: try Sampler(temperature: 1e-3, topP: 0.9, seed: 5), maxTokens: 10)
        let r0 = try g0.generate(session: try m.makeSession(maxTokens: 64), prompt: p)
        let r1 = try g1.generate(session: try m.makeSession(maxTokens: 64), prompt: p)
        XCTAssertEqual(r0.text, "hi!")
        XCTAssertEqual(r0.stopReason, .stopToken)
        XCTAssertEqual(r1, r0)
    }

    func testTopPKeepsSmallestSetWithMassAtLeastP() {
        func kept(_ p: Float) -> [Int] { Sampler.nucleus(logits, temperature: 1, topP: p).map(\.id) }
        XCTAssertEqual(kept(0.4), [2])
        XCTAssertEqual(kept(0.79), [2, 0])  // 0.5 + 0.3 = 0.8 ≥ 0.79; {2} alone (0.5) is not enough
        XCTAssertEqual(kept(0.81), [2, 0, 3])
        XCTAssertEqual(kept(0.96), [2, 0, 3, 1])
        XCTAssertEqual(kept(1), [2, 0, 3, 1])
        let k = Sampler.nucleus(logits, temperature: 1, topP: 0.79)
        XCTAssertEqual(k[0].p, 0.5 / 0.8, accuracy: 1e-6)
        XCTAssertEqual(k[1].p, 0.3 / 0.8, accuracy: 1e-6)

        // Draws come only from the kept set, in proportion.
        var s = try! Sampler(temperature: 1, topP: 0.79, seed: 3)
        var counts = [0, 0, 0, 0]
        for _ in 0..<4000 { counts[s.sample(logits)] += 1 }
        XCTAssertEqual(counts[1], 0)
        XCTAssertEqual(counts[3], 0)
        XCTAssertEqual(Double(counts[2]) / 4000, 0.625, accuracy: 0.03)

        // Temperature sharpens before the cut: at T = 0.5, p ∝ p², so {2} = 0.25/0.365 ≈ 0.685 ≥ 0.6.
        XCTAssertEqual(Sampler.nucleus(logits, temperature: 0.5, topP: 0.6).map(\.id), [2])
    }

    func testFullDistributionFrequencies() {
        var s = try! Sampler(temperature: 1, topP: 1, seed: 9)
        var counts = [0, 0, 0, 0]
        let n = 20000
        for _ in 0..<n { counts[s.sample(logits)] += 1 }
        for i in 0..<4 { XCTAssertEqual(Double(counts[i]) / Double(n), Double(probs[i]), accuracy: 0.015) }
    }

    func testSameSeedSameOutput() throws {
        let flat: [Float] = (0..<30).map { Float($0 % 7) * 0.1 }
        var a = try Sampler(temperature: 1, topP: 0.95, seed: 42)
        var b = try Sampler(temperature: 1, topP: 0.95, seed: 42)
        var c = try Sampler(temperature: 1, topP: 0.95, seed: 43)
        let sa = (0..<100).map { _ in a.sample(flat) }
        let sb = (0..<100).map { _ in b.sample(flat) }
        let sc = (0..<100).map { _ in c.sample(flat) }
        XCTAssertEqual(sa, sb)
        XCTAssertNotEqual(sa, sc)

        // Whole generations too (flat rows everywhere: every step is a random draw).
        let m = FakeBigramModel(next: [:], boost: 0)
        let p = try Evaluator(model: m).promptTokens("x")
        func run(_ seed: UInt64) throws -> GenerationResult {
            var g = Generator(model: m, sampler: try Sampler(temperature: 1, topP: 1, seed: seed), maxTokens: 12)
            return try g.generate(session: try m.makeSession(maxTokens: 64), prompt: p)
        }
        XCTAssertEqual(try run(7), try run(7))
        XCTAssertFalse(try run(7).tokens.isEmpty)
        XCTAssertNotEqual(try run(7).tokens, try run(8).tokens)
    }

    func testBadParameters() {
        XCTAssertThrowsError(try Sampler(temperature: -1)) {
            XCTAssertEqual($0 as? GenerationError, .badParameter(name: "temperature", value: -1, expected: "a finite value ≥ 0"))
        }
        XCTAssertThrowsError(try Sampler(temperature: 1, topP: 0))
        XCTAssertThrowsError(try Sampler(temperature: 1, topP: 1.5))
        let m = FakeBigramModel(next: [:], boost: 0)
        var g = Generator(model: m, maxTokens: 4)
        XCTAssertThrowsError(try g.generate(session: try m.makeSession(maxTokens: 8), prompt: [])) {
            XCTAssertEqual($0 as? GenerationError, .emptyPrompt)
        }
    }

    func testStreamingDecoderYieldsFullText() throws {
        // "é" is two byte tokens (C3 → "Ã", A9 → "©"): nothing is streamed after the first, "é" after the second.
        let id = TinyChat.id
        let chain = ["Ċ", "o", "Ã", "©", "Ġ", "!"]
        var next: [Int: Int] = [:]
        for (a, b) in zip(chain, chain.dropFirst()) { next[id(a)] = id(b) }
        next[id("!")] = TinyChat.eot
        let m = FakeBigramModel(next: next, boost: 5)
        let p = try Evaluator(model: m).promptTokens("Say it")
        var pieces: [String] = []
        var tokens: [Int] = []
        var g = Generator(model: m, maxTokens: 20)
        let r = try g.generate(session: try m.makeSession(maxTokens: 64), prompt: p,
                               onToken: { tokens.append($0) }, onText: { pieces.append($0) })
        XCTAssertEqual(r.text, "oé !")
        XCTAssertEqual(pieces.joined(), r.text)
        XCTAssertEqual(pieces, ["o", "é", " ", "!"])
        XCTAssertEqual(tokens.count, 5, "é took two tokens")
        XCTAssertEqual(tokens, r.tokens)
        XCTAssertEqual(TinyChat.tokenizer.decode(r.tokens), r.text)
        XCTAssertFalse(r.text.contains("\u{FFFD}"))
        XCTAssertEqual(r.stopReason, .stopToken)

        // Cut in the middle of "é" by max-tokens: the incomplete tail is flushed as U+FFFD, the text
        // still equals the tokens' decoding.
        var short = Generator(model: m, maxTokens: 2)
        let r2 = try short.generate(session: try m.makeSession(maxTokens: 64), prompt: p)
        XCTAssertEqual(r2.stopReason, .maxTokens)
        XCTAssertEqual(r2.text, TinyChat.tokenizer.decode(r2.tokens))
        XCTAssertEqual(r2.text, "o\u{FFFD}")
    }

    func testSessionHoldsPromptAndFedTokens() throws {
        let id = TinyChat.id
        let m = FakeBigramModel(next: [id("Ċ"): id("h"), id("h"): id("i"), id("i"): TinyChat.eot], boost: 4)
        let p = try Evaluator(model: m).promptTokens("Hello")
        let s = try m.makeSession(maxTokens: 64)
        var g = Generator(model: m, maxTokens: 10)
        let r = try g.generate(session: s, prompt: p)
        XCTAssertEqual(r.tokens, [id("h"), id("i")])
        XCTAssertEqual(s.position, p.count + 2, "every generated token is fed; the stop token is not")
        XCTAssertEqual(m.feeds, [p, [id("h")], [id("i")]])
    }

    func testChatKeepsHistoryAndFeedsOnlyNewTokens() throws {
        let id = TinyChat.id
        // Every reply is "ok": after the generation prompt's "\n" comes "o", then "k", then end of turn.
        let m = FakeBigramModel(next: [id("Ċ"): id("o"), id("o"): id("k"), id("k"): TinyChat.eot], boost: 4)
        let chat = try ChatConversation(model: m, generator: Generator(model: m, maxTokens: 8), contextSize: 256)
        var streamed = ""
        let r1 = try chat.respond(to: "hi") { streamed += $0 }
        XCTAssertEqual(r1.text, "ok")
        XCTAssertEqual(streamed, "ok")
        let first = try TinyChat.tokenizer.encodeChat([ChatMessage(role: "user", content: "hi")])
        XCTAssertEqual(m.feeds, [first, [id("o")], [id("k")]])

        let r2 = try chat.respond(to: "again")
        XCTAssertEqual(r2.text, "ok")
        XCTAssertEqual(chat.messages, [ChatMessage(role: "user", content: "hi"), ChatMessage(role: "assistant", content: "ok"),
                                       ChatMessage(role: "user", content: "again"), ChatMessage(role: "assistant", content: "ok")])
        // The second turn feeds only what follows the first reply: "<|im_end|>\n<|im_start|>user\nagain..."
        let full = try TinyChat.tokenizer.encodeChat(Array(chat.messages.prefix(3)))
        XCTAssertEqual(m.feeds[3], Array(full[(first.count + 2)...]))
        XCTAssertEqual(m.feeds[3].first, TinyChat.eot)
        XCTAssertEqual(m.sessionsMade, 1)
        XCTAssertEqual(chat.fed, full + [id("o"), id("k")])

        // A conversation that would not fit is refused before anything is fed.
        let small = try ChatConversation(model: m, generator: Generator(model: m, maxTokens: 8), contextSize: first.count + 4)
        XCTAssertThrowsError(try small.respond(to: "hi")) {
            XCTAssertEqual($0 as? ChatError, .contextFull(tokens: first.count, maxNewTokens: 8, contextSize: first.count + 4))
        }
    }

    /// The nucleus as first written: every probability sorted (descending, ties by id), then the
    /// smallest prefix with mass ≥ top_p. The sampler builds the order only as far as it needs.
    static func naiveNucleus(_ logits: [Float], temperature: Float, topP: Float) -> [(id: Int, p: Double)] {
        let t = Double(max(temperature, Float.leastNormalMagnitude))
        let m = logits.filter { !$0.isNaN }.map(Double.init).max() ?? -Double.infinity
        var probs: [(id: Int, p: Double)] = []
        var z = 0.0
        for (i, v) in logits.enumerated() {
            let e = v.isNaN ? 0 : Foundation.exp((Double(v) - m) / t)
            probs.append((i, e))
            z += e
        }
        probs.sort { $0.p != $1.p ? $0.p > $1.p : $0.id < $1.id }
        var kept: [(id: Int, p: Double)] = [], mass = 0.0
        for (id, e) in probs {
            let p = e / z
            if p == 0 && !kept.isEmpty { break }
            kept.append((id, p))
            mass += p
            if mass >= Double(topP) - 1e-12 { break }
        }
        return kept.map { ($0.id, $0.p / mass) }
    }

    func testPartialOrderEqualsTheFullSort() throws {
        var rng = SeededRNG(seed: 5)
        for trial in 0..<8 {
            // A vocabulary-sized row with ties (values rounded to 1/8) and a NaN.
            let n = trial < 3 ? 49_152 : 300
            var row = (0..<n).map { _ in (rng.nextNormal() * (trial % 3 == 0 ? 1 : 4) * 8).rounded() / 8 }
            row[7] = .nan
            for (t, p) in [(Float(1), Float(0.9)), (0.7, 0.5), (1.5, 0.99), (1, 1), (0.2, 0.95)] {
                let want = Self.naiveNucleus(row, temperature: t, topP: p)
                let got = Sampler.nucleus(row, temperature: t, topP: p)
                XCTAssertEqual(got.map(\.id), want.map(\.id), "trial \(trial) T \(t) top_p \(p)")
                XCTAssertEqual(got.map(\.p), want.map(\.p), "trial \(trial) T \(t) top_p \(p)")
            }
            // top_p = 1 walks the order without building the kept set: the same draws as walking
            // the naive set with the same seed.
            var fast = try Sampler(temperature: 1, topP: 1, seed: UInt64(trial))
            var rngRef = SeededRNG(seed: UInt64(trial))
            let kept = Self.naiveNucleus(row, temperature: 1, topP: 1)
            for _ in 0..<20 {
                let u = rngRef.nextDouble()
                var acc = 0.0, want = kept.last!.id
                for (id, p) in kept { acc += p; if u < acc { want = id; break } }
                XCTAssertEqual(fast.sample(row), want, "trial \(trial)")
            }
        }
        XCTAssertEqual(SortedProbabilities.kthLargest([3, 1, 4, 1, 5, 9, 2, 6], 3), 5)
        XCTAssertEqual(SortedProbabilities.kthLargest([2, 2, 2, 2], 4), 2)
    }
}
