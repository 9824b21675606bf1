/// The contract between the model engine and what runs on it (generation, evaluation, training).
/// A session holds one sequence's KV cache; the model's weights are shared by all sessions.
public protocol InferenceSession: AnyObject {
    /// Number of tokens fed so far (the position the next token gets).
    var position: Int { get }
    /// Feeds `tokens` after those already fed and returns their logits, (T, vocab).
    /// Prompt tokens are processed as one batch.
    func feed(_ tokens: [Int]) throws -> Matrix
    /// Forgets every fed token, keeping the allocated cache.
    func reset()
}

public protocol CausalLM: AnyObject {
    var vocabSize: Int { get }
    var tokenizer: BPETokenizer { get }
    /// A new sequence able to hold up to `maxTokens` tokens.
    func makeSession(maxTokens: Int) throws -> any InferenceSession
}
