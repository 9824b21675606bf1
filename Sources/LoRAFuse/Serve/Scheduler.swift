import Foundation

/// Caps of a `ServeEngine`.
public struct ServeLimits: Sendable {
    /// Sequences decoded together (running); more wait in the queue.
    public var maxBatch: Int
    /// Sequences waiting beyond the running ones; past it a request gets 429.
    public var maxQueue: Int
    /// Positions a sequence may use (prompt + completion); at most the model's context length.
    public var contextLength: Int
    /// Largest `max_tokens` a request may ask for, and the default when it asks for none.
    public var maxTokensCap: Int
    /// Prompt tokens fed per scheduler iteration (over all sequences still reading their prompt),
    /// so a long prompt is read in chunks between decode steps instead of stalling them.
    public var prefillChunk: Int
    /// A sequence running longer than this (seconds from submission) is ended with 'length'; one
    /// still waiting to start by then fails with a 503; nil: none.
    public var timeout: Double?
    /// Positions per key/value block (`KVBlockPool`).
    public var kvBlockTokens: Int = KVBlockPool.defaultBlockTokens
    /// Prompt prefixes shared with another sequence on the same adapters (a chat template's
    /// system prompt, a few-shot preamble) are read once and their keys and values copied; a new
    /// sequence that shares at least `prefixReuseMin` tokens with one reading its prompt in the
    /// same step waits one step to copy them. 0: off.
    public var prefixReuseMin: Int = 8

    /// Defaults measured with `lorafuse-bench serve` (64 concurrent chat requests over 16
    /// adapters, SmolLM2 Q4_1, 2 cores): on 2026-12-06, with a prefill chunk of 512, --max-batch
    /// 8/32/64 gave 222/237/211 tok/s and 512 against 128 3–20% more; on 2026-12-07, --max-batch
    /// 64 with a chunk of 4096 (all 64 prompts, ~2,600 tokens, in one step) gave 269/212/240 tok/s
    /// and p99 time to first token 3.5–4.0 s against 199/167 tok/s and 12.9/14.5 s for 32 and
    /// 512 in alternating runs (64 with 2048: 234 tok/s, 4.0 s). The price: a step holding that
    /// many prompt tokens takes seconds, and the sequences already decoding wait for it.
    public init(maxBatch: Int = 64, maxQueue: Int = 64, contextLength: Int = 2048, maxTokensCap: Int = 1024,
                prefillChunk: Int = 4096, timeout: Double? = nil) {
        self.maxBatch = maxBatch
        self.maxQueue = maxQueue
        self.contextLength = contextLength
        self.maxTokensCap = maxTokensCap
        self.prefillChunk = prefillChunk
        self.timeout = timeout
    }
}

/// Why a completion ended, as OpenAI's `finish_reason` spells it.
public enum FinishReason: String, Sendable, Equatable {
    /// An end-of-sequence token or a stop string.
    case stop
    /// `max_tokens`, the context, or the server's timeout.
    case length
}

public struct Usage: Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int { promptTokens + completionTokens }
}

/// What a running request streams out.
public enum ServeEvent: Sendable, Equatable {
    /// New text (possibly empty while a multi-byte character or a possible stop string is held
    /// back) and the token ids it came from.
    case delta(text: String, tokens: [Int])
    /// With `lorafuse: {"routing": true}`: the adapter behind the generated token `token`, sent
    /// before the delta that carries it.
    case routing(token: Int, adapter: String)
    case finished(FinishReason, Usage)
}

/// A submitted request: its events, and what the response reports.
public struct ServeStream: Sendable {
    public let id: Int
    /// The model name responses report: the base's, the adapter's or the fusion's digest name.
    public let model: String
    public let promptTokens: Int
    public let events: AsyncThrowingStream<ServeEvent, any Error>
}

/// Called by the engine's thread as requests move through it (metrics). Must not block.
public protocol ServeObserver: AnyObject, Sendable {
    func admitted(model: String, promptTokens: Int)
    func firstToken(model: String, seconds: Double)
    func nextToken(seconds: Double)
    func finished(model: String, completionTokens: Int, reason: String)
    func step(batch: Int, running: Int, waiting: Int)
    /// A running sequence gave its key/value blocks back to make room and went back to the queue.
    func preempted(model: String)
}

extension ServeObserver {
    public func preempted(model: String) {}
}

/// One forward step for several sequences: feeds each input's tokens (a decoding sequence's next
/// token, or a chunk of a prompt) to its session and returns the logits of the last token of each
/// input that wants them, in input order (`LlamaModel.step`).
public typealias DecodeStep = @Sendable (_ inputs: [StepInput]) throws -> Matrix

/// Continuous batching over one model: a thread loops over iterations, each of which admits
/// waiting sequences up to `maxBatch`, then runs one batched step holding every decoding
/// sequence's next token and up to `prefillChunk` prompt tokens of the sequences still reading
/// their prompts (chunked prefill), samples each sequence's next token with its own sampler, and
/// streams the text out.
/// Finished and cancelled sequences leave between iterations, freeing their place and their
/// adapter lease.
///
/// A request whose adapter does not fit the registry's memory budget because the resident sets
/// are held by other requests waits instead of getting a 429 (S-LoRA's adapter paging): it is
/// queued without its adapter, which is loaded off the scheduler thread once a finished request
/// has released one, and it runs when loaded. Requests whose adapters are in memory are
/// admitted past it meanwhile. Only when nothing of this engine holds an adapter and it still
/// does not fit (pinned sets fill the budget) does it end with the 429.
///
/// Key/value caches are blocks of `kvPool`, taken as sequences grow and counted in the registry's
/// memory budget beside the resident adapters (S-LoRA's unified paging). Before each step every
/// sequence in it gets the blocks that step needs; when the budget has no room even after
/// evicting unused adapters, the leases of waiting requests are dropped (re-acquired when they
/// are admitted), then the newest running sequences are preempted (vLLM's recompute preemption):
/// their blocks are freed and they go back to the front of the queue, to read their prompt and
/// the tokens generated so far again when memory frees. A sequence that is the only one holding
/// memory and still does not fit ends with a 429. Until then nothing fails for lack of memory.
///
/// Every sequence's tokens depend only on its own prompt, adapters and sampler, so a request
/// gives the same tokens alone or among others as long as `decode` computes each row as that
/// sequence alone would: on Float32 weights it does (tested); on quantized weights too when the
/// model's `promptPath` is `.kernels` (every row through the 8-bit kernels, whose rows do not
/// depend on each other); on the `.sgemm` path a step of more than
/// `QuantizedLinear.kernelRowLimit` rows runs on dequantized tiles and sgemm instead, so a greedy
/// completion can differ from the one alone where two tokens were nearly tied.
public final class ServeEngine: @unchecked Sendable {
    public let registry: AdapterRegistry
    public let limits: ServeLimits
    /// The key/value blocks of every sequence, counted in `registry`'s budget.
    public let kvPool: KVBlockPool
    public var model: LlamaModel { registry.model }
    private let decode: DecodeStep
    private let autoStart: Bool
    private weak var observer: (any ServeObserver)?

    private let lock = NSCondition()
    private var waiting: [Sequence] = []
    private var running: [Sequence] = []
    private var cancelled = Set<Int>()
    private var nextID = 1
    private var state: State = .idle
    private var thread: Thread?
    private var drainWaiters: [CheckedContinuation<Void, Never>] = []
    /// Leases released by sequences that left (a waiting sequence whose adapter did not fit
    /// retries after this changes).
    private var releases = 0
    /// An adapter is being acquired off the scheduler thread for a waiting sequence.
    private var acquiring = false
    private var preemptedCount = 0
    private var reusedCount = 0

    private enum State { case idle, running, draining, stopped }

    /// Decodes with `decode`; by default with `LlamaModel.decodeStep`, one batched forward for all
    /// sequences (the base product once for every row, each adapter set's LoRA on its own rows).
    /// `sequentialDecode` feeds each session alone instead. With `autoStart` the first
    /// submission starts the thread; otherwise `start()` does (tests queue requests first).
    public init(registry: AdapterRegistry, limits: ServeLimits = ServeLimits(), observer: (any ServeObserver)? = nil,
                decode: DecodeStep? = nil, autoStart: Bool = true) {
        self.autoStart = autoStart
        self.registry = registry
        var l = limits
        l.contextLength = max(2, min(l.contextLength, registry.model.contextLength))
        l.maxBatch = max(1, l.maxBatch)
        l.maxQueue = max(0, l.maxQueue)
        l.prefillChunk = max(1, l.prefillChunk)
        // A block past the context would only reserve positions no sequence can use.
        l.kvBlockTokens = min(max(1, l.kvBlockTokens), l.contextLength)
        self.limits = l
        kvPool = KVBlockPool(config: registry.model.config, blockTokens: l.kvBlockTokens, memory: registry)
        self.observer = observer
        let model = registry.model
        self.decode = decode ?? { inputs in try model.step(inputs) }
    }

    /// Each input fed to its session alone: what a batched step equals up to float summation order.
    public static let sequentialDecode: DecodeStep = { inputs in
        guard let first = inputs.first else { return Matrix(rows: 0, cols: 0) }
        let V = first.session.model.vocabSize
        var rows: [Float] = []
        for input in inputs {
            let l = try input.session.feed(input.tokens, lastOnly: true)
            if input.wantsLogits { rows += l.data }
        }
        return Matrix(rows: rows.count / V, cols: V, data: rows)
    }

    public func setObserver(_ o: (any ServeObserver)?) {
        lock.lock(); observer = o; lock.unlock()
    }

    /// Starts the scheduler thread (idempotent).
    public func start() {
        lock.lock()
        defer { lock.unlock() }
        guard state == .idle else { return }
        state = .running
        let t = Thread { [self] in self.loop() }
        t.name = "lorafuse-scheduler"
        t.stackSize = 4 << 20
        thread = t
        t.start()
    }

    /// Refuses new requests, lets the running and waiting ones finish, then stops the thread.
    public func drain() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            lock.lock()
            if state == .stopped || state == .idle {
                state = .stopped
                lock.unlock()
                c.resume()
                return
            }
            state = .draining
            drainWaiters.append(c)
            lock.broadcast()
            lock.unlock()
        }
    }

    /// Cancels every request and stops the thread.
    public func stop() async {
        cancelAll()
        await drain()
    }

    private func cancelAll() {
        lock.lock()
        for s in waiting + running { cancelled.insert(s.id) }
        lock.broadcast()
        lock.unlock()
    }

    public var queueDepth: Int { lock.lock(); defer { lock.unlock() }; return waiting.count }
    /// Sequences preempted for memory so far.
    public var preemptions: Int { lock.lock(); defer { lock.unlock() }; return preemptedCount }
    /// Prompt positions whose keys and values were copied from another sequence instead of computed.
    public var prefixTokensReused: Int { lock.lock(); defer { lock.unlock() }; return reusedCount }
    public var runningCount: Int { lock.lock(); defer { lock.unlock() }; return running.count }

    // MARK: Submission

    /// Checks, tokenizes and queues `request`, or throws the ServeError a client should get.
    public func submit(_ request: GenerationRequest) throws -> ServeStream {
        let arrived = Date()
        let tok = model.tokenizer
        let ctx = limits.contextLength
        let p = request.sampling
        if let m = p.maxTokens, m > limits.maxTokensCap {
            throw ServeError.invalid("max_tokens \(m) is above this server's cap of \(limits.maxTokensCap)", param: "max_tokens")
        }
        let promptText: String
        switch request.input {
        case .chat(let messages): promptText = messages.map(\.content).joined()
        case .text(let t): promptText = t
        }
        if tok.surelyExceeds(bytes: promptText.utf8.count, limit: ctx) {
            throw ServeError.invalid("the prompt is \(promptText.utf8.count) bytes, more than the context of \(ctx) tokens can hold",
                                     param: request.kind == .chat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        let ids: [Int]
        switch request.input {
        case .chat(let messages):
            do { ids = try tok.encodeChat(messages, addGenerationPrompt: true) } catch {
                throw ServeError.invalid("the messages cannot be rendered with the model's chat template: \(error)", param: "messages")
            }
        case .text(let t):
            ids = tok.encodeRawPrompt(t)
        }
        guard !ids.isEmpty else { throw ServeError.invalid("the prompt is empty", param: "prompt") }
        guard ids.count < ctx else {
            throw ServeError.invalid("the prompt is \(ids.count) tokens; this server's context is \(ctx), which leaves no room to generate",
                                     param: request.kind == .chat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        let maxNew: Int
        if let m = p.maxTokens {
            guard ids.count + m <= ctx else {
                throw ServeError.invalid("the prompt (\(ids.count) tokens) plus max_tokens \(m) is more than this server's context of \(ctx) tokens",
                                         param: "max_tokens", code: "context_length_exceeded")
            }
            maxNew = m
        } else {
            maxNew = min(limits.maxTokensCap, ctx - ids.count)
        }
        if registry.budgetBytes > 0 {
            let positions = min(ids.count + maxNew, ctx)
            let bytes = kvPool.blocks(for: positions) * kvPool.blockBytes
            if bytes > registry.budgetBytes {
                throw ServeError.invalid("the key/value cache of \(positions) positions (prompt + max_tokens) takes \(bytes) bytes, more "
                                         + "than this server's whole memory budget of \(registry.budgetBytes) bytes; ask for fewer max_tokens",
                                         param: "max_tokens", code: "context_length_exceeded")
            }
        }
        let seed = p.seed ?? UInt64.random(in: .min ... .max)
        let sampler: RequestSampler
        do { sampler = try RequestSampler(p, seed: seed) } catch {
            throw ServeError.invalid("\(error)", param: "temperature")
        }

        lock.lock()
        let accepting = state == .running || state == .idle
        let full = waiting.count + running.count >= limits.maxQueue + limits.maxBatch
        lock.unlock()
        guard accepting else {
            throw ServeError(status: 503, message: "the server is shutting down", type: "server_error", code: "shutting_down")
        }
        guard !full else {
            throw ServeError.busy("too many requests: \(limits.maxBatch) running and \(limits.maxQueue) waiting; retry later")
        }
        // The adapter is loaded now, so that a bad adapter or recipe is the request's error; only
        // a full budget defers it to admission.
        var lease: AdapterLease?
        do {
            lease = try registry.acquire(request.choice, deferIfFull: true)
        } catch let e as ServeError where e.code == AdapterRegistry.budgetFullCode {
            lease = nil
        }
        let modelName = lease?.name ?? registry.responseName(for: request.choice)

        var continuation: AsyncThrowingStream<ServeEvent, any Error>.Continuation!
        let events = AsyncThrowingStream<ServeEvent, any Error>(bufferingPolicy: .unbounded) { continuation = $0 }
        lock.lock()
        let id = nextID
        nextID += 1
        let seq = Sequence(id: id, prompt: ids, maxNew: maxNew, choice: request.choice, name: modelName, lease: lease, sampler: sampler,
                           stopIds: tok.stopIds, stopStrings: p.stop, decoder: tok.makeStreamingDecoder(skipSpecial: true),
                           continuation: continuation, submitted: arrived)
        if request.returnRouting { seq.routeFixed = modelName }
        if waiting.count + running.count >= limits.maxQueue + limits.maxBatch {
            lock.unlock()
            lease?.release()
            throw ServeError.busy("too many requests: \(limits.maxBatch) running and \(limits.maxQueue) waiting; retry later")
        }
        waiting.append(seq)
        let obs = observer
        lock.broadcast()
        lock.unlock()
        continuation.onTermination = { [weak self] reason in
            if case .cancelled = reason { self?.cancel(id) }
        }
        obs?.admitted(model: modelName, promptTokens: ids.count)
        if autoStart { start() }
        return ServeStream(id: id, model: modelName, promptTokens: ids.count, events: events)
    }

    /// Frees the request's sequence at the next iteration (a client that went away).
    public func cancel(_ id: Int) {
        lock.lock()
        cancelled.insert(id)
        lock.broadcast()
        lock.unlock()
    }

    // MARK: The loop

    /// Touched by the scheduler thread, and by the adapter acquisition only under the engine's lock.
    final class Sequence: @unchecked Sendable {
        let id: Int
        let prompt: [Int]
        let maxNew: Int
        let choice: ModelChoice
        /// The name responses report (the lease's, known before it is taken).
        let name: String
        /// nil while waiting for room in the adapter budget.
        var lease: AdapterLease?
        /// `releases` when the adapter last did not fit.
        var triedAt = -1
        /// `releases` when its key/value blocks last did not fit (it waits for the next release).
        var memoryTriedAt = -1
        /// What is fed before the next token is sampled: the prompt, or after a preemption the
        /// prompt and the tokens generated so far but the last (still `pending`).
        var context: [Int]
        var sampler: RequestSampler
        let stopIds: Set<Int>
        let stopStrings: [String]
        var decoder: StreamingDecoder
        let continuation: AsyncThrowingStream<ServeEvent, any Error>.Continuation
        var session: LlamaSession?
        var fed = 0                    // context tokens fed
        var pending: Int?              // sampled, to be fed next step
        var generated: [Int] = []
        var text: [Unicode.Scalar] = [] // all text decoded so far (scalars: a combining mark must not
                                        // merge into a character already sent)
        var emitted = 0                 // scalars of `text` already sent
        /// Its context is in the cache and a sampled token waits to be fed: one row per step.
        var isDecoding: Bool { pending != nil && fed == context.count }
        var done = false
        /// `lorafuse.routing`: the names the gates choose among (routed set), or the one name every
        /// token reports (plain adapter, per-request choice); and the next token's adapter.
        var routeNames: [String]?
        var routeFixed: String?
        /// When `submit` was called: the timeout and time to first token count from here, adapter
        /// reading and fusing at submission included.
        let submitted: Date
        var lastToken: Date?

        init(id: Int, prompt: [Int], maxNew: Int, choice: ModelChoice, name: String, lease: AdapterLease?, sampler: RequestSampler,
             stopIds: Set<Int>, stopStrings: [String], decoder: StreamingDecoder,
             continuation: AsyncThrowingStream<ServeEvent, any Error>.Continuation, submitted: Date) {
            self.submitted = submitted
            self.id = id
            self.prompt = prompt
            self.context = prompt
            self.maxNew = maxNew
            self.choice = choice
            self.name = name
            self.lease = lease
            self.sampler = sampler
            self.stopIds = stopIds
            self.stopStrings = stopStrings
            self.decoder = decoder
            self.continuation = continuation
        }
    }

    private func loop() {
        while true {
            lock.lock()
            // Cancelled sequences leave first, waiting or running.
            if !cancelled.isEmpty {
                for s in waiting + running where cancelled.contains(s.id) { close(s, error: CancellationError()) }
                waiting.removeAll { cancelled.contains($0.id) }
                running.removeAll { cancelled.contains($0.id) }
                cancelled.removeAll()
            }
            expireWaitingLocked()
            admitLocked()
            if running.isEmpty {
                // Waiting sequences without their adapter yet: the acquisition wakes us.
                if waiting.isEmpty && (state == .draining || state == .stopped) {
                    state = .stopped
                    let waiters = drainWaiters
                    drainWaiters = []
                    lock.unlock()
                    for w in waiters { w.resume() }
                    return
                }
                if waiting.isEmpty || acquiring {
                    // An adapter load or fusion can take longer than the timeout: wake for it.
                    if let deadline = waitingDeadlineLocked() { _ = lock.wait(until: deadline) } else { lock.wait() }
                } else {
                    // Requests waiting for adapter memory that none of ours holds: something else
                    // does (a lease taken outside the engine), so retry on a timer.
                    // Likewise for memory: nothing of ours runs, so nothing of ours will release any.
                    _ = lock.wait(until: Date().addingTimeInterval(0.05))
                    for s in waiting where s.lease == nil { s.triedAt = -1 }
                    for s in waiting { s.memoryTriedAt = -1 }
                }
                lock.unlock()
                continue
            }
            let batch = running
            let waitingCount = waiting.count
            let obs = observer
            lock.unlock()

            let requeued = iterate(batch, observer: obs, waiting: waitingCount)

            lock.lock()
            let before = running.count
            running.removeAll { $0.done }
            if running.count < before { releases += 1 }
            if !requeued.isEmpty {
                // Back to the queue in arrival order, ahead of newer requests.
                running.removeAll { s in requeued.contains { $0 === s } }
                for s in requeued where !s.done {
                    let at = waiting.firstIndex { $0.id > s.id } ?? waiting.count
                    waiting.insert(s, at: at)
                }
            }
            lock.unlock()
        }
    }

    /// Moves waiting sequences that hold their adapter into the running batch, in order of
    /// arrival, and starts acquiring the adapter of the first one still without it (lock held).
    private func admitLocked() {
        var i = 0
        while running.count < limits.maxBatch && i < waiting.count {
            let s = waiting[i]
            if s.lease == nil { i += 1; continue }
            // Waiting for memory: a release may make room; later requests wait behind it.
            if s.memoryTriedAt == releases { break }
            running.append(waiting.remove(at: i))
        }
        guard !acquiring, running.count < limits.maxBatch,
              let s = waiting.first(where: { $0.lease == nil && $0.triedAt != releases }) else { return }
        acquiring = true
        s.triedAt = releases
        // Reading an adapter (or building a fusion) takes milliseconds to seconds: not on the
        // thread that decodes everyone else's tokens.
        DispatchQueue.global().async { [self] in
            let result = Result { try registry.acquire(s.choice, deferIfFull: true) }
            lock.lock()
            defer { lock.broadcast(); lock.unlock() }
            acquiring = false
            switch result {
            case .success(let lease):
                if s.done || cancelled.contains(s.id) { lease.release() } else { s.lease = lease }
            case .failure(let e as ServeError) where e.code == AdapterRegistry.budgetFullCode:
                // Still full: the next release retries it (at once if one came meanwhile; a
                // finishing sequence releases its lease before the loop counts the release). Only
                // when pinned sets alone leave no room will waiting never help.
                if registry.cannotEverFit(s.choice) {
                    fail(s, e)
                    waiting.removeAll { $0 === s }
                } else if releases != s.triedAt {
                    s.triedAt = -1
                }
            case .failure(let e):
                fail(s, e)
                waiting.removeAll { $0 === s }
            }
        }
    }

    /// One iteration over the running sequences: one batched step holding every decoding
    /// sequence's next token and up to `prefillChunk` prompt tokens of the sequences still reading
    /// their prompts (oldest first), so prompts share the base products with the decoding rows
    /// and with each other instead of each running its own forward. Returns the sequences that
    /// went back to the queue for lack of memory.
    private func iterate(_ batch: [Sequence], observer obs: (any ServeObserver)?, waiting: Int) -> [Sequence] {
        // What each sequence feeds this step: its next token, or a chunk of its context.
        var plan: [(seq: Sequence, count: Int)] = []
        for s in batch where !s.done && s.isDecoding { plan.append((s, 1)) }
        var budget = limits.prefillChunk
        var leaders: [(seq: Sequence, upTo: Int)] = []   // sequences reading their context from 0 this step
        for s in batch where !s.done && s.fed < s.context.count && budget > 0 {
            do {
                if s.session == nil { try makeSession(s) }
            } catch {
                fail(s, error)
                continue
            }
            if s.fed == 0 && limits.prefixReuseMin > 0, let session = s.session, session.adapters.routed?.xlora == nil {
                if let (donor, L) = prefixDonor(for: s, in: batch) {
                    // Without room for the copy it reads the prefix itself (the memory phase below decides).
                    if (try? session.adoptPrefix(of: donor, count: L)) != nil {
                        s.fed = L
                        lock.lock(); reusedCount += L; lock.unlock()
                    }
                } else if leaders.contains(where: { l in
                    l.seq.session?.adapters.identity === session.adapters.identity
                        && min(Self.commonPrefix(l.seq.context, s.context), s.context.count - 1, l.upTo) >= limits.prefixReuseMin
                }) {
                    continue    // copies the prefix next step, once the leader has read it
                }
            }
            let n = min(budget, s.context.count - s.fed)
            if s.fed == 0 { leaders.append((s, n)) }
            plan.append((s, n))
            budget -= n
        }
        // Memory for all of it before anything runs (oldest sequences first).
        var requeued: [Sequence] = []
        plan.sort { $0.seq.id < $1.seq.id }
        var i = 0
        while i < plan.count {
            let (s, n) = plan[i]
            guard let session = s.session else { i += 1; continue }
            do {
                try session.reserveCapacity(session.position + n)
                i += 1
            } catch {
                switch makeRoom(for: s, plan: &plan, batch: batch, requeued: &requeued, observer: obs) {
                case .retry: continue
                case .requeued: plan.remove(at: i)
                case .failed(let e):
                    fail(s, e)
                    plan.remove(at: i)
                }
            }
        }
        // Decoding rows first, then prompt chunks (the order the step's rows were always in).
        plan.sort { ($0.seq.isDecoding ? 0 : 1, $0.seq.id) < ($1.seq.isDecoding ? 0 : 1, $1.seq.id) }
        var inputs: [StepInput] = [], owners: [(seq: Sequence, prefill: Int)] = []
        var decodingCount = 0
        for (s, n) in plan {
            if s.isDecoding {
                inputs.append(StepInput(session: s.session!, tokens: [s.pending!]))
                owners.append((s, 0))
                decodingCount += 1
            } else {
                // The last chunk of a context wants logits, unless the next token is already
                // known (a preempted sequence reading its own tokens again).
                inputs.append(StepInput(session: s.session!, tokens: Array(s.context[s.fed..<(s.fed + n)]),
                                        wantsLogits: s.fed + n == s.context.count && s.pending == nil))
                owners.append((s, n))
            }
        }
        if !inputs.isEmpty {
            if decodingCount > 0 { obs?.step(batch: decodingCount, running: batch.count, waiting: waiting) }
            for (s, _) in owners { s.session?.tokenRouting?.clear() }
            do {
                let logits = try decode(inputs)
                let now = Date()
                var row = 0
                for (i, (s, n)) in owners.enumerated() {
                    if n > 0 { s.fed += n }
                    guard inputs[i].wantsLogits else { continue }
                    let t = s.sampler.sample(logits.row(row))
                    row += 1
                    if n > 0 {
                        obs?.firstToken(model: s.name, seconds: now.timeIntervalSince(s.submitted))
                    } else {
                        s.pending = nil
                        if let last = s.lastToken { obs?.nextToken(seconds: now.timeIntervalSince(last)) }
                    }
                    s.lastToken = now
                    accept(t, s, observer: obs)
                }
            } catch {
                for (s, _) in owners { fail(s, error) }
            }
        }
        if let timeout = limits.timeout {
            let now = Date()
            for s in batch where !s.done && now.timeIntervalSince(s.submitted) > timeout { finish(s, .length, observer: obs) }
        }
        return requeued
    }

    /// A running session on the same adapters whose cache holds the longest prefix of `s`'s
    /// context (at least `prefixReuseMin` positions, and not all of it: the last token is fed for
    /// its logits), and that length.
    private func prefixDonor(for s: Sequence, in batch: [Sequence]) -> (LlamaSession, Int)? {
        guard let mine = s.session else { return nil }
        var best: (LlamaSession, Int)?
        for d in batch where d !== s && !d.done && d.fed > 0 {
            guard let ds = d.session, ds.adapters.identity === mine.adapters.identity else { continue }
            let L = min(Self.commonPrefix(d.context[..<min(d.fed, d.context.count)], s.context), s.context.count - 1, ds.position)
            if L >= limits.prefixReuseMin && L > (best?.1 ?? 0) { best = (ds, L) }
        }
        return best
    }

    static func commonPrefix<A: Collection<Int>, B: Collection<Int>>(_ a: A, _ b: B) -> Int {
        var n = 0
        for (x, y) in zip(a, b) { guard x == y else { break }; n += 1 }
        return n
    }

    /// The session of a sequence about to read its context: blocks from the pool, adapters from
    /// its lease (a per-request router chooses them from the prompt here, with one base pass).
    private func makeSession(_ s: Sequence) throws {
        var set = s.lease!.set
        if let seq = set.perRequestRouter {
            let r = try seq.resolve(model: model, prompt: s.prompt)
            if s.routeFixed != nil { s.routeFixed = r.choice.map { set.adapters[$0.index].name }.joined(separator: "+") }
            set = r.set
        }
        s.session = try model.makeLlamaSession(maxTokens: min(s.prompt.count + s.maxNew, limits.contextLength),
                                               adapters: set, pool: kvPool)
        s.fed = 0
        if s.routeFixed != nil, let routed = set.routed {
            s.session!.tokenRouting = TokenRouting(experts: routed.expertNames.count)
            s.routeNames = routed.expertNames
        }
    }

    private enum Room { case retry, requeued, failed(ServeError) }

    /// `s` could not get a block. Frees memory in order of least harm: the adapter leases of
    /// waiting requests, then the newest running sequences (preempted: blocks freed, back to the
    /// queue); when only older sequences hold memory, `s` itself goes back to wait for them; when
    /// nothing else holds any, it never fits and fails.
    private func makeRoom(for s: Sequence, plan: inout [(seq: Sequence, count: Int)], batch: [Sequence],
                          requeued: inout [Sequence], observer obs: (any ServeObserver)?) -> Room {
        lock.lock()
        let leased = waiting.filter { $0.lease != nil && $0 !== s }
        for w in leased.reversed() {
            w.lease?.release()
            w.lease = nil
            w.triedAt = -1
        }
        lock.unlock()
        if !leased.isEmpty { return .retry }
        let gone = Set(requeued.map { ObjectIdentifier($0) })
        let holders = batch.filter { $0 !== s && !$0.done && $0.session != nil && !gone.contains(ObjectIdentifier($0)) }
        if let victim = holders.filter({ $0.id > s.id }).max(by: { $0.id < $1.id }) {
            preempt(victim, observer: obs)
            plan.removeAll { $0.seq === victim }
            requeued.append(victim)
            return .retry
        }
        if !holders.isEmpty {
            preempt(s, observer: obs)
            requeued.append(s)
            return .requeued
        }
        let positions = s.session.map { min($0.position + (s.context.count - s.fed) + 1, $0.maxTokens) } ?? s.context.count
        return .failed(ServeError.busy("the memory budget (\(registry.budgetBytes) bytes) has no room for this request's key/value "
                                       + "cache (\(positions) positions) beside the pinned adapters and its own adapter",
                                       code: AdapterRegistry.budgetFullCode))
    }

    /// Frees `s`'s blocks and its adapter lease (the set stays resident until something needs the
    /// room); it takes both again, and reads its prompt and the tokens it generated (but the one
    /// still to feed) again, when it is admitted next.
    private func preempt(_ s: Sequence, observer obs: (any ServeObserver)?) {
        let hadRead = s.fed > 0 || !s.generated.isEmpty
        s.session = nil
        s.fed = 0
        s.context = s.prompt + (s.pending != nil ? Array(s.generated.dropLast()) : s.generated)
        lock.lock()
        s.lease?.release()
        s.lease = nil
        s.triedAt = -1
        s.memoryTriedAt = releases
        if hadRead { preemptedCount += 1 }
        lock.unlock()
        if hadRead { obs?.preempted(model: s.name) }
    }

    /// Handles a sampled token: end on a stop token, a stop string, max_tokens or the context;
    /// otherwise stream its text and keep it to feed.
    private func accept(_ t: Int, _ s: Sequence, observer obs: (any ServeObserver)?) {
        if s.stopIds.contains(t) {
            s.text += s.decoder.flush().unicodeScalars
            finish(s, .stop, observer: obs)
            return
        }
        if let fixed = s.routeFixed {
            // The row that predicted t: its gates' top-1 (routed), else the one name.
            let top = s.session?.tokenRouting?.top
            s.continuation.yield(.routing(token: t, adapter: top.flatMap { i in s.routeNames.map { $0[i] } } ?? fixed))
        }
        s.generated.append(t)
        s.text += s.decoder.push(t).unicodeScalars
        if let cut = stopCut(s) {
            s.continuation.yield(.delta(text: take(s, upTo: cut), tokens: [t]))
            finish(s, .stop, observer: obs, flush: false)
            return
        }
        s.continuation.yield(.delta(text: take(s, upTo: s.text.count - heldBack(s)), tokens: [t]))
        let session = s.session!
        if s.generated.count >= s.maxNew || session.position + 1 > session.maxTokens {
            s.text += s.decoder.flush().unicodeScalars
            finish(s, .length, observer: obs)
        } else {
            s.pending = t
        }
    }

    /// The text from what was sent up to scalar `end`, marked as sent.
    private func take(_ s: Sequence, upTo end: Int) -> String {
        guard end > s.emitted else { return "" }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: s.text[s.emitted..<end])
        s.emitted = end
        return String(out)
    }

    /// The scalar offset where the first stop string starts, if the text holds one.
    private func stopCut(_ s: Sequence) -> Int? {
        guard !s.stopStrings.isEmpty else { return nil }
        let longest = s.stopStrings.map(\.unicodeScalars.count).max() ?? 0
        let from = max(0, s.emitted - longest)
        var best: Int?
        for stop in s.stopStrings {
            let sc = Array(stop.unicodeScalars)
            var i = from
            while i + sc.count <= s.text.count {
                if s.text[i..<(i + sc.count)].elementsEqual(sc) { best = min(best ?? i, i); break }
                i += 1
            }
        }
        return best
    }

    /// How many trailing scalars could begin a stop string (held back until they cannot).
    private func heldBack(_ s: Sequence) -> Int {
        var hold = 0
        for stop in s.stopStrings {
            let sc = Array(stop.unicodeScalars)
            for k in stride(from: min(sc.count - 1, s.text.count), to: hold, by: -1)
            where s.text[(s.text.count - k)...].elementsEqual(sc[0..<k]) {
                hold = k
                break
            }
        }
        return hold
    }

    /// The server's timeout counts from submission, queue included: a waiting sequence past it
    /// (behind a full batch, memory, or an adapter being read or fused) gets a 503 if it has
    /// produced nothing, or ends with 'length' like a running one if it was preempted after
    /// producing tokens (lock held).
    private func expireWaitingLocked() {
        guard let timeout = limits.timeout, !waiting.isEmpty else { return }
        let now = Date()
        let late = waiting.filter { now.timeIntervalSince($0.submitted) > timeout }
        guard !late.isEmpty else { return }
        for s in late {
            if s.generated.isEmpty {
                fail(s, ServeError.timedOut(String(format: "the request waited %.1f s without starting, past this server's timeout of %g s (a full batch, memory, or an adapter still loading); retry later",
                                                   now.timeIntervalSince(s.submitted), timeout)))
            } else {
                finish(s, .length, observer: observer)
            }
        }
        waiting.removeAll { s in late.contains { $0 === s } }
        releases += 1
    }

    /// When the first waiting sequence passes the timeout, if there is one (lock held).
    private func waitingDeadlineLocked() -> Date? {
        guard let timeout = limits.timeout else { return nil }
        return waiting.map { $0.submitted.addingTimeInterval(timeout + 0.001) }.min()
    }

    private func finish(_ s: Sequence, _ reason: FinishReason, observer obs: (any ServeObserver)?, flush: Bool = true) {
        guard !s.done else { return }
        if flush {
            let out = take(s, upTo: stopCut(s) ?? s.text.count)
            if !out.isEmpty { s.continuation.yield(.delta(text: out, tokens: [])) }
        }
        s.done = true
        s.continuation.yield(.finished(reason, Usage(promptTokens: s.prompt.count, completionTokens: s.generated.count)))
        s.continuation.finish()
        s.session = nil
        s.lease?.release()
        obs?.finished(model: s.name, completionTokens: s.generated.count, reason: reason.rawValue)
    }

    private func fail(_ s: Sequence, _ error: any Error) {
        guard !s.done else { return }
        s.done = true
        s.continuation.finish(throwing: ServeError.wrap(error))
        s.session = nil
        s.lease?.release()
    }

    /// Ends a cancelled sequence (its client has gone; nothing more is sent).
    private func close(_ s: Sequence, error: any Error) {
        guard !s.done else { return }
        s.done = true
        s.continuation.finish(throwing: error)
        s.session = nil
        s.lease?.release()
    }
}

extension ServeStream {
    /// Waits for the whole completion: its text, tokens, finish reason and usage, and with
    /// `lorafuse.routing` each generated token's adapter.
    public func collect() async throws -> (text: String, tokens: [Int], reason: FinishReason, usage: Usage,
                                           routing: [(token: Int, adapter: String)]) {
        var text = "", tokens: [Int] = [], routing: [(token: Int, adapter: String)] = []
        for try await e in events {
            switch e {
            case let .delta(t, ids):
                text += t
                tokens += ids
            case let .routing(t, a):
                routing.append((t, a))
            case let .finished(r, u):
                return (text, tokens, r, u, routing)
            }
        }
        throw CancellationError()
    }
}
