import XCTest
@testable import LoRAFuse

/// Naive triple-loop product: the reference the BLAS path is checked against.
func naiveMatmul(_ a: Matrix, _ b: Matrix) -> Matrix {
    var c = Matrix(rows: a.rows, cols: b.cols)
    for i in 0..<a.rows {
        for j in 0..<b.cols {
            var acc = 0.0
            for k in 0..<a.cols { acc += Double(a[i, k]) * Double(b[k, j]) }
            c[i, j] = Float(acc)
        }
    }
    return c
}

final class LinalgTests: XCTestCase {
    func testGemmMatchesNaiveWithTransposes() {
        var rng = SeededRNG(seed: 1)
        let a = Matrix.randomNormal(7, 5, rng: &rng)
        let b = Matrix.randomNormal(5, 9, rng: &rng)
        XCTAssertLessThan(a.matmul(b).maxAbsDifference(naiveMatmul(a, b)), 1e-5)
        let at = a.transposed(), bt = b.transposed()
        XCTAssertLessThan(at.matmul(b, transposeSelf: true).maxAbsDifference(naiveMatmul(a, b)), 1e-5)
        XCTAssertLessThan(a.matmul(bt, transposeOther: true).maxAbsDifference(naiveMatmul(a, b)), 1e-5)
        XCTAssertLessThan(at.matmul(bt, transposeSelf: true, transposeOther: true).maxAbsDifference(naiveMatmul(a, b)), 1e-5)
    }

    func testTransposeLargeBlocked() {
        var rng = SeededRNG(seed: 2)
        let a = Matrix.randomNormal(130, 67, rng: &rng)
        let t = a.transposed()
        for i in 0..<a.rows { for j in 0..<a.cols { XCTAssertEqual(a[i, j], t[j, i]) } }
    }

    func testQRReconstructsAndIsOrthonormal() throws {
        var rng = SeededRNG(seed: 3)
        for (m, n) in [(9, 4), (4, 9), (6, 6)] {
            let a = Matrix.randomNormal(m, n, rng: &rng)
            let (q, r) = try Linalg.qr(a)
            XCTAssertEqual(q.shape, [m, min(m, n)])
            XCTAssertEqual(r.shape, [min(m, n), n])
            XCTAssertLessThan(naiveMatmul(q, r).maxAbsDifference(a), 1e-4)
            let qtq = naiveMatmul(q.transposed(), q)
            XCTAssertLessThan(qtq.maxAbsDifference(.identity(min(m, n))), 1e-5)
            for i in 0..<r.rows { for j in 0..<min(i, r.cols) { XCTAssertEqual(r[i, j], 0) } }
        }
    }

    func testSVDReconstructsWithSortedValues() throws {
        var rng = SeededRNG(seed: 4)
        for (m, n) in [(12, 5), (5, 12), (8, 8)] {
            let a = Matrix.randomNormal(m, n, rng: &rng)
            let s = try Linalg.svd(a)
            XCTAssertEqual(s.U.shape, [m, min(m, n)])
            XCTAssertEqual(s.Vt.shape, [min(m, n), n])
            XCTAssertEqual(s.S, s.S.sorted(by: >))
            let rec = naiveMatmul(s.U.scalingColumns(by: s.S), s.Vt)
            XCTAssertLessThan(rec.maxAbsDifference(a), 1e-4)
            XCTAssertLessThan(naiveMatmul(s.U.transposed(), s.U).maxAbsDifference(.identity(min(m, n))), 1e-5)
            // ‖A‖_F² = Σ σ²
            let e = s.S.reduce(0.0) { $0 + Double($1 * $1) }
            XCTAssertEqual(e, a.frobeniusNorm * a.frobeniusNorm, accuracy: 1e-3)
        }
    }

    func testSVDRejectsNaN() {
        var a = Matrix(rows: 3, cols: 3, repeating: 1)
        a[1, 1] = .nan
        XCTAssertThrowsError(try Linalg.svd(a))
    }

    func testProductSVDEqualsDenseSVD() throws {
        var rng = SeededRNG(seed: 5)
        let left = Matrix.randomNormal(40, 6, rng: &rng)
        let right = Matrix.randomNormal(6, 30, rng: &rng)
        let dense = naiveMatmul(left, right)
        let exact = try Linalg.svd(dense)
        let fast = try Linalg.productSVD(left: left, right: right)
        for k in 0..<6 { XCTAssertEqual(fast.S[k], exact.S[k], accuracy: 1e-3 * exact.S[0]) }
        XCTAssertLessThan(fast.reconstruct().maxAbsDifference(dense), 1e-3)
    }

    func testRandomizedSVDNearOptimalOnLowRankPlusNoise() throws {
        var rng = SeededRNG(seed: 6)
        let lowRank = naiveMatmul(Matrix.randomNormal(300, 8, rng: &rng), Matrix.randomNormal(8, 200, rng: &rng))
        var noisy = lowRank
        noisy.add(Matrix.randomNormal(300, 200, std: 0.01, rng: &rng))
        let exact = try Linalg.svd(noisy).truncated(to: 8)
        var r2 = SeededRNG(seed: 7)
        let approx = try Linalg.randomizedSVD(noisy, rank: 8, oversample: 8, powerIterations: 2, rng: &r2)
        let errExact = (noisy - exact.reconstruct()).frobeniusNorm
        let errApprox = (noisy - approx.reconstruct()).frobeniusNorm
        XCTAssertLessThan(errApprox, errExact * 1.01)
    }

    func testHalfAndBFloatRoundTrip() {
        for v: Float in [0, -0, 1, -2.5, 65504, 1e-7, 3.14159, -1e-5, 6.1e-5] {
            let h = HalfConversion.halfFromFloat(v)
            let back = HalfConversion.floatFromHalf(h)
            XCTAssertEqual(back, v, accuracy: max(abs(v) * 1e-3, 6e-8))
            XCTAssertEqual(HalfConversion.floatFromBFloat(HalfConversion.bfloatFromFloat(v)), v, accuracy: abs(v) * 8e-3)
        }
        XCTAssertEqual(HalfConversion.halfFromFloat(1e6), 0x7C00)
        XCTAssertTrue(HalfConversion.floatFromHalf(HalfConversion.halfFromFloat(.nan)).isNaN)
        // Round-half-to-even at the first bit below half precision: 1 + 2^-11 rounds to 1.
        XCTAssertEqual(HalfConversion.halfFromFloat(1 + 1.0 / 2048), 0x3C00)
        XCTAssertEqual(HalfConversion.bfloatFromFloat(1), 0x3F80)
    }

    func testNaturalOrder() {
        let names = ["layers.10.q", "layers.2.q", "layers.1.q"]
        XCTAssertEqual(names.sorted(by: naturalLess), ["layers.1.q", "layers.2.q", "layers.10.q"])
    }
}
