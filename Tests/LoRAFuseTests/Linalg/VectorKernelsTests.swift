import Foundation
import XCTest
@testable import LoRAFuse

/// The vectorised elementwise kernels against their scalar references (Foundation `exp`).
final class VectorKernelsTests: XCTestCase {
    /// Distance in units in the last place between two finite non-negative Floats.
    private func ulps(_ a: Float, _ b: Float) -> Int {
        abs(Int(a.bitPattern) - Int(b.bitPattern))
    }

    private func expAll(_ xs: [Float]) -> [Float] { xs.map { VectorKernels.exp($0) } }

    func testExpWithinTwoUlpsOverDenseRangeAndSpecials() {
        // Dense: every 1/4096 over [−110, 90] (820k points), covering overflow, subnormal
        // results and underflow to 0, plus scattered values.
        var xs: [Float] = (0..<819_200).map { -110 + Float($0) / 4096 }
        xs += (0..<20_000).map { Float(sin(Double($0)) * 100) }
        var worstNormal = 0, worstSub: Float = 0
        for (x, got) in zip(xs, expAll(xs)) {
            let want = Foundation.exp(x)
            if want.isInfinite {
                XCTAssertEqual(got, .infinity, "exp(\(x))")
            } else if want >= Float.leastNormalMagnitude {
                worstNormal = max(worstNormal, ulps(got, want))
            } else {
                // Subnormal or zero results: absolute error within two subnormal steps.
                worstSub = max(worstSub, abs(got - want))
            }
        }
        XCTAssertLessThanOrEqual(worstNormal, 2, "worst ulp error over normal results")
        XCTAssertLessThanOrEqual(worstSub, 2 * Float.leastNonzeroMagnitude)

        let specials: [Float] = [-.infinity, .infinity, .nan, 0, -0.0, 1, -1, 1e-30, -1e-30, 88.72, 88.73, -87.3, -103.9,
                                 -104, -200, 200, Float.greatestFiniteMagnitude, -Float.greatestFiniteMagnitude]
        let got = expAll(specials)
        for (x, g) in zip(specials, got) {
            let want = Foundation.exp(x)
            if x.isNaN { XCTAssertTrue(g.isNaN); continue }
            if want.isInfinite || want == 0 { XCTAssertEqual(g, want, "exp(\(x))"); continue }
            if want >= Float.leastNormalMagnitude {
                XCTAssertLessThanOrEqual(ulps(g, want), 2, "exp(\(x)) = \(g), want \(want)")
            } else {
                XCTAssertLessThanOrEqual(abs(g - want), 2 * Float.leastNonzeroMagnitude, "exp(\(x))")
            }
        }
        XCTAssertEqual(VectorKernels.exp(Float(0)), 1)
        XCTAssertEqual(VectorKernels.exp(-Float.infinity), 0)
    }

    /// Random values with odd lengths so both the 8-lane body and the scalar tail run.
    private func randomArray(_ n: Int, _ rng: inout SeededRNG, scale: Float = 3) -> [Float] {
        (0..<n).map { _ in rng.nextNormal() * scale }
    }

    private func maxRelDiff(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) / max(abs($1), 1e-6) }.max() ?? 0
    }

    func testSoftmaxAndItsBackwardMatchReference() {
        var rng = SeededRNG(seed: 11)
        for (valid, count) in [(1, 1), (5, 9), (8, 8), (37, 40), (130, 130)] {
            var row = randomArray(count, &rng, scale: 8)
            if valid > 3 { row[2] = -.infinity }                       // a masked score
            var want = row
            row.withUnsafeMutableBufferPointer { VectorKernels.softmaxRow($0.baseAddress!, valid: valid, count: count) }
            want.withUnsafeMutableBufferPointer { VectorKernels.Reference.softmaxRow($0.baseAddress!, valid: valid, count: count) }
            XCTAssertLessThan(maxRelDiff(row, want), 1e-5, "softmax valid \(valid) of \(count)")
            XCTAssertEqual(Double(row.prefix(valid).reduce(0, +)), 1, accuracy: 1e-5)
            XCTAssertTrue(row[valid...].allSatisfy { $0 == 0 })

            let dp = randomArray(count, &rng)
            var a = dp, b = dp
            a.withUnsafeMutableBufferPointer { VectorKernels.softmaxBackwardRow(p: row, dp: $0.baseAddress!, valid: valid, count: count) }
            b.withUnsafeMutableBufferPointer { VectorKernels.Reference.softmaxBackwardRow(p: row, dp: $0.baseAddress!, valid: valid, count: count) }
            XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()!, 1e-5)
        }
    }

    func testSwiGLUAndItsBackwardMatchReference() {
        var rng = SeededRNG(seed: 12)
        let n = 1003
        var gate = randomArray(n, &rng, scale: 6)
        gate[0] = -120; gate[1] = 120; gate[2] = 0                     // saturated σ both ways
        let up = randomArray(n, &rng), dAct = randomArray(n, &rng)
        var got = [Float](repeating: 0, count: n), want = got
        VectorKernels.swiglu(gate: gate, up: up, out: &got, count: n)
        VectorKernels.Reference.swiglu(gate: gate, up: up, out: &want, count: n)
        XCTAssertLessThan(zip(got, want).map { abs($0 - $1) / max(abs($1), 1) }.max()!, 1e-6)
        XCTAssertEqual(got[0], 0); XCTAssertEqual(got[1], 120 * up[1])

        var dg = [Float](repeating: 0, count: n), du = dg, dgR = dg, duR = dg
        VectorKernels.swigluBackward(gate: gate, up: up, dAct: dAct, dGate: &dg, dUp: &du, count: n)
        VectorKernels.Reference.swigluBackward(gate: gate, up: up, dAct: dAct, dGate: &dgR, dUp: &duR, count: n)
        XCTAssertLessThan(zip(dg, dgR).map { abs($0 - $1) / max(abs($1), 1) }.max()!, 1e-6)
        XCTAssertLessThan(zip(du, duR).map { abs($0 - $1) / max(abs($1), 1) }.max()!, 1e-6)

        // In place (out = gate), as the forward pass uses it.
        var inPlace = gate
        inPlace.withUnsafeMutableBufferPointer { VectorKernels.swiglu(gate: $0.baseAddress!, up: up, out: $0.baseAddress!, count: n) }
        XCTAssertEqual(inPlace, got)
    }

    func testRMSNormForwardBackwardAndRoPEMatchReference() {
        var rng = SeededRNG(seed: 13)
        for cols in [8, 13, 64] {
            let rows = 5
            let x = randomArray(rows * cols, &rng), g = randomArray(cols, &rng), dy = randomArray(rows * cols, &rng)
            var o = [Float](repeating: 0, count: rows * cols), oR = o
            var inv = [Float](repeating: 0, count: rows), invR = inv
            VectorKernels.rmsNorm(x, g: g, eps: 1e-5, rows: rows, cols: cols, out: &o, inv: &inv)
            VectorKernels.Reference.rmsNorm(x, g: g, eps: 1e-5, rows: rows, cols: cols, out: &oR, inv: &invR)
            XCTAssertLessThan(zip(o, oR).map { abs($0 - $1) }.max()!, 1e-5)
            XCTAssertLessThan(zip(inv, invR).map { abs($0 - $1) / $1 }.max()!, 1e-6)

            var dx = randomArray(cols, &rng), dxR = dx
            VectorKernels.rmsNormBackwardRow(x: x, g: g, inv: inv[0], dy: dy, dx: &dx, cols: cols)
            VectorKernels.Reference.rmsNormBackwardRow(x: x, g: g, inv: inv[0], dy: dy, dx: &dxR, cols: cols)
            XCTAssertLessThan(zip(dx, dxR).map { abs($0 - $1) }.max()!, 1e-5)
        }
        for d in [16, 6, 64] {
            let rows = 4, heads = 3, half = d / 2, start = 2
            let cosT = (0..<((start + rows) * half)).map { Float(cos(Double($0) * 0.37)) }
            let sinT = (0..<((start + rows) * half)).map { Float(sin(Double($0) * 0.37)) }
            let v0 = randomArray(rows * heads * d, &rng)
            for inverse in [false, true] {
                var v = v0, vR = v0
                VectorKernels.rope(&v, rows: rows, heads: heads, headDim: d, start: start, cos: cosT, sin: sinT, inverse: inverse)
                VectorKernels.Reference.rope(&vR, rows: rows, heads: heads, headDim: d, start: start, cos: cosT, sin: sinT, inverse: inverse)
                XCTAssertLessThan(zip(v, vR).map { abs($0 - $1) }.max()!, 1e-6, "d \(d) inverse \(inverse)")
            }
            // Rotating back undoes the rotation.
            var v = v0
            VectorKernels.rope(&v, rows: rows, heads: heads, headDim: d, start: start, cos: cosT, sin: sinT)
            VectorKernels.rope(&v, rows: rows, heads: heads, headDim: d, start: start, cos: cosT, sin: sinT, inverse: true)
            XCTAssertLessThan(zip(v, v0).map { abs($0 - $1) }.max()!, 1e-5)
        }
    }
}

final class ParallelForEachTests: XCTestCase {
    func testEveryItemRunsOnceOnAValidWorkerAndBLASThreadsComeBack() {
        let before = BLAS.threadCount
        for (count, workers) in [(0, 2), (1, 2), (37, 2), (37, 1), (5, 8)] {
            var hits = [Int](repeating: 0, count: count)
            var workerOK = [Bool](repeating: false, count: count)
            hits.withUnsafeMutableBufferPointer { h in
                workerOK.withUnsafeMutableBufferPointer { ok in
                    Parallel.forEach(count: count, workers: workers) { i, w in
                        h[i] += 1
                        ok[i] = w >= 0 && w < max(1, min(workers, count))
                    }
                }
            }
            XCTAssertEqual(hits, [Int](repeating: 1, count: count), "count \(count) workers \(workers)")
            XCTAssertTrue(workerOK.allSatisfy { $0 })
            XCTAssertEqual(BLAS.threadCount, before)
        }
        for (count, workers, granule) in [(1000, 2, 64), (10, 3, 4), (0, 2, 1)] {
            var covered = [Int](repeating: 0, count: count)
            covered.withUnsafeMutableBufferPointer { cov in
                Parallel.forRanges(count: count, workers: workers, granule: granule) { r in
                    XCTAssertTrue(r.lowerBound % granule == 0)
                    for i in r { cov[i] += 1 }
                }
            }
            XCTAssertEqual(covered, [Int](repeating: 1, count: count))
        }
    }
}
