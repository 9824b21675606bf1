import Foundation
import XCTest
@testable import LoRAFuse

/// The routed forward (Routing/RoutedLayers.swift), the routed-model folder and the gate fitters.
final class RoutingTests: XCTestCase {
    static let routedProjections: [Projection] = [.q, .v, .o, .down]

    /// A random adapter on `projections` of every layer.
    static func adapter(_ m: LlamaModel, _ name: String, seed: UInt64, rank: Int = 3,
                        projections: [Projection] = routedProjections) -> LoRAAdapter {
        var rng = SeededRNG(seed: seed)
        var mods: [String: LoRAModule] = [:]
        for l in 0..<m.config.numHiddenLayers {
            for p in projections {
                let lw = m.base.linears[LlamaWeights.linearID(layer: l, p)]
                mods[ModuleAddress.projection(layer: l, p).peft] = LoRAModule(
                    A: .randomNormal(rank, lw.inFeatures, std: 0.3, rng: &rng),
                    B: .randomNormal(lw.outFeatures, rank, std: 0.3, rng: &rng), scale: 0.8)
            }
        }
        return LoRAAdapter(name: name, modules: mods)
    }

    /// A routed model over `adapters` with the given gate per projection (default all zeros).
    static func routed(_ m: LlamaModel, _ adapters: [LoRAAdapter], topK: Int, kind: GateKind = .linear,
                       temperature: Float = 1, gate: ((Int, Int) -> Matrix)? = nil) -> RoutedModel {
        var gates: [String: Matrix] = [:]
        for l in 0..<m.config.numHiddenLayers {
            for p in routedProjections {
                let nIn = m.base.linears[LlamaWeights.linearID(layer: l, p)].inFeatures
                gates[ModuleAddress.projection(layer: l, p).hf] = gate?(adapters.count, nIn) ?? Matrix(rows: adapters.count, cols: nIn)
            }
        }
        let cfg = RouterConfig(method: "test", gate: kind, topK: topK, temperature: temperature, placement: .all,
                               base: RouterBase(config: m.config, name: nil),
                               adapters: adapters.map { RouterAdapterEntry(name: $0.name, path: $0.name, sha256: "") }, training: [:])
        return RoutedModel(config: cfg, adapters: adapters, gates: gates)
    }

    private func maxDiff(_ a: Matrix, _ b: Matrix) -> Float { a.maxAbsDifference(b) }

    /// Flips one bit of a PEFT adapter's weights file: its digest no longer matches.
    static func corrupt(adapterAt dir: String) throws {
        let weights = dir + "/adapter_model.safetensors"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: weights))
        bytes[bytes.count - 1] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: weights))
    }

    // MARK: Engine

    func testZeroGatesGiveTheUniformMixtureOrTheFirstAdapter() throws {
        for quantized in [false, true] {
            let twins = QuantizedModelTests.twins()
            let m = quantized ? twins.quantized : twins.f32
            let ads = (0..<3).map { Self.adapter(m, "a\($0)", seed: UInt64(10 + $0)) }
            let tokens = [1, 7, 3, 30, 12, 5, 9]
            // All scores tie: top-3 of 3 keeps all with weight 1/3, top-1 keeps the first.
            let all = try m.prepare(routed: Self.routed(m, ads, topK: 3))
            let mix = try m.prepare(ads.map { ($0, Float(1) / 3) })
            XCTAssertLessThan(maxDiff(try m.logits(tokens: tokens, adapters: all), try m.logits(tokens: tokens, adapters: mix)), 1e-4)
            let first = try m.prepare(routed: Self.routed(m, ads, topK: 1))
            let only = try m.prepare([(ads[0], 1)])
            XCTAssertLessThan(maxDiff(try m.logits(tokens: tokens, adapters: first), try m.logits(tokens: tokens, adapters: only)), 1e-4)
            // …and the routed output differs from the base (the experts are applied at all).
            XCTAssertGreaterThan(maxDiff(try m.logits(tokens: tokens, adapters: all), try m.logits(tokens: tokens)), 1e-3)
        }
    }

    /// applyRouted against the formula evaluated naively, row by row, with dense ΔW.
    func testRoutedProjectionMatchesNaiveFormula() throws {
        let m = QuantizedModelTests.twins().f32
        let ads = (0..<4).map { Self.adapter(m, "a\($0)", seed: UInt64(20 + $0), rank: 2 + $0) }
        for kind in GateKind.allCases where kind != .sequence && kind != .xlora {   // per-projection gates (X-LoRA: XLoRATests)
            for (k, T) in [(1, Float(1)), (2, Float(0.5)), (4, Float(2))] {
                var rng = SeededRNG(seed: 3)
                let r = Self.routed(m, ads, topK: k, kind: kind, temperature: T) { n, nIn in .randomNormal(n, nIn, std: 0.5, rng: &rng) }
                let set = try m.prepare(routed: r)
                let id = LlamaWeights.linearID(layer: 1, .down)
                let rl = set.routed!.linears[id]!
                let rows = 5, nIn = rl.inFeatures, nOut = rl.outFeatures
                let x = Matrix.randomNormal(rows, nIn, std: 1, rng: &rng)
                var got = [Float](repeating: 0, count: rows * nOut)
                let session = try m.makeLlamaSession(maxTokens: 4, adapters: set)
                x.data.withUnsafeBufferPointer { xp in
                    got.withUnsafeMutableBufferPointer { o in
                        session.applyRouted(rl, id: id, policy: set.routed!.policy, xp.baseAddress!, rows: rows,
                                            into: o.baseAddress!, ld: nOut, firstPosition: 0)
                    }
                }
                let gate = r.gates[ModuleAddress.projection(layer: 1, .down).hf]!
                for t in 0..<rows {
                    let xr = Array(x.row(t))
                    let norm = xr.reduce(0) { $0 + $1 * $1 }.squareRoot()
                    var s = (0..<4).map { i in zip(gate.row(i), xr).reduce(Float(0)) { $0 + $1.0 * $1.1 } }
                    if kind == .arrow { s = s.map { abs($0) / norm } }
                    let kept = (0..<4).sorted { s[$0] > s[$1] || (s[$0] == s[$1] && $0 < $1) }.prefix(k)
                    let z = kept.reduce(Float(0)) { $0 + expf(s[$1] / T) }
                    var want = [Float](repeating: 0, count: nOut)
                    for i in kept {
                        let mod = ads[i].modules[ModuleAddress.projection(layer: 1, .down).peft]!
                        let dW = mod.delta()         // (out, in), scale included
                        for o in 0..<nOut {
                            want[o] += expf(s[i] / T) / z * zip(dW.row(o), xr).reduce(Float(0)) { $0 + $1.0 * $1.1 }
                        }
                    }
                    let d = zip(want, got[(t * nOut)..<((t + 1) * nOut)]).map { abs($0 - $1) }.max()!
                    XCTAssertLessThan(d, 1e-4, "\(kind) k=\(k) T=\(T) row \(t)")
                }
            }
        }
    }

    func testRoutedDecodeThroughCacheAndBatchesEqualsFullFeed() throws {
        for quantized in [false, true] {
            let twins = QuantizedModelTests.twins()
            let m = quantized ? twins.quantized : twins.f32
            let ads = (0..<3).map { Self.adapter(m, "a\($0)", seed: UInt64(30 + $0)) }
            var rng = SeededRNG(seed: 9)
            let set = try m.prepare(routed: Self.routed(m, ads, topK: 2) { n, nIn in .randomNormal(n, nIn, std: 0.5, rng: &rng) })
            let arrow = try m.prepare(routed: Self.routed(m, ads, topK: 1, kind: .arrow) { n, nIn in .randomNormal(n, nIn, std: 0.5, rng: &rng) })
            let plain = try m.prepare([(ads[1], 1)])
            // A routed set with a LoRA applied to every token beside the gates (GenKnowSub's −mean).
            var withFixed = Self.routed(m, ads, topK: 2) { n, nIn in .randomNormal(n, nIn, std: 0.5, rng: &rng) }
            withFixed.fixed = Self.adapter(m, "fixed", seed: 39, rank: 2)
            let fixedSet = try m.prepare(routed: withFixed)
            let seqs = [[4, 8, 15, 16, 23], [42, 1, 2], [9, 9, 3, 1], [7, 6, 5]]
            let sets = [set, arrow, plain, fixedSet]
            let want = try zip(seqs, sets).map { try m.logits(tokens: $0, adapters: $1) }
            // Through the KV cache one token at a time.
            let s = try m.makeLlamaSession(maxTokens: 8, adapters: set)
            var rows = [try s.feed(Array(seqs[0][0..<2]))]
            for t in seqs[0][2...] { rows.append(try s.feed([t])) }
            XCTAssertLessThan(maxDiff(Matrix.vconcat(rows), want[0]), 1e-4, "incremental, quantized=\(quantized)")
            // decodeStep over two routed sets and a plain one: each row as it would be alone.
            let sessions = try sets.map { try m.makeLlamaSession(maxTokens: 8, adapters: $0) }
            for (i, sess) in sessions.enumerated() { _ = try sess.feed(Array(seqs[i].prefix(2))) }
            for k in 2..<3 {
                let l = try m.decodeStep(sessions, tokens: seqs.map { $0[k] })
                for i in sessions.indices {
                    let got = Array(l.data[(i * m.vocabSize)..<((i + 1) * m.vocabSize)])
                    let d = zip(got, want[i].row(k)).map { abs($0 - $1) }.max()!
                    XCTAssertLessThan(d, 1e-4, "decodeStep row \(i), quantized=\(quantized)")
                }
            }
        }
    }

    func testTraceCountsTopOneOverAnswerRows() throws {
        let m = QuantizedModelTests.twins().f32
        let ads = (0..<2).map { Self.adapter(m, "a\($0)", seed: UInt64(40 + $0)) }
        let r = Self.routed(m, ads, topK: 1)
        let set = try m.prepare(routed: r)
        let trace = RoutingTrace(experts: 2)
        let s = try m.makeLlamaSession(maxTokens: 8, adapters: set)
        s.routingTrace = trace
        trace.fromPosition = 2
        _ = try s.feed([1, 2, 3, 4, 5])
        // Zero gates tie, so expert 0 is top-1 everywhere; 3 rows of 5 are traced per projection.
        XCTAssertEqual(trace.topOneFraction(of: 0), 1)
        XCTAssertEqual(trace.rows.values.reduce(0, +), 3 * r.gates.count)
        let heat = trace.meanWeightPerLayer(layers: m.config.numHiddenLayers)
        XCTAssertEqual(heat[0][0], 1, accuracy: 1e-9)
        XCTAssertEqual(heat[0][1], 0, accuracy: 1e-9)
    }

    // MARK: Gate fitting

    func testArrowRowIsTheTopRightSingularVectorOfDeltaW() throws {
        let m = QuantizedModelTests.twins().f32
        let ads = (0..<2).map { Self.adapter(m, "a\($0)", seed: UInt64(50 + $0), rank: 4) }
        let factors = try ads.map { try m.prepare([($0, 1)]).linearFactors.mapValues { $0[0] } }
        let id = LlamaWeights.linearID(layer: 0, .q)
        let gates = try RouterBuilder.arrowGates(model: m, factors: factors, ids: [id], progress: nil)
        let nIn = m.base.linears[id].inFeatures
        for i in 0..<2 {
            let dense = try Linalg.svd(ads[i].modules[ModuleAddress.projection(layer: 0, .q).peft]!.delta())
            let v = Array(dense.Vt.row(0)), g = Array(gates[id]![(i * nIn)..<((i + 1) * nIn)])
            let cos = abs(zip(v, g).reduce(Float(0)) { $0 + $1.0 * $1.1 })
            XCTAssertGreaterThan(cos, 0.9999, "adapter \(i)")
            XCTAssertEqual(g.reduce(0) { $0 + $1 * $1 }, 1, accuracy: 1e-4)
        }
    }

    /// Two "tasks" whose tokens come from disjoint ranges: the supervised and the mean-hidden gates
    /// both learn to send each task's tokens to its own adapter.
    func testMeteoraAndHiddenGatesSendEachTaskToItsAdapter() throws {
        let m = QuantizedModelTests.twins().f32
        let ads = (0..<2).map { Self.adapter(m, "a\($0)", seed: UInt64(60 + $0)) }
        var rng = SeededRNG(seed: 1)
        let ranges = [0..<20, 30..<50]
        let seqs: [[TrainingSequence]] = ranges.map { r in
            (0..<6).map { _ in
                let toks = (0..<8).map { _ in r.lowerBound + Int(rng.next() % UInt64(r.count)) }
                return TrainingSequence(tokens: toks, targets: toks)
            }
        }
        var ids: [Int] = []
        for l in 0..<m.config.numHiddenLayers { for p in Self.routedProjections { ids.append(LlamaWeights.linearID(layer: l, p)) } }
        var o = RouteOptions(method: .meteora)
        o.steps = 60
        o.learningRate = 0.05
        o.lmWeight = 0   // the supervised term alone; the LM term is RoutedTrainingTests'
        let meteora = try RouterBuilder.meteoraGates(model: m, adapters: ads, sequences: seqs, ids: ids, options: o, progress: nil)
        let hidden = try RouterBuilder.hiddenGates(model: m, sequences: seqs, ids: ids, progress: nil)
        for (name, gates) in [("meteora", meteora), ("hidden", hidden)] {
            var rm = Self.routed(m, ads, topK: 1)
            for id in ids {
                let l = id / Projection.allCases.count, p = Projection.allCases[id % Projection.allCases.count]
                rm.gates[ModuleAddress.projection(layer: l, p).hf] = Matrix(rows: 2, cols: m.base.linears[id].inFeatures, data: gates[id]!)
            }
            let set = try m.prepare(routed: rm)
            for (task, list) in seqs.enumerated() {
                let trace = RoutingTrace(experts: 2)
                let s = try m.makeLlamaSession(maxTokens: 8, adapters: set)
                s.routingTrace = trace
                for q in list { s.reset(); _ = try s.feed(q.tokens) }
                // The mean-difference gates are the cruder fit: well above chance (0.5), not perfect.
                XCTAssertGreaterThan(trace.topOneFraction(of: task), name == "meteora" ? 0.95 : 0.7, "\(name): task \(task)")
            }
        }
    }

    // MARK: Folder

    func testRoutedFolderRoundTripsAndChecksItsAdapters() throws {
        let m = QuantizedModelTests.twins().f32
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var paths: [String] = []
        var ads: [LoRAAdapter] = []
        for i in 0..<2 {
            var a = Self.adapter(m, "task\(i)", seed: UInt64(70 + i))
            let p = dir + "/adapters/task\(i)"
            try AdapterIO.write(a, to: p, format: .peft, dtype: .f32)
            a = try AdapterIO.read(path: p)
            a.name = "task\(i)"
            paths.append(p)
            ads.append(a)
        }
        var rng = SeededRNG(seed: 4)
        let r = Self.routed(m, ads, topK: 1) { n, nIn in .randomNormal(n, nIn, std: 0.5, rng: &rng) }
        let tokens = [3, 1, 4, 1, 5]
        let want = try m.logits(tokens: tokens, adapters: try m.prepare(routed: r))
        for copy in [false, true] {
            let out = dir + "/routed-\(copy)"
            try OutputGuard.buildDirectory(out, inputs: paths, force: false) { tmp in
                try r.write(into: tmp, finalPath: out, sources: paths, copyAdapters: copy)
            }
            XCTAssertTrue(RoutedModel.isRoutedDirectory(out))
            let back = try RoutedModel.load(directory: out)
            XCTAssertEqual(back.config.adapters.map(\.name), ["task0", "task1"])
            XCTAssertEqual(back.config.adapters[0].path, copy ? "adapters/task0" : "../adapters/task0")
            XCTAssertLessThan(maxDiff(try m.logits(tokens: tokens, adapters: try m.prepare(routed: back)), want), 1e-5)
            XCTAssertThrowsError(try AdapterIO.read(path: out)) { XCTAssertTrue("\($0)".contains("routed model"), "\($0)") }
        }
        // A changed adapter, then a missing one: errors that name it.
        try Self.corrupt(adapterAt: paths[1])
        XCTAssertThrowsError(try RoutedModel.load(directory: dir + "/routed-false")) { e in
            guard case let .adapterChanged(_, name, _, _, _)? = e as? RoutedModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(name, "task1")
        }
        try FileManager.default.removeItem(atPath: paths[1])
        XCTAssertThrowsError(try RoutedModel.load(directory: dir + "/routed-false")) { e in
            guard case let .adapterMissing(_, name, _)? = e as? RoutedModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(name, "task1")
        }
        // The copy does not depend on the originals.
        XCTAssertNoThrow(try RoutedModel.load(directory: dir + "/routed-true"))
        // A config field out of range names the field.
        let cfgPath = dir + "/routed-true/router_config.json"
        let text = try String(contentsOfFile: cfgPath, encoding: .utf8).replacingOccurrences(of: "\"top_k\" : 1", with: "\"top_k\" : 3")
        try text.write(toFile: cfgPath, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try RoutedModel.load(directory: dir + "/routed-true")) { e in
            guard case let .badConfig(_, field, _)? = e as? RoutedModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "top_k")
        }
    }

    func testBadOptionsAreRefusedBeforeWork() throws {
        var o = RouteOptions(method: .meteora)
        XCTAssertThrowsError(try RouterBuilder.validate(o, adapters: 3, shots: 0)) { XCTAssertEqual($0 as? RouteError, .noShots(method: "meteora")) }
        XCTAssertThrowsError(try RouterBuilder.validate(o, adapters: 3, shots: 2)) { XCTAssertEqual($0 as? RouteError, .shotsCount(adapters: 3, files: 2)) }
        o.topK = 4
        XCTAssertThrowsError(try RouterBuilder.validate(o, adapters: 3, shots: 3)) { XCTAssertEqual($0 as? RouteError, .topK(k: 4, adapters: 3)) }
        XCTAssertThrowsError(try RouterBuilder.validate(RouteOptions(method: .arrow), adapters: 1, shots: 0)) { XCTAssertEqual($0 as? RouteError, .tooFewAdapters) }
        XCTAssertNoThrow(try RouterBuilder.validate(RouteOptions(method: .arrow), adapters: 2, shots: 0))
        var seq = RouteOptions(method: .sequence)
        seq.placement = .mlp
        XCTAssertThrowsError(try RouterBuilder.validate(seq, adapters: 2, shots: 2)) {
            XCTAssertEqual($0 as? RouteError, .badOption(option: "--placement", reason: "sequence picks the adapters per request; it has no per-projection gates to place"))
        }
        var e = RouteOptions(method: .meteora)
        (e.lmWeight, e.gateWeight) = (0, 0)
        XCTAssertThrowsError(try RouterBuilder.validate(e, adapters: 2, shots: 2))
        e.entropy = 0.1   // the entropy term alone is something to learn
        XCTAssertNoThrow(try RouterBuilder.validate(e, adapters: 2, shots: 2))
        // Embedding LoRAs cannot be routed; the error names the adapter and module.
        let m = QuantizedModelTests.twins().f32
        var a = Self.adapter(m, "emb", seed: 1)
        var rng = SeededRNG(seed: 2)
        a.modules[ModuleAddress.embedding.peft] = LoRAModule(A: .randomNormal(2, m.vocabSize, rng: &rng),
                                                             B: .randomNormal(m.config.hiddenSize, 2, rng: &rng), scale: 1, kind: .embedding)
        XCTAssertThrowsError(try m.prepare(routed: Self.routed(m, [a, Self.adapter(m, "b", seed: 2)], topK: 1))) {
            XCTAssertEqual($0 as? RoutedModelError, .embeddingNotRoutable(adapter: "emb", module: ModuleAddress.embedding.peft))
        }
    }

    func testSHA256KnownAnswers() {
        XCTAssertEqual(SHA256.hex(Array("".utf8)), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        // In pieces across block boundaries: same digest.
        let long = [UInt8]((0..<1000).map { UInt8($0 % 251) })
        var s = SHA256()
        s.update(long[0..<63]); s.update(long[63..<130]); s.update(long[130...])
        XCTAssertEqual(s.hexDigest(), SHA256.hex(long))
    }
}
