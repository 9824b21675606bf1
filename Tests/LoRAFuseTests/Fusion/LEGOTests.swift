import XCTest
@testable import LoRAFuse

final class LEGOTests: XCTestCase {
    func testEveryUnitItsOwnClusterReproducesTaskArithmetic() throws {
        let (ms, ws) = FusionFixture.mixed()
        for k in [10, 25] {  // Σ r_i = 10
            let f = try LEGOFusion(rank: k, unitNormRescale: false, outputRescale: false).fuse(FusionFixture.input(ms, ws))
            XCTAssertEqual(f.rank, 10)
            XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(f), FusionFixture.denseSum(ms, ws)), 1e-5)
        }
    }

    func testUnitsAreSignCanonicalAndSumToWeightedDelta() {
        let (ms, ws) = FusionFixture.mixed(out: 5, in: 4)
        let input = FusionFixture.input(ms, ws)
        let X = LEGOFusion.units(input.terms, outFeatures: 5, inFeatures: 4)
        XCTAssertEqual(X.shape, [10, 9])
        for u in 0..<X.rows {
            let a = Array(X.row(u).dropFirst(5))
            let big = a.max { abs($0) < abs($1) }!
            XCTAssertGreaterThan(big, 0)
        }
        let b = X.columns(0..<5), a = X.columns(5..<9)
        let sum = FusionFixture.denseFused(FusedModule(A: a, B: b.transposed()))
        XCTAssertLessThan(FusionFixture.relError(sum, FusionFixture.denseSum(ms, ws)), 1e-5)
    }

    func testOppositeSignCopiesOfAUnitDoNotCancel() throws {
        var rng = SeededRNG(seed: 8)
        let m = FusionFixture.module(out: 6, in: 5, rank: 1, alpha: 2, rng: &rng)
        let flipped = LoRAModule(A: m.A.scaled(by: -1), B: m.B.scaled(by: -1), scale: m.scale)
        let f = try LEGOFusion(rank: 1, unitNormRescale: false, outputRescale: false).fuse(FusionFixture.input([m, flipped], [1, 1]))
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(f), FusionFixture.denseDelta(m)), 1e-5)
    }

    func testClusteringPairsMatchingUnitsOfIdenticalAdapters() throws {
        var rng = SeededRNG(seed: 12)
        let m = FusionFixture.module(out: 8, in: 7, rank: 3, alpha: 6, rng: &rng)
        // Centroids of identical units are the units: one copy of ΔW without reweighting …
        let plain = try LEGOFusion(rank: 3, unitNormRescale: false, outputRescale: false).fuse(FusionFixture.input([m, m], [1, 1]))
        XCTAssertEqual(plain.rank, 3)
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(plain), FusionFixture.denseDelta(m)), 1e-5)
        // … and the output rescaling restores the sum 2ΔW.
        let scaled = try LEGOFusion(rank: 3, unitNormRescale: true, outputRescale: true).fuse(FusionFixture.input([m, m], [1, 1]))
        XCTAssertLessThan(FusionFixture.relError(FusionFixture.denseFused(scaled), FusionFixture.denseSum([m], [2])), 1e-5)
    }

    func testDeterministicFromSeed() throws {
        var rng = SeededRNG(seed: 30)
        let ms = (0..<4).map { _ in FusionFixture.module(out: 12, in: 10, rank: 4, alpha: 8, rng: &rng) }
        let ws: [Float] = [1, 0.5, -0.7, 1.2]
        let method = LEGOFusion(rank: 5)
        let a = try method.fuse(FusionFixture.input(ms, ws, seed: 42))
        let b = try method.fuse(FusionFixture.input(ms, ws, seed: 42))
        XCTAssertEqual(a.A, b.A)
        XCTAssertEqual(a.B, b.B)
        XCTAssertEqual(a.rank, 5)
        var r1 = SeededRNG(seed: 1)
        let X = LEGOFusion.units(FusionFixture.input(ms, ws).terms, outFeatures: 12, inFeatures: 10)
        let assign = LEGOFusion.kmeans(X, k: 5, maxIterations: 50, rng: &r1)
        XCTAssertEqual(Set(assign), Set(0..<5))   // no empty cluster
    }

    func testOutputRescaleHitsTargetNorm() throws {
        var rng = SeededRNG(seed: 31)
        let ms = (0..<3).map { _ in FusionFixture.module(out: 9, in: 8, rank: 3, alpha: 6, rng: &rng) }
        let ws: [Float] = [0.6, 1.1, -0.9]
        let target = FusionFixture.denseSum(ms, ws).frobeniusNorm
        XCTAssertEqual(LEGOFusion.weightedSumNorm(FusionFixture.input(ms, ws).terms), target, accuracy: 1e-4 * target)
        for unit in [false, true] {
            let f = try LEGOFusion(rank: 2, unitNormRescale: unit, outputRescale: true).fuse(FusionFixture.input(ms, ws))
            XCTAssertEqual(FusionFixture.denseFused(f).frobeniusNorm, target, accuracy: 1e-4 * target)
        }
    }

    func testUnitNormRescaleMatchesMeanMemberNorm() throws {
        var rng = SeededRNG(seed: 33)
        let m1 = FusionFixture.module(out: 6, in: 5, rank: 1, alpha: 1, rng: &rng)
        let m2 = FusionFixture.module(out: 6, in: 5, rank: 1, alpha: 1, rng: &rng)
        let f = try LEGOFusion(rank: 1, unitNormRescale: true, outputRescale: false).fuse(FusionFixture.input([m1, m2], [1, 2]))
        // Member unit norms are ‖w s b aᵀ‖ = |w| ‖ΔW_i‖; the merged unit gets their mean.
        let expected = (FusionFixture.denseDelta(m1).frobeniusNorm + 2 * FusionFixture.denseDelta(m2).frobeniusNorm) / 2
        XCTAssertEqual(FusionFixture.denseFused(f).frobeniusNorm, expected, accuracy: 1e-4 * expected)
        let plain = try LEGOFusion(rank: 1, unitNormRescale: false, outputRescale: false).fuse(FusionFixture.input([m1, m2], [1, 2]))
        XCTAssertLessThan(FusionFixture.denseFused(plain).frobeniusNorm, expected)   // averaging shrank it
    }
}
