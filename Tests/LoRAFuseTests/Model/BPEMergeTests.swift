import Foundation
import XCTest
@testable import LoRAFuse

/// The heap-based BPE merge loop (`mergeHeap`) against the simple rescanning loop (`naiveMerge`).
final class BPEMergeTests: XCTestCase {
    nonisolated(unsafe) private static let smolMeta: [String: Any] = {
        let url = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/tokenizer/smollm2_vocab.json")
        return try! JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
    }()
    private static let smol: BPETokenizer =
        try! BPETokenizer.fromGGUFMetadata { smolMeta[$0].flatMap { $0 is NSNull ? nil : $0 } }

    /// A small vocabulary over a/b/c whose merges make ties, chains and overlapping pairs likely:
    /// every token up to 4 letters built from the alphabet, merges in a seeded random order.
    private static func toy(seed: UInt64) throws -> BPETokenizer {
        var rng = SplitMix(seed)
        var tokens = ["a", "b", "c"]
        var merges: [(String, String)] = []
        var have = Set(tokens)
        for _ in 0..<60 {
            let l = tokens[Int(rng.next() % UInt64(tokens.count))]
            let r = tokens[Int(rng.next() % UInt64(tokens.count))]
            guard (l + r).count <= 6, !have.contains(l + r) else { continue }
            have.insert(l + r)
            tokens.append(l + r)
            merges.append((l, r))
        }
        return try BPETokenizer(tokens: tokens, mergePairs: merges, preTokenizer: .gpt2)
    }

    private func check(_ t: BPETokenizer, _ bytes: [UInt8], _ label: String, file: StaticString = #filePath,
                       line: UInt = #line) {
        let start = t.initialSymbols(bytes)
        XCTAssertEqual(t.mergeHeap(start), t.naiveMerge(start), label, file: file, line: line)
    }

    func testHeapMatchesNaiveOnRandomWordsWithToyMerges() throws {
        var rng = SplitMix(7)
        for seed in 0..<20 as Range<UInt64> {
            let t = try Self.toy(seed: seed)
            for _ in 0..<100 {
                let n = Int(rng.next() % 80)
                let word = (0..<n).map { _ in UInt8(ascii: "a") + UInt8(rng.next() % 3) }
                check(t, word, "seed \(seed) word \(String(decoding: word, as: UTF8.self))")
            }
        }
    }

    func testHeapMatchesNaiveOnAdversarialWords() throws {
        let toy = try Self.toy(seed: 3)
        var words: [[UInt8]] = [[], [UInt8(ascii: "a")]]
        for n in [2, 3, 4, 5, 7, 8, 9, 16, 31, 64, 257, 1000] {
            words.append([UInt8](repeating: UInt8(ascii: "a"), count: n))
            words.append((0..<n).map { UInt8(ascii: $0 % 2 == 0 ? "a" : "b") })
            words.append((0..<n).map { UInt8(ascii: "a") + UInt8($0 % 3) })
            words.append((0..<n).map { $0 % 5 == 4 ? UInt8(ascii: "c") : UInt8(ascii: "a") })
        }
        for w in words { check(toy, w, "toy \(String(decoding: w, as: UTF8.self).prefix(40)) (\(w.count))") }

        let smol = Self.smol
        var big: [[UInt8]] = words
        for s in ["e", "x", "0", " ", "\n", "ab", "abc", "hello", "Ġ", "é", "日本", "🙂", "=-", "ing", "the"] {
            for n in [1, 2, 3, 17, 128, 400] { big.append(Array(String(repeating: s, count: n).utf8)) }
        }
        big.append(Array("internationalization".utf8))
        big.append(Array("supercalifragilisticexpialidocious".utf8))
        big.append(Array((0..<256).map { UInt8($0) }))
        for w in big { check(smol, w, "smol \(String(decoding: w, as: UTF8.self).prefix(40)) (\(w.count))") }
    }

    func testHeapMatchesNaiveOnRandomWordsWithSmolLM2Vocab() {
        let smol = Self.smol
        var rng = SplitMix(11)
        let letters = Array("etaoinshrdlucmfwypvbgkqjxz".utf8)
        for i in 0..<400 {
            let n = 1 + Int(rng.next() % 60)
            let word: [UInt8]
            switch i % 4 {
            case 0: word = (0..<n).map { _ in letters[Int(rng.next() % UInt64(letters.count))] }
            case 1: word = (0..<n).map { _ in letters[Int(rng.next() % 4)] }  // e/t/a/o only: many merges
            case 2: word = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }  // any bytes
            default: word = Array(" ".utf8) + (0..<n).map { _ in letters[Int(rng.next() % 8)] }
            }
            check(smol, word, "random word #\(i)")
        }
    }

    /// The vocabularies' own tokens (their bytes) as words: merging must rebuild many of them.
    func testHeapMatchesNaiveOnVocabularyTokens() throws {
        let smol = Self.smol
        for id in stride(from: 17, to: smol.vocabSize, by: 37) { check(smol, smol.bytes(of: id), "token \(id)") }
        let data = try Data(contentsOf: Bundle.module.resourceURL!
            .appendingPathComponent("Fixtures/tokenizer/tiny_tokenizer.json"))
        let tiny = try BPETokenizer.fromTokenizerJSON(data, eosToken: "<|end|>")
        for id in 0..<tiny.vocabSize { check(tiny, tiny.bytes(of: id) + tiny.bytes(of: (id * 7) % tiny.vocabSize), "tiny \(id)") }
    }

    /// One very long piece tokenizes (it took minutes with the rescanning loop) and decodes back;
    /// a smaller instance of the same text is checked against the reference loop.
    func testVeryLongSingleWordTokenizes() {
        let smol = Self.smol
        var rng = SplitMix(5)
        let letters = Array("etaoinshrdlu".utf8)
        let long = (0..<300_000).map { _ in letters[Int(rng.next() % UInt64(letters.count))] }
        let text = String(decoding: long, as: UTF8.self)
        let ids = smol.encode(text)
        XCTAssertEqual(smol.decode(ids), text)
        XCTAssertLessThan(ids.count, long.count)
        XCTAssertEqual(smol.encode(String(repeating: "a", count: 200_000)).count > 0, true)
        check(smol, Array(long.prefix(5_000)), "5000-byte prefix")
        check(smol, [UInt8](repeating: UInt8(ascii: "a"), count: 5_000), "5000 a's")
    }
}

/// Deterministic generator for the tests (SplitMix64).
private struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
