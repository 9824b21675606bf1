import Foundation
@testable import LoRAFuse

/// A tiny byte-level tokenizer with ChatML specials and a SmolLM2-like chat template (default system
/// message), one token per character: no merges, so token ids are easy to reason about by hand.
enum TinyChat {
    static let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    /// Byte-level alphabet characters: letters, digits, some punctuation, space (Ġ), newline (Ċ), and
    /// the two bytes of "é" (C3 A9 → "Ã", "©") so multi-token characters can be streamed.
    static let chars: [String] = {
        var c: [String] = []
        for s in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?+.,!'" { c.append(String(s)) }
        return c + ["Ġ", "Ċ", "Ã", "©"]
    }()
    static let template = #"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a test bot.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"#

    static let tokenizer: BPETokenizer = {
        let tokens = specials + chars
        let types = specials.map { _ in Int32(3) } + chars.map { _ in Int32(1) }
        return try! BPETokenizer(tokens: tokens, merges: [], tokenTypes: types, preTokenizer: .gpt2,
                                 eosId: 0, chatTemplate: template)
    }()

    static var eos: Int { 0 }
    static var eot: Int { 2 }
    /// Id of a one-character token ("Ġ" and "Ċ" stand for space and newline).
    static func id(_ s: String) -> Int { tokenizer.id(of: s)! }
}

/// A deterministic bigram "language model": the logits after token x are row x of a table whose
/// entries are 0 except `boost` at `next[x]`. Feeds are recorded so tests can check what was fed.
final class FakeBigramModel: CausalLM {
    let tokenizer: BPETokenizer
    var vocabSize: Int { tokenizer.vocabSize }
    /// The model's context length (unbounded unless a test sets it).
    var contextLength = Int.max
    let next: [Int: Int]
    let boost: Float
    /// Every `feed` call of every session, in order.
    var feeds: [[Int]] = []
    var sessionsMade = 0
    /// Every `truncate(to:)` call of every session, in order.
    var truncations: [Int] = []

    init(tokenizer: BPETokenizer = TinyChat.tokenizer, next: [Int: Int], boost: Float) {
        self.tokenizer = tokenizer
        self.next = next
        self.boost = boost
    }

    func logitsRow(after x: Int) -> [Float] {
        var row = [Float](repeating: 0, count: vocabSize)
        if let n = next[x] { row[n] = boost }
        return row
    }

    func makeSession(maxTokens: Int) throws -> any InferenceSession {
        sessionsMade += 1
        return Session(model: self, capacity: maxTokens)
    }

    struct Overflow: Error { var position: Int; var adding: Int; var capacity: Int }

    final class Session: InferenceSession {
        let model: FakeBigramModel
        let capacity: Int
        private(set) var position = 0

        init(model: FakeBigramModel, capacity: Int) {
            self.model = model
            self.capacity = capacity
        }

        func feed(_ tokens: [Int]) throws -> Matrix {
            guard position + tokens.count <= capacity else {
                throw Overflow(position: position, adding: tokens.count, capacity: capacity)
            }
            model.feeds.append(tokens)
            position += tokens.count
            var data: [Float] = []
            for t in tokens { data += model.logitsRow(after: t) }
            return Matrix(rows: tokens.count, cols: model.vocabSize, data: data)
        }

        func reset() { position = 0 }

        func truncate(to newPosition: Int) {
            precondition(newPosition >= 0 && newPosition <= position)
            model.truncations.append(newPosition)
            position = newPosition
        }
    }
}
