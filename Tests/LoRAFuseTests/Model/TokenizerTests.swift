import Foundation
import XCTest
@testable import LoRAFuse

/// Reference data made by scripts/make_tokenizer_fixtures.py (transformers + tokenizers on the
/// SmolLM2-135M-Instruct GGUF).
private enum TokFixtures {
    static func url(_ name: String) -> URL {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures/tokenizer/\(name)")
    }

    static func json(_ name: String) -> Any {
        let data = try! Data(contentsOf: url(name))
        return try! JSONSerialization.jsonObject(with: data)
    }

    /// The GGUF tokenizer metadata as the `gguf` package read it.
    nonisolated(unsafe) static let meta: [String: Any] = json("smollm2_vocab.json") as! [String: Any]

    /// One SmolLM2 tokenizer for the whole class (building it parses ~1 MB of JSON).
    static let smol: BPETokenizer = try! BPETokenizer.fromGGUFMetadata { meta[$0].flatMap { $0 is NSNull ? nil : $0 } }

    nonisolated(unsafe) static let corpus: [String: Any] = json("corpus.json") as! [String: Any]
    static var entries: [[String: Any]] { corpus["entries"] as! [[String: Any]] }
}

private func ints(_ v: Any?) -> [Int] { (v as! [Any]).map { ($0 as! NSNumber).intValue } }

final class TokenizerTests: XCTestCase {
    // MARK: GGUF metadata path (SmolLM2)

    func testMetadataFields() throws {
        let t = TokFixtures.smol
        XCTAssertEqual(t.vocabSize, 49152)
        XCTAssertEqual(t.preTokenizer, .smollm)
        XCTAssertEqual(t.bosId, 1)
        XCTAssertEqual(t.eosId, 2)
        XCTAssertEqual(t.padId, 2)
        XCTAssertEqual(t.unkId, 0)
        XCTAssertEqual(t.eotId, 2, "<|im_end|> is found by name")
        XCTAssertEqual(t.stopIds, [2])
        XCTAssertFalse(t.addBos)
        XCTAssertEqual(t.tokens[1], "<|im_start|>")
        XCTAssertTrue(t.isSpecial(0) && t.isSpecial(16) && !t.isSpecial(17))
        XCTAssertEqual(t.id(of: "Ġworld"), 905)
    }

    func testCorpusIdsMatchTokenizersForAllPreTokenizers() throws {
        let base = TokFixtures.smol
        var variants: [(String, BPETokenizer)] = [("smollm", base)]
        for (key, pre, ggufPre) in [("gpt2", PreTokenizer.gpt2, "gpt2"), ("llama3", .llama3, "llama-bpe"),
                                    ("qwen2", .qwen2, "qwen2")] {
            let t = try BPETokenizer.fromGGUFMetadata { k in
                k == "tokenizer.ggml.pre" ? ggufPre : TokFixtures.meta[k]
            }
            XCTAssertEqual(t.preTokenizer, pre)
            variants.append((key, t))
        }
        var checked = 0
        for e in TokFixtures.entries {
            let text = e["text"] as! String
            for (key, tok) in variants {
                XCTAssertEqual(tok.encode(text), ints(e[key]), "\(key) ids of \(text.debugDescription)")
                checked += 1
            }
            let tokens = (e["tokens"] as! [String])
            XCTAssertEqual(base.encode(text).map { base.tokens[$0] }, tokens)
        }
        XCTAssertGreaterThanOrEqual(checked, 4 * 300)
    }

    func testSmolLMDiffersFromGPT2OnlyWhereDigitsSplitWhitespace() throws {
        // "hello   1": SmolLM2 splits the digit off first, so the 3 spaces end a piece ("ĠĠĠ").
        let e = TokFixtures.entries.first { $0["text"] as? String == "hello   1" }!
        XCTAssertNotEqual(ints(e["smollm"]), ints(e["gpt2"]))
        XCTAssertEqual(TokFixtures.smol.encode("hello   1"), ints(e["smollm"]))
    }

    func testDecodeRoundTripMatchesTransformers() throws {
        let t = TokFixtures.smol
        for e in TokFixtures.entries {
            let ids = ints(e["smollm"])
            XCTAssertEqual(t.decode(ids), e["decoded"] as! String)
            XCTAssertEqual(t.decode(ids), e["text"] as! String)
            XCTAssertEqual(t.decode(ids, skipSpecial: true), e["decodedSkipSpecial"] as! String)
        }
    }

    func testParseSpecialOffTokenizesMarkersAsText() throws {
        let t = TokFixtures.smol
        let ids = t.encode("<|im_start|>user", parseSpecial: false)
        XCTAssertFalse(ids.contains(1))
        XCTAssertGreaterThan(ids.count, 2)
        XCTAssertEqual(t.decode(ids), "<|im_start|>user")
        XCTAssertEqual(t.encode("<|im_start|>user"), [1, 4093])
    }

    func testStreamingDecodeOfSplitEmoji() throws {
        let t = TokFixtures.smol
        let split = TokFixtures.corpus["splitEmoji"] as! [String: Any]
        let ids = ints(split["ids"])
        XCTAssertEqual(ids.count, 3, "the llama emoji spans 3 tokens")
        // Each piece alone is not valid UTF-8: transformers gives U+FFFD, and so do we.
        for (id, single) in zip(ids, split["singleDecodes"] as! [String]) {
            XCTAssertEqual(t.decode([id]), single)
        }
        var dec = t.makeStreamingDecoder()
        XCTAssertEqual(dec.push(ids[0]), "")
        XCTAssertEqual(dec.push(ids[1]), "")
        XCTAssertEqual(dec.push(ids[2]), "🦙")
        XCTAssertEqual(dec.flush(), "")

        // A whole sentence streamed token by token reassembles exactly.
        let text = "emoji 😀👍🏽 and 👨‍👩‍👧 family 日本語<|im_end|>"
        var s = t.makeStreamingDecoder()
        var out = ""
        for id in t.encode(text) {
            let piece = s.push(id)
            XCTAssertFalse(piece.contains("\u{FFFD}"))
            out += piece
        }
        out += s.flush()
        XCTAssertEqual(out, text)
        var skip = t.makeStreamingDecoder(skipSpecial: true)
        XCTAssertEqual(t.encode("hi<|im_end|>").map { skip.push($0) }.joined(), "hi")
        // An unfinished character at the end is flushed as U+FFFD.
        var cut = t.makeStreamingDecoder()
        XCTAssertEqual(cut.push(ids[0]) + cut.flush(), "\u{FFFD}")
    }

    func testCompletePrefix() {
        XCTAssertEqual(StreamingDecoder.completePrefix([0x61, 0xF0, 0x9F]), 1)
        XCTAssertEqual(StreamingDecoder.completePrefix([0xF0, 0x9F, 0xA6, 0x99]), 4)
        XCTAssertEqual(StreamingDecoder.completePrefix([0x61, 0xE6, 0x97]), 1)
        XCTAssertEqual(StreamingDecoder.completePrefix([0x61, 0xFF]), 2, "invalid bytes are not held")
        XCTAssertEqual(StreamingDecoder.completePrefix([]), 0)
    }

    // MARK: Chat templates

    func testChatTemplatesRenderLikeTransformers() throws {
        let chat = TokFixtures.json("chat.json") as! [String: Any]
        let templates = chat["templates"] as! [String: String]
        let smol = TokFixtures.smol
        XCTAssertEqual(try smol.chatTemplate(),
                       .chatML(defaultSystem: "You are a helpful AI assistant named SmolLM, trained by Hugging Face"))
        XCTAssertEqual(try ChatTemplate.detect(templates["qwen2"]!), .chatML(defaultSystem: "You are a helpful assistant."))
        XCTAssertEqual(try ChatTemplate.detect(templates["llama3"]!, bosToken: "<|begin_of_text|>"),
                       .llama3(bosToken: "<|begin_of_text|>"))
        var n = 0
        for c in chat["chats"] as! [[String: Any]] {
            let messages = (c["messages"] as! [[String: String]]).map { ChatMessage(role: $0["role"]!, content: $0["content"]!) }
            let agp = c["addGenerationPrompt"] as! Bool
            let expected = c["rendered"] as! String
            switch c["template"] as! String {
            case "smollm2":
                XCTAssertEqual(try smol.applyChatTemplate(messages, addGenerationPrompt: agp), expected)
                XCTAssertEqual(try smol.encodeChat(messages, addGenerationPrompt: agp), ints(c["ids"]))
            case let name:
                let tpl = try ChatTemplate.detect(templates[name]!, bosToken: "<|begin_of_text|>")
                XCTAssertEqual(tpl.render(messages, addGenerationPrompt: agp), expected, name)
            }
            n += 1
        }
        XCTAssertEqual(n, 36)
    }

    func testUnknownChatTemplateThrowsQuotingFirstLine() {
        let tpl = "{% for m in messages %}[INST] {{ m.content }} [/INST]\n{% endfor %}"
        XCTAssertThrowsError(try ChatTemplate.detect(tpl)) { error in
            XCTAssertEqual(error as? TokenizerError,
                           .unsupportedChatTemplate(firstLine: "{% for m in messages %}[INST] {{ m.content }} [/INST]"))
            XCTAssertTrue("\(error)".contains("[INST]"))
        }
        XCTAssertThrowsError(try ChatTemplate.detect("{{ '<|im_start|>' }}<think>{{ '<|im_end|>' }}"))
    }

    func testJinjaTrimAndUnescape() {
        XCTAssertEqual(ChatTemplate.jinjaTrim(" \t\n a b \u{1F}\u{3000}"), "a b")
        XCTAssertEqual(ChatTemplate.unescapeJinja(#"a\nb\'c"#), "a\nb'c")
    }

    // MARK: Pre-tokenizer scanner details

    func testPreTokenizerPieces() {
        func pieces(_ p: PreTokenizer, _ s: String) -> [String] {
            let u = Array(s.unicodeScalars)
            return p.split(u).map { r in
                var v = String.UnicodeScalarView(); v.append(contentsOf: u[r]); return String(v)
            }
        }
        XCTAssertEqual(pieces(.gpt2, "I'm  ok!!  \n"), ["I", "'m", " ", " ok", "!!", "  \n"])
        XCTAssertEqual(pieces(.gpt2, "a   1"), ["a", "  ", " 1"])
        XCTAssertEqual(pieces(.smollm, "a   12"), ["a", "   ", "1", "2"])
        XCTAssertEqual(pieces(.llama3, "I'M 12345 (x)\n\n y"), ["I", "'M", " ", "123", "45", " (", "x", ")\n\n", " y"])
        XCTAssertEqual(pieces(.qwen2, "ab 123"), ["ab", " ", "1", "2", "3"])
        XCTAssertEqual(pieces(.llama3, "a \n  b"), ["a", " \n", " ", " b"])
    }

    // MARK: tokenizer.json path

    func testTinyTokenizerJSONWithPairMerges() throws {
        let data = try Data(contentsOf: TokFixtures.url("tiny_tokenizer.json"))
        let t = try BPETokenizer.fromTokenizerJSON(data, eosToken: "<|end|>")
        XCTAssertEqual(t.preTokenizer, .gpt2)
        XCTAssertEqual(t.vocabSize, 107)
        XCTAssertEqual(t.eosId, 106)
        XCTAssertTrue(t.isSpecial(106))
        let cases = TokFixtures.json("tiny_cases.json") as! [[String: Any]]
        XCTAssertEqual(cases.count, 4)
        for c in cases {
            let text = c["text"] as! String
            XCTAssertEqual(t.encode(text), ints(c["ids"]), text)
            XCTAssertEqual(t.decode(ints(c["ids"])), text)
        }
    }

    func testTokenizerJSONStringMergesAndPreTokenizerDetection() throws {
        let json = """
        {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4, "1": 5},
                   "merges": ["a b", "Ġ ab"]},
         "added_tokens": [{"id": 6, "content": "<s>", "special": true}],
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]}}
        """
        let t = try BPETokenizer.fromTokenizerJSON(Data(json.utf8), bosToken: "<s>")
        XCTAssertEqual(t.preTokenizer, .smollm)
        XCTAssertEqual(t.bosId, 6)
        XCTAssertEqual(t.encode("<s>ab ab1"), [6, 2, 4, 5])

        let llama = """
        {"model": {"vocab": {"a": 0}, "merges": []},
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": \(jsonString(RegexText.llama3))}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]}}
        """
        XCTAssertEqual(try BPETokenizer.fromTokenizerJSON(Data(llama.utf8)).preTokenizer, .llama3)

        let bad = #"{"model": {"vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Whitespace"}}"#
        XCTAssertThrowsError(try BPETokenizer.fromTokenizerJSON(Data(bad.utf8))) { error in
            guard case .unsupportedPreTokenizer = error as? TokenizerError else { return XCTFail("\(error)") }
        }
        let badMerge = #"{"model": {"vocab": {"a": 0}, "merges": ["a zz"]}, "pre_tokenizer": {"type": "ByteLevel"}}"#
        XCTAssertThrowsError(try BPETokenizer.fromTokenizerJSON(Data(badMerge.utf8))) { error in
            XCTAssertEqual(error as? TokenizerError, .badMerge(source: "tokenizer.json", index: 0, merge: "a zz"))
        }
    }

    func testIgnoreMergesTakesWholeVocabularyWords() throws {
        // Expected ids from tokenizers 0.23 on this exact tokenizer.json (ignore_merges true / false).
        func make(_ ignore: Bool) throws -> BPETokenizer {
            let json = """
            {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "Ġ": 5},
                       "merges": [["a", "b"]], "ignore_merges": \(ignore)},
             "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}}
            """
            return try BPETokenizer.fromTokenizerJSON(Data(json.utf8))
        }
        XCTAssertEqual(try make(true).encode("abc abcc"), [4, 5, 3, 2, 2])
        XCTAssertEqual(try make(false).encode("abc abcc"), [3, 2, 5, 3, 2, 2])
        let llama = try BPETokenizer.fromGGUFMetadata { k in
            k == "tokenizer.ggml.pre" ? "llama-bpe" : TokFixtures.meta[k]
        }
        XCTAssertTrue(llama.ignoreMerges)
        XCTAssertFalse(TokFixtures.smol.ignoreMerges)
    }

    func testGGUFMetadataErrors() {
        XCTAssertThrowsError(try BPETokenizer.fromGGUFMetadata { $0 == "tokenizer.ggml.model" ? "llama" : nil }) { e in
            XCTAssertEqual(e as? TokenizerError, .unsupportedModel(source: "gguf", model: "llama"))
        }
        XCTAssertThrowsError(try BPETokenizer.fromGGUFMetadata { k in
            k == "tokenizer.ggml.pre" ? "mystery" : TokFixtures.meta[k]
        }) { e in
            guard case .unsupportedPreTokenizer = e as? TokenizerError else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try BPETokenizer.fromGGUFMetadata { k in
            k == "tokenizer.ggml.tokens" ? nil : TokFixtures.meta[k]
        }) { e in
            XCTAssertEqual(e as? TokenizerError, .missingField(source: "gguf", field: "tokenizer.ggml.tokens",
                                                               expected: "an array of strings"))
        }
    }

    func testEncodingSpeedWithCache() {
        // A few thousand words must encode quickly (eval prompts); the cache makes repeats cheap.
        let t = TokFixtures.smol
        let text = String(repeating: "The quick brown fox jumps over the lazy dog 12345. ", count: 400)
        let start = Date()
        let ids = t.encode(text)
        XCTAssertLessThan(Date().timeIntervalSince(start), 2.0)
        XCTAssertEqual(t.decode(ids), text)
    }
}

private func jsonString(_ s: String) -> String {
    String(data: try! JSONSerialization.data(withJSONObject: [s]), encoding: .utf8)!.dropFirst().dropLast().description
}
