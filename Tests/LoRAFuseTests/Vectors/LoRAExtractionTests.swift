import XCTest
@testable import LoRAFuse

final class LoRAExtractionTests: VectorTestCase {
    /// Orthonormal columns (rows × k) from a QR of a random matrix.
    func orthonormal(_ rows: Int, _ k: Int, seed: UInt64) throws -> Matrix {
        var rng = SeededRNG(seed: seed)
        return try Linalg.qr(Matrix.randomNormal(rows, k, rng: &rng)).Q
    }

    /// τ = U diag(s) Vᵀ with known singular values.
    func spectrum(_ out: Int, _ inn: Int, _ s: [Float], seed: UInt64) throws -> Matrix {
        let u = try orthonormal(out, s.count, seed: seed)
        let v = try orthonormal(inn, s.count, seed: seed + 1)
        return u.scalingColumns(by: s).matmul(v, transposeOther: true)
    }

    func pair(_ deltas: [String: Matrix], seed: UInt64 = 1) throws -> (String, String) {
        var base: [SafetensorsTensor] = [], tuned: [SafetensorsTensor] = []
        for (k, (n, d)) in deltas.sorted(by: { $0.key < $1.key }).enumerated() {
            let w = Matrix(rows: d.rows, cols: d.cols, data: random(d.count, seed: seed + UInt64(k)))
            base.append(SafetensorsTensor(name: n, matrix: w))
            tuned.append(SafetensorsTensor(name: n, matrix: w + d))
        }
        // Not a target: norms and embeddings are left alone by default.
        base.append(SafetensorsTensor(name: "model.norm.weight", shape: [4], values: [1, 1, 1, 1]))
        tuned.append(SafetensorsTensor(name: "model.norm.weight", shape: [4], values: [2, 2, 2, 2]))
        return (try writeCheckpoint("base", base), try writeCheckpoint("tuned", tuned))
    }

    func testExactLowRankDifferenceIsRecovered() throws {
        var rng = SeededRNG(seed: 7)
        let q = Matrix.randomNormal(24, 3, rng: &rng).matmul(Matrix.randomNormal(3, 16, rng: &rng))   // rank 3
        let v = Matrix.randomNormal(12, 2, rng: &rng).matmul(Matrix.randomNormal(2, 16, rng: &rng))   // rank 2
        let (base, tuned) = try pair(["model.layers.0.self_attn.q_proj.weight": q, "model.layers.0.self_attn.v_proj.weight": v])
        let out = dir("lora")
        let res = try LoRAExtraction.extract(base: base, tuned: tuned, output: out, options: .init(rule: .rank(3)))
        XCTAssertEqual(res.modules.map(\.rank), [3, 2], "v has rank 2: the numerically zero third direction is dropped")
        XCTAssertEqual(res.modules.map(\.method), ["svd", "svd"])
        for m in res.modules { XCTAssertEqual(m.retainedEnergy, 1, accuracy: 1e-6) }

        let back = try PEFTAdapter.read(directory: out)
        XCTAssertEqual(Set(back.moduleNames), ["base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.self_attn.v_proj"])
        let mq = back.modules["base_model.model.model.layers.0.self_attn.q_proj"]!
        let mv = back.modules["base_model.model.model.layers.0.self_attn.v_proj"]!
        XCTAssertEqual(mq.scale, 1, "alpha = r")
        XCTAssertEqual(mv.scale, 1)
        XCTAssertLessThan(mq.delta().maxAbsDifference(q), 1e-4 * q.maxAbs)
        XCTAssertLessThan(mv.delta().maxAbsDifference(v), 1e-4 * v.maxAbs)
        // Convention A = √S·Vh, B = U·√S: the factors have equal Frobenius norms.
        XCTAssertEqual(mq.A.frobeniusNorm, mq.B.frobeniusNorm, accuracy: 1e-3 * mq.A.frobeniusNorm)
        // Mixed ranks go through rank_pattern with alpha = r.
        let cfg = try JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: out + "/adapter_config.json"))))
        XCTAssertNotNil(cfg["rank_pattern"]?.objectMembers?.first)
        XCTAssertEqual(cfg["r"]?.intValue.map(Double.init), cfg["lora_alpha"]?.doubleValue)
    }

    func testEnergyPicksTheSmallestSufficientRank() throws {
        let tau = try spectrum(20, 14, [10, 5, 1, 0.1], seed: 3)
        // Energies: 100/126.01 = 0.7936, 125/126.01 = 0.99198, 126/126.01 = 0.99992.
        var rng = SeededRNG(seed: 0)
        for (e, r) in [(0.5, 1), (0.79, 1), (0.9, 2), (0.99, 2), (0.995, 3), (0.9999, 3), (0.99995, 4), (1.0, 4)] {
            let (m, rep) = try LoRAExtraction.factorize(tau, rule: .energy(e), rng: &rng)
            XCTAssertEqual(rep.rank, r, "energy \(e)")
            XCTAssertEqual(m?.rank, r)
            XCTAssertGreaterThanOrEqual(rep.retainedEnergy, e - 1e-6)
        }
        let (_, rep2) = try LoRAExtraction.factorize(tau, rule: .rank(2), rng: &rng)
        XCTAssertEqual(rep2.retainedEnergy, 125.0 / 126.01, accuracy: 1e-5)
    }

    func testRandomizedPathOnLargeMatrices() throws {
        // Smaller side 520 > 512: randomized SVD, exact for an exact rank-5 difference.
        var rng = SeededRNG(seed: 11)
        let tau = Matrix.randomNormal(600, 5, rng: &rng).matmul(Matrix.randomNormal(5, 520, rng: &rng))
        let (m, rep) = try LoRAExtraction.factorize(tau, rule: .rank(8), rng: &rng)
        XCTAssertEqual(rep.method, "randomized")
        XCTAssertEqual(rep.rank, 5)
        XCTAssertLessThan(m!.delta().maxAbsDifference(tau), 1e-3 * tau.maxAbs)
        // Energy on the randomized path uses ‖τ‖_F² computed directly as the total.
        let s: [Float] = (0..<40).map { 10 * powf(0.8, Float($0)) }
        let t2 = try spectrum(600, 520, s, seed: 5)
        let total = s.reduce(0.0) { $0 + Double($1) * Double($1) }
        var acc = 0.0, want = 0
        for (i, x) in s.enumerated() { acc += Double(x) * Double(x); if acc >= 0.95 * total { want = i + 1; break } }
        let (_, rep3) = try LoRAExtraction.factorize(t2, rule: .energy(0.95), rng: &rng)
        XCTAssertEqual(rep3.method, "randomized")
        XCTAssertEqual(rep3.rank, want)
        XCTAssertEqual(rep3.deltaNorm, total.squareRoot(), accuracy: 1e-3 * total.squareRoot())
    }

    func testTargetsAndUnchangedModules() throws {
        var rng = SeededRNG(seed: 2)
        let d = Matrix.randomNormal(8, 1, rng: &rng).matmul(Matrix.randomNormal(1, 6, rng: &rng))
        let (base, tuned) = try pair(["model.layers.0.self_attn.q_proj.weight": d,
                                      "model.layers.0.mlp.up_proj.weight": Matrix(rows: 8, cols: 6)])
        let res = try LoRAExtraction.extract(base: base, tuned: tuned, options: .init(rule: .rank(4), targets: ["up_proj"]))
        XCTAssertEqual(res.modules.map(\.tensor), ["model.layers.0.mlp.up_proj.weight"])
        XCTAssertEqual(res.modules[0].rank, 0, "τ = 0 gives no module")
        XCTAssertTrue(res.adapter.modules.isEmpty)
        XCTAssertThrowsError(try LoRAExtraction.extract(base: base, tuned: tuned, output: dir("x"),
                                                        options: .init(rule: .rank(4), targets: ["up_proj"])))
        XCTAssertTrue(LoRAExtraction.isTarget("model.layers.12.mlp.down_proj.weight", targets: nil))
        XCTAssertFalse(LoRAExtraction.isTarget("model.embed_tokens.weight", targets: nil))
        XCTAssertFalse(LoRAExtraction.isTarget("model.layers.0.self_attn.q_proj.bias", targets: nil))
    }
}
