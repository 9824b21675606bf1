import Foundation
import XCTest
@testable import LoRAFuse

/// NOLA (`train --variant nola`): the factors as fixed bases mixed by coefficients, their adjoint,
/// training through the shared trainer, the folder format and its checks.
final class NOLATests: XCTestCase {
    private func options(steps: Int, rank: Int = 4) -> TrainingOptions {
        var o = TrainingOptions()
        o.rank = rank; o.alpha = Double(2 * rank); o.steps = steps; o.batchSize = 2; o.gradAccum = 2
        o.learningRate = 3e-2; o.warmup = 2; o.seed = 4
        return o
    }

    private func data() -> [TrainingSequence] {
        (0..<6).map { i in TrainingSequence(prompt: [10 + i, 20 + i, 1], answer: [20 + i, 10 + i, 2]) }
    }

    private func randomCoefficients(_ v: NOLAVariant, seed: UInt64 = 3, std: Float = 0.5) {
        var rng = SeededRNG(seed: seed)
        for n in v.parameters.names { v.parameters[n] = v.parameters[n].map { _ in rng.nextNormal() * std } }
    }

    /// With every coefficient 0 the factors are PEFT's LoRA initialisation (same A, B = 0).
    func testZeroCoefficientsAreLoRAsInitialisation() throws {
        let c = TrainFixtures.config()
        let o = options(steps: 1)
        let v = try NOLAVariant(model: c, options: o, basisA: 5, basisB: 7, baseModel: nil)
        let lora = LoRAParameters.initialize(config: c, rank: o.rank, alpha: o.alpha, targets: o.targets, seed: o.seed)
        let f = v.factors()
        XCTAssertEqual(f.modules.map(\.name), lora.modules.map(\.name))
        for (a, b) in zip(f.modules, lora.modules) {
            XCTAssertEqual(a.A, b.A, a.name)
            XCTAssertTrue(a.B.allSatisfy { $0 == 0 }, a.name)
            XCTAssertEqual(a.scale, b.scale)
        }
        XCTAssertEqual(v.parameters.count, c.numHiddenLayers * 7 * (5 + 7))
        XCTAssertEqual(v.storedBytes, v.parameters.count * 4)
    }

    /// `parameterGradients` is the adjoint of the (affine) map coefficients → factors:
    /// ⟨factors(p + δ) − factors(p), G⟩ = ⟨δ, pullback(G)⟩ for any G, δ.
    func testPullbackIsTheAdjointOfTheFactors() throws {
        let c = TrainFixtures.config()
        let v = try NOLAVariant(model: c, options: options(steps: 1), basisA: 6, basisB: 4, baseModel: nil)
        randomCoefficients(v)
        let f0 = v.factors()
        var rng = SeededRNG(seed: 11)
        var G = LoRAGradients(zerosLike: f0)
        for i in G.dA.indices {
            G.dA[i] = G.dA[i].map { _ in rng.nextNormal() }
            G.dB[i] = G.dB[i].map { _ in rng.nextNormal() }
        }
        let pulled = v.parameterGradients(G)
        var delta = v.parameters.zeros()
        for n in delta.names { delta[n] = delta[n].map { _ in rng.nextNormal() } }
        v.parameters.add(delta, scaledBy: 1)
        let f1 = v.factors()
        var lhs = 0.0, rhs = 0.0
        for i in f0.modules.indices {
            for j in f0.modules[i].A.indices { lhs += Double(f1.modules[i].A[j] - f0.modules[i].A[j]) * Double(G.dA[i][j]) }
            for j in f0.modules[i].B.indices { lhs += Double(f1.modules[i].B[j] - f0.modules[i].B[j]) * Double(G.dB[i][j]) }
        }
        for n in delta.names { for (a, b) in zip(delta[n], pulled[n]) { rhs += Double(a) * Double(b) } }
        XCTAssertEqual(lhs, rhs, accuracy: 1e-3 * abs(rhs))
    }

    /// Central finite differences of the model's mean loss in coefficient space, on the largest
    /// gradient coordinates of every module (through the real training engine).
    func testCoefficientGradientsMatchFiniteDifferences() throws {
        let model = TrainFixtures.model()
        let engine = LlamaTrainingEngine(model: model)
        let v = try NOLAVariant(model: model.config, options: options(steps: 1, rank: 3), basisA: 4, basisB: 4, baseModel: nil)
        randomCoefficients(v, std: 0.8)
        let batch = TrainFixtures.batch()
        let (_, grads) = engine.meanLossAndGradients(batch, lora: v.factors())
        let g = v.parameterGradients(grads)
        func loss() -> Double { let r = engine.loss(batch, lora: v.factors()); return r.nll / Double(r.tokens) }
        let eps: Float = 3e-3
        var checked = 0
        for n in g.names {
            // One coordinate per module: the largest of each layer's row of the (L, k) matrix.
            let k = g.shapes[n]![1]
            for l in 0..<g.shapes[n]![0] {
                let j = (l * k..<(l + 1) * k).max { abs(g[n][$0]) < abs(g[n][$1]) }!
                let orig = v.parameters[n][j]
                v.parameters[n][j] = orig + eps; let lp = loss()
                v.parameters[n][j] = orig - eps; let lm = loss()
                v.parameters[n][j] = orig
                let fd = (lp - lm) / Double(2 * eps)
                XCTAssertLessThanOrEqual(abs(fd - Double(g[n][j])), 3e-2 * abs(Double(g[n][j])) + 3e-4, "\(n)[\(j)]: fd \(fd) vs \(g[n][j])")
                checked += 1
            }
        }
        XCTAssertEqual(checked, model.config.numHiddenLayers * 7 * 2)
    }

    /// Training lowers the loss; the written folder is read by `AdapterIO` as the adapter the
    /// trainer ended with (same loss through the inference engine), and converts to PEFT.
    func testTrainWriteReadAndConvert() throws {
        let model = TrainFixtures.model()
        let o = options(steps: 25)
        let v = try NOLAVariant(model: model.config, options: o, basisA: 16, basisB: 16, baseModel: "tiny")
        let t = try LoRATrainer(model: model, train: data(), val: data(), options: o, variant: v)
        XCTAssertEqual(t.trainableCount, model.config.numHiddenLayers * 7 * 32)
        let before = t.validationLoss()!
        try t.run()
        let after = t.log.last!.valLoss!
        XCTAssertLessThan(after, 0.7 * before, "loss \(before) → \(after)")

        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try v.writeFiles(into: URL(fileURLWithPath: dir), name: "n", baseModel: nil, path: dir)
        XCTAssertEqual(try AdapterIO.detect(path: dir), .nola)
        let back = try AdapterIO.read(path: dir)
        XCTAssertEqual(back.metadata.rank, 4)
        XCTAssertEqual(back.metadata.baseModel, "tiny")
        let adapted = try model.with([(back, 1)])
        var nll = 0.0, n = 0
        for s in data() {
            let logits = try adapted.logits(tokens: s.tokens)
            let r = Evaluator.negativeLogLikelihoods(logits, rows: 2..<5, targets: Array(s.targets[2...]))
            nll += r.reduce(0, +); n += r.count
        }
        XCTAssertEqual(nll / Double(n), after, accuracy: 1e-4)
        // Far fewer bytes than the LoRA it stands for, and convertible to one.
        let stored = try FileManager.default.contentsOfDirectory(atPath: dir).reduce(0) {
            $0 + ((try FileManager.default.attributesOfItem(atPath: dir + "/" + $1)[.size] as? Int) ?? 0)
        }
        XCTAssertLessThan(v.storedBytes * 3, back.parameterCount * 4)
        XCTAssertGreaterThan(stored, v.storedBytes)
        XCTAssertLessThan(stored, v.storedBytes + 4096, "the header and config stay small")
        let peft = dir + "-peft"
        defer { try? FileManager.default.removeItem(atPath: peft) }
        let s = try AdapterIO.convert(input: dir, output: peft, format: .peft)
        XCTAssertEqual(s.inputFormat, .nola)
        let p = try PEFTAdapter.read(directory: peft)
        for (name, m) in back.modules { XCTAssertEqual(p.modules[name]!.B.data, m.B.data, name) }
        XCTAssertThrowsError(try AdapterIO.convert(input: peft, output: dir + "-x", format: .nola)) { e in
            XCTAssertTrue("\(e)".contains("cannot be written as nola"), "\(e)")
        }
    }

    /// Resuming a NOLA run from a checkpoint gives the uninterrupted run's coefficients; a plain
    /// LoRA run refuses the NOLA checkpoint by naming the variant.
    func testResumeEqualsUninterruptedRun() throws {
        let model = TrainFixtures.model()
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = options(steps: 5)
        o.saveEvery = 2; o.keep = 1; o.weightDecay = 0.01
        let make = { try NOLAVariant(model: model.config, options: o, basisA: 8, basisB: 8, baseModel: nil) }
        let full = try LoRATrainer(model: model, train: data(), options: o, variant: try make())
        try full.run(checkpointDir: dir)
        XCTAssertEqual(LoRATrainer.checkpointSteps(in: dir), [4])
        let resumed = try LoRATrainer(model: model, train: data(), options: o, variant: try make())
        try resumed.resume(from: dir + "/checkpoint-4")
        try resumed.run()
        XCTAssertEqual(resumed.log.map(\.trainLoss), full.log.map(\.trainLoss))
        XCTAssertEqual(resumed.variant!.parameters, full.variant!.parameters)
        let plain = try LoRATrainer(model: model, train: data(), options: o)
        XCTAssertThrowsError(try plain.resume(from: dir + "/checkpoint-4")) { e in
            XCTAssertTrue("\(e)".contains("variant: expected lora, found nola"), "\(e)")
        }
        XCTAssertThrowsError(try resumed.warmStart(from: plain.adapter())) { e in XCTAssertTrue("\(e)".contains("init-from"), "\(e)") }
    }

    /// Every field and tensor of a NOLA folder is checked before a basis is generated; the error
    /// names the file and the first bad field.
    func testBadFoldersNameTheField() throws {
        let c = TrainFixtures.config()
        let v = try NOLAVariant(model: c, options: options(steps: 1), basisA: 3, basisB: 3, baseModel: nil)
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try v.writeFiles(into: URL(fileURLWithPath: dir), name: "n", baseModel: nil, path: dir)
        // A routed model referencing this folder notices when its coefficients change.
        let d0 = try RoutedModel.digest(adapterAt: dir)
        v.parameters[v.parameters.names[0]][0] = 0.5
        try v.writeFiles(into: URL(fileURLWithPath: dir), name: "n", baseModel: nil, path: dir)
        XCTAssertNotEqual(try RoutedModel.digest(adapterAt: dir), d0)
        let cfgPath = dir + "/" + NOLAVariant.configFile
        let good = try String(contentsOfFile: cfgPath, encoding: .utf8)
        func expect(_ edit: (String) -> String, _ needle: String, line: UInt = #line) throws {
            try edit(good).write(toFile: cfgPath, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try AdapterIO.read(path: dir), line: line) { e in
                XCTAssertTrue("\(e)".contains(needle), "\(e)", line: line)
            }
        }
        try expect({ $0.replacingOccurrences(of: "\"num_basis_A\" : 3", with: "\"num_basis_A\" : 0") }, "num_basis_A: expected 1…65536, found 0")
        try expect({ $0.replacingOccurrences(of: "\"num_basis_A\" : 3", with: "\"num_basis_A\" : 60000")
                        .replacingOccurrences(of: "\"rank\" : 4", with: "\"rank\" : 4096") }, "at most 2³⁰ values")
        try expect({ $0.replacingOccurrences(of: "\"num_basis_B\" : 3", with: "\"num_basis_B\" : 4") }, "shape [2, 3], expected [num_layers 2, num_basis_B 4]")
        try expect({ $0.replacingOccurrences(of: "\"num_layers\" : 2", with: "\"num_layers\" : 1") }, "shape [2, 3], expected [num_layers 1, num_basis_A 3]")
        try expect({ $0.replacingOccurrences(of: "\"q_proj\",", with: "\"qq_proj\",") }, "target_modules")
        try expect({ $0.replacingOccurrences(of: "lorafuse-nola-1", with: "lorafuse-nola-9") }, "format: expected lorafuse-nola-1")
        try expect({ $0.replacingOccurrences(of: "\"rank\" : 4", with: "\"rank\" : \"4\"") }, "rank")
        try good.write(toFile: cfgPath, atomically: true, encoding: .utf8)
        XCTAssertNoThrow(try AdapterIO.read(path: dir))
        try FileManager.default.removeItem(atPath: dir + "/" + NOLAVariant.weightsFile)
        XCTAssertThrowsError(try AdapterIO.read(path: dir)) { e in XCTAssertTrue("\(e)".contains("missing"), "\(e)") }
        // Coefficients given to the initialiser are checked by module too.
        var bad = v.parameters
        bad["q_proj.nola_A"] = [1, .nan] + [Float](repeating: 0, count: bad["q_proj.nola_A"].count - 2)
        XCTAssertThrowsError(try NOLAVariant(config: v.config, coefficients: bad, path: "p")) { e in
            XCTAssertTrue("\(e)".contains("value 1 is nan"), "\(e)")
        }
    }
}
