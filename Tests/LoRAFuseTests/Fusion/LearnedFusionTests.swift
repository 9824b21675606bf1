import Foundation
import XCTest
@testable import LoRAFuse

/// Learned fusion (aTLAS, learned CAT, LoraHub) on the tiny random training model.
final class LearnedFusionTests: XCTestCase {
    /// Three adapters of different ranks and target sets, so blocks hold 1–3 parts.
    static func adapters(_ c: LlamaConfig) -> [LoRAAdapter] {
        [TrainFixtures.randomLoRA(c, rank: 2, seed: 11, std: 0.25).adapter(name: "a"),
         TrainFixtures.randomLoRA(c, targets: [.q, .v, .down], rank: 3, seed: 12, std: 0.25).adapter(name: "b"),
         TrainFixtures.randomLoRA(c, targets: [.k, .o, .gate, .up, .down], rank: 1, seed: 13, std: 0.25).adapter(name: "c")]
    }

    /// Two tasks of one sequence each, so the mean-over-tasks weighting is exercised.
    static func problem(_ model: LlamaModel, adapters: [LoRAAdapter]? = nil, val: Bool = false) throws -> LearnedProblem {
        let b = TrainFixtures.batch()
        return try LearnedProblem(adapters: adapters ?? Self.adapters(model.config), model: model,
                                  train: [[b[0]], [b[1]]], val: val ? [[b[1]], [b[0]]] : [], taskNames: ["t0", "t1"])
    }

    static func randomTheta(_ n: Int, seed: UInt64, around: Double, spread: Double) -> [Double] {
        var rng = SeededRNG(seed: seed)
        return (0..<n).map { _ in around + spread * (2 * rng.nextDouble() - 1) }
    }

    /// Central differences of the few-shot loss (Float forward) against dL/dθ from the engine's
    /// LoRA gradients: |fd − g| ≤ 3e-2·|g| + 3e-4 (same bound as the engine's own gradient test).
    private func checkFD(_ p: LearnedProblem, _ map: some CoefficientMap, theta: [Double],
                         file: StaticString = #filePath, line: UInt = #line) {
        let all = p.train.enumerated().flatMap { (t, s) in s.map { (task: t, seq: $0) } }
        let (loss, dc) = p.lossAndGradient(all, coefficients: map.coefficients(theta))
        XCTAssertEqual(loss, p.loss(p.train, lora: p.parameters(map.coefficients(theta))), accuracy: 1e-6, file: file, line: line)
        let g = map.pullback(theta, dc)
        XCTAssertEqual(g.count, map.parameterCount, file: file, line: line)
        // The largest coordinates plus a few others (at block granularity there are many).
        let idx = Array(g.indices.sorted { abs(g[$0]) > abs(g[$1]) }.prefix(8)) + [0, g.count / 2, g.count - 1]
        let eps = 3e-3
        var checked = 0
        for i in Set(idx) {
            var tp = theta, tm = theta
            tp[i] += eps; tm[i] -= eps
            let fd = (p.loss(p.train, lora: p.parameters(map.coefficients(tp)))
                      - p.loss(p.train, lora: p.parameters(map.coefficients(tm)))) / (2 * eps)
            XCTAssertEqual(fd, g[i], accuracy: 3e-2 * abs(g[i]) + 3e-4, "θ[\(i)]", file: file, line: line)
            checked += 1
        }
        XCTAssertGreaterThan(g.map(abs).max()!, 1e-3, "gradient should not be trivially zero", file: file, line: line)
        XCTAssertGreaterThanOrEqual(checked, min(4, g.count), file: file, line: line)
    }

    func testAtlasCoefficientGradientMatchesFiniteDifferencesAtEveryGranularity() throws {
        let model = TrainFixtures.model()
        let p = try Self.problem(model)
        XCTAssertEqual(p.blocks.count, 2 * 7)
        for g in CoefficientGranularity.allCases {
            let map = LinearCoefficientMap(problem: p, granularity: g)
            let expected = [CoefficientGranularity.block: 14, .layer: 2, .module: 7, .adapter: 1][g]! * 3
            XCTAssertEqual(map.parameterCount, expected, g.rawValue)
            checkFD(p, map, theta: Self.randomTheta(map.parameterCount, seed: 3, around: 0.8, spread: 0.5))
        }
    }

    func testLearnedCatSoftmaxGradientMatchesFiniteDifferences() throws {
        let model = TrainFixtures.model()
        let p = try Self.problem(model)
        for g in [CoefficientGranularity.block, .adapter] {
            let map = SoftmaxCoefficientMap(problem: p, granularity: g, scale: 3)
            let theta = Self.randomTheta(map.parameterCount, seed: 4, around: 0, spread: 1)
            // Coefficients of a group sum to the scale.
            let c = map.coefficients(theta)
            XCTAssertEqual(c[0][5] + c[1][5] + c[2][5], 3, accuracy: 1e-12)
            checkFD(p, map, theta: theta)
        }
        // θ = 0 starts at the plain sum of the adapters (c = 1 with S = n).
        let map = SoftmaxCoefficientMap(problem: p, granularity: .block, scale: 3)
        XCTAssertEqual(map.coefficients(map.initialParameters(LearnedFusionOptions())).flatMap { $0 }, [Double](repeating: 1, count: 42))
    }

    /// The concatenated parameters reproduce Σ c_i ΔW_i per block (the engine sees what the
    /// fold writes): compare the engine's loss with the folded adapter's.
    func testFoldedAdapterIsExactSumAndSVDTruncation() throws {
        let model = TrainFixtures.model()
        let ads = Self.adapters(model.config)
        let p = try Self.problem(model, adapters: ads)
        let map = LinearCoefficientMap(problem: p, granularity: .block)
        let c = map.coefficients(Self.randomTheta(map.parameterCount, seed: 5, around: 0.5, spread: 1))
        let fused = try p.fold(c, rank: nil, seed: 0, name: "f")
        XCTAssertEqual(fused.modules.count, 14)
        var worst: Float = 0
        for (bi, b) in p.blocks.enumerated() {
            let name = ModuleAddress.projection(layer: b.layer, b.target).peft
            var want = Matrix(rows: b.outFeatures, cols: b.inFeatures)
            for (i, a) in ads.enumerated() { if let m = a.modules[name] { want.add(m.delta(), scaledBy: Float(c[i][bi])) } }
            let got = try XCTUnwrap(fused.modules[name])
            XCTAssertEqual(got.rank, b.totalRank)
            worst = max(worst, got.delta().maxAbsDifference(want) / max(want.maxAbs, 1e-6))

            // Rank 2 through the exact truncated SVD: the Eckart–Young optimum of the dense sum.
            let r2 = try p.fold(c, rank: 2, seed: 0, name: "f").modules[name]!
            XCTAssertEqual(r2.rank, min(2, b.totalRank))
            let svd = try Linalg.svd(want)
            let best = svd.truncated(to: min(2, svd.rank)).reconstruct()
            XCTAssertLessThan(r2.delta().maxAbsDifference(best), 1e-4 * max(want.maxAbs, 1e-6), name)
        }
        XCTAssertLessThan(worst, 1e-5)
        // And the engine's concatenation gives the same loss as the folded adapter.
        let folded = try LoRAParameters(adapter: fused, config: model.config)
        let e = LlamaTrainingEngine(model: model)
        XCTAssertEqual(e.loss(TrainFixtures.batch(), lora: folded).nll, e.loss(TrainFixtures.batch(), lora: p.parameters(c)).nll,
                       accuracy: 1e-4)
        // Coefficients table: adapter b has no k_proj, so its k row is all zeros; a's q row holds c.
        let values = p.tabulate(c)
        XCTAssertNil(values[1]["k_proj"])
        let qBlock = p.blocks.firstIndex { $0.layer == 1 && $0.target == .q }!
        XCTAssertEqual(values[0]["q_proj"]![1], c[0][qBlock])
    }

    func testAtlasAndLearnedCatLowerTheFewShotLoss() throws {
        let model = TrainFixtures.model()
        let p = try Self.problem(model, val: true)
        for method in [LearnedFusionMethod.atlas, .catLearned] {
            var o = LearnedFusionOptions()
            o.steps = 15; o.learningRate = 0.05; o.batchSize = 2; o.granularity = .layer
            let r = try LearnedFusion.run(method: method, problem: p, options: o, progress: nil)
            let c = r.coefficients
            XCTAssertEqual(c.lossCurve.count, 16)
            XCTAssertEqual(c.lossCurve[0].trainLoss, c.initialTrainLoss)
            XCTAssertLessThan(c.finalTrainLoss, c.initialTrainLoss - 0.05, method.rawValue)
            XCTAssertNotNil(c.finalValLoss)
            XCTAssertEqual(c.adapterNames, ["a", "b", "c"])
            // The written adapter is the kept coefficients folded in: its loss is finalTrainLoss.
            let folded = try LoRAParameters(adapter: r.adapter, config: model.config)
            let e = LlamaTrainingEngine(model: model)
            let b = TrainFixtures.batch()
            let l = (e.loss([b[0]], lora: folded).nll / Double(b[0].lossTokens) + e.loss([b[1]], lora: folded).nll / Double(b[1].lossTokens)) / 2
            XCTAssertEqual(l, c.finalTrainLoss, accuracy: 1e-4, method.rawValue)
        }
    }

    func testEarlyStoppingKeepsBestValidationCoefficients() throws {
        let model = TrainFixtures.model()
        let p = try Self.problem(model, val: true)
        var o = LearnedFusionOptions()
        o.steps = 30; o.learningRate = 0.5; o.batchSize = 1; o.evalEvery = 1; o.patience = 2; o.granularity = .adapter
        let r = try LearnedFusion.run(method: .atlas, problem: p, options: o, progress: nil)
        let c = r.coefficients
        let vals = c.lossCurve.compactMap(\.valLoss)
        XCTAssertEqual(c.finalValLoss!, vals.min()!, accuracy: 0)
        XCTAssertEqual(c.lossCurve[c.bestStep].valLoss, c.finalValLoss)
        // Stopped by patience (lr 0.5 overshoots): exactly two checks after the best, none better.
        XCTAssertLessThan(c.lossCurve.count, 31)
        XCTAssertEqual(c.lossCurve.count - 1 - c.bestStep, 2)
    }

    // MARK: CMA-ES

    func testCMAESMinimisesShiftedQuadraticAndRosenbrock() {
        let shift = [0.7, -1.3, 2.1, 0.2]
        let quad = { (x: [Double]) -> Double in
            x.indices.reduce(0.0) { $0 + Double($1 + 1) * (x[$1] - shift[$1]) * (x[$1] - shift[$1]) }
        }
        let q = CMAES.minimize(quad, x0: [0, 0, 0, 0], sigma: 1, budget: 800, seed: 1)
        XCTAssertEqual(q.evaluations, 800)
        XCTAssertLessThan(q.value, 1e-8)
        for i in 0..<4 { XCTAssertEqual(q.x[i], shift[i], accuracy: 1e-4) }

        let rosen = { (x: [Double]) -> Double in 100 * pow(x[1] - x[0] * x[0], 2) + pow(1 - x[0], 2) }
        let r = CMAES.minimize(rosen, x0: [-1.2, 1], sigma: 0.5, budget: 1500, seed: 2)
        XCTAssertLessThan(r.value, 1e-8)
        XCTAssertEqual(r.x[0], 1, accuracy: 1e-3)
        XCTAssertEqual(r.x[1], 1, accuracy: 1e-3)
    }

    func testCMAESIsReproducibleFromItsSeedAndRespectsBounds() {
        let f = { (x: [Double]) -> Double in x.reduce(0) { $0 + ($1 - 3) * ($1 - 3) } }
        var a: [[Double]] = [], b: [[Double]] = [], c: [[Double]] = []
        _ = CMAES.minimize(f, x0: [0, 0, 0], sigma: 0.5, budget: 60, seed: 7, bounds: -1.5...1.5) { _, x, _ in a.append(x) }
        _ = CMAES.minimize(f, x0: [0, 0, 0], sigma: 0.5, budget: 60, seed: 7, bounds: -1.5...1.5) { _, x, _ in b.append(x) }
        let r = CMAES.minimize(f, x0: [0, 0, 0], sigma: 0.5, budget: 60, seed: 8, bounds: -1.5...1.5) { _, x, _ in c.append(x) }
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
        XCTAssertEqual(a.count, 60)
        XCTAssertTrue(a.allSatisfy { $0.allSatisfy { (-1.5...1.5).contains($0) } })
        // The optimum is outside the box: the search ends on its face.
        for v in r.x { XCTAssertEqual(v, 1.5, accuracy: 1e-2) }
    }

    func testSymmetricEigen() {
        var rng = SeededRNG(seed: 3)
        let n = 5
        var a = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0...i { let v = rng.nextDouble() - 0.5; a[i * n + j] = v; a[j * n + i] = v } }
        let (vals, V) = CMAES.symmetricEigen(a, n: n)
        for k in 0..<n {
            for i in 0..<n {
                var av = 0.0
                for j in 0..<n { av += a[i * n + j] * V[j * n + k] }
                XCTAssertEqual(av, vals[k] * V[i * n + k], accuracy: 1e-12)
            }
            var dot = 0.0
            for i in 0..<n { dot += V[i * n + k] * V[i * n + (k + 1) % n] }
            XCTAssertEqual(dot, 0, accuracy: 1e-12)
        }
    }

    // MARK: LoraHub

    func testLoraHubLowersLossWithinBudgetInBothCompositions() throws {
        let model = TrainFixtures.model()
        let c = model.config
        // "factors" needs equal ranks and targets.
        let ads = (0..<3).map { TrainFixtures.randomLoRA(c, targets: [.q, .v], rank: 2, seed: 20 + UInt64($0), std: 0.3).adapter(name: "x\($0)") }
        let p = try Self.problem(model, adapters: ads)
        for comp in ["exact", "factors"] {
            var o = LearnedFusionOptions()
            o.evaluations = 24; o.lorahubComposition = comp; o.l1 = 0.05; o.seed = 3
            let r = try LearnedFusion.run(method: .lorahub, problem: p, options: o, progress: nil)
            let k = r.coefficients
            XCTAssertEqual(k.lossCurve.count, 24)
            // The search keeps its start if nothing beats it, so ≤ would hold by construction:
            // on this fixture it actually improves (measured: exact 6.63 -> 4.95, factors 5.55 -> 4.12).
            XCTAssertLessThan(k.finalTrainLoss, k.initialTrainLoss - 0.5, comp)
            XCTAssertLessThan(k.finalTrainLoss, k.lossCurve.map(\.trainLoss).max()!, comp)
            XCTAssertTrue(k.parameters.allSatisfy { abs($0) <= 1.5 })
            // Written adapter's loss is the reported one.
            let folded = try LoRAParameters(adapter: r.adapter, config: c)
            XCTAssertEqual(p.loss(p.train, lora: folded), k.finalTrainLoss, accuracy: 1e-4, comp)
            if comp == "factors" {
                // (Σ w B)(Σ w A): rank stays 2, and differs from the exact Σ w ΔW (cross terms).
                let name = "base_model.model.model.layers.0.self_attn.q_proj"
                XCTAssertEqual(r.adapter.modules[name]!.rank, 2)
                var exact = Matrix(rows: r.adapter.modules[name]!.outFeatures, cols: r.adapter.modules[name]!.inFeatures)
                for (i, a) in ads.enumerated() { exact.add(a.modules[name]!.delta(), scaledBy: Float(k.parameters[i])) }
                XCTAssertGreaterThan(r.adapter.modules[name]!.delta().maxAbsDifference(exact), 1e-3)
            }
        }
        // Unequal ranks cannot be composed as factors.
        var o = LearnedFusionOptions()
        o.lorahubComposition = "factors"
        let mixed = try Self.problem(model)
        XCTAssertThrowsError(try LearnedFusion.run(method: .lorahub, problem: mixed, options: o, progress: nil))
    }
}

/// The library's default start (`LearnedFusionOptions.defaults`) for every learned method, on
/// held-out sequences the fit never sees: each must end no worse than the `linear` mean of the
/// adapters (every coefficient 1/n), which is where it starts. The old default start at the
/// plain sum (coefficient 1) ended far above it on SmolLM2 (1.89 against 0.79 held-out).
final class LearnedFusionDefaultsTests: XCTestCase {
    /// Two tasks, each a pattern the tiny model can pick up: its train and held-out sequences
    /// come from the same rule with different tokens.
    static func task(_ t: Int, _ range: Range<Int>) -> [TrainingSequence] {
        range.map { i in
            let a = 3 + (i * 7 + t * 11) % 40, b = 3 + (i * 13 + t * 5) % 40
            return t == 0 ? TrainingSequence(prompt: [a, b, 45], answer: [a, b, 2])
                          : TrainingSequence(prompt: [a, b, 46], answer: [b, a, 2])
        }
    }

    func testDefaultsStartAtTheMeanAndEndNoWorseThanLinearOnHeldOut() throws {
        let model = TrainFixtures.model()
        let c = model.config
        let ads = (0..<3).map { TrainFixtures.randomLoRA(c, targets: [.q, .v, .down], rank: 2, seed: 40 + UInt64($0), std: 0.3)
            .adapter(name: "x\($0)") }
        let train = try LearnedProblem(adapters: ads, model: model, train: [Self.task(0, 0..<6), Self.task(1, 0..<6)],
                                       val: [], taskNames: ["t0", "t1"])
        let heldOut = try LearnedProblem(adapters: ads, model: model, train: [Self.task(0, 6..<14), Self.task(1, 6..<14)],
                                         val: [], taskNames: ["t0", "t1"])
        let third = [[Double]](repeating: [Double](repeating: 1.0 / 3, count: heldOut.blocks.count), count: 3)
        let linear = heldOut.loss(heldOut.train, lora: heldOut.parameters(third))
        for method in LearnedFusionMethod.allCases {
            let o = LearnedFusionOptions.defaults(for: method, adapters: 3)
            XCTAssertEqual(o.initialCoefficient, 1.0 / 3, accuracy: 1e-12)
            let r = try LearnedFusion.run(method: method, problem: train, options: o, progress: nil)
            // Every method starts at the linear mean: its first recorded train loss is linear's.
            XCTAssertEqual(r.coefficients.initialTrainLoss, train.loss(train.train, lora: train.parameters(third)),
                           accuracy: 1e-4, method.rawValue)
            let folded = try LoRAParameters(adapter: r.adapter, config: c)
            let held = heldOut.loss(heldOut.train, lora: folded)
            // Measured on this fixture: 4.81 / 4.73 / 4.85 against 5.04, so a real bar, not only ≤.
            XCTAssertLessThan(held, linear - 0.05, method.rawValue)
        }
        XCTAssertEqual(LearnedFusionOptions.defaults(for: .lorahub, adapters: 3).l1, 0.05)
        XCTAssertEqual(LearnedFusionOptions.defaults(for: .atlas, adapters: 3).l1, 0)
        XCTAssertEqual(LearnedFusionOptions.defaults(for: .catLearned, adapters: 3).catScale, 1)
    }
}
