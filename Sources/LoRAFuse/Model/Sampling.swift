import Foundation

/// Errors of token generation.
public enum GenerationError: Error, CustomStringConvertible, Equatable {
    /// Generation needs at least one token to condition on (no logits otherwise).
    case emptyPrompt
    /// The model returned a logits matrix of the wrong shape.
    case badLogits(expectedRows: Int, expectedCols: Int, rows: Int, cols: Int)
    /// A sampling parameter is out of range.
    case badParameter(name: String, value: Double, expected: String)

    public var description: String {
        switch self {
        case .emptyPrompt:
            return "generation: the prompt is empty (at least one token is needed to get logits)"
        case let .badLogits(er, ec, r, c):
            return "generation: model returned logits of shape (\(r), \(c)), expected (\(er), \(ec))"
        case let .badParameter(name, value, expected):
            return "generation: \(name) = \(value) is out of range, expected \(expected)"
        }
    }
}

/// Picks the next token from a row of logits.
///
/// - `temperature <= 0`: greedy, `argmax` (lowest id on ties), no randomness used.
/// - otherwise `p_i = softmax(logits / T)_i` (computed in Double after subtracting the max), then
///   nucleus (top-p) filtering keeps the smallest set of most probable tokens whose mass is ≥ `topP`
///   (Holtzman et al. 2019, "The Curious Case of Neural Text Degeneration"; ties in probability are
///   ordered by id so the set is deterministic), and one token is drawn from the renormalised kept set
///   with `SeededRNG`, so the same seed gives the same tokens.
public struct Sampler: Sendable {
    public var temperature: Float
    public var topP: Float
    private var rng: SeededRNG

    /// - Parameters:
    ///   - temperature: ≥ 0; 0 means greedy.
    ///   - topP: in (0, 1]; 1 keeps every token.
    ///   - seed: seed of the draws.
    public init(temperature: Float = 0, topP: Float = 1, seed: UInt64 = 0) throws {
        guard temperature >= 0, temperature.isFinite else {
            throw GenerationError.badParameter(name: "temperature", value: Double(temperature), expected: "a finite value ≥ 0")
        }
        guard topP > 0, topP <= 1 else {
            throw GenerationError.badParameter(name: "top_p", value: Double(topP), expected: "(0, 1]")
        }
        self.temperature = temperature
        self.topP = topP
        self.rng = SeededRNG(seed: seed)
    }

    /// The greedy sampler.
    public static var greedy: Sampler { try! Sampler(temperature: 0, topP: 1, seed: 0) }

    public var isGreedy: Bool { temperature <= 0 }

    /// Index of the largest logit (the first one on ties). NaN logits are never chosen unless all are NaN.
    public static func argmax<C: Collection>(_ logits: C) -> Int where C.Element == Float, C.Index == Int {
        withBuffer(logits) { argmax(buffer: $0) }
    }

    /// `argmax` on contiguous storage.
    public static func argmax(buffer p: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        var found = false
        for i in 0..<p.count {
            let v = p[i]
            if !found || v > bestValue { if !v.isNaN { best = i; bestValue = v; found = true } }
        }
        return best
    }

    /// `body` on the logits as contiguous storage (indices from 0), copying only a collection that
    /// has none. Callers in other modules get the generic functions here unspecialised, where
    /// walking a Collection through its witnesses took as long as a whole decode step of SmolLM2
    /// (49,152 logits); arrays and slices go straight to the plain loops.
    static func withBuffer<C: Collection, R>(_ logits: C, _ body: (UnsafeBufferPointer<Float>) -> R) -> R
    where C.Element == Float {
        if let r = logits.withContiguousStorageIfAvailable(body) { return r }
        return Array(logits).withUnsafeBufferPointer(body)
    }

    /// The tokens top-p sampling may pick, most probable first, with their renormalised probabilities:
    /// the smallest prefix of the tokens sorted by `softmax(logits / temperature)` (descending, ties by
    /// id) whose probability mass reaches `topP`.
    public static func nucleus<C: Collection>(_ logits: C, temperature: Float, topP: Float) -> [(id: Int, p: Double)]
    where C.Element == Float, C.Index == Int {
        withBuffer(logits) { nucleus(buffer: $0, temperature: temperature, topP: topP) }
    }

    /// `nucleus` on contiguous storage. Sorting all 49,152 of SmolLM2's probabilities per token
    /// took half as long as the forward pass, and the kept set is usually a few dozen tokens: the
    /// descending order is built only as far as the walk needs (`SortedProbabilities`), so the
    /// result is the same as sorting everything.
    static func nucleus(buffer logits: UnsafeBufferPointer<Float>, temperature: Float, topP: Float) -> [(id: Int, p: Double)] {
        let probs = SortedProbabilities(logits, temperature: temperature)
        var kept: [(id: Int, p: Double)] = []
        var mass = 0.0
        let target = Double(topP)
        var rank = 0
        while let (id, e) = probs.entry(rank) {
            rank += 1
            let p = e / probs.z
            if p == 0 && !kept.isEmpty { break }  // the rest has no mass
            kept.append((id, p))
            mass += p
            // The 1e-12 slack keeps p = 1 (or a p equal to a sum of probabilities) from dropping the
            // last token through rounding.
            if mass >= target - 1e-12 { break }
        }
        return kept.map { ($0.id, $0.p / mass) }
    }

    /// Picks the next token from one row of logits.
    public mutating func sample<C: Collection>(_ logits: C) -> Int where C.Element == Float, C.Index == Int {
        if isGreedy { return Sampler.argmax(logits) }
        let u = rng.nextDouble()
        if topP < 1 {
            // Walk the renormalised kept set.
            let kept = Sampler.nucleus(logits, temperature: temperature, topP: topP)
            var acc = 0.0
            for (id, p) in kept {
                acc += p
                if u < acc { return id }
            }
            return kept.last!.id
        }
        // top_p = 1 (OpenAI's default) keeps nearly every token, so building the kept set would
        // sort them all; the draw walks the descending order only up to the token it lands on.
        // It equals the draw over `nucleus`'s set except for the rounding of that set's
        // renormalisation (its mass is 1 − at most 1e-12): a different token only for a u within
        // ~1e-12 of a boundary.
        return Sampler.withBuffer(logits) { buf in
            let probs = SortedProbabilities(buf, temperature: temperature)
            var acc = 0.0, rank = 0, last = 0
            while let (id, e) = probs.entry(rank) {
                let p = e / probs.z
                if p == 0 && rank > 0 { break }   // the rest has no mass
                acc += p
                if u < acc { return id }
                last = id
                rank += 1
            }
            return last
        }
    }
}

/// exp((logit − max) / T) of every token (0 for NaN) and their sum `z` in id order, with the
/// descending order (ties by id) built on demand: `entry(r)` is the r-th most probable token. The
/// order is sorted in growing prefixes: all tokens at or above the k-th largest value (found by
/// selection, O(n)), sorted; k grows ×8 when a walk goes past it. A prefix of the full sort.
final class SortedProbabilities {
    let e: [Double]
    let z: Double
    private var order: [Int32] = []
    private var complete = false

    init(_ logits: UnsafeBufferPointer<Float>, temperature: Float) {
        let t = Double(max(temperature, Float.leastNormalMagnitude))
        var m = -Double.infinity
        for v in logits where !v.isNaN { m = max(m, Double(v)) }
        var e = [Double](repeating: 0, count: logits.count)
        var z = 0.0
        for i in 0..<logits.count {
            let v = logits[i]
            let x = v.isNaN ? 0 : Foundation.exp((Double(v) - m) / t)
            e[i] = x
            z += x
        }
        self.e = e
        self.z = z
    }

    /// The r-th most probable token and its exp value, nil past the end.
    func entry(_ r: Int) -> (Int, Double)? {
        if r >= order.count && !complete { extend(to: max(64, 8 * (r + 1))) }
        guard r < order.count else { return nil }
        let id = Int(order[r])
        return (id, e[id])
    }

    private func extend(to k: Int) {
        let n = e.count
        let ids: [Int32]
        if k >= n {
            ids = Array(0..<Int32(n))
            complete = true
        } else {
            let threshold = Self.kthLargest(e, k)
            ids = (0..<Int32(n)).filter { e[Int($0)] >= threshold }
        }
        order = ids.sorted { e[Int($0)] != e[Int($1)] ? e[Int($0)] > e[Int($1)] : $0 < $1 }
    }

    /// The k-th largest value (1-based) of `values` (Hoare selection on a copy).
    static func kthLargest(_ values: [Double], _ k: Int) -> Double {
        var a = values
        var lo = 0, hi = a.count - 1
        let target = k - 1   // index in descending order
        while lo < hi {
            let pivot = a[lo + (hi - lo) / 2]
            var i = lo, j = hi
            while i <= j {
                while a[i] > pivot { i += 1 }
                while a[j] < pivot { j -= 1 }
                if i <= j { a.swapAt(i, j); i += 1; j -= 1 }
            }
            if target <= j { hi = j } else if target >= i { lo = i } else { return a[target] }
        }
        return a[target]
    }
}

/// Why generation ended.
public enum StopReason: String, Sendable, Codable {
    /// A stop token (EOS / end of turn) was sampled; it is not part of the output.
    case stopToken = "stop"
    /// `maxTokens` new tokens were produced.
    case maxTokens = "length"
}

/// The tokens and text one `Generator.generate` call produced.
public struct GenerationResult: Sendable, Equatable {
    /// The new tokens (the stop token excluded).
    public var tokens: [Int]
    /// Their text, exactly what was streamed.
    public var text: String
    public var stopReason: StopReason
}

/// Autoregressive generation on a `CausalLM` session.
///
/// The prompt is fed as one batch; each new token is then fed alone, so the session's KV cache holds
/// the prompt once. Text is produced through the tokenizer's `StreamingDecoder`, which emits a
/// character only once all of its UTF-8 bytes have arrived. A token that is not fed back (the stop
/// token, or the last one when `maxTokens` is reached) costs no forward pass.
public struct Generator {
    public let model: any CausalLM
    public var sampler: Sampler
    public var maxTokens: Int
    /// Tokens that end generation (default: the tokenizer's EOS and end-of-turn).
    public var stopIds: Set<Int>
    /// Whether special tokens other than the stop tokens are left out of the text.
    public var skipSpecial: Bool

    public init(model: any CausalLM, sampler: Sampler = .greedy, maxTokens: Int,
                stopIds: Set<Int>? = nil, skipSpecial: Bool = true) {
        self.model = model
        self.sampler = sampler
        self.maxTokens = maxTokens
        self.stopIds = stopIds ?? model.tokenizer.stopIds
        self.skipSpecial = skipSpecial
    }

    /// Feeds `prompt` after whatever `session` already holds and generates up to `maxTokens` tokens.
    /// `onText` receives each piece of completed text as soon as it is known (`onToken`, each token id).
    /// On return the session holds the prompt and every generated token except an unfed last one
    /// (`session.position` says how many).
    public mutating func generate(session: any InferenceSession, prompt: [Int],
                                  onToken: ((Int) -> Void)? = nil,
                                  onText: ((String) -> Void)? = nil) throws -> GenerationResult {
        guard !prompt.isEmpty else { throw GenerationError.emptyPrompt }
        let vocab = model.vocabSize
        // Only the last prompt position's logits are needed (the head is skipped for the others).
        var logits = try session.feed(prompt, logitsFrom: prompt.count - 1)
        guard logits.rows == 1, logits.cols == vocab else {
            throw GenerationError.badLogits(expectedRows: 1, expectedCols: vocab, rows: logits.rows, cols: logits.cols)
        }
        var row = 0
        var decoder = model.tokenizer.makeStreamingDecoder(skipSpecial: skipSpecial)
        var tokens: [Int] = []
        var text = ""
        var reason = StopReason.maxTokens
        while tokens.count < maxTokens {
            let next = sampler.sample(logits.row(row))
            if stopIds.contains(next) { reason = .stopToken; break }
            tokens.append(next)
            onToken?(next)
            let piece = decoder.push(next)
            if !piece.isEmpty { text += piece; onText?(piece) }
            if tokens.count == maxTokens { break }
            logits = try session.feed([next])
            guard logits.rows == 1, logits.cols == vocab else {
                throw GenerationError.badLogits(expectedRows: 1, expectedCols: vocab, rows: logits.rows, cols: logits.cols)
            }
            row = 0
        }
        let tail = decoder.flush()
        if !tail.isEmpty { text += tail; onText?(tail) }
        return GenerationResult(tokens: tokens, text: text, stopReason: reason)
    }
}

/// A multi-turn chat on one session: the conversation is kept as messages, rendered by the chat
/// template each turn, and only the tokens past what the session already holds are fed, so earlier
/// turns are not recomputed. When the new rendering does not extend what was fed (a reply that
/// re-tokenizes differently, say), the session is reset and the whole conversation fed again.
public final class ChatConversation {
    public let model: any CausalLM
    public var generator: Generator
    public private(set) var messages: [ChatMessage]
    /// Context size of the session, in tokens.
    public let contextSize: Int
    private let session: any InferenceSession
    /// The tokens the session holds, in order.
    public private(set) var fed: [Int] = []

    /// - Parameters:
    ///   - system: an optional system message (otherwise the template's default, if any, applies).
    public init(model: any CausalLM, generator: Generator, contextSize: Int, system: String? = nil) throws {
        self.model = model
        self.generator = generator
        try model.checkContext(contextSize, option: "context size")
        self.contextSize = contextSize
        self.messages = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
        self.session = try model.makeSession(maxTokens: contextSize)
    }

    /// Adds a user turn, generates the assistant's reply (streamed to `onText`) and adds it.
    public func respond(to user: String, onText: ((String) -> Void)? = nil) throws -> GenerationResult {
        let candidate = messages + [ChatMessage(role: "user", content: user)]
        let ids = try model.tokenizer.encodeChat(candidate, addGenerationPrompt: true)
        guard ids.count + generator.maxTokens <= contextSize else {
            throw ChatError.contextFull(tokens: ids.count, maxNewTokens: generator.maxTokens, contextSize: contextSize)
        }
        let delta: [Int]
        if ids.count > fed.count && Array(ids[..<fed.count]) == fed {
            delta = Array(ids[fed.count...])
        } else {
            session.reset()
            fed = []
            delta = ids
        }
        let result = try generator.generate(session: session, prompt: delta, onText: onText)
        fed = Array((fed + delta + result.tokens).prefix(session.position))
        messages = candidate + [ChatMessage(role: "assistant", content: result.text)]
        return result
    }
}

public enum ChatError: Error, CustomStringConvertible, Equatable {
    case contextFull(tokens: Int, maxNewTokens: Int, contextSize: Int)

    public var description: String {
        switch self {
        case let .contextFull(tokens, maxNew, ctx):
            return "chat: the conversation (\(tokens) tokens) plus up to \(maxNew) new tokens does not fit the context of \(ctx) tokens"
        }
    }
}
