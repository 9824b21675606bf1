import Foundation
import XCTest
@testable import LoRAFuse

/// A routed-model folder served as a model: listed as routed, decoded in the same batches as plain
/// adapters, giving the tokens `lorafuse generate --adapter ROUTED` gives.
final class ServeRoutedTests: XCTestCase {
    func testRoutedFolderIsServedLikeGenerate() async throws {
        try await servedLikeGenerate { model, ads in try RouterBuilder.build(model: model, adapters: ads, shots: [], options: RouteOptions(method: .arrow)) }
    }

    /// X-LoRA's two passes per token (its sessions step outside the batch) give generate's tokens too.
    func testXLoRAFolderIsServedLikeGenerate() async throws {
        try await servedLikeGenerate { model, ads in
            let L = model.config.numHiddenLayers, C = model.config.hiddenSize
            var rng = SeededRNG(seed: 4)
            let table = (0..<(L * 2 * (C + 1))).map { _ in rng.nextNormal() }
            let cfg = RouterConfig(method: "xlora", gate: .xlora, topK: 2, temperature: 1, placement: .all,
                                   base: RouterBase(config: model.config, name: nil),
                                   adapters: ads.map { RouterAdapterEntry(name: $0.name, path: $0.name, sha256: "") }, training: [:])
            return RoutedModel(config: cfg, adapters: ads, gates: [XLoRAClassifier.tensorName: Matrix(rows: L * 2, cols: C + 1, data: table)])
        }
    }

    private func servedLikeGenerate(_ make: (LlamaModel, [LoRAAdapter]) throws -> RoutedModel) async throws {
        let model = ServeFixtures.model()
        let dir = try ServeFixtures.adapterDirectory(model, names: ["alpha", "beta"])
        let ads = try ["alpha", "beta"].map { n -> LoRAAdapter in var a = try AdapterIO.read(path: dir + "/" + n); a.name = n; return a }
        let routed = try make(model, ads)
        let out = dir + "/mix"
        try OutputGuard.buildDirectory(out, inputs: [], force: false) { tmp in
            try routed.write(into: tmp, finalPath: out, sources: [dir + "/alpha", dir + "/beta"], copyAdapters: false)
        }
        let reg = AdapterRegistry(model: model, baseName: "tiny", budgetBytes: 0)
        XCTAssertEqual(try reg.registerDirectory(dir).sorted(), ["alpha", "beta", "mix"])
        XCTAssertEqual(reg.info("mix")?.kind, .routed)
        // A routed model is not an input of a combination.
        XCTAssertThrowsError(try reg.acquire(.combination([AdapterChoice(name: "mix"), AdapterChoice(name: "alpha")], merge: nil))) {
            XCTAssertTrue("\($0)".contains("is a routed model"), "\($0)")
        }
        let engine = ServeEngine(registry: reg, limits: ServeLimits(maxBatch: 8, contextLength: 256, maxTokensCap: 64, prefillChunk: 512))
        let lm = model.with(try model.prepare(routed: try RoutedModel.load(directory: out)))
        var gen = Generator(model: lm, sampler: try Sampler(temperature: 0, topP: 1, seed: 0), maxTokens: 12)
        let expected = try gen.generate(session: try lm.makeSession(maxTokens: 64), prompt: model.tokenizer.encodeRawPrompt("route me"))
        let req = { (m: String) in
            GenerationRequest(kind: .completion, model: m, input: .text("route me"), choice: .named(m),
                              sampling: SamplingParameters(maxTokens: 12, temperature: 0, topP: 1, seed: 0, stop: []))
        }
        let routedStream = try engine.submit(req("mix")), plainStream = try engine.submit(req("alpha"))
        async let routedRun = routedStream.collect()
        async let plainRun = plainStream.collect()
        let (r, _) = try await (routedRun, plainRun)
        XCTAssertEqual(r.tokens, expected.tokens)
        XCTAssertTrue(r.routing.isEmpty, "routing is reported only when asked")

        // lorafuse.routing: each token's top-1 adapter, as a direct session's gates give it.
        var asked = req("mix")
        asked.returnRouting = true
        let withRouting = try await engine.submit(asked).collect()
        XCTAssertEqual(withRouting.tokens, expected.tokens)
        XCTAssertEqual(withRouting.routing.map { $0.token }, withRouting.tokens)
        let set = try model.prepare(routed: try RoutedModel.load(directory: out))
        let session = try model.makeLlamaSession(maxTokens: 64, adapters: set)
        session.tokenRouting = TokenRouting(experts: 2)
        var want: [String] = []
        var next = model.tokenizer.encodeRawPrompt("route me")
        for t in withRouting.tokens {
            session.tokenRouting!.clear()
            _ = try session.feed(next, lastOnly: true)
            want.append(["alpha", "beta"][session.tokenRouting!.top!])
            next = [t]
        }
        XCTAssertEqual(withRouting.routing.map { $0.adapter }, want)
        await engine.drain()
    }

    /// A per-request (sequence) router served by name: the scheduler resolves it from the prompt,
    /// giving the tokens of its chosen adapter alone.
    func testSequenceRouterIsResolvedPerRequest() async throws {
        let model = ServeFixtures.model()
        let dir = try ServeFixtures.adapterDirectory(model, names: ["alpha", "beta"])
        let ads = try ["alpha", "beta"].map { n -> LoRAAdapter in var a = try AdapterIO.read(path: dir + "/" + n); a.name = n; return a }
        // A classifier whose bias picks beta whatever the prompt.
        let C = model.config.hiddenSize
        var table = [Float](repeating: 0, count: 2 * (C + 1))
        table[2 * (C + 1) - 1] = 5
        let cfg = RouterConfig(method: "sequence", gate: .sequence, topK: 1, temperature: 1, placement: .all,
                               base: RouterBase(config: model.config, name: nil),
                               adapters: ads.map { RouterAdapterEntry(name: $0.name, path: $0.name, sha256: "") }, training: [:])
        let routed = RoutedModel(config: cfg, adapters: ads, gates: [SequenceRouter.tensorName: Matrix(rows: 2, cols: C + 1, data: table)])
        let out = dir + "/per-request"
        try OutputGuard.buildDirectory(out, inputs: [], force: false) { tmp in
            try routed.write(into: tmp, finalPath: out, sources: [dir + "/alpha", dir + "/beta"], copyAdapters: false)
        }
        let reg = AdapterRegistry(model: model, baseName: "tiny", budgetBytes: 0)
        XCTAssertEqual(try reg.registerDirectory(dir).sorted(), ["alpha", "beta", "per-request"])
        let engine = ServeEngine(registry: reg, limits: ServeLimits(maxBatch: 8, contextLength: 256, maxTokensCap: 64, prefillChunk: 512))
        let beta = model.with(try model.prepare([(ads[1], 1)]))
        var gen = Generator(model: beta, sampler: try Sampler(temperature: 0, topP: 1, seed: 0), maxTokens: 12)
        let expected = try gen.generate(session: try beta.makeSession(maxTokens: 64), prompt: model.tokenizer.encodeRawPrompt("route me"))
        let req = GenerationRequest(kind: .completion, model: "per-request", input: .text("route me"), choice: .named("per-request"),
                                    sampling: SamplingParameters(maxTokens: 12, temperature: 0, topP: 1, seed: 0, stop: []))
        let r = try await engine.submit(req).collect()
        XCTAssertEqual(r.tokens, expected.tokens)
        var asked = req
        asked.returnRouting = true
        let reported = try await engine.submit(asked).collect()
        XCTAssertEqual(reported.routing.map { $0.adapter }, [String](repeating: "beta", count: reported.tokens.count))
        await engine.drain()
    }
}
