import Foundation
import XCTest
@testable import LoRAFuse

/// Gates trained through the routed forward (Routing/RoutedTraining.swift): the training engine's
/// routed forward against the inference engine, and its gate gradients against finite differences.
final class RoutedTrainingTests: XCTestCase {
    private static func setUp(topK: Int, temperature: Float, gateStd: Float = 0.5, seed: UInt64 = 3)
        -> (model: LlamaModel, adapters: [LoRAAdapter], ids: [Int], gates: [Int: [Float]]) {
        let m = TrainFixtures.model()
        let ads = (0..<3).map { RoutingTests.adapter(m, "a\($0)", seed: UInt64(40 + $0)) }
        var rng = SeededRNG(seed: seed)
        var ids: [Int] = [], gates: [Int: [Float]] = [:]
        for l in 0..<m.config.numHiddenLayers {
            for p in RoutingTests.routedProjections {
                let id = LlamaWeights.linearID(layer: l, p)
                ids.append(id)
                gates[id] = (0..<(ads.count * m.base.linears[id].inFeatures)).map { _ in rng.nextNormal() * gateStd }
            }
        }
        return (m, ads, ids, gates)
    }

    /// The training engine's routed forward gives the loss the inference engine gives with the
    /// same gates (top-2 of 3, T = 0.7).
    func testRoutedTrainingForwardMatchesInference() throws {
        let (m, ads, ids, gates) = Self.setUp(topK: 2, temperature: 0.7)
        var rm = RoutingTests.routed(m, ads, topK: 2, temperature: 0.7)
        for id in ids {
            let l = id / Projection.allCases.count, p = Projection.allCases[id % Projection.allCases.count]
            rm.gates[ModuleAddress.projection(layer: l, p).hf] = Matrix(rows: ads.count, cols: m.base.linears[id].inFeatures, data: gates[id]!)
        }
        let set = try m.prepare(routed: rm)
        var nll = 0.0, n = 0
        for s in TrainFixtures.batch() {
            let logits = try m.logits(tokens: s.tokens, adapters: set)
            let rows = s.targets.indices.filter { s.targets[$0] >= 0 }
            let v = Evaluator.negativeLogLikelihoods(logits, rows: rows.first!..<(rows.last! + 1), targets: rows.map { s.targets[$0] })
            nll += v.reduce(0, +); n += v.count
        }
        let routing = try TrainableRouting(model: m, adapters: ads, ids: ids, policy: RoutingPolicy(topK: 2, temperature: 0.7), initial: gates)
        let r = LlamaTrainingEngine(model: m).routedLossAndGradients(TrainFixtures.batch(), labels: [0, 1], routing: routing,
                                                                      lmWeight: 1, gateWeight: 0, wantGrad: false)
        XCTAssertEqual(r.lmTokens, n)
        XCTAssertEqual(r.lmLoss, nll / Double(n), accuracy: 1e-5)
        // …and differs from the base model's loss (the experts are applied).
        let base = LlamaTrainingEngine(model: m).loss(TrainFixtures.batch(),
                                                      lora: LoRAParameters(modules: [], rank: 1, alpha: 1, rsLoRA: false, targets: []))
        XCTAssertGreaterThan(abs(base.nll / Double(base.tokens) - r.lmLoss), 1e-3)
    }

    /// ∂(LM + gateWeight·gate CE + entropy·H)/∂G against central differences on the largest
    /// coordinates of every gate, for top-k < N and top-k = N.
    func testGateGradientsMatchFiniteDifferences() throws {
        for (topK, T, gw, ent) in [(2, Float(0.7), Float(0.6), Float(0)), (3, Float(1.3), Float(0), Float(0.8)),
                                   (1, Float(1), Float(2), Float(0)), (2, Float(1), Float(0.3), Float(0.5))] {
            let (m, ads, ids, gates) = Self.setUp(topK: topK, temperature: T)
            let routing = try TrainableRouting(model: m, adapters: ads, ids: ids, policy: RoutingPolicy(topK: topK, temperature: T), initial: gates)
            let engine = LlamaTrainingEngine(model: m)
            let batch = TrainFixtures.batch(), labels = [2, 0]
            let g = engine.routedLossAndGradients(batch, labels: labels, routing: routing, lmWeight: 1, gateWeight: gw, entropy: ent).grads
            func loss() -> Double {
                let r = engine.routedLossAndGradients(batch, labels: labels, routing: routing, lmWeight: 1, gateWeight: gw,
                                                      entropy: ent, wantGrad: false)
                return r.lmLoss + Double(gw) * r.gateLoss + Double(ent) * r.entropy
            }
            let eps: Float = 3e-3
            var checked = 0, nonzero = 0
            for id in routing.ids {
                let gr = g[id]!
                let top = gr.indices.sorted { abs(gr[$0]) > abs(gr[$1]) }.prefix(2)
                for j in top {
                    let orig = routing.gates[id]![j]
                    routing.gates[id]![j] = orig + eps; let lp = loss()
                    routing.gates[id]![j] = orig - eps; let lm = loss()
                    routing.gates[id]![j] = orig
                    let fd = (lp - lm) / Double(2 * eps)
                    XCTAssertEqual(fd, Double(gr[j]), accuracy: 3e-2 * abs(Double(gr[j])) + 3e-4,
                                   "top-\(topK) T=\(T) λ=\(gw) β=\(ent) gate \(id)[\(j)]: fd \(fd) vs backward \(gr[j])")
                    checked += 1
                    if abs(gr[j]) > 1e-3 { nonzero += 1 }
                }
            }
            XCTAssertEqual(checked, 2 * ids.count)
            XCTAssertGreaterThan(nonzero, ids.count, "top-\(topK): the gradients checked are mostly zero")
        }
    }

    /// The Switch balance term alone (no LM, no task labels' cross-entropy) evens out which expert
    /// is top-1: starting from gates that send more rows to one expert, steps on it bring the
    /// largest top-1 share toward uniform.
    func testBalanceTermEvensOutTopOneShares() throws {
        let (m, ads, ids, _) = Self.setUp(topK: 1, temperature: 1)
        // Gates that favour expert 0 on every row: its row is the all-ones direction.
        var gates: [Int: [Float]] = [:]
        for id in ids {
            let nIn = m.base.linears[id].inFeatures
            var g = [Float](repeating: 0, count: ads.count * nIn)
            var rng = SeededRNG(seed: UInt64(id))
            for j in 0..<g.count { g[j] = rng.nextNormal() * 0.05 }
            for j in 0..<nIn { g[j] += 0.5 }
            gates[id] = g
        }
        let routing = try TrainableRouting(model: m, adapters: ads, ids: ids, policy: RoutingPolicy(topK: 1, temperature: 1), initial: gates)
        let engine = LlamaTrainingEngine(model: m)
        let batch = TrainFixtures.batch(), labels = [0, 1]
        func maxShare() throws -> Double {
            var rm = RoutingTests.routed(m, ads, topK: 1)
            for id in ids {
                let l = id / Projection.allCases.count, p = Projection.allCases[id % Projection.allCases.count]
                rm.gates[ModuleAddress.projection(layer: l, p).hf] = Matrix(rows: ads.count, cols: m.base.linears[id].inFeatures, data: routing.gates[id]!)
            }
            let trace = RoutingTrace(experts: ads.count)
            let s = try m.makeLlamaSession(maxTokens: 16, adapters: try m.prepare(routed: rm))
            s.routingTrace = trace
            for q in batch { s.reset(); _ = try s.feed(q.tokens) }
            return (0..<ads.count).map { trace.topOneFraction(of: $0) }.max()!
        }
        let before = try maxShare()
        var mom: [Int: [Float]] = [:]
        for _ in 0..<60 {
            let g = engine.routedLossAndGradients(batch, labels: labels, routing: routing, lmWeight: 0, gateWeight: 0, balance: 1).grads
            for id in routing.ids {
                // Sign descent (Adam's first steps): the test is about the direction of the gradient.
                mom[id] = g[id]!
                for j in routing.gates[id]!.indices { routing.gates[id]![j] -= 0.02 * (g[id]![j] > 0 ? 1 : g[id]![j] < 0 ? -1 : 0) }
            }
        }
        let after = try maxShare()
        // Uniform is 1/3: the distance to it at least halves.
        print("balance: largest top-1 share \(before) → \(after)")
        XCTAssertGreaterThan(before, 0.4)
        XCTAssertLessThan(abs(after - 1.0 / 3), 0.5 * abs(before - 1.0 / 3), "top-1 share of the favoured expert: \(before) → \(after)")
        XCTAssertFalse(mom.isEmpty)
    }

    /// MeteoRA's LM term: gates trained on the routed model's LM loss alone lower that loss on the
    /// shots below the untrained (zero, tied) gates', and the λ term alone does not need it.
    func testMeteoraLMTermLowersTheRoutedLoss() throws {
        let (m, ads, ids, _) = Self.setUp(topK: 2, temperature: 1)
        let seqs: [[TrainingSequence]] = [[TrainFixtures.batch()[0]], [TrainFixtures.batch()[1]], [TrainFixtures.batch()[0]]]
        var o = RouteOptions(method: .meteora)
        o.steps = 25
        o.learningRate = 0.05
        o.lmWeight = 1
        o.gateWeight = 0
        let trained = try RouterBuilder.meteoraGates(model: m, adapters: ads, sequences: seqs, ids: ids, options: o, progress: nil)
        let engine = LlamaTrainingEngine(model: m)
        func loss(_ gates: [Int: [Float]]) throws -> Double {
            let r = try TrainableRouting(model: m, adapters: ads, ids: ids, policy: RoutingPolicy(topK: 2, temperature: 1), initial: gates)
            return engine.routedLossAndGradients(seqs.flatMap { $0 }, labels: [0, 1, 2], routing: r, lmWeight: 1, gateWeight: 0, wantGrad: false).lmLoss
        }
        let zero = try loss([:]), after = try loss(trained)
        print("meteora LM term: routed loss \(zero) → \(after)")
        XCTAssertLessThan(after, zero - 0.05)
    }
}
