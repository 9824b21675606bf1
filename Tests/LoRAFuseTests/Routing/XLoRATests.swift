import Foundation
import XCTest
@testable import LoRAFuse

/// X-LoRA (Routing/XLoRA.swift): the classifier's scalings, the two-pass session (prompt, decode,
/// truncate, batched steps), its training gradient against finite differences, and the routed
/// folder on disk.
final class XLoRATests: XCTestCase {
    private static func classifier(_ m: LlamaModel, experts N: Int, topK: Int, temperature: Float = 1, std: Float = 0.4,
                                   seed: UInt64 = 9) -> XLoRAClassifier {
        var rng = SeededRNG(seed: seed)
        let L = m.config.numHiddenLayers, C = m.config.hiddenSize
        let table = (0..<(L * N * (C + 1))).map { _ in rng.nextNormal() * std }
        return XLoRAClassifier(layers: L, experts: N, hiddenSize: C, table: table, topK: topK, temperature: temperature)
    }

    private static func routed(_ m: LlamaModel, _ ads: [LoRAAdapter], _ c: XLoRAClassifier) -> RoutedModel {
        let cfg = RouterConfig(method: "xlora", gate: .xlora, topK: c.topK, temperature: c.temperature, placement: .all,
                               base: RouterBase(config: m.config, name: nil),
                               adapters: ads.map { RouterAdapterEntry(name: $0.name, path: $0.name, sha256: "") }, training: [:])
        return RoutedModel(config: cfg, adapters: ads, gates: [XLoRAClassifier.tensorName: Matrix(rows: c.width, cols: c.hiddenSize + 1, data: c.table)])
    }

    private static func adapters(_ m: LlamaModel) -> [LoRAAdapter] {
        (0..<3).map { RoutingTests.adapter(m, "a\($0)", seed: UInt64(40 + $0)) }
    }

    /// Scalings: each layer's group sums to 1 over exactly its top-k, which are its largest logits.
    func testScalingsAreAPerLayerSoftmaxOverTheTopK() {
        let m = TrainFixtures.model()
        let C = m.config.hiddenSize
        var rng = SeededRNG(seed: 1)
        let h = (0..<(5 * C)).map { _ in rng.nextNormal() }
        for k in [1, 2, 3] {
            let c = Self.classifier(m, experts: 3, topK: k, temperature: 0.8)
            let s = c.scalings(h, rows: 5)
            for r in 0..<5 {
                for l in 0..<c.layers {
                    let g = Array(s[(r * c.width + l * 3)..<(r * c.width + l * 3 + 3)])
                    XCTAssertEqual(g.reduce(0, +), 1, accuracy: 1e-5)
                    XCTAssertEqual(g.filter { $0 > 0 }.count, k)
                    // The kept ones are the largest logits, in the softmax's ratio.
                    var z = [Float](repeating: 0, count: 3)
                    for i in 0..<3 {
                        let row = l * 3 + i
                        z[i] = c.table[row * (C + 1) + C]
                        for j in 0..<C { z[i] += c.table[row * (C + 1) + j] * h[r * C + j] }
                    }
                    let kept = z.indices.sorted { z[$0] > z[$1] }.prefix(k)
                    for i in 0..<3 { XCTAssertEqual(g[i] > 0, kept.contains(i)) }
                    if k >= 2 {
                        let (a, b) = (kept[kept.startIndex], kept[kept.startIndex + 1])
                        XCTAssertEqual(log(g[a] / g[b]), (z[a] - z[b]) / 0.8, accuracy: 1e-3)
                    }
                }
            }
        }
    }

    /// A classifier that ignores h (W = 0) with the same bias in every layer is a fixed linear
    /// merge: the routed model's logits equal the unmerged adapters at weights softmax(b).
    func testConstantScalingsEqualALinearMix() throws {
        let m = TrainFixtures.model()
        let ads = Self.adapters(m)
        let L = m.config.numHiddenLayers, C = m.config.hiddenSize
        let b: [Float] = [0.3, -0.5, 1.1]
        var table = [Float](repeating: 0, count: L * 3 * (C + 1))
        for l in 0..<L { for i in 0..<3 { table[(l * 3 + i) * (C + 1) + C] = b[i] } }
        let c = XLoRAClassifier(layers: L, experts: 3, hiddenSize: C, table: table, topK: 3, temperature: 1)
        let z = b.map { expf($0) }.reduce(0, +)
        let mix = try m.prepare(zip(ads, b).map { ($0, expf($1) / z) }, mode: .unmerged)
        let tokens = [3, 17, 8, 41, 22, 9, 30]
        let want = try m.logits(tokens: tokens, adapters: mix)
        let got = try m.logits(tokens: tokens, adapters: try m.prepare(routed: Self.routed(m, ads, c)))
        XCTAssertLessThan(got.maxAbsDifference(want), 1e-4)
        XCTAssertGreaterThan(got.maxAbsDifference(try m.logits(tokens: tokens)), 1e-2, "the adapters are applied")
    }

    /// Decoding token by token (the shadow base session kept in step), after a truncate and after
    /// a reset, gives the logits of one pass over the whole sequence; a batched step with X-LoRA
    /// and plain sessions equals feeding each alone.
    func testDecodeTruncateAndBatchedStepsMatchOnePass() throws {
        let m = TrainFixtures.model()
        let ads = Self.adapters(m)
        let set = try m.prepare(routed: Self.routed(m, ads, Self.classifier(m, experts: 3, topK: 2)))
        let tokens = [3, 17, 8, 41, 22, 9, 30, 12]
        let whole = try m.logits(tokens: tokens, adapters: set)
        let s = try m.makeLlamaSession(maxTokens: 16, adapters: set)
        _ = try s.feed(Array(tokens[..<3]))
        _ = try s.feed([5, 5, 5])            // a wrong continuation, taken back
        s.truncate(to: 3)
        for (t, tok) in tokens.enumerated().dropFirst(3) {
            let l = try s.feed([tok])
            XCTAssertLessThan(zip(l.data, whole.data[(t * l.cols)..<((t + 1) * l.cols)]).map { abs($0 - $1) }.max()!, 1e-4, "position \(t)")
        }
        s.reset()
        XCTAssertLessThan(try s.feed(tokens).maxAbsDifference(whole), 1e-4)

        // Batched: an X-LoRA session and a plain-LoRA session step together.
        let plain = try m.prepare([(ads[0], 1)], mode: .unmerged)
        let a = try m.makeLlamaSession(maxTokens: 16, adapters: set), b = try m.makeLlamaSession(maxTokens: 16, adapters: plain)
        let ra = try m.makeLlamaSession(maxTokens: 16, adapters: set), rb = try m.makeLlamaSession(maxTokens: 16, adapters: plain)
        _ = try m.step([StepInput(session: a, tokens: [3, 17, 8]), StepInput(session: b, tokens: [4, 4])])
        _ = try ra.feed([3, 17, 8]); _ = try rb.feed([4, 4])
        let step = try m.decodeStep([a, b], tokens: [41, 7])
        let want = [try ra.feed([41]), try rb.feed([7])]
        for i in 0..<2 {
            XCTAssertLessThan(zip(step.data[(i * step.cols)..<((i + 1) * step.cols)], want[i].data).map { abs($0 - $1) }.max()!, 1e-4)
        }
    }

    /// The training engine's routed forward with given scalings gives the session's loss, and the
    /// table gradient (through the routed backward and the softmax) matches central differences.
    func testClassifierGradientMatchesFiniteDifferences() throws {
        let m = TrainFixtures.model()
        let ads = Self.adapters(m)
        let L = m.config.numHiddenLayers, C = m.config.hiddenSize
        let ids = (0..<L).flatMap { l in RoutingTests.routedProjections.map { LlamaWeights.linearID(layer: l, $0) } }
        let batch = TrainFixtures.batch()
        // Pass 1: the base model's last hidden states of the packed rows.
        var h: [Float] = []
        for q in batch {
            let s = try m.makeLlamaSession(maxTokens: q.tokens.count)
            h += Array(UnsafeBufferPointer(start: s.finalHiddenStates(q.tokens), count: q.tokens.count * C))
        }
        let rows = h.count / C
        for (k, T) in [(3, Float(1)), (2, Float(0.7))] {
            var c = Self.classifier(m, experts: 3, topK: k, temperature: T, std: 0.3)
            let routing = try TrainableRouting(model: m, adapters: ads, ids: ids, policy: RoutingPolicy(topK: k, temperature: T), kind: .xlora)
            let engine = LlamaTrainingEngine(model: m)
            func loss(_ c: XLoRAClassifier, grad: Bool) -> LlamaTrainingEngine.RoutedStep {
                engine.routedLossAndGradients(batch, labels: [-1, -1], routing: routing, lmWeight: 1, gateWeight: 0,
                                              wantGrad: grad, scalings: c.scalings(h, rows: rows))
            }
            // Forward: the session's two passes give the same loss.
            let set = try m.prepare(routed: Self.routed(m, ads, c))
            var nll = 0.0, n = 0
            for q in batch {
                let logits = try m.logits(tokens: q.tokens, adapters: set)
                let r = q.targets.indices.filter { q.targets[$0] >= 0 }
                let v = Evaluator.negativeLogLikelihoods(logits, rows: r.first!..<(r.last! + 1), targets: r.map { q.targets[$0] })
                nll += v.reduce(0, +); n += v.count
            }
            let step = loss(c, grad: true)
            XCTAssertEqual(step.lmLoss, nll / Double(n), accuracy: 1e-5)
            let g = c.tableGradient(h: h, scalings: c.scalings(h, rows: rows), dScalings: step.dScalings, rows: rows)
            let eps: Float = 3e-3
            var checked = 0
            for j in g.indices.sorted(by: { abs(g[$0]) > abs(g[$1]) }).prefix(12) {
                let orig = c.table[j]
                c.table[j] = orig + eps; let lp = loss(c, grad: false).lmLoss
                c.table[j] = orig - eps; let lm = loss(c, grad: false).lmLoss
                c.table[j] = orig
                let fd = (lp - lm) / Double(2 * eps)
                XCTAssertEqual(fd, Double(g[j]), accuracy: 3e-2 * abs(Double(g[j])) + 3e-4, "top-\(k) table[\(j)]: fd \(fd) vs backward \(g[j])")
                checked += 1
            }
            XCTAssertEqual(checked, 12)
            XCTAssertGreaterThan(abs(g[g.indices.max { abs(g[$0]) < abs(g[$1]) }!]), 1e-3, "the gradient is not all zero")
        }
    }

    /// The xlora fit lowers the routed LM loss on its shots below the uniform mixture it starts
    /// from (the standardisation folded into the stored table: the session reads raw hidden
    /// states), writes a folder that loads back to the same logits, and a classifier of the wrong
    /// shape is an error naming the tensor.
    func testFitLowersTheLossAndRoundTrips() throws {
        let m = TrainFixtures.model()
        let ads = Self.adapters(m)
        var rng = SeededRNG(seed: 2)
        let ranges = [0..<15, 15..<30, 30..<45]
        let seqs: [[TrainingSequence]] = ranges.map { r in
            (0..<4).map { _ in
                let toks = (0..<7).map { _ in r.lowerBound + Int(rng.next() % UInt64(r.count)) }
                return TrainingSequence(tokens: toks, targets: Array(toks.dropFirst()) + [-1])
            }
        }
        var o = RouteOptions(method: .xlora)
        XCTAssertEqual(o.topK, 0, "X-LoRA's default is the dense softmax over every adapter")
        XCTAssertEqual(o.resolvedTopK(adapters: 3), 3)
        o.steps = 40
        o.learningRate = 0.02
        let ids = (0..<m.config.numHiddenLayers).flatMap { l in RoutingTests.routedProjections.map { LlamaWeights.linearID(layer: l, $0) } }
        let c = try RouterBuilder.xloraClassifier(model: m, adapters: ads, sequences: seqs, ids: ids, options: o, progress: nil)
        XCTAssertEqual(c.topK, 3)
        let routedModel = Self.routed(m, ads, c)
        func meanLoss(_ set: AdapterSet) throws -> Double {
            var nll = 0.0, n = 0
            for q in seqs.joined() {
                let logits = try m.logits(tokens: q.tokens, adapters: set)
                let v = Evaluator.negativeLogLikelihoods(logits, rows: 0..<(q.tokens.count - 1), targets: Array(q.targets.dropLast()))
                nll += v.reduce(0, +); n += v.count
            }
            return nll / Double(n)
        }
        let uniform = try m.prepare(ads.map { ($0, Float(1) / 3) }, mode: .unmerged)
        let trained = try m.prepare(routed: routedModel)
        let (before, after) = (try meanLoss(uniform), try meanLoss(trained))
        print("xlora: shots' loss \(before) (uniform mix) → \(after)")
        XCTAssertLessThan(after, before - 0.05)
        let tokens = seqs[0][0].tokens

        // On disk and back.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lf-xlora-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var sources: [String] = []
        for a in ads {
            let p = dir + "/src/" + a.name
            try PEFTAdapter.write(a, to: p, dtype: .f32)
            sources.append(p)
        }
        try FileManager.default.createDirectory(atPath: dir + "/r", withIntermediateDirectories: true)
        try routedModel.write(into: dir + "/r", finalPath: dir + "/r", sources: sources, copyAdapters: false)
        let back = try RoutedModel.load(directory: dir + "/r")
        XCTAssertEqual(back.config.gate, .xlora)
        XCTAssertLessThan(try m.logits(tokens: tokens, adapters: try m.prepare(routed: back))
            .maxAbsDifference(try m.logits(tokens: tokens, adapters: trained)), 1e-5)

        // A classifier for another number of layers.
        var bad = back
        bad.gates[XLoRAClassifier.tensorName] = Matrix(rows: 3, cols: m.config.hiddenSize + 1)
        XCTAssertThrowsError(try m.prepare(routed: bad)) { e in
            XCTAssertTrue("\(e)".contains("xlora.gate"), "\(e)")
        }
    }
}
