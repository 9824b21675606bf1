import Foundation

/// The generators' conditions, computed with the inference engine.
///
/// In-context task condition (ICM-LoRA): the last-layer hidden state — after the final RMSNorm,
/// i.e. what lm_head reads — of base + adapter, averaged over the answer tokens of every few-shot
/// example. ICM-LoRA averages the decoder's last hidden state over the decoding steps of ~30
/// examples, i.e. over the generated answer; teacher-forcing the reference answer is the same
/// quantity for a causal model without sampling. Averaging every position instead (as an earlier
/// version did) let the chat template and prompt, shared by every task, dominate the condition.
///
/// Description embedding (SG-LoRA): the same mean hidden state of the base model alone over the
/// description text's tokens (SG-LoRA uses a separate sentence encoder; the base model is the
/// encoder we have).
public enum TaskCondition {
    /// Mean of "h_final" over the rows of `sequences` (each a token list) from `from[i]` on (nil:
    /// every row), run with `adapter` applied unmerged (nil: the base model). The model is not changed.
    public static func meanHiddenState(model: LlamaModel, adapter: LoRAAdapter?, sequences: [[Int]], from: [Int]? = nil) throws -> [Float] {
        guard !sequences.isEmpty, sequences.allSatisfy({ !$0.isEmpty }) else {
            throw ICMError.badInput(what: "task condition", reason: "needs at least one non-empty example")
        }
        let adapters = try adapter.map { try model.prepare([($0, 1)]) } ?? .none
        let C = model.config.hiddenSize, L = model.config.numHiddenLayers
        var sum = [Double](repeating: 0, count: C)
        var rows = 0
        for (i, s) in sequences.enumerated() {
            let start = min(max(from?[i] ?? 0, 0), s.count - 1)
            let session = try model.makeLlamaSession(maxTokens: s.count, adapters: adapters)
            let rec = ForwardActivations(finalOnly: true)
            session.activations = rec
            _ = try session.feed(s)
            let h = rec.values["\(L).h_final"]!     // (T, C)
            for t in start..<s.count { for j in 0..<C { sum[j] += Double(h[t * C + j]) } }
            rows += s.count - start
        }
        return sum.map { Float($0 / Double(rows)) }
    }

    /// Token lists of training sequences (prompt ++ answer, as the evaluator feeds them).
    public static func tokens(_ seqs: [TrainingSequence]) -> [[Int]] {
        seqs.map { s in s.tokens + [s.targets.last!] }
    }

    /// Where each sequence's answer starts in `tokens(seqs)`: |P|, one past the prompt.
    public static func answerStarts(_ seqs: [TrainingSequence]) -> [Int] {
        seqs.map { s in (s.targets.firstIndex { $0 >= 0 } ?? 0) + 1 }
    }

    /// The in-context condition of a task: the mean last hidden state over the answer tokens of
    /// its shots, with `adapter` applied.
    public static func answerCondition(model: LlamaModel, adapter: LoRAAdapter?, shots seqs: [TrainingSequence]) throws -> [Float] {
        try meanHiddenState(model: model, adapter: adapter, sequences: tokens(seqs), from: answerStarts(seqs))
    }

    /// SG-LoRA description embedding: base model, plain tokens of the text.
    public static func descriptionEmbedding(model: LlamaModel, text: String) throws -> [Float] {
        let toks = model.tokenizer.encode(text, parseSpecial: false)
        return try meanHiddenState(model: model, adapter: nil, sequences: [toks])
    }
}
