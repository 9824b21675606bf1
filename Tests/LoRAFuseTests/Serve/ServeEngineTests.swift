import Foundation
import XCTest
@testable import LoRAFuse

final class ServeEngineTests: XCTestCase {
    let names = ["alpha", "beta", "gamma"]

    private func setup(budget: Int = 0, limits: ServeLimits = ServeLimits(maxBatch: 8, contextLength: 256, maxTokensCap: 200, prefillChunk: 5),
                       decode: DecodeStep? = nil, autoStart: Bool = true, observer: RecordingObserver? = nil)
    throws -> (LlamaModel, AdapterRegistry, ServeEngine, String) {
        let model = ServeFixtures.model()
        let dir = try ServeFixtures.adapterDirectory(model, names: names)
        let reg = AdapterRegistry(model: model, baseName: "tiny", budgetBytes: budget)
        try reg.registerDirectory(dir)
        let engine = ServeEngine(registry: reg, limits: limits, observer: observer, decode: decode, autoStart: autoStart)
        return (model, reg, engine, dir)
    }

    private func completion(_ prompt: String, _ choice: ModelChoice, max: Int = 12, temperature: Float = 0,
                            topP: Float = 1, seed: UInt64 = 0, stop: [String] = []) -> GenerationRequest {
        GenerationRequest(kind: .completion, model: "tiny", input: .text(prompt), choice: choice,
                          sampling: SamplingParameters(maxTokens: max, temperature: temperature, topP: topP, seed: seed, stop: stop))
    }

    /// Every stream's tokens, collected concurrently, in stream order.
    static func tokens(of streams: [ServeStream]) async throws -> [[Int]] {
        var out: [[Int]] = Array(repeating: [], count: streams.count)
        try await withThrowingTaskGroup(of: (Int, [Int]).self) { g in
            for (i, s) in streams.enumerated() { g.addTask { (i, try await s.collect().tokens) } }
            for try await (i, t) in g { out[i] = t }
        }
        return out
    }

    /// The mixed workload: base, each adapter, a side-by-side pair and a ties fusion; greedy and
    /// seeded sampling; prompts shorter and longer than the prefill chunk.
    private func workload() -> [GenerationRequest] {
        let ties = MergeSpec(method: "ties", parameters: FusionParameters(density: 0.5), canonical: "density=0.5")
        return [
            completion("hello there", .named("tiny")),
            completion("abc", .named("alpha"), max: 20),
            completion("a much longer prompt than one chunk", .named("beta"), temperature: 0.9, topP: 0.9, seed: 7),
            completion("xyz", .named("gamma"), temperature: 1.2, seed: 3),
            completion("two adapters", .combination([AdapterChoice(name: "alpha", weight: 0.7), AdapterChoice(name: "beta", weight: -0.4)], merge: nil)),
            completion("fused", .combination([AdapterChoice(name: "alpha"), AdapterChoice(name: "gamma", weight: 0.5)], merge: ties), temperature: 0.8, seed: 11),
            completion("abc", .named("alpha"), max: 20, temperature: 0.7, seed: 1),
            completion("hello there", .named("beta")),
        ]
    }

    func testMixedAdapterBatchGivesEachRequestsTokensAlone() async throws {
        let obs = RecordingObserver()
        let (_, _, engine, _) = try setup(autoStart: false, observer: obs)
        let reqs = workload()
        let streams = try reqs.map { try engine.submit($0) }
        engine.start()
        let together = try await Self.tokens(of: streams)
        XCTAssertGreaterThan(obs.maxBatch, 4, "the requests were decoded together")
        // Each alone, on a fresh engine (same chunking), must give the same tokens.
        let (_, _, solo, _) = try setup()
        for (i, r) in reqs.enumerated() {
            let alone = try await solo.submit(r).collect()
            XCTAssertEqual(together[i], alone.tokens, "request \(i)")
            XCTAssertEqual(alone.tokens.count, r.sampling.maxTokens, "no stop token in a byte model without EOS sampled… request \(i)")
        }
        await engine.drain()
        await solo.drain()
    }

    func testSameTokensAsGeneratorWithSameAdapterAndSeed() async throws {
        // One prompt chunk (prefill chunk ≥ prompt): exactly lorafuse generate's computation.
        let (model, _, engine, dir) = try setup(limits: ServeLimits(contextLength: 256, prefillChunk: 512))
        let lm = try model.with([(AdapterIO.read(path: dir + "/beta"), 1)])
        for (temperature, seed) in [(Float(0), UInt64(0)), (0.9, 42)] {
            var gen = Generator(model: lm, sampler: try Sampler(temperature: temperature, topP: 0.95, seed: seed), maxTokens: 16)
            let prompt = model.tokenizer.encodeRawPrompt("some prompt")
            let expected = try gen.generate(session: try lm.makeSession(maxTokens: 64), prompt: prompt)
            let got = try await engine.submit(completion("some prompt", .named("beta"), max: 16, temperature: temperature,
                                                         topP: 0.95, seed: seed)).collect()
            XCTAssertEqual(got.tokens, expected.tokens, "T=\(temperature)")
            XCTAssertEqual(got.text, expected.text)
        }
        await engine.drain()
    }

    func testChatRequestUsesTheChatTemplate() async throws {
        let (model, _, engine, _) = try setup()
        let messages = [ChatMessage(role: "user", content: "hi")]
        let s = try engine.submit(GenerationRequest(kind: .chat, model: "tiny", input: .chat(messages), choice: .named("alpha"),
                                                    sampling: SamplingParameters(maxTokens: 4, temperature: 0)))
        XCTAssertEqual(s.promptTokens, try model.tokenizer.encodeChat(messages).count)
        XCTAssertEqual(s.model, "alpha")
        let r = try await s.collect()
        XCTAssertEqual(r.usage.promptTokens, s.promptTokens)
        await engine.drain()
    }

    func testStopStringCutsTheText() async throws {
        let (_, _, engine, _) = try setup()
        let full = try await engine.submit(completion("stop me", .named("alpha"), max: 30)).collect()
        let chars = Array(full.text)
        XCTAssertGreaterThan(chars.count, 8)
        let stop = String(chars[5..<7])
        let cut = try await engine.submit(completion("stop me", .named("alpha"), max: 30, stop: [stop])).collect()
        XCTAssertEqual(cut.reason, .stop)
        XCTAssertEqual(cut.text, String(full.text[..<full.text.range(of: stop)!.lowerBound]))
        await engine.drain()
    }

    func testCancellationFreesTheSequenceAndLease() async throws {
        let slow: DecodeStep = { inputs in Thread.sleep(forTimeInterval: 0.005); return try ServeEngine.sequentialDecode(inputs) }
        let (_, reg, engine, _) = try setup(limits: ServeLimits(maxBatch: 1, contextLength: 256, maxTokensCap: 200), decode: slow)
        let a = try engine.submit(completion("one", .named("alpha"), max: 200))
        let b = try engine.submit(completion("two", .named("beta"), max: 200))
        XCTAssertEqual(reg.info("beta")?.inUse, 1)
        // Cancel the waiting one, then stop reading the running one after two events.
        let tb = Task { for try await _ in b.events {} }
        tb.cancel()
        var seen = 0
        for try await _ in a.events { seen += 1; if seen == 2 { break } }
        for _ in 0..<400 where engine.runningCount + engine.queueDepth > 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        XCTAssertEqual(engine.runningCount + engine.queueDepth, 0)
        XCTAssertEqual(reg.info("alpha")?.inUse, 0)
        XCTAssertEqual(reg.info("beta")?.inUse, 0)
        // The engine keeps serving.
        let c = try await engine.submit(completion("three", .named("gamma"), max: 3)).collect()
        XCTAssertEqual(c.tokens.count, 3)
        await engine.drain()
    }

    func testQueueFullIs429AndLimitsAre400() async throws {
        let slow: DecodeStep = { inputs in Thread.sleep(forTimeInterval: 0.005); return try ServeEngine.sequentialDecode(inputs) }
        let (_, _, engine, _) = try setup(limits: ServeLimits(maxBatch: 1, maxQueue: 1, contextLength: 64, maxTokensCap: 40), decode: slow)
        let a = try engine.submit(completion("one", .named("tiny"), max: 40))
        let b = try engine.submit(completion("two", .named("tiny"), max: 40))
        XCTAssertThrowsError(try engine.submit(completion("three", .named("tiny"), max: 4))) { e in
            XCTAssertEqual((e as? ServeError)?.status, 429)
        }
        func status(_ r: GenerationRequest) -> (Int?, String?) {
            do { _ = try engine.submit(r); return (nil, nil) } catch { return ((error as? ServeError)?.status, (error as? ServeError)?.code) }
        }
        _ = try await a.collect()
        _ = try await b.collect()
        XCTAssertEqual(status(completion("x", .named("tiny"), max: 41)).0, 400, "above the max_tokens cap")
        XCTAssertEqual(status(completion(String(repeating: "long ", count: 20), .named("tiny"), max: 40)).1, "context_length_exceeded")
        XCTAssertEqual(status(completion(String(repeating: "p", count: 70), .named("tiny"), max: 1)).1, "context_length_exceeded")
        XCTAssertEqual(status(completion("x", .named("nope"))).0, 404)
        XCTAssertEqual(status(completion("", .named("tiny"))).0, 400)
        await engine.drain()
        XCTAssertEqual(status(completion("x", .named("tiny"))).0, 503, "refused while shut down")
    }

    /// The timeout counts from submission: a running sequence past it ends with 'length' (what it
    /// produced kept); one still waiting behind it fails with a 503 'timeout' instead of starting
    /// late, and the engine keeps serving.
    func testTimeoutEndsTheRunningAndExpiresTheWaiting() async throws {
        let slow: DecodeStep = { inputs in Thread.sleep(forTimeInterval: 0.02); return try ServeEngine.sequentialDecode(inputs) }
        let limits = ServeLimits(maxBatch: 1, contextLength: 256, maxTokensCap: 200, prefillChunk: 5, timeout: 0.3)
        let (_, _, engine, _) = try setup(limits: limits, decode: slow, autoStart: false)
        let a = try engine.submit(completion("one", .named("alpha"), max: 200))
        let b = try engine.submit(completion("two", .named("beta"), max: 5))
        engine.start()
        let ra = try await a.collect()
        XCTAssertEqual(ra.reason, .length)
        XCTAssertGreaterThan(ra.tokens.count, 0)
        XCTAssertLessThan(ra.tokens.count, 200, "ended by the timeout, not max_tokens")
        do {
            _ = try await b.collect()
            XCTFail("the waiting request should have timed out")
        } catch let e as ServeError {
            XCTAssertEqual(e.status, 503)
            XCTAssertEqual(e.code, "timeout")
            XCTAssertTrue(e.message.contains("timeout of 0.3 s"), e.message)
        }
        // Still serving: a new request gets its tokens (ended by the timeout or max_tokens).
        let c = try await engine.submit(completion("three", .named("tiny"), max: 3)).collect()
        XCTAssertEqual(c.tokens.count, 3)
        await engine.drain()
    }

    func testLRUEvictionUnderBudgetWithPinning() throws {
        let model = ServeFixtures.model()
        let one = ServeFixtures.adapterBytes(model)
        let dir = try ServeFixtures.adapterDirectory(model, names: ["a", "b", "c", "p"])
        let reg = AdapterRegistry(model: model, baseName: "tiny", budgetBytes: 3 * one)
        try reg.register(name: "p", path: dir + "/p", pinned: true)
        for n in ["a", "b", "c"] { try reg.register(name: n, path: dir + "/" + n) }
        XCTAssertEqual(reg.residentBytes, 0, "registration alone loads nothing")
        for n in ["p", "a", "b"] { reg.release(try reg.acquire(.named(n))) }
        XCTAssertEqual(reg.residentBytes, 3 * one)
        reg.release(try reg.acquire(.named("a")))          // a is now more recent than b
        reg.release(try reg.acquire(.named("c")))          // evicts b (LRU, unpinned)
        XCTAssertEqual(reg.info("b")?.resident, false)
        XCTAssertEqual(reg.info("a")?.resident, true)
        XCTAssertEqual(reg.info("p")?.resident, true, "pinned")
        XCTAssertEqual(reg.counters.evictions, 1)
        XCTAssertEqual(reg.counters.loads, 4)
        // b comes back from disk when used again (evicting a, the least recent).
        let lb = try reg.acquire(.named("b"))
        XCTAssertEqual(reg.counters.loads, 5)
        XCTAssertEqual(reg.info("a")?.resident, false)
        // With c and b held and p pinned, a cannot fit: 429, and nothing held is evicted.
        let lc = try reg.acquire(.named("c"))
        XCTAssertThrowsError(try reg.acquire(.named("a"))) { XCTAssertEqual(($0 as? ServeError)?.status, 429) }
        XCTAssertEqual(reg.info("b")?.resident, true)
        XCTAssertEqual(reg.info("a")?.inUse, 0)
        // Unload is refused while in use, allowed after.
        XCTAssertThrowsError(try reg.unregister(name: "b")) { XCTAssertEqual(($0 as? ServeError)?.status, 409) }
        reg.release(lb)
        reg.release(lb)                                    // idempotent
        XCTAssertNoThrow(try reg.unregister(name: "b"))
        XCTAssertNil(reg.info("b"))
        XCTAssertThrowsError(try reg.acquire(.named("b"))) { XCTAssertEqual(($0 as? ServeError)?.status, 404) }
        reg.release(lc)
    }

    /// S-LoRA's paging: more concurrent adapters than the budget holds wait for room (their
    /// adapters loaded as others finish) instead of getting 429, and give their tokens alone.
    func testRequestsBeyondTheAdapterBudgetWaitForRoom() async throws {
        let model = ServeFixtures.model()
        // One adapter and one sequence's key/value blocks (the budget holds both: the KV pool shares it).
        var limits = ServeLimits(maxBatch: 8, contextLength: 256, maxTokensCap: 200, prefillChunk: 5)
        limits.kvBlockTokens = 4
        let budget = ServeFixtures.adapterBytes(model) + 4 * ServeFixtures.kvBlockBytes(model, blockTokens: 4)
        XCTAssertLessThan(budget, 2 * ServeFixtures.adapterBytes(model))
        let (_, reg, engine, _) = try setup(budget: budget, limits: limits, autoStart: false)
        let reqs = names.enumerated().map { i, n in completion("prompt \(i)", .named(n), max: 6) }
        let streams = try reqs.map { try engine.submit($0) }          // one loads; two wait without a 429
        XCTAssertEqual(streams.map(\.model), names)
        XCTAssertEqual(reg.counters.loads, 1, "the waiting ones are not read only to be dropped")
        engine.start()
        let got = try await Self.tokens(of: streams)
        XCTAssertGreaterThanOrEqual(reg.counters.evictions, 2, "each waiting adapter replaced a finished one")
        XCTAssertEqual(reg.counters.loads, 3, "each adapter read once")
        XCTAssertLessThanOrEqual(reg.residentBytes, ServeFixtures.adapterBytes(model))
        let (_, _, solo, _) = try setup()
        for (i, r) in reqs.enumerated() {
            let alone = try await solo.submit(r).collect()
            XCTAssertEqual(got[i], alone.tokens, "request \(i)")
        }
        await engine.drain()
        await solo.drain()
    }

    /// When pinned sets fill the budget, a waiting request can never fit: it ends with the 429.
    func testRequestThatCanNeverFitTheBudgetGets429() async throws {
        let model = ServeFixtures.model()
        let one = ServeFixtures.adapterBytes(model)
        let dir = try ServeFixtures.adapterDirectory(model, names: ["p", "a"])
        // The pinned adapter and two 4-position key/value blocks: room for the base's sequence, never for "a".
        let block = ServeFixtures.kvBlockBytes(model, blockTokens: 4)
        XCTAssertGreaterThan(one, 2 * block)
        let reg = AdapterRegistry(model: model, baseName: "tiny", budgetBytes: one + 2 * block)
        try reg.register(name: "p", path: dir + "/p", pinned: true)
        try reg.register(name: "a", path: dir + "/a")
        reg.release(try reg.acquire(.named("p")))
        var limits = ServeLimits(maxBatch: 4, contextLength: 64, maxTokensCap: 8)
        limits.kvBlockTokens = 4
        let engine = ServeEngine(registry: reg, limits: limits)
        let stream = try engine.submit(completion("x", .named("a"), max: 4))
        do {
            _ = try await stream.collect()
            XCTFail("expected the budget's 429")
        } catch let e as ServeError {
            XCTAssertEqual(e.status, 429)
            XCTAssertEqual(e.code, AdapterRegistry.budgetFullCode)
        }
        // The base still runs.
        let base = try await engine.submit(completion("x", .named("tiny"), max: 3)).collect()
        XCTAssertEqual(base.tokens.count, 3)
        await engine.drain()
    }

    /// Unified paging: key/value blocks come from the budget as sequences grow. More sequences
    /// than it holds run anyway: the newest are preempted (blocks freed, back to the queue) and
    /// read their prompt and tokens again later; every request ends with the tokens it gets alone.
    func testSequencesBeyondTheKVBudgetArePreemptedAndFinishAsAlone() async throws {
        let model = ServeFixtures.model()
        var limits = ServeLimits(maxBatch: 8, contextLength: 64, maxTokensCap: 24, prefillChunk: 64)
        limits.kvBlockTokens = 4
        let block = ServeFixtures.kvBlockBytes(model, blockTokens: 4)
        let reg = AdapterRegistry(model: model, baseName: "tiny", budgetBytes: 8 * block)
        let engine = ServeEngine(registry: reg, limits: limits, autoStart: false)
        // 6 sequences of up to 5 + 20 positions (7 blocks each): one fits whole, the budget holds 8 blocks.
        let reqs = (0..<6).map { i in completion("seq \(i)", .named("tiny"), max: 20, temperature: i % 2 == 0 ? 0 : 0.8, seed: UInt64(i)) }
        let streams = try reqs.map { try engine.submit($0) }
        engine.start()
        let got = try await Self.tokens(of: streams)
        XCTAssertGreaterThan(engine.preemptions, 0, "the budget holds fewer blocks than the sequences need at once")
        XCTAssertLessThanOrEqual(engine.kvPool.counters.peak, 8)
        XCTAssertGreaterThan(engine.kvPool.counters.refused, 0)
        XCTAssertEqual(engine.kvPool.counters.inUse, 0, "finished sequences give their blocks back")
        XCTAssertEqual(reg.kvReservedBytes, 0)
        let solo = ServeEngine(registry: AdapterRegistry(model: model, baseName: "tiny"), limits: limits)
        for (i, r) in reqs.enumerated() {
            let alone = try await solo.submit(r).collect()
            XCTAssertEqual(got[i], alone.tokens, "request \(i)")
            XCTAssertEqual(got[i].count, 20)
        }
        await engine.drain()
        await solo.drain()
    }

    /// A prompt prefix shared by requests on the same adapters is read once: arriving together,
    /// the second waits one step and copies the first's keys and values (once its holder has
    /// finished, nothing is kept to copy). The tokens are those of each request alone; other
    /// adapters share nothing.
    func testSharedPromptPrefixIsReadOnceOnTheSameAdapters() async throws {
        let (_, _, engine, _) = try setup(limits: ServeLimits(maxBatch: 8, contextLength: 256, maxTokensCap: 200, prefillChunk: 4096),
                                          autoStart: false)
        let preamble = "You are a careful assistant. Answer briefly.\n"      // 45 byte tokens
        let reqs = [completion(preamble + "Q: one", .named("alpha"), max: 8),
                    completion(preamble + "Q: two", .named("alpha"), max: 8, temperature: 0.9, seed: 4),
                    completion(preamble + "Q: one", .named("beta"), max: 8)]
        let streams = try reqs.map { try engine.submit($0) }
        engine.start()
        let got = try await Self.tokens(of: streams)
        let preambleTokens = preamble.utf8.count + "Q: ".utf8.count
        XCTAssertEqual(engine.prefixTokensReused, preambleTokens, "alpha's second request copies the shared part; beta shares nothing")
        let late = try await engine.submit(completion(preamble + "Q: three", .named("alpha"), max: 4)).collect()
        XCTAssertEqual(engine.prefixTokensReused, preambleTokens, "nothing running holds the prefix any more")
        var limits = engine.limits
        limits.prefixReuseMin = 0
        let (_, _, solo, _) = try setup(limits: limits)
        for (i, r) in reqs.enumerated() {
            let alone = try await solo.submit(r).collect()
            XCTAssertEqual(got[i], alone.tokens, "request \(i)")
        }
        let lateAlone = try await solo.submit(completion(preamble + "Q: three", .named("alpha"), max: 4)).collect()
        XCTAssertEqual(late.tokens, lateAlone.tokens)
        XCTAssertEqual(solo.prefixTokensReused, 0)
        await engine.drain()
        await solo.drain()
    }

    /// A request whose prompt + max_tokens cannot fit the whole budget is refused at once (400),
    /// and one that fits runs.
    func testRequestLargerThanTheWholeBudgetIsRefused() async throws {
        let model = ServeFixtures.model()
        var limits = ServeLimits(maxBatch: 2, contextLength: 64, maxTokensCap: 40)
        limits.kvBlockTokens = 4
        let reg = AdapterRegistry(model: model, baseName: "tiny", budgetBytes: 3 * ServeFixtures.kvBlockBytes(model, blockTokens: 4))
        let engine = ServeEngine(registry: reg, limits: limits)
        XCTAssertThrowsError(try engine.submit(completion("x", .named("tiny"), max: 30))) {
            XCTAssertEqual(($0 as? ServeError)?.status, 400)
            XCTAssertEqual(($0 as? ServeError)?.param, "max_tokens")
        }
        let ok = try await engine.submit(completion("x", .named("tiny"), max: 8)).collect()
        XCTAssertEqual(ok.tokens.count, 8)
        await engine.drain()
        // A block longer than the context is cut to it (a careless --kv-block reserves nothing unusable).
        limits.kvBlockTokens = 100_000
        XCTAssertEqual(ServeEngine(registry: reg, limits: limits).kvPool.blockTokens, 64)
    }

    func testMergeCacheBuildsOnceByDigest() throws {
        let (_, reg, _, _) = try setup()
        let ties = MergeSpec(method: "ties", parameters: FusionParameters(density: 0.5), canonical: "density=0.5")
        let pair = [AdapterChoice(name: "alpha"), AdapterChoice(name: "beta", weight: 0.5)]
        let l1 = try reg.acquire(.combination(pair, merge: ties))
        let l2 = try reg.acquire(.combination(pair, merge: ties))
        XCTAssertEqual(reg.counters.fusions, 1, "the second request hits the cache")
        XCTAssertEqual(l1.name, l2.name)
        XCTAssertTrue(l1.name.hasPrefix("fusion-"))
        XCTAssertEqual(reg.info(l1.name)?.kind, .fusion)
        XCTAssertEqual(reg.info(l1.name)?.recipe, "ties(alpha:1.0,beta:0.5) density=0.5")
        // By its name, later.
        let l3 = try reg.acquire(.named(l1.name))
        XCTAssertEqual(reg.counters.fusions, 1)
        // Other weights or method: another fusion.
        let l4 = try reg.acquire(.combination([AdapterChoice(name: "alpha"), AdapterChoice(name: "beta", weight: 0.6)], merge: ties))
        let l5 = try reg.acquire(.combination(pair, merge: nil))
        XCTAssertEqual(reg.counters.fusions, 3)
        XCTAssertNotEqual(l4.name, l1.name)
        XCTAssertNotEqual(l5.name, l1.name)
        for l in [l1, l2, l3, l4, l5] { reg.release(l) }
        XCTAssertThrowsError(try reg.acquire(.combination([AdapterChoice(name: "nope")], merge: nil))) {
            XCTAssertEqual(($0 as? ServeError)?.status, 404)
        }
    }

    /// A fusion plan (the YAML of `lorafuse merge --config`) under the adapters folder is served
    /// by its file name: the same tokens as the request that spells out its recipe, listed as a
    /// fusion, never forgotten for newer fusions; a plan over anything but the folder's adapters
    /// is an error naming the file.
    func testFusionPlansInTheAdaptersFolderAreServedByName() async throws {
        let model = ServeFixtures.model()
        let dir = try ServeFixtures.adapterDirectory(model, names: names)
        try """
        method: ties
        adapters:
          - path: alpha
            weight: 1.0
          - path: gamma
            weight: 0.5
        parameters:
          density: 0.5
        """.write(toFile: dir + "/mix.yaml", atomically: true, encoding: .utf8)
        let reg = AdapterRegistry(model: model, baseName: "tiny", maxFusions: 1)
        XCTAssertEqual(try reg.registerDirectory(dir), names + ["mix"])
        XCTAssertEqual(reg.info("mix")?.kind, .fusion)
        XCTAssertEqual(reg.info("mix")?.recipe?.hasPrefix("ties(alpha:1.0,gamma:0.5)"), true, reg.info("mix")?.recipe ?? "")
        let engine = ServeEngine(registry: reg, limits: ServeLimits(maxBatch: 8, contextLength: 256, maxTokensCap: 200, prefillChunk: 5))
        let ties = MergeSpec(method: "ties", parameters: FusionParameters(density: 0.5), canonical: "density=0.5")
        let byName = try await engine.submit(completion("abc", .named("mix"), max: 10)).collect()
        let spelled = try await engine.submit(completion("abc", .combination([AdapterChoice(name: "alpha"), AdapterChoice(name: "gamma", weight: 0.5)],
                                                                             merge: ties), max: 10)).collect()
        XCTAssertEqual(byName.tokens, spelled.tokens)
        XCTAssertNotNil(reg.info("mix"), "the plan outlives a newer fusion beyond maxFusions (1)")
        await engine.drain()

        for (file, body) in [("bad.yaml", "method: ties\nadapters:\n  - path: ../elsewhere\n"),
                             ("bad.yaml", "method: nope\nadapters:\n  - path: alpha\n")] {
            let d2 = try ServeFixtures.adapterDirectory(model, names: ["alpha"])
            try body.write(toFile: d2 + "/" + file, atomically: true, encoding: .utf8)
            let r2 = AdapterRegistry(model: model, baseName: "tiny")
            XCTAssertThrowsError(try r2.registerDirectory(d2)) { e in
                XCTAssertEqual((e as? ServeError)?.code, "invalid_plan")
                XCTAssertTrue("\(e)".contains(file), "\(e)")
            }
        }
    }

    func testAdapterForAnotherBaseIsRefused() throws {
        let model = ServeFixtures.model()
        let dir = ServeFixtures.tempDir()
        var a = ServeFixtures.adapter(model, name: "wide", seed: 3)
        a.modules = a.modules.mapValues { m in LoRAModule(A: Matrix(rows: m.rank, cols: m.inFeatures + 1), B: m.B, scale: 1) }
        try PEFTAdapter.write(a, to: dir + "/wide", dtype: .f32)
        let reg = AdapterRegistry(model: model, baseName: "tiny")
        XCTAssertThrowsError(try reg.register(name: "wide", path: dir + "/wide", validate: true)) { e in
            XCTAssertEqual((e as? ServeError)?.status, 400)
            XCTAssertEqual((e as? ServeError)?.code, "adapter_base_mismatch")
        }
        XCTAssertNil(reg.info("wide"), "a refused adapter is not registered")
        XCTAssertThrowsError(try reg.register(name: "fusion-x", path: dir + "/wide"))
        XCTAssertThrowsError(try reg.register(name: "../x", path: dir + "/wide"))
    }

    func testPathsOnlyUnderTheRoot() throws {
        let root = ServeFixtures.tempDir()
        try FileManager.default.createDirectory(atPath: root + "/ok", withIntermediateDirectories: true)
        XCTAssertEqual(try AdapterRegistry.resolve("ok", under: root), URL(fileURLWithPath: root + "/ok").resolvingSymlinksInPath().path)
        XCTAssertThrowsError(try AdapterRegistry.resolve("../", under: root))
        XCTAssertThrowsError(try AdapterRegistry.resolve("/etc", under: root))
        try FileManager.default.createSymbolicLink(atPath: root + "/link", withDestinationPath: "/etc")
        XCTAssertThrowsError(try AdapterRegistry.resolve("link", under: root)) { XCTAssertEqual(($0 as? ServeError)?.code, "path_outside_root") }
        XCTAssertThrowsError(try AdapterRegistry.resolve("missing", under: root)) { XCTAssertEqual(($0 as? ServeError)?.status, 404) }
    }

    func testTopKAndPenalties() throws {
        let logits: [Float] = [0.1, 3, 2.9, -1, 2.95]
        var greedy = try RequestSampler(SamplingParameters(temperature: 0), seed: 0)
        XCTAssertEqual(greedy.sample(logits[...]), 1)
        // top_k 1 at any temperature is argmax.
        var k1 = try RequestSampler(SamplingParameters(temperature: 1.5, topK: 1), seed: 9)
        for _ in 0..<20 { XCTAssertEqual(k1.sample(logits[...]), 1) }
        // top_k 2: only ids 1 and 4.
        var k2 = try RequestSampler(SamplingParameters(temperature: 2, topK: 2), seed: 9)
        for _ in 0..<50 { XCTAssertTrue([1, 4].contains(k2.sample(logits[...]))) }
        // A presence penalty of 2 pushes a repeated greedy pick to the next best.
        var pen = try RequestSampler(SamplingParameters(temperature: 0, presencePenalty: 2), seed: 0)
        XCTAssertEqual(pen.sample(logits[...]), 1)
        XCTAssertEqual(pen.sample(logits[...]), 4)
        XCTAssertEqual(pen.sample(logits[...]), 2)
        // Frequency penalty grows with the count.
        var freq = try RequestSampler(SamplingParameters(temperature: 0, frequencyPenalty: 0.04), seed: 0)
        XCTAssertEqual([freq.sample(logits[...]), freq.sample(logits[...]), freq.sample(logits[...])], [1, 1, 4])
    }

    func testRequestParsing() throws {
        func parse(_ json: String, _ kind: GenerationRequest.Kind = .chat) throws -> GenerationRequest {
            try RequestParser.parse(Data(json.utf8), kind: kind)
        }
        func param(_ json: String, _ kind: GenerationRequest.Kind = .chat) -> String? {
            do { _ = try parse(json, kind); return "accepted" } catch { return (error as? ServeError)?.param ?? "\(error)" }
        }
        let r = try parse(#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1,"top_p":1,"max_tokens":5,"seed":3,"stop":"x","stream":true,"top_k":4,"presence_penalty":0.5,"frequency_penalty":-1,"n":1}"#)
        XCTAssertEqual(r.sampling, SamplingParameters(maxTokens: 5, temperature: 1, topP: 1, topK: 4, seed: 3, stop: ["x"],
                                                      presencePenalty: 0.5, frequencyPenalty: -1))
        XCTAssertTrue(r.stream)
        XCTAssertEqual(r.choice, .named("m"))
        XCTAssertEqual(try parse(#"{"model":"m","prompt":["p"]}"#, .completion).input, .text("p"))
        XCTAssertEqual(try parse(#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#).input,
                       .chat([ChatMessage(role: "user", content: "ab")]))
        XCTAssertEqual(param(#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2}"#), "n")
        XCTAssertEqual(param(#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":1}"#), "stream")
        XCTAssertEqual(param(#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":true}"#), "temperature")
        XCTAssertEqual(param(#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":3}"#), "temperature")
        XCTAssertEqual(param(#"{"model":"m","messages":[]}"#), "messages")
        XCTAssertEqual(param(#"{"messages":[{"role":"user","content":"hi"}]}"#), "model")
        XCTAssertEqual(param(#"{"model":"m","messages":[{"role":"tool","content":"hi"}]}"#), "messages[0].role")
        XCTAssertEqual(param(#"{"model":"m","prompt":["a","b"]}"#, .completion), "prompt")
        XCTAssertEqual(param(#"{"model":"m","prompt":"a","max_tokens":0}"#, .completion), "max_tokens")
        XCTAssertThrowsError(try parse("{not json", .completion)) { XCTAssertEqual(($0 as? ServeError)?.code, "invalid_json") }
        // Adapters and merges.
        let m = try parse(#"{"model":"m","prompt":"p","adapters":[{"name":"a"},{"name":"b","weight":-0.5}],"merge":{"method":"ties","density":0.5,"rank":4}}"#, .completion)
        XCTAssertEqual(m.choice, .combination([AdapterChoice(name: "a"), AdapterChoice(name: "b", weight: -0.5)],
                                              merge: MergeSpec(method: "ties", parameters: FusionParameters(rank: 4, density: 0.5), canonical: "density=0.5,rank=4")))
        XCTAssertEqual(param(#"{"model":"m","prompt":"p","adapters":[{"name":"a"}],"merge":{"method":"nope"}}"#, .completion), "merge.method")
        XCTAssertEqual(param(#"{"model":"m","prompt":"p","adapters":[{"name":"a"}],"merge":{"method":"ties","gamma":0.1}}"#, .completion), "merge")
        XCTAssertEqual(param(#"{"model":"m","prompt":"p","adapters":[{"name":"a"}],"merge":{"method":"ties","bogus":1}}"#, .completion), "merge.bogus")
        XCTAssertEqual(param(#"{"model":"m","prompt":"p","adapters":[{"name":"a"}],"merge":{"method":"ties","density":2}}"#, .completion), "merge")
        XCTAssertEqual(param(#"{"model":"m","prompt":"p","merge":{"method":"ties"}}"#, .completion), "merge")
        XCTAssertEqual(param(#"{"model":"m","prompt":"p","adapters":[{"name":"a","weight":"x"}]}"#, .completion), "adapters[0].weight")
    }
}
