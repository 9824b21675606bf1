import Foundation

/// The generators' conditions, computed with the inference engine.
///
/// In-context task condition (ICM-LoRA): the last-layer hidden state — after the final RMSNorm,
/// i.e. what lm_head reads — of base + adapter, averaged over every position of every few-shot
/// example (prompt and answer tokens). ICM-LoRA averages the decoder's last hidden state over the
/// decoding steps of ~30 examples; averaging every position of teacher-forced examples is the
/// same quantity for a causal model without sampling.
///
/// Description embedding (SG-LoRA): the same mean hidden state of the base model alone over the
/// description text's tokens (SG-LoRA uses a separate sentence encoder; the base model is the
/// encoder we have).
public enum TaskCondition {
    /// Mean of "h_final" over all rows of `sequences` (each a token list), run with `adapter`
    /// applied unmerged (nil: the base model). The model is not changed.
    public static func meanHiddenState(model: LlamaModel, adapter: LoRAAdapter?, sequences: [[Int]]) throws -> [Float] {
        guard !sequences.isEmpty, sequences.allSatisfy({ !$0.isEmpty }) else {
            throw ICMError.badInput(what: "task condition", reason: "needs at least one non-empty example")
        }
        let adapters = try adapter.map { try model.prepare([($0, 1)]) } ?? .none
        let C = model.config.hiddenSize, L = model.config.numHiddenLayers
        var sum = [Double](repeating: 0, count: C)
        var rows = 0
        for s in sequences {
            let session = try model.makeLlamaSession(maxTokens: s.count, adapters: adapters)
            let rec = ForwardActivations()
            session.activations = rec
            _ = try session.feed(s)
            let h = rec.values["\(L).h_final"]!     // (T, C)
            for t in 0..<s.count { for j in 0..<C { sum[j] += Double(h[t * C + j]) } }
            rows += s.count
        }
        return sum.map { Float($0 / Double(rows)) }
    }

    /// Token lists of training sequences (prompt ++ answer, as the evaluator feeds them).
    public static func tokens(_ seqs: [TrainingSequence]) -> [[Int]] {
        seqs.map { s in s.tokens + [s.targets.last!] }
    }

    /// SG-LoRA description embedding: base model, plain tokens of the text.
    public static func descriptionEmbedding(model: LlamaModel, text: String) throws -> [Float] {
        let toks = model.tokenizer.encode(text, parseSpecial: false)
        return try meanHiddenState(model: model, adapter: nil, sequences: [toks])
    }
}
