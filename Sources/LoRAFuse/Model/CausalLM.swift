/// The contract between the model engine and what runs on it (generation, evaluation, training).
/// A session holds one sequence's KV cache; the model's weights are shared by all sessions.
public protocol InferenceSession: AnyObject {
    /// Number of tokens fed so far (the position the next token gets).
    var position: Int { get }
    /// Feeds `tokens` after those already fed and returns their logits, (T, vocab).
    /// Prompt tokens are processed as one batch.
    func feed(_ tokens: [Int]) throws -> Matrix
    /// As `feed`, returning only the logits of rows `first..<tokens.count`, (T − first, vocab).
    /// Scoring an answer needs no logits for the prompt's rows, and the head (vocab × hidden per
    /// row: 28 M of SmolLM2's 135 M multiply-adds per token) is a large share of a small model's work.
    /// The default computes every row and drops the first ones.
    func feed(_ tokens: [Int], logitsFrom first: Int) throws -> Matrix
    /// Forgets every fed token, keeping the allocated cache.
    func reset()
    /// Forgets the tokens fed after the first `position` ones (0 ≤ position ≤ `self.position`), so
    /// the next `feed` continues from there. Lets a caller branch off a teacher-forced pass: the
    /// evaluator scores prompt + answer in one batch, then cuts back to where greedy decoding
    /// leaves the answer instead of feeding the prompt again.
    func truncate(to position: Int)
}

public protocol CausalLM: AnyObject {
    var vocabSize: Int { get }
    var tokenizer: BPETokenizer { get }
    /// Most positions a sequence can have (the model's trained context, `max_position_embeddings` /
    /// `*.context_length`). Defaults to unbounded for models that have no such limit.
    var contextLength: Int { get }
    /// A new sequence able to hold up to `maxTokens` tokens.
    func makeSession(maxTokens: Int) throws -> any InferenceSession
    /// When the model's adapters are chosen per request from the prompt (a `sequence` router):
    /// the model with the adapters chosen for `prompt`, and a key naming that choice (equal keys,
    /// equal models). nil when the adapters do not depend on the prompt.
    func routedForPrompt(_ prompt: [Int]) throws -> (key: String, model: any CausalLM)?
}

extension CausalLM {
    public var contextLength: Int { Int.max }
    public func routedForPrompt(_ prompt: [Int]) throws -> (key: String, model: any CausalLM)? { nil }
}

extension InferenceSession {
    public func feed(_ tokens: [Int], logitsFrom first: Int) throws -> Matrix {
        let all = try feed(tokens)
        precondition(first >= 0 && first <= all.rows, "logitsFrom \(first) outside 0...\(all.rows)")
        return Matrix(rows: all.rows - first, cols: all.cols, data: Array(all.data[(first * all.cols)...]))
    }
}
