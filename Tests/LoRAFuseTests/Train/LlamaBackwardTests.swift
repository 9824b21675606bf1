import Foundation
import XCTest
@testable import LoRAFuse

/// Tiny random models and batches shared by the training tests.
enum TrainFixtures {
    /// head_dim 8 ≠ hidden/heads so code that assumes equality fails; GQA (4 heads, 2 kv heads).
    static func config(qwen: Bool = false) -> LlamaConfig {
        LlamaConfig(modelType: qwen ? "qwen2" : "llama", hiddenSize: 24, intermediateSize: 40, numHiddenLayers: 2,
                    numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 8, vocabSize: 50, rmsNormEps: 1e-5,
                    ropeTheta: 10000, tieWordEmbeddings: qwen, attentionBias: qwen)
    }

    static func model(qwen: Bool = false, seed: UInt64 = 5) -> LlamaModel {
        let c = config(qwen: qwen)
        return LlamaModel(config: c, weights: .random(c, seed: seed, std: 0.3), tokenizer: ModelFixtures.byteTokenizer(50))
    }

    /// LoRA with random A and nonzero random B, so every gradient path is exercised.
    static func randomLoRA(_ c: LlamaConfig, targets: [Projection] = Projection.allCases, rank: Int = 3,
                           seed: UInt64 = 9, std: Float = 0.3) -> LoRAParameters {
        var p = LoRAParameters.initialize(config: c, rank: rank, alpha: Double(2 * rank), targets: targets, seed: seed)
        var rng = SeededRNG(seed: seed &+ 1)
        for i in p.modules.indices {
            p.modules[i].A = p.modules[i].A.map { _ in rng.nextNormal() * std }
            p.modules[i].B = p.modules[i].B.map { _ in rng.nextNormal() * std }
        }
        return p
    }

    /// A short, fast run's options for the variants' tests (α = 2r, lr 3e-2).
    static func variantOptions(steps: Int, rank: Int = 6, seed: UInt64 = 4) -> TrainingOptions {
        var o = TrainingOptions()
        o.rank = rank; o.alpha = Double(2 * rank); o.steps = steps; o.batchSize = 2; o.gradAccum = 2
        o.learningRate = 3e-2; o.warmup = 2; o.seed = seed
        return o
    }

    /// Every parameter of `v` drawn N(0, std²) from `seed`: B ≠ 0 and routers off zero, so every
    /// gradient path of a variant is exercised.
    static func randomize(_ v: any TrainingVariant, seed: UInt64 = 3, std: Float = 0.5) {
        var rng = SeededRNG(seed: seed)
        for n in v.parameters.names { v.parameters[n] = v.parameters[n].map { _ in rng.nextNormal() * std } }
    }

    /// `variantOptions` on q, v and the FFN: the mixtures' experts and an attention module.
    static func mixtureOptions(steps: Int, rank: Int = 2) -> TrainingOptions {
        var o = variantOptions(steps: steps, rank: rank)
        o.targets = [.q, .v, .gate, .up, .down]
        return o
    }

    /// Six copy-like sequences (prompt a, b, 1 → answer b + shift, a, 2) a variant learns quickly.
    static func copyData(shift: Int = 0) -> [TrainingSequence] {
        (0..<6).map { i in TrainingSequence(prompt: [10 + i, 20 + i, 1], answer: [20 + i + shift, 10 + i, 2]) }
    }

    /// Mean answer-token loss of `seqs` through the inference engine with `adapter` applied
    /// (unmerged): what the training engine's `loss` must equal.
    static func inferenceLoss(_ model: LlamaModel, _ adapter: LoRAAdapter, _ seqs: [TrainingSequence]) throws -> Double {
        let adapted = try model.with([(adapter, 1)])
        var nll = 0.0, n = 0
        for s in seqs {
            let logits = try adapted.logits(tokens: s.tokens)
            let rows = s.targets.indices.filter { s.targets[$0] >= 0 }
            let r = Evaluator.negativeLogLikelihoods(logits, rows: rows.first!..<(rows.last! + 1), targets: rows.map { s.targets[$0] })
            nll += r.reduce(0, +); n += r.count
        }
        return nll / Double(n)
    }

    /// Trains `make()` for `options.steps` steps on `data` with a checkpoint at `options.saveEvery`,
    /// checks the final validation loss is below 0.7 × the first step's, then resumes a second
    /// `make()` from that checkpoint and checks it ends with the same values (and auxiliary state).
    /// Returns the first variant and its final validation loss.
    static func trainAndResume<V: TrainingVariant>(_ make: () throws -> V, model: LlamaModel, options o: TrainingOptions,
                                                   data: [TrainingSequence], file: StaticString = #filePath,
                                                   line: UInt = #line) throws -> (V, Double) {
        let ck = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: ck) }
        let v = try make()
        let t = try LoRATrainer(model: model, train: data, val: data, options: o, variant: v)
        try t.run(checkpointDir: ck)
        let first = t.log.first!.trainLoss, after = t.log.last!.valLoss!
        XCTAssertLessThan(after, 0.7 * first, "loss \(first) → \(after)", file: file, line: line)
        let again = try make()
        let t2 = try LoRATrainer(model: model, train: data, val: data, options: o, variant: again)
        try t2.resume(from: ck + "/checkpoint-\(o.saveEvery)")
        try t2.run()
        XCTAssertEqual(again.parameters, v.parameters, "resumed run", file: file, line: line)
        XCTAssertEqual(again.auxiliaryState, v.auxiliaryState, "resumed run", file: file, line: line)
        return (v, after)
    }

    /// Writes `v`'s files into a new folder (the caller removes it) and reads it back, checking
    /// every module's factors, scale and gate against `expected` (the variant's adapter).
    static func writeAndRead(_ v: any TrainingVariant, expected: LoRAAdapter, file: StaticString = #filePath,
                             line: UInt = #line) throws -> (dir: String, back: LoRAAdapter) {
        let dir = ModelFixtures.tempDir()
        try v.writeFiles(into: URL(fileURLWithPath: dir), name: expected.name, baseModel: nil, path: dir)
        let back = try AdapterIO.read(path: dir)
        XCTAssertEqual(back.modules.count, expected.modules.count, file: file, line: line)
        for (n, m) in expected.modules {
            XCTAssertEqual(back.modules[n]?.rankGate, m.rankGate, n, file: file, line: line)
            XCTAssertEqual(back.modules[n]?.A, m.A, n, file: file, line: line)
            XCTAssertEqual(back.modules[n]?.B, m.B, n, file: file, line: line)
            XCTAssertEqual(back.modules[n]?.scale ?? .nan, m.scale, accuracy: 1e-6, n, file: file, line: line)
        }
        return (dir, back)
    }

    /// For each (from, to, needle): the folder's adapter_config.json with `from` replaced by `to`
    /// (each edit on the original text) is refused by the reader with a message containing `needle`.
    static func assertConfigEditsRefused(_ dir: String, _ edits: [(String, String, String)], file: StaticString = #filePath,
                                         line: UInt = #line) throws {
        let cfgPath = dir + "/adapter_config.json"
        let cfg = try String(contentsOfFile: cfgPath, encoding: .utf8)
        for (from, to, needle) in edits {
            XCTAssertTrue(cfg.contains(from), "\(from) in \(cfg)", file: file, line: line)
            try cfg.replacingOccurrences(of: from, with: to).write(toFile: cfgPath, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try AdapterIO.read(path: dir), file: file, line: line) { e in
                XCTAssertTrue("\(e)".contains(needle), "\(from) → \(to): \(e)", file: file, line: line)
            }
        }
        try cfg.write(toFile: cfgPath, atomically: true, encoding: .utf8)
    }

    /// Central differences of a variant's mean loss on each parameter's largest gradient
    /// coordinate. The loss of a top-k variant is piecewise smooth (moving one layer moves the
    /// next layers' inputs, and a token's choice may flip inside ±eps): such a coordinate shows
    /// as a kink — the one-sided slopes disagree — and is skipped; at least three quarters must
    /// be checked. Returns the checked count.
    @discardableResult
    static func checkVariantGradients(_ v: any TrainingVariant, model: LlamaModel, batch: [TrainingSequence],
                                      dropout: Float = 0, file: StaticString = #filePath, line: UInt = #line) -> Int {
        let engine = LlamaTrainingEngine(model: model)
        func drop() -> LlamaTrainingEngine.Dropout? { dropout > 0 ? .init(p: dropout, rng: SeededRNG(seed: 77)) : nil }
        let g = v.parameterGradients(engine.meanLossAndGradients(batch, lora: v.factors(), dropout: drop()).grads)
        func loss() -> Double { engine.meanLossAndGradients(batch, lora: v.factors(), dropout: drop()).loss }
        let eps: Float = 1e-3
        let l0 = loss()
        var checked = 0, kinks = 0
        for n in g.names {
            let j = g[n].indices.max { abs(g[n][$0]) < abs(g[n][$1]) }!
            let orig = v.parameters[n][j]
            v.parameters[n][j] = orig + eps; let lp = loss()
            v.parameters[n][j] = orig - eps; let lm = loss()
            v.parameters[n][j] = orig
            let right = (lp - l0) / Double(eps), left = (l0 - lm) / Double(eps)
            if abs(right - left) > 0.2 * max(abs(right), abs(left)) + 1e-2 { kinks += 1; continue }
            let fd = (lp - lm) / Double(2 * eps)
            XCTAssertLessThanOrEqual(abs(fd - Double(g[n][j])), 3e-2 * abs(Double(g[n][j])) + 1e-3,
                                     "dropout \(dropout) \(n)[\(j)]: fd \(fd) vs \(g[n][j])", file: file, line: line)
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, g.names.count * 3 / 4, "\(kinks) kinks", file: file, line: line)
        return checked
    }

    /// Two sequences of different lengths; the first positions carry no loss.
    static func batch(vocab: Int = 50) -> [TrainingSequence] {
        [TrainingSequence(prompt: [3, 17, 8, 41, 22], answer: [9, 30, 12, 2]),
         TrainingSequence(prompt: [5, 6, 44], answer: [19, 2])]
    }
}

final class LlamaBackwardTests: XCTestCase {
    /// The training forward must give the same loss as the inference engine with the same adapter.
    func testTrainingForwardMatchesInference() throws {
        for qwen in [false, true] {
            let model = TrainFixtures.model(qwen: qwen)
            let lora = TrainFixtures.randomLoRA(model.config)
            let adapted = try model.with([(lora.adapter(), 1)])
            var nll = 0.0, n = 0
            for s in TrainFixtures.batch() {
                let logits = try adapted.logits(tokens: s.tokens)
                let rows = s.targets.indices.filter { s.targets[$0] >= 0 }
                let v = Evaluator.negativeLogLikelihoods(logits, rows: rows.first!..<(rows.last! + 1), targets: rows.map { s.targets[$0] })
                nll += v.reduce(0, +); n += v.count
            }
            let engine = LlamaTrainingEngine(model: model)
            let r = engine.loss(TrainFixtures.batch(), lora: lora)
            XCTAssertEqual(r.tokens, n)
            XCTAssertEqual(r.nll / Double(r.tokens), nll / Double(n), accuracy: 1e-5, "qwen=\(qwen)")
        }
    }

    /// Central finite differences of the mean loss on the largest gradient coordinates of every
    /// module's A and B. Float32 forward: eps = 3e-3 puts the rounding noise of the loss difference
    /// (~1e-6 / 6e-3) near 2e-4, so the check is |fd − g| ≤ 3e-2·|g| + 3e-4.
    private func checkFiniteDifferences(qwen: Bool, targets: [Projection], dropout: Float = 0,
                                        file: StaticString = #filePath, line: UInt = #line) {
        let model = TrainFixtures.model(qwen: qwen)
        let engine = LlamaTrainingEngine(model: model)
        var lora = TrainFixtures.randomLoRA(model.config, targets: targets)
        let batch = TrainFixtures.batch()
        func drop() -> LlamaTrainingEngine.Dropout? {
            dropout > 0 ? .init(p: dropout, rng: SeededRNG(seed: 77)) : nil
        }
        let (_, grads) = engine.meanLossAndGradients(batch, lora: lora, dropout: drop())
        func loss() -> Double {
            let n = batch.reduce(0) { $0 + $1.lossTokens }
            var g = LoRAGradients(zerosLike: lora)
            // gradScale 0: forward with the same dropout masks, gradient discarded.
            return engine.accumulateGradients(batch, lora: lora, into: &g, gradScale: 0, dropout: drop()).nll / Double(n)
        }
        let eps: Float = 3e-3
        var checked = 0, worst = 0.0
        for mi in lora.modules.indices {
            for isA in [true, false] {
                let g = isA ? grads.dA[mi] : grads.dB[mi]
                let top = g.indices.sorted { abs(g[$0]) > abs(g[$1]) }.prefix(2)
                for j in top {
                    let orig = isA ? lora.modules[mi].A[j] : lora.modules[mi].B[j]
                    func set(_ v: Float) { if isA { lora.modules[mi].A[j] = v } else { lora.modules[mi].B[j] = v } }
                    set(orig + eps); let lp = loss()
                    set(orig - eps); let lm = loss()
                    set(orig)
                    let fd = (lp - lm) / Double(2 * eps)
                    let err = abs(fd - Double(g[j]))
                    worst = max(worst, err / (abs(Double(g[j])) + 1e-2))
                    XCTAssertLessThanOrEqual(err, 3e-2 * abs(Double(g[j])) + 3e-4,
                                             "\(lora.modules[mi].name) \(isA ? "A" : "B")[\(j)]: fd \(fd) vs backward \(g[j])",
                                             file: file, line: line)
                    checked += 1
                }
            }
        }
        XCTAssertEqual(checked, lora.modules.count * 4, file: file, line: line)
        print("finite differences (qwen=\(qwen), dropout=\(dropout)): \(checked) coordinates, worst relative error \(worst)")
    }

    func testFiniteDifferencesAllTargetsLlama() { checkFiniteDifferences(qwen: false, targets: Projection.allCases) }
    /// Tied embeddings and q/k/v biases (Qwen 2 layout).
    func testFiniteDifferencesAllTargetsQwen() { checkFiniteDifferences(qwen: true, targets: Projection.allCases) }
    func testFiniteDifferencesSubsetWithDropout() { checkFiniteDifferences(qwen: false, targets: [.v, .down], dropout: 0.3) }

    /// Gradients of a batch equal the token-weighted sum of per-sequence gradients (packing is exact).
    func testPackedBatchEqualsSumOfSequences() {
        let model = TrainFixtures.model()
        let engine = LlamaTrainingEngine(model: model)
        let lora = TrainFixtures.randomLoRA(model.config)
        let batch = TrainFixtures.batch()
        var packed = LoRAGradients(zerosLike: lora)
        let r = engine.accumulateGradients(batch, lora: lora, into: &packed, gradScale: 1)
        var separate = LoRAGradients(zerosLike: lora)
        var nll = 0.0
        for s in batch { nll += engine.accumulateGradients([s], lora: lora, into: &separate, gradScale: 1).nll }
        XCTAssertEqual(r.nll, nll, accuracy: 1e-4)
        var worst: Float = 0
        for i in lora.modules.indices {
            for (a, b) in zip(packed.dA[i] + packed.dB[i], separate.dA[i] + separate.dB[i]) { worst = max(worst, abs(a - b)) }
        }
        XCTAssertLessThan(worst, 1e-4)
    }

    /// Batches long enough that attention (forward and backward) is spread over two
    /// threads give the same loss and gradients as one thread (the finite-difference tests run the
    /// single-threaded path).
    func testThreadedPassesMatchSingleThreaded() {
        let model = TrainFixtures.model()
        let engine = LlamaTrainingEngine(model: model)
        let lora = TrainFixtures.randomLoRA(model.config)
        var rng = SeededRNG(seed: 21)
        func ids(_ n: Int) -> [Int] { (0..<n).map { _ in Int(rng.next() % 50) } }
        let batch = [TrainingSequence(prompt: ids(60), answer: ids(5)), TrainingSequence(prompt: ids(48), answer: ids(7)),
                     TrainingSequence(prompt: ids(30), answer: ids(3))]
        func run(_ threads: Int) -> (Double, LoRAGradients) {
            BLAS.withThreadCount(threads) {
                XCTAssertEqual(Parallel.computeThreads, threads)
                var g = LoRAGradients(zerosLike: lora)
                let r = engine.accumulateGradients(batch, lora: lora, into: &g, gradScale: 0.01)
                return (r.nll, g)
            }
        }
        let (nll1, g1) = run(1), (nll2, g2) = run(2)
        XCTAssertEqual(nll1, nll2, accuracy: 1e-9 * abs(nll1))
        var worst: Float = 0, scale: Float = 0
        for i in lora.modules.indices {
            for (a, b) in zip(g1.dA[i] + g1.dB[i], g2.dA[i] + g2.dB[i]) { worst = max(worst, abs(a - b)); scale = max(scale, abs(a)) }
        }
        XCTAssertGreaterThan(scale, 0)
        XCTAssertLessThan(worst, 1e-6 * scale)
    }

    /// With B = 0 (PEFT's init) dA is exactly zero and dB is not.
    func testZeroBInitGivesZeroDA() {
        let model = TrainFixtures.model()
        let lora = LoRAParameters.initialize(config: model.config, rank: 4, alpha: 8, targets: [.q, .up], seed: 1)
        let (_, g) = LlamaTrainingEngine(model: model).meanLossAndGradients(TrainFixtures.batch(), lora: lora)
        XCTAssertTrue(g.dA.allSatisfy { $0.allSatisfy { $0 == 0 } })
        XCTAssertTrue(g.dB.allSatisfy { $0.contains { $0 != 0 } })
        // Kaiming-uniform(a=√5) bound 1/√in.
        let bound = 1 / Float(model.config.hiddenSize).squareRoot()
        XCTAssertTrue(lora.modules[0].A.allSatisfy { abs($0) <= bound })
        XCTAssertGreaterThan(lora.modules[0].A.map(abs).max()!, 0.8 * bound)
    }
}
