import Foundation

/// Errors of evaluation.
public enum EvalError: Error, CustomStringConvertible, Equatable {
    /// The tokenizer has neither an end-of-turn nor an EOS token, so an answer has no end.
    case noEndOfTurnToken
    /// The model returned logits of the wrong shape.
    case badLogits(task: String, line: Int, expectedRows: Int, expectedCols: Int, rows: Int, cols: Int)
    /// There is nothing to evaluate.
    case noTasks

    public var description: String {
        switch self {
        case .noEndOfTurnToken:
            return "eval: the tokenizer has no end-of-turn or EOS token to end the answers with"
        case let .badLogits(task, line, er, ec, r, c):
            return "eval: task \(task) line \(line): model returned logits (\(r), \(c)), expected (\(er), \(ec))"
        case .noTasks:
            return "eval: no tasks given"
        }
    }
}

/// Options of `Evaluator`.
public struct EvalOptions: Sendable {
    /// Whether to greedy-decode each prompt and compare with the answer (costs up to
    /// `maxNewTokens` forward passes per example).
    public var computeAccuracy: Bool
    /// Greedy decoding stops after this many new tokens.
    public var maxNewTokens: Int
    /// Whether greedy decoding stops as soon as its output can no longer match the answer
    /// (`Evaluator.canStillMatch`). Accuracy is the same either way; only `ExampleScore.output`
    /// is then cut short for wrong answers.
    public var earlyStop: Bool

    public init(computeAccuracy: Bool = true, maxNewTokens: Int = 32, earlyStop: Bool = true) {
        self.computeAccuracy = computeAccuracy
        self.maxNewTokens = maxNewTokens
        self.earlyStop = earlyStop
    }
}

/// Scores of one example.
public struct ExampleScore: Sendable, Equatable {
    /// Σ over the answer tokens of −log p(token | everything before it).
    public var nll: Double
    /// Number of answer tokens (answer text tokens + the end-of-turn token).
    public var tokens: Int
    /// The greedy continuation's text (nil when accuracy is off).
    public var output: String?
    /// Whether the trimmed output equals the trimmed answer (nil when accuracy is off).
    public var correct: Bool?
}

/// Result of one task. JSON: `{"loss", "perplexity", "accuracy", "examples", "tokens"}`;
/// `accuracy` is `null` when accuracy was not computed (`--no-accuracy`), so the keys are always the same.
public struct TaskEvalResult: Codable, Sendable, Equatable {
    /// Token-weighted mean cross-entropy (nats) over all answer tokens of the task.
    public var loss: Double
    /// exp(loss).
    public var perplexity: Double
    /// Fraction of examples whose greedy output matches the answer.
    public var accuracy: Double?
    public var examples: Int
    public var tokens: Int

    public init(loss: Double, perplexity: Double, accuracy: Double?, examples: Int, tokens: Int) {
        self.loss = loss
        self.perplexity = perplexity
        self.accuracy = accuracy
        self.examples = examples
        self.tokens = tokens
    }

    enum CodingKeys: String, CodingKey { case loss, perplexity, accuracy, examples, tokens }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(loss, forKey: .loss)
        // JSON has no infinity: a perplexity that overflows Double (loss > ~709) is written as null.
        if perplexity.isFinite { try c.encode(perplexity, forKey: .perplexity) } else { try c.encodeNil(forKey: .perplexity) }
        if let a = accuracy { try c.encode(a, forKey: .accuracy) } else { try c.encodeNil(forKey: .accuracy) }
        try c.encode(examples, forKey: .examples)
        try c.encode(tokens, forKey: .tokens)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        loss = try c.decode(Double.self, forKey: .loss)
        perplexity = try c.decodeIfPresent(Double.self, forKey: .perplexity) ?? .infinity
        accuracy = try c.decodeIfPresent(Double.self, forKey: .accuracy)
        examples = try c.decode(Int.self, forKey: .examples)
        tokens = try c.decode(Int.self, forKey: .tokens)
    }
}

/// Result of an evaluation run. JSON:
/// `{"tasks": {NAME: TaskEvalResult}, "mean_loss": …, "mean_accuracy": …}`; the means are unweighted
/// over tasks; `mean_accuracy` is `null` when accuracy was not computed.
public struct EvalReport: Codable, Sendable, Equatable {
    public var tasks: [String: TaskEvalResult]
    public var meanLoss: Double
    public var meanAccuracy: Double?
    /// Task names in the order they were given (not encoded; JSON objects are unordered).
    public var order: [String]

    public init(tasks: [String: TaskEvalResult], order: [String]) {
        self.tasks = tasks
        self.order = order
        let r = order.compactMap { tasks[$0] }
        meanLoss = r.isEmpty ? .nan : r.map(\.loss).reduce(0, +) / Double(r.count)
        let acc = r.compactMap(\.accuracy)
        meanAccuracy = acc.isEmpty || acc.count != r.count ? nil : acc.reduce(0, +) / Double(acc.count)
    }

    enum CodingKeys: String, CodingKey {
        case tasks
        case meanLoss = "mean_loss"
        case meanAccuracy = "mean_accuracy"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(tasks, forKey: .tasks)
        try c.encode(meanLoss, forKey: .meanLoss)
        if let a = meanAccuracy { try c.encode(a, forKey: .meanAccuracy) } else { try c.encodeNil(forKey: .meanAccuracy) }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        tasks = try c.decode([String: TaskEvalResult].self, forKey: .tasks)
        meanLoss = try c.decode(Double.self, forKey: .meanLoss)
        meanAccuracy = try c.decodeIfPresent(Double.self, forKey: .meanAccuracy)
        order = tasks.keys.sorted()
    }
}

/// Progress of an evaluation, reported after each example.
public struct EvalProgress: Sendable {
    public var task: String
    /// Examples finished in this task / in the task.
    public var taskDone: Int
    public var taskTotal: Int
    /// Examples finished over all tasks / over all tasks.
    public var done: Int
    public var total: Int
}

/// Loss, perplexity and exact-match accuracy of a causal LM on prompt/answer tasks.
///
/// Per example:
/// - prompt tokens `P` = the chat template applied to one user turn with the generation prompt
///   (`tokenizer.encodeChat`; ChatML templates with a default system message, like SmolLM2's, add it);
/// - answer tokens `A` = `encode(answer)` followed by the end-of-turn token (`eotId`, else `eosId`),
///   tokenized separately from the prompt and appended, so every example ends the way the model must
///   end its turn;
/// - loss: one batched forward of `P ++ A[0..<|A|-1]` (the last answer token is only predicted, never
///   an input), with the head computed only for positions `|P| - 1 …` (`feed(_:logitsFrom:)`);
///   position `|P| - 1 + j` predicts `A[j]`, and
///   `nll_j = logsumexp(z) − z[A[j]]` is computed in Double after subtracting the row max;
/// - accuracy: greedy decoding after `P`, at most `maxNewTokens` tokens, stopping at the tokenizer's
///   stop tokens; the example is correct when the output text, whitespace-trimmed, equals the trimmed
///   answer. Decoding reuses the loss pass: while the greedy tokens so far equal `A[0..<j]`, the
///   next greedy token is the argmax of the loss logits at position `|P| - 1 + j`, which was computed with exactly that
///   context, so no forward pass is needed. At the first step where greedy leaves the answer, the
///   session is cut back (`truncate(to: |P| + j)`) and decoding goes on one token at a time with the
///   KV cache. An example the model gets right in the answer's own tokenization thus costs one
///   batched pass and nothing else. (The argmax of a batched row can differ from that of a one-token
///   feed only by float rounding, as between any two BLAS call shapes.)
/// - early stop (`EvalOptions.earlyStop`): decoding also ends once the output can no longer equal the
///   answer after trimming (`canStillMatch`), which does not change `correct`.
///
/// A per-request (`sequence`) router chooses each example's adapters from its prompt tokens
/// (`CausalLM.routedForPrompt`) before the loss pass; one session is kept per choice.
///
/// `evaluate` runs every example on one session: the longest common prefix of all prompts (the chat
/// template's system message and user-turn header, at most all but one token of the shortest prompt)
/// is fed once, and each example cuts the session back to it (`truncate(to:)`) and feeds only the
/// rest. Logits are the same as from a fresh session up to float rounding (a different batching).
///
/// Per task: `loss = Σ nll / Σ |A|` over all its examples (token-weighted), `perplexity = exp(loss)`,
/// `accuracy = correct / examples`. The report's means are unweighted over tasks.
public struct Evaluator {
    public let model: any CausalLM
    public var options: EvalOptions

    public init(model: any CausalLM, options: EvalOptions = EvalOptions()) {
        self.model = model
        self.options = options
    }

    /// The end-of-turn token appended to every answer.
    public func endOfTurnId() throws -> Int {
        guard let id = model.tokenizer.eotId ?? model.tokenizer.eosId else { throw EvalError.noEndOfTurnToken }
        return id
    }

    /// Tokens of a prompt rendered as one user turn with the generation prompt.
    public func promptTokens(_ prompt: String) throws -> [Int] {
        try model.tokenizer.encodeChat([ChatMessage(role: "user", content: prompt)], addGenerationPrompt: true)
    }

    /// Tokens of an answer: its text's tokens, then the end-of-turn token.
    public func answerTokens(_ answer: String) throws -> [Int] {
        model.tokenizer.encode(answer) + [try endOfTurnId()]
    }

    /// Prompt and answer tokens of one example, checked against the model's context length: the whole
    /// `prompt + answer` must fit, since scoring and training feed it as one sequence. `file` names the
    /// example's source in the error (with `example.line`). Text too large to fit whatever it tokenizes
    /// to is rejected before tokenizing (a 10 MB prompt would otherwise be tokenized and then need a
    /// session of millions of positions).
    public func exampleTokens(_ example: EvalExample, file: String) throws -> (p: [Int], a: [Int]) {
        let ctx = model.contextLength
        let bytes = example.prompt.utf8.count + example.answer.utf8.count
        if model.tokenizer.surelyExceeds(bytes: bytes, limit: ctx) {
            throw ContextLengthError.exampleTooLarge(file: file, line: example.line, bytes: bytes, contextLength: ctx,
                                                     longestToken: model.tokenizer.longestTokenBytes ?? 0)
        }
        let p = try promptTokens(example.prompt)
        let a = try answerTokens(example.answer)
        guard p.count + a.count <= ctx else {
            throw ContextLengthError.exampleTooLong(file: file, line: example.line, tokens: p.count + a.count, contextLength: ctx)
        }
        return (p, a)
    }

    /// Cross-entropy of each target given its row of logits: `−log softmax(logits[r])[targets[r]]`,
    /// in Double with the row max subtracted first (stable for any finite logits).
    public static func negativeLogLikelihoods(_ logits: Matrix, rows: Range<Int>, targets: [Int]) -> [Double] {
        precondition(rows.count == targets.count)
        var out: [Double] = []
        out.reserveCapacity(targets.count)
        for (r, t) in zip(rows, targets) {
            let row = logits.row(r)
            var m = -Double.infinity
            for v in row { m = max(m, Double(v)) }
            var s = 0.0
            for v in row { s += Foundation.exp(Double(v) - m) }
            let lse = m + Foundation.log(s)
            out.append(lse - Double(row[row.startIndex + t]))
        }
        return out
    }

    /// Scores one example on a fresh session. `task` only labels errors.
    public func score(_ example: EvalExample, task: String = "") throws -> ExampleScore {
        let (p, a) = try exampleTokens(example, file: task.isEmpty ? "(example)" : task)
        let session = try (try model.routedForPrompt(p)?.model ?? model).makeSession(maxTokens: capacity(p, a))
        return try score(example, p: p, a: a, session: session, cached: 0, task: task)
    }

    /// Positions a session needs to score (and decode) an example; decoding stops at the context length.
    private func capacity(_ p: [Int], _ a: [Int]) -> Int {
        let decode = options.computeAccuracy ? min(p.count + options.maxNewTokens, model.contextLength) : 0
        return max(p.count + a.count, decode, 1)
    }

    /// Scores one example on `session`, whose first `cached` positions already hold `p[..<cached]`
    /// (anything after them is dropped).
    private func score(_ example: EvalExample, p: [Int], a: [Int], session: any InferenceSession, cached: Int,
                       task: String) throws -> ExampleScore {
        let vocab = model.vocabSize
        if session.position != cached { session.truncate(to: cached) }
        // Only the rows that predict answer tokens: row j of `logits` is position |P| − 1 + j.
        let input = Array(p[cached...]) + a.dropLast()
        let logits = try session.feed(input, logitsFrom: p.count - cached - 1)
        guard logits.rows == a.count, logits.cols == vocab else {
            throw EvalError.badLogits(task: task, line: example.line, expectedRows: a.count, expectedCols: vocab,
                                      rows: logits.rows, cols: logits.cols)
        }
        let nll = Evaluator.negativeLogLikelihoods(logits, rows: 0..<a.count, targets: a)
        var score = ExampleScore(nll: nll.reduce(0, +), tokens: a.count, output: nil, correct: nil)

        if options.computeAccuracy {
            let text = try greedy(session: session, prompt: p, answer: a, lossLogits: logits, example: example, task: task)
            score.output = text
            score.correct = Evaluator.matches(text, example.answer)
        }
        return score
    }

    /// Greedy decoding after the loss pass (see the type's doc): `session` holds `prompt + answer[..<|a|-1]`
    /// and `lossLogits` the logits of positions |P| − 1 … (row j predicts answer token j).
    private func greedy(session: any InferenceSession, prompt p: [Int], answer a: [Int], lossLogits: Matrix,
                        example: EvalExample, task: String) throws -> String {
        let tok = model.tokenizer
        let stopIds = tok.stopIds.union([try endOfTurnId()])
        let target = Array(example.answer.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        var decoder = tok.makeStreamingDecoder(skipSpecial: false)
        var text = ""
        var tokens: [Int] = []
        var bytes: [UInt8] = []
        var onAnswer = true            // tokens == a[..<tokens.count], so loss rows still apply
        var logits = lossLogits
        var row = 0
        while tokens.count < options.maxNewTokens {
            let next = Sampler.argmax(logits.row(row))
            if stopIds.contains(next) { break }
            tokens.append(next)
            text += decoder.push(next)
            if options.earlyStop {
                bytes += tok.bytes(of: next)
                if !Evaluator.canStillMatch(generated: bytes, target: target) { break }
            }
            if tokens.count == options.maxNewTokens { break }
            let j = tokens.count
            if onAnswer && next == a[j - 1] && j < lossLogits.rows {
                row = j                            // the loss pass already saw p + a[..<j]
                continue
            }
            if onAnswer {
                onAnswer = false
                session.truncate(to: p.count + j - 1)   // keep p + a[..<j-1], the greedy tokens before `next`
            }
            if p.count + j > model.contextLength { break }  // no position left to feed `next` at
            logits = try session.feed([next])
            guard logits.rows == 1, logits.cols == model.vocabSize else {
                throw EvalError.badLogits(task: task, line: example.line, expectedRows: 1, expectedCols: model.vocabSize,
                                          rows: logits.rows, cols: logits.cols)
            }
            row = 0
        }
        return text + decoder.flush()
    }

    /// Whether greedy output whose bytes so far are `generated` can still end up equal to the answer
    /// under `matches` (both sides trimmed of whitespace), `target` being the UTF-8 of the trimmed
    /// answer. Decoding may stop when this is false: every continuation `g + y` then trims to something
    /// other than the answer, so accuracy is the same as with full decoding.
    ///
    /// `g` can still match iff, after dropping its leading whitespace, it is a prefix of `target` or
    /// `target` followed only by whitespace. The test is made on bytes and only where it is exact; it
    /// answers true (keep decoding) whenever Unicode could interfere:
    /// - `target` or `generated` holds a non-ASCII byte (Unicode whitespace is trimmed too, canonical
    ///   equivalence makes e.g. U+212A equal "K", and an unfinished UTF-8 sequence is not yet a character);
    /// - `generated` holds an ASCII control byte other than \t \n \v \f \r (to not depend on which
    ///   of them `CharacterSet.whitespacesAndNewlines` holds).
    /// Whitespace here is exactly 0x09–0x0D and 0x20, which that set contains.
    public static func canStillMatch(generated: [UInt8], target: [UInt8]) -> Bool {
        func isSpace(_ b: UInt8) -> Bool { b == 0x20 || (0x09...0x0D).contains(b) }
        if target.contains(where: { $0 >= 0x80 }) { return true }
        if generated.contains(where: { $0 >= 0x7F || ($0 < 0x20 && !isSpace($0)) }) { return true }
        let lead = generated.drop(while: isSpace)
        if lead.count <= target.count { return lead.elementsEqual(target.prefix(lead.count)) }
        return lead.prefix(target.count).elementsEqual(target) && lead.dropFirst(target.count).allSatisfy(isSpace)
    }

    /// Exact match after trimming whitespace and newlines on both sides.
    public static func matches(_ output: String, _ answer: String) -> Bool {
        output.trimmingCharacters(in: .whitespacesAndNewlines) == answer.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Evaluates one task.
    public func evaluate(_ task: EvalTask, progress: ((EvalProgress) -> Void)? = nil) throws -> TaskEvalResult {
        try evaluate([task], progress: progress).tasks[task.name]!
    }

    /// Evaluates every task; `progress` is called after each example.
    public func evaluate(_ tasks: [EvalTask], progress: ((EvalProgress) -> Void)? = nil) throws -> EvalReport {
        guard !tasks.isEmpty else { throw EvalError.noTasks }
        let total = tasks.reduce(0) { $0 + $1.examples.count }
        var done = 0
        var results: [String: TaskEvalResult] = [:]
        var order: [String] = []
        // One session for the whole run; the prompts' common prefix (system message, user-turn
        // header) is fed once and every example starts by cutting the session back to it.
        let ids = try tasks.map { t in try t.examples.map { try exampleTokens($0, file: t.path ?? t.name) } }
        let all = ids.joined()
        var shared = 0, prefix: [Int] = [], maxTokens = 1
        if let first = all.first {
            shared = all.map(\.p.count).min()! - 1            // each example keeps ≥ 1 prompt token of its own
            for e in all.dropFirst() {
                shared = min(shared, zip(first.p, e.p).prefix { $0 == $1 }.count)
            }
            prefix = Array(first.p[..<shared])
            maxTokens = all.map { capacity($0.p, $0.a) }.max()!
        }
        // A per-request router picks the adapters from each prompt: one session per choice, each
        // with the common prefix fed once; otherwise one session for everything.
        var sessions: [String: any InferenceSession] = [:]
        func session(for p: [Int]) throws -> any InferenceSession {
            let routed = try model.routedForPrompt(p)
            let key = routed?.key ?? ""
            if let s = sessions[key] { return s }
            let s = try (routed?.model ?? model).makeSession(maxTokens: maxTokens)
            if shared > 0 { _ = try s.feed(prefix, logitsFrom: shared - 1) }
            // Top-k merges make a new choice per prompt; keep the KV caches held bounded.
            if sessions.count >= 16 { sessions.removeAll() }
            sessions[key] = s
            return s
        }
        for (ti, task) in tasks.enumerated() {
            var nll = 0.0, tokens = 0, correct = 0
            for (i, ex) in task.examples.enumerated() {
                let s = try score(ex, p: ids[ti][i].p, a: ids[ti][i].a, session: try session(for: ids[ti][i].p), cached: shared, task: task.name)
                nll += s.nll
                tokens += s.tokens
                if s.correct == true { correct += 1 }
                done += 1
                progress?(EvalProgress(task: task.name, taskDone: i + 1, taskTotal: task.examples.count,
                                       done: done, total: total))
            }
            let loss = tokens > 0 ? nll / Double(tokens) : .nan
            let acc: Double? = options.computeAccuracy && !task.examples.isEmpty
                ? Double(correct) / Double(task.examples.count) : nil
            results[task.name] = TaskEvalResult(loss: loss, perplexity: Foundation.exp(loss), accuracy: acc,
                                                examples: task.examples.count, tokens: tokens)
            order.append(task.name)
        }
        return EvalReport(tasks: results, order: order)
    }
}

extension EvalReport {
    /// A plain-text table: one row per task in the given order, then a mean row (unweighted means over
    /// tasks; its examples/tokens are totals and its ppl is exp(mean loss)). Missing accuracy is "-".
    public func table() -> String {
        func num(_ x: Double?, _ f: String) -> String { x.map { $0.isFinite ? String(format: f, $0) : "inf" } ?? "-" }
        func col(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
        let width = max(8, (order.map(\.count).max() ?? 0) + 2)
        var lines = [col("task", width) + col("examples", 10) + col("tokens", 8) + col("loss", 9) + col("ppl", 10) + "accuracy"]
        var ex = 0, tk = 0
        for name in order {
            guard let t = tasks[name] else { continue }
            ex += t.examples
            tk += t.tokens
            lines.append(col(name, width) + col(String(t.examples), 10) + col(String(t.tokens), 8)
                         + col(num(t.loss, "%.4f"), 9) + col(num(t.perplexity, "%.3f"), 10) + num(t.accuracy, "%.3f"))
        }
        lines.append(col("mean", width) + col(String(ex), 10) + col(String(tk), 8) + col(num(meanLoss, "%.4f"), 9)
                     + col(num(Foundation.exp(meanLoss), "%.3f"), 10) + num(meanAccuracy, "%.3f"))
        return lines.joined(separator: "\n")
    }
}
