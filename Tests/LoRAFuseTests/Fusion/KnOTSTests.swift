import XCTest
@testable import LoRAFuse

final class KnOTSTests: XCTestCase {
    func testAlignedBasisReconstructsEachTask() throws {
        let (ms, ws) = FusionFixture.mixed(out: 13, in: 8)
        let input = FusionFixture.input(ms, ws)
        let (us, S, V) = try KnOTSFusion.alignedBasis(input.terms, relativeThreshold: 1e-4)
        XCTAssertEqual(S.count, 10)            // out ≥ Σ r_i and n·in ≥ Σ r_i: nothing dropped
        XCTAssertEqual(us.shape, [13, 10])
        for (m, v) in zip(ms, V) {
            XCTAssertEqual(v.shape, [10, 8])
            // U S V_iᵀ = s_i B_i A_i (unweighted)
            XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(FusedModule(A: v, B: us)),
                                                     FusionFixture.denseDelta(m)), 1e-4)
        }
        // The concatenated Vᵀ has orthonormal rows; U S has orthogonal columns with norms S.
        var vvt = Matrix(rows: 10, cols: 10)
        for v in V { vvt.add(v.matmul(v, transposeOther: true)) }
        XCTAssertLessThan(vvt.maxAbsDifference(.identity(10)), 1e-4)
        let g = us.matmul(us, transposeSelf: true)
        for i in 0..<10 { for j in 0..<10 {
            XCTAssertEqual(g[i, j], i == j ? S[i] * S[i] : 0, accuracy: 1e-3 * S[0] * S[0])
        } }
    }

    func testSingularValuesFromConcatenationMatchDenseSVD() throws {
        let (ms, ws) = FusionFixture.mixed(out: 10, in: 6, seed: 5)
        let concat = Matrix.hconcat(ms.map { FusionFixture.denseDelta($0) })   // (out, n·in)
        let dense = try Linalg.svd(concat)
        let (_, S, _) = try KnOTSFusion.alignedBasis(FusionFixture.input(ms, ws).terms, relativeThreshold: 1e-4)
        XCTAssertEqual(S.count, 10)
        for k in 0..<S.count { XCTAssertEqual(S[k], dense.S[k], accuracy: 1e-4 * dense.S[0]) }
    }

    func testLinearMergeWithoutTruncationIsTaskArithmetic() throws {
        let (ms, ws) = FusionFixture.mixed()
        let reference = FusionFixture.denseSum(ms, ws)
        for threshold in [0.0, 1e-4] {
            let f = try KnOTSFusion(mergeRule: .linear, relativeThreshold: threshold).fuse(FusionFixture.input(ms, ws))
            XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(f), reference), 1e-4)
        }
    }

    func testRankReductionIsBestApproximationOfMergedUpdate() throws {
        let (ms, ws) = FusionFixture.mixed(out: 14, in: 12, seed: 9)
        let full = try KnOTSFusion(mergeRule: .ties(density: 0.5)).fuse(FusionFixture.input(ms, ws))
        let dense = FusionFixture.denseFused(full)
        let exact = try Linalg.svd(dense)
        let f = try KnOTSFusion(mergeRule: .ties(density: 0.5), rank: 3).fuse(FusionFixture.input(ms, ws))
        XCTAssertEqual(f.rank, 3)
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(f), exact.truncated(to: 3).reconstruct()), 1e-3)
        XCTAssertEqual(f.retainedEnergy ?? -1, exact.retainedEnergy(rank: 3), accuracy: 1e-4)
    }

    func testTIESWithOneTaskAndFullDensityReturnsWeightedTask() throws {
        var rng = SeededRNG(seed: 2)
        let m = FusionFixture.module(out: 7, in: 6, rank: 3, alpha: 6, rng: &rng)
        let f = try KnOTSFusion(mergeRule: .ties(density: 1)).fuse(FusionFixture.input([m], [-0.8]))
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(f), FusionFixture.denseSum([m], [-0.8])), 1e-4)
    }

    func testTIESMergeRuleByHand() {
        // Two tasks, 1 x 4 blocks. density 0.5 keeps the top two |v| of each.
        let v1 = Matrix([[0.9, -0.1, 0.5, 0.2]])      // keeps 0.9, 0.5
        let v2 = Matrix([[-0.3, 0.8, 0.6, -0.05]])    // keeps 0.8, 0.6
        var rng = SeededRNG(seed: 0)
        // weights 1, 2: τ1 = [0.9, 0, 0.5, 0], τ2 = [0, 1.6, 1.2, 0]
        let mean = KnOTSFusion.merge([v1, v2], weights: [1, 2], rule: .ties(density: 0.5), rng: &rng)
        for (x, y) in zip(mean.data, [Float(0.9), 1.6, 0.85, 0]) { XCTAssertEqual(x, y, accuracy: 1e-6) }
        let sum = KnOTSFusion.merge([v1, v2], weights: [1, 2], rule: .ties(density: 0.5, disjointMean: false), rng: &rng)
        XCTAssertEqual(sum.data[2], 1.7, accuracy: 1e-6)
        // Sign election: τ1 = [0.9,...], τ2' = -2·v1 → elected sign negative at entry 0 (0.9 - 1.8 < 0).
        let opp = KnOTSFusion.merge([v1, v1], weights: [1, -2], rule: .ties(density: 0.5), rng: &rng)
        XCTAssertEqual(opp.data[0], -1.8, accuracy: 1e-6)
        XCTAssertEqual(opp.data[2], -1.0, accuracy: 1e-6)
    }

    func testDAREIsSeededAndUnbiasedAtFullDensity() throws {
        let (ms, ws) = FusionFixture.mixed()
        let a = try KnOTSFusion(mergeRule: .dare(density: 0.6)).fuse(FusionFixture.input(ms, ws, seed: 1))
        let b = try KnOTSFusion(mergeRule: .dare(density: 0.6)).fuse(FusionFixture.input(ms, ws, seed: 1))
        let c = try KnOTSFusion(mergeRule: .dare(density: 0.6)).fuse(FusionFixture.input(ms, ws, seed: 2))
        XCTAssertEqual(a.A, b.A)
        XCTAssertEqual(a.B, b.B)
        XCTAssertNotEqual(a.A, c.A)
        let full = try KnOTSFusion(mergeRule: .dare(density: 1)).fuse(FusionFixture.input(ms, ws))
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(full), FusionFixture.denseSum(ms, ws)), 1e-4)
    }

    func testZeroWeightsGiveEmptyModule() throws {
        let (ms, _) = FusionFixture.mixed()
        let f = try KnOTSFusion().fuse(FusionFixture.input(ms, [0, 0, 0]))
        XCTAssertEqual(f.rank, 0)
        XCTAssertEqual(f.B.shape, [11, 0])
    }
}
