import Foundation

/// Errors of inputs that do not fit the model's context window. Each names where the input came
/// from (file and 1-based JSONL line when it is an example) and the sizes involved.
public enum ContextLengthError: Error, CustomStringConvertible, Equatable {
    /// A prompt/answer example tokenizes to more positions than the model has.
    case exampleTooLong(file: String, line: Int, tokens: Int, contextLength: Int)
    /// An example's text is so large that it cannot fit whatever it tokenizes to (every token covers
    /// at most `longestToken` bytes); rejected before tokenizing it.
    case exampleTooLarge(file: String, line: Int, bytes: Int, contextLength: Int, longestToken: Int)
    /// A prompt (not from a file) tokenizes to more positions than fit.
    case promptTooLong(tokens: Int, contextLength: Int)
    /// A requested context size (e.g. `--context`) is larger than the model's.
    case contextTooLarge(option: String, requested: Int, contextLength: Int)

    public var description: String {
        switch self {
        case let .exampleTooLong(file, line, tokens, ctx):
            return "\(file):\(line): example is \(tokens) tokens (prompt with chat template + answer + end of turn), the model's context length is \(ctx)"
        case let .exampleTooLarge(file, line, bytes, ctx, longest):
            return "\(file):\(line): example text is \(bytes) bytes, more than the model's context length \(ctx) × its longest token (\(longest) bytes) can hold; not tokenized"
        case let .promptTooLong(tokens, ctx):
            return "the prompt is \(tokens) tokens, the context length is \(ctx)"
        case let .contextTooLarge(option, requested, ctx):
            return "\(option) \(requested) is larger than the model's context length \(ctx)"
        }
    }
}

extension CausalLM {
    /// Checks that a requested context size fits the model; `option` names it in the error.
    public func checkContext(_ requested: Int, option: String = "--context") throws {
        guard requested <= contextLength else {
            throw ContextLengthError.contextTooLarge(option: option, requested: requested, contextLength: contextLength)
        }
    }
}

extension BPETokenizer {
    /// Whether text of `bytes` UTF-8 bytes surely tokenizes to more than `limit` tokens: each token
    /// covers at most `longestTokenBytes` bytes (nil when a byte can be dropped, so no such bound holds).
    public func surelyExceeds(bytes: Int, limit: Int) -> Bool {
        guard let longest = longestTokenBytes, limit < Int.max / max(longest, 1) else { return false }
        return bytes > limit * longest
    }
}
