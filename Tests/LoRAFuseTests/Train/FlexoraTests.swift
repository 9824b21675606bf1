import Foundation
import XCTest
@testable import LoRAFuse

/// Flexora (`train --variant flexora`): the α-weighted LoRA of the search stage and its gradients
/// against finite differences, the selection rule, the search's determinism, and the fine-tuning
/// stage on the selected layers only (`TrainingOptions.layers`, PEFT's layers_to_transform).
final class FlexoraTests: XCTestCase {
    private func options(steps: Int = 4, rank: Int = 3) -> TrainingOptions {
        var o = TrainingOptions()
        o.rank = rank; o.alpha = Double(2 * rank); o.steps = steps; o.batchSize = 2
        o.learningRate = 3e-2; o.seed = 4
        return o
    }

    private func data(_ n: Int, offset: Int = 0) -> [TrainingSequence] {
        (0..<n).map { i in TrainingSequence(prompt: [10 + i + offset, 20 + i, 1], answer: [20 + i, 10 + i + offset, 2]) }
    }

    private func weighted(_ c: LlamaConfig, logits: [Float]) -> FlexoraWeightedLoRA {
        let w = FlexoraWeightedLoRA(TrainFixtures.randomLoRA(c), layers: c.numHiddenLayers)
        w.logits = logits
        return w
    }

    /// α̂ = 0 gives α = 1 for every layer: the search starts exactly as plain LoRA.
    func testZeroLogitsArePlainLoRA() {
        for L in [2, 3, 30] {
            let f = FlexoraWeightedLoRA(LoRAParameters(modules: [], rank: 1, alpha: 1, rsLoRA: false, targets: []), layers: L)
            XCTAssertEqual(f.weights, [Float](repeating: 1, count: L), "L = \(L)")
        }
        let c = TrainFixtures.config()
        let w = weighted(c, logits: [0, 0])
        let plain = w.plainFactors, f = w.factors()
        for (a, b) in zip(plain.modules, f.modules) { XCTAssertEqual(a.B, b.B, a.name); XCTAssertEqual(a.A, b.A, a.name) }
        XCTAssertEqual(f.modules.count, TrainFixtures.randomLoRA(c).modules.count)
    }

    /// ∂L/∂α̂ against central differences of the real training engine's mean loss.
    func testLogitGradientsMatchFiniteDifferences() throws {
        let model = TrainFixtures.model()
        let engine = LlamaTrainingEngine(model: model)
        let w = weighted(model.config, logits: [0.4, -0.3])
        let batch = TrainFixtures.batch()
        let (_, g) = engine.meanLossAndGradients(batch, lora: w.factors())
        let analytic = w.logitGradients(g)
        // α = L·softmax(α̂) is shift-invariant: the gradient sums to 0.
        XCTAssertEqual(Double(analytic.reduce(0, +)), 0, accuracy: 1e-6 * Double(analytic.map(abs).max()!))
        func loss(_ l: [Float]) -> Double {
            let saved = w.logits
            w.logits = l
            defer { w.logits = saved }
            let r = engine.loss(batch, lora: w.factors())
            return r.nll / Double(r.tokens)
        }
        let eps: Float = 1e-2
        for j in analytic.indices {
            var up = w.logits, dn = w.logits
            up[j] += eps; dn[j] -= eps
            let fd = (loss(up) - loss(dn)) / Double(2 * eps)
            XCTAssertGreaterThan(abs(fd), 1e-4, "layer \(j): the check needs a visible derivative")
            XCTAssertEqual(Double(analytic[j]), fd, accuracy: 2e-2 * abs(fd) + 1e-5, "layer \(j)")
        }
    }

    /// ∂L/∂B (through α) and ∂L/∂A against central differences, on the largest coordinates.
    func testFactorGradientsMatchFiniteDifferences() throws {
        let model = TrainFixtures.model()
        let engine = LlamaTrainingEngine(model: model)
        let w = weighted(model.config, logits: [0.7, -0.5])
        let batch = TrainFixtures.batch()
        let (_, g) = engine.meanLossAndGradients(batch, lora: w.factors())
        let pg = w.parameterGradients(g)
        func loss() -> Double { let r = engine.loss(batch, lora: w.factors()); return r.nll / Double(r.tokens) }
        let eps: Float = 3e-3
        var checked = 0
        for name in pg.names where name.contains("layers.0.self_attn.q_proj") || name.contains("layers.1.mlp.down_proj") {
            let j = pg[name].indices.max { abs(pg[name][$0]) < abs(pg[name][$1]) }!
            let x = w.parameters[name][j]
            w.parameters[name][j] = x + eps; let up = loss()
            w.parameters[name][j] = x - eps; let dn = loss()
            w.parameters[name][j] = x
            let fd = (up - dn) / Double(2 * eps)
            XCTAssertEqual(Double(pg[name][j]), fd, accuracy: 3e-2 * abs(fd) + 1e-5, name)
            checked += 1
        }
        XCTAssertEqual(checked, 4)
    }

    func testSelectionRule() {
        XCTAssertEqual(FlexoraSelection.select(weights: [0.5, 1.2, 1.3, 0.99], keep: nil), [1, 2])
        XCTAssertEqual(FlexoraSelection.select(weights: [0.5, 1.2, 1.3, 0.99], keep: 1), [2])
        XCTAssertEqual(FlexoraSelection.select(weights: [0.5, 1.2, 1.3, 0.99], keep: 3), [1, 2, 3])
        // Nothing above the uniform share (a search that learned nothing): the largest is kept.
        XCTAssertEqual(FlexoraSelection.select(weights: [1, 1, 1], keep: nil), [0])
        XCTAssertEqual(FlexoraSelection.select(weights: [0.9, 1, 1], keep: 2), [1, 2])
    }

    /// The search moves α̂ (the shares still sum to L), is reproducible from the seed, and the
    /// fine-tuning stage trains and writes only the selected layers.
    func testSearchThenFineTuneOnSelectedLayers() throws {
        let model = TrainFixtures.model()
        let train = data(6), val = data(4, offset: 3)
        let fo = FlexoraOptions(searchSteps: 6, learningRate: 0.2)
        let a = try FlexoraSearch(model: model, train: train, val: val, training: options(), flexora: fo)
        let sel = a.run()
        let b = try FlexoraSearch(model: model, train: train, val: val, training: options(), flexora: fo)
        XCTAssertEqual(b.run(), sel)
        XCTAssertEqual(sel.searchSteps, 6)
        XCTAssertEqual(sel.trainLoss.count, 6); XCTAssertEqual(sel.valLoss.count, 6)
        XCTAssertEqual(sel.weights.reduce(0, +), 2, accuracy: 1e-5)
        XCTAssertGreaterThan(abs(sel.logits[0] - sel.logits[1]), 1e-3, "α̂ did not move: \(sel.logits)")
        XCTAssertEqual(sel.selected, [sel.weights[0] > sel.weights[1] ? 0 : 1])
        let json = try sel.json()
        XCTAssertEqual(try JSONDecoder().decode(FlexoraSelection.self, from: Data(json.utf8)), sel)
        XCTAssertTrue(sel.chartSVG().contains("data-label=\"layer \(sel.selected[0])\""))

        var o = options()
        o.layers = sel.selected
        let t = try LoRATrainer(model: model, train: train, val: val, options: o)
        XCTAssertEqual(Set(t.params.modules.map(\.layer)), Set(sel.selected))
        XCTAssertEqual(t.params.modules.count, 7)
        try t.run()
        let ad = t.adapter(name: "flexora")
        XCTAssertEqual(ad.metadata.layersToTransform, sel.selected)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lf-flexora-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try PEFTAdapter.writeFiles(ad, into: dir, dtype: .f32, path: dir.path)
        let back = try PEFTAdapter.read(directory: dir.path)
        XCTAssertEqual(back.metadata.layersToTransform, sel.selected)
        XCTAssertEqual(Set(back.moduleNames), Set(ad.moduleNames))
        // The inference engine applies it as the trainer does.
        let e = LlamaTrainingEngine(model: model)
        let viaTrainer = e.meanLoss(val, lora: t.params)
        let viaFile = e.meanLoss(val, lora: try LoRAParameters(adapter: back, config: model.config))
        XCTAssertEqual(viaTrainer, viaFile, accuracy: 1e-9)
    }

    func testBadOptionsAreRefused() throws {
        let model = TrainFixtures.model()
        var o = options()
        o.layers = [1, 2]
        XCTAssertThrowsError(try LoRATrainer(model: model, train: data(2), options: o)) {
            XCTAssertTrue("\($0)".contains("layer 2 is beyond the model's 2 layers"), "\($0)")
        }
        o.layers = [1, 1]
        XCTAssertThrowsError(try LoRATrainer(model: model, train: data(2), options: o)) { XCTAssertTrue("\($0)".contains("twice"), "\($0)") }
        XCTAssertThrowsError(try FlexoraSearch(model: model, train: data(2), val: [], training: options(),
                                               flexora: FlexoraOptions(searchSteps: 2))) {
            XCTAssertTrue("\($0)".contains("give --val"), "\($0)")
        }
        XCTAssertThrowsError(try FlexoraSearch(model: model, train: data(2), val: data(2), training: options(),
                                               flexora: FlexoraOptions(searchSteps: 2, keep: 3))) {
            XCTAssertTrue("\($0)".contains("flexora-layers: must be in 1…2"), "\($0)")
        }
    }
}
