import XCTest
@testable import LoRAFuse

// MARK: - Independent references (plain per-entry loops, Double accumulation)
//
// None of these call DenseMerge or the methods' helpers: the sparsifiers sort all entries,
// the merges loop entry by entry over the tasks, exactly as the formulas read.

private func refDelta(_ t: FusionTerm) -> [[Double]] {
    let m = t.module
    var d = [[Double]](repeating: [Double](repeating: 0, count: m.inFeatures), count: m.outFeatures)
    for i in 0..<m.outFeatures {
        for j in 0..<m.inFeatures {
            var acc = 0.0
            for k in 0..<m.rank { acc += Double(m.B[i, k]) * Double(m.A[k, j]) }
            d[i][j] = Double(m.scale) * acc
        }
    }
    return d
}

private func toMatrix(_ d: [[Double]]) -> Matrix { Matrix(d.map { $0.map { Float($0) } }) }

/// All (row, col) positions sorted by |value| descending (values are random: no ties).
private func byMagnitudeDescending(_ d: [[Double]]) -> [(Int, Int)] {
    var pos: [(Int, Int)] = []
    for i in 0..<d.count { for j in 0..<d[i].count { pos.append((i, j)) } }
    return pos.sorted { abs(d[$0.0][$0.1]) > abs(d[$1.0][$1.1]) }
}

private func refTopK(_ d: [[Double]], density: Double) -> [[Double]] {
    let n = d.count * d[0].count
    let k = Int(density * Double(n))   // Python's int(density * numel)
    var out = d.map { $0.map { _ in 0.0 } }
    for (i, j) in byMagnitudeDescending(d).prefix(k) { out[i][j] = d[i][j] }
    return out
}

private func refBreadcrumbs(_ d: [[Double]], density: Double, gamma: Double) -> [[Double]] {
    let n = d.count * d[0].count
    let keep = Int(density * Double(n))
    var top = Int(gamma * Double(n))
    if n - keep - top < 0 { top = n - keep }
    var out = d.map { $0.map { _ in 0.0 } }
    let order = byMagnitudeDescending(d)
    for p in top..<(top + keep) { out[order[p].0][order[p].1] = d[order[p].0][order[p].1] }
    return out
}

private func refSum(_ ds: [[[Double]]], _ w: [Float], normalize: Bool) -> [[Double]] {
    var out = ds[0].map { $0.map { _ in 0.0 } }
    let ws = w.reduce(0.0) { $0 + Double($1) }
    for i in 0..<out.count {
        for j in 0..<out[0].count {
            for t in 0..<ds.count { out[i][j] += Double(w[t]) * ds[t][i][j] }
            if normalize && abs(ws) >= 1e-8 { out[i][j] /= ws }
        }
    }
    return out
}

private func sgn(_ x: Double) -> Double { x > 0 ? 1 : (x < 0 ? -1 : 0) }

private func refDisjoint(_ ds: [[[Double]]], _ w: [Float], _ c: SignConsensus) -> [[Double]] {
    var out = ds[0].map { $0.map { _ in 0.0 } }
    for i in 0..<out.count {
        for j in 0..<out[0].count {
            let x = (0..<ds.count).map { t in c.election == .weighted ? Double(w[t]) * ds[t][i][j] : ds[t][i][j] }
            let vote = c.method == .sum ? x.reduce(0, +) : x.map(sgn).reduce(0, +)
            let elected: Double = vote >= 0 ? 1 : -1
            var num = 0.0, count = 0.0, wsum = 0.0
            for t in 0..<ds.count where sgn(x[t]) == elected {
                num += Double(w[t]) * ds[t][i][j]
                count += 1
                wsum += Double(w[t])
            }
            switch c.divisor {
            case .agreeingCount: out[i][j] = num / max(1, count)
            case .weightSum: out[i][j] = num / (wsum == 0 ? 1 : wsum)
            case .none: out[i][j] = num
            }
        }
    }
    return out
}

private func refL1(_ original: [[Double]], _ masked: [[Double]]) -> [[Double]] {
    let before = original.flatMap { $0 }.reduce(0) { $0 + abs($1) }
    let after = masked.flatMap { $0 }.reduce(0) { $0 + abs($1) }
    if before < 1e-7 || after < 1e-7 { return masked }
    return masked.map { $0.map { $0 * before / after } }
}

private func refDARE(_ d: [[Double]], density: Double, rescale: DropRescale, rng: inout SeededRNG) -> [[Double]] {
    var out = d
    for i in 0..<d.count {
        for j in 0..<d[0].count where !(rng.nextDouble() < density) { out[i][j] = 0 }
    }
    switch rescale {
    case .inverseProbability: return out.map { $0.map { $0 / density } }
    case .l1Norm: return refL1(d, out)
    case .none: return out
    }
}

private func refDELLA(_ d: [[Double]], density: Double, epsilon: Double, rescale: DropRescale,
                      rng: inout SeededRNG) -> [[Double]] {
    let eps = min(epsilon, density, 1 - density)
    var out = d
    let n = d[0].count
    for i in 0..<d.count {
        // rank 0 = smallest magnitude in the row
        let ascending = (0..<n).sorted { abs(d[i][$0]) < abs(d[i][$1]) }
        var p = [Double](repeating: 0, count: n)
        for (r, j) in ascending.enumerated() { p[j] = density - eps + 2 * eps * Double(r) / Double(n - 1) }
        for j in 0..<n {
            if rng.nextDouble() < p[j] {
                if rescale == .inverseProbability { out[i][j] = d[i][j] / p[j] }
            } else {
                out[i][j] = 0
            }
        }
    }
    return rescale == .l1Norm ? refL1(d, out) : out
}

// MARK: - Fixtures

private let mixedWeights: [Float] = [0.8, -0.6, 1.3]

/// Three adapters of ranks 2, 3, 5 with different scales on a 7x9 module.
private func tinyInput(out: Int = 7, in inF: Int = 9, ranks: [Int] = [2, 3, 5], weights: [Float] = mixedWeights,
                       seed: UInt64 = 11, rngSeed: UInt64 = 5) -> ModuleFusionInput {
    var g = SeededRNG(seed: seed)
    let scales: [Float] = [2, 0.5, 1.25, 1, 0.75]
    let terms = ranks.enumerated().map { i, r in
        FusionTerm(module: LoRAModule(A: .randomNormal(r, inF, rng: &g), B: .randomNormal(out, r, rng: &g),
                                      scale: scales[i % scales.count]),
                   weight: weights[i], adapterIndex: i)
    }
    return ModuleFusionInput(name: "layers.0.q_proj", kind: .linear, outFeatures: out, inFeatures: inF, terms: terms,
                             adapterCount: terms.count, rng: SeededRNG(seed: rngSeed, stream: "layers.0.q_proj"))
}

private let allConsensus: [SignConsensus] = SignElection.allCases.flatMap { e in
    SignMethod.allCases.flatMap { m in DisjointDivisor.allCases.map { SignConsensus(election: e, method: m, divisor: $0) } }
}

private func assertClose(_ a: Matrix, _ b: Matrix, tol: Float = 2e-5, _ msg: String = "",
                         file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.shape, b.shape, msg, file: file, line: line)
    let scale = max(1, b.maxAbs)
    XCTAssertLessThan(a.maxAbsDifference(b), tol * scale, msg, file: file, line: line)
}

final class DenseMethodsTests: XCTestCase {
    private func deltas(_ input: ModuleFusionInput) throws -> [Matrix] { try DenseMerge.taskDeltas(input).deltas }

    // MARK: Dense combinations against the references

    func testTIESMatchesReferenceForEveryConvention() throws {
        let input = tinyInput()
        let d = try deltas(input)
        let ref = input.terms.map(refDelta)
        for density in [0.3, 0.65] {
            let trimmed = ref.map { refTopK($0, density: density) }
            for c in allConsensus {
                let got = TIESFusion(density: density, consensus: c).combineDense(d, weights: mixedWeights)
                assertClose(got, toMatrix(refDisjoint(trimmed, mixedWeights, c)), "\(c) density \(density)")
            }
        }
        // The two peers' conventions disagree on mixed-sign weights (the choice matters).
        let peft = TIESFusion(density: 0.5, consensus: .peft).combineDense(d, weights: mixedWeights)
        let mk = TIESFusion(density: 0.5, consensus: .mergekit).combineDense(d, weights: mixedWeights)
        XCTAssertGreaterThan(peft.maxAbsDifference(mk), 1e-3)
        XCTAssertEqual(TIESFusion().consensus, .mergekit)
    }

    func testMagnitudePruneMatchesReference() throws {
        let input = tinyInput()
        let d = try deltas(input)
        let ref = input.terms.map(refDelta)
        for density in [0.25, 0.9] {
            for normalize in [false, true] {
                let got = MagnitudePruneFusion(density: density, normalize: normalize).combineDense(d, weights: mixedWeights)
                let want = refSum(ref.map { refTopK($0, density: density) }, mixedWeights, normalize: normalize)
                assertClose(got, toMatrix(want), "density \(density) normalize \(normalize)")
                // exactly ⌊ρ·n⌋ entries survive per task
                let k = Int(density * 63)
                XCTAssertEqual(DenseMerge.trimToTop(d[0], density: density).data.filter { $0 != 0 }.count, k)
            }
        }
    }

    func testDAREMatchesReferenceBothRescalesAndModes() throws {
        let input = tinyInput()
        let d = try deltas(input)
        let ref = input.terms.map(refDelta)
        for rescale in [DropRescale.inverseProbability, .l1Norm] {
            var refRNG = input.rng
            let dropped = ref.map { refDARE($0, density: 0.4, rescale: rescale, rng: &refRNG) }
            var rng = input.rng
            let lin = DAREFusion(mode: .linear, density: 0.4, rescale: rescale).combineDense(d, weights: mixedWeights, rng: &rng)
            assertClose(lin, toMatrix(refSum(dropped, mixedWeights, normalize: false)), "dare_linear \(rescale)")
            for c in [SignConsensus.peft, .mergekit] {
                var rng = input.rng
                let f = DAREFusion(mode: .ties, density: 0.4, rescale: rescale, signElection: c.election,
                                   signMethod: c.method, divisor: c.divisor)
                let ties = f.combineDense(d, weights: mixedWeights, rng: &rng)
                assertClose(ties, toMatrix(refDisjoint(dropped, mixedWeights, c)), "dare_ties \(rescale) \(c)")
            }
        }
        XCTAssertEqual(DAREFusion().rescale, .inverseProbability)
    }

    func testBreadcrumbsMatchesReference() throws {
        let input = tinyInput()
        let d = try deltas(input)
        let ref = input.terms.map(refDelta)
        // (0.3, 0.05): drops 3 outliers and 42 small of 63; (0.97, 0.05): ρ+γ > 1, fewer outliers.
        for (density, gamma) in [(0.3, 0.05), (0.97, 0.05), (0.5, 0.0)] {
            let kept = ref.map { refBreadcrumbs($0, density: density, gamma: gamma) }
            let lin = BreadcrumbsFusion(mode: .linear, density: density, gamma: gamma).combineDense(d, weights: mixedWeights)
            assertClose(lin, toMatrix(refSum(kept, mixedWeights, normalize: false)), "breadcrumbs \(density) \(gamma)")
            for c in [SignConsensus.peft, .mergekit] {
                let f = BreadcrumbsFusion(mode: .ties, density: density, gamma: gamma, signElection: c.election,
                                          signMethod: c.method, divisor: c.divisor)
                assertClose(f.combineDense(d, weights: mixedWeights), toMatrix(refDisjoint(kept, mixedWeights, c)),
                            "breadcrumbs_ties \(density) \(gamma) \(c)")
            }
        }
        // The largest entry of each task is an outlier and is gone.
        let b = DenseMerge.breadcrumbs(d[0], density: 0.3, gamma: 0.05)
        let largest = d[0].data.indices.max { abs(d[0].data[$0]) < abs(d[0].data[$1]) }!
        XCTAssertEqual(b.data[largest], 0)
        XCTAssertEqual(b.data.filter { $0 != 0 }.count, Int(0.3 * 63))
    }

    func testDELLAMatchesReferenceBothRescalesAndModes() throws {
        let input = tinyInput()
        let d = try deltas(input)
        let ref = input.terms.map(refDelta)
        for (density, epsilon) in [(0.5, 0.15), (0.1, 0.15)] {   // the second clamps ε to 0.1
            for rescale in [DropRescale.inverseProbability, .l1Norm] {
                var refRNG = input.rng
                let dropped = ref.map { refDELLA($0, density: density, epsilon: epsilon, rescale: rescale, rng: &refRNG) }
                var rng = input.rng
                let lin = DELLAFusion(mode: .linear, density: density, epsilon: epsilon, rescale: rescale)
                    .combineDense(d, weights: mixedWeights, rng: &rng)
                assertClose(lin, toMatrix(refSum(dropped, mixedWeights, normalize: false)), "della_linear \(density) \(rescale)")
                rng = input.rng
                let ties = DELLAFusion(mode: .ties, density: density, epsilon: epsilon, rescale: rescale)
                    .combineDense(d, weights: mixedWeights, rng: &rng)
                assertClose(ties, toMatrix(refDisjoint(dropped, mixedWeights, .mergekit)), "della \(density) \(rescale)")
            }
        }
    }

    func testDELLAKeepsLargeEntriesMoreOften() {
        // One row of 200 entries with magnitudes 1…200: the top half must survive more often.
        let m = Matrix(rows: 1, cols: 200, data: (1...200).map { Float($0) * ($0 % 2 == 0 ? 1 : -1) })
        var rng = SeededRNG(seed: 9)
        var low = 0, high = 0
        for _ in 0..<50 {
            let out = DenseMerge.dellaDrop(m, density: 0.5, epsilon: 0.4, rescale: .none, rng: &rng)
            for j in 0..<200 where out.data[j] != 0 { if j < 100 { low += 1 } else { high += 1 } }
        }
        XCTAssertGreaterThan(high, low + 1500)   // expected 50·(70 − 30) = 2000 more
    }

    // MARK: Worked examples by hand

    func testTIESWorked2x2() {
        // density 0.5 keeps 2 of 4 entries per task:
        //   τ̃1 = [[4, 0], [0, -3]],  τ̃2 = [[-2, 5], [0, 0]],  τ̃3 = [[0, -6], [2, 0]],  w = (2, 1, -1)
        let t1 = Matrix([[4, -1], [0.5, -3]]), t2 = Matrix([[-2, 5], [1, -0.2]]), t3 = Matrix([[1, -6], [2, 0.1]])
        let w: [Float] = [2, 1, -1]
        // mergekit: weighted x = [[8,0],[0,-6]], [[-2,5],[0,0]], [[0,6],[-2,0]]
        //   (0,0) + : 8/2 = 4   (0,1) + : (5+6)/(1−1 → 1) = 11   (1,0) − : −2/−1 = 2   (1,1) − : −6/2 = −3
        let mk = TIESFusion(density: 0.5, consensus: .mergekit).combineDense([t1, t2, t3], weights: w)
        XCTAssertEqual(mk, Matrix([[4, 11], [2, -3]]))
        // PEFT: unweighted vote; (0,1): 0+5−6 < 0 elects −, so task 3 agrees: 6/1 = 6
        //   (0,0) 8/1   (1,0) + : task 3, −2/1   (1,1) − : task 1, −6/1
        let peft = TIESFusion(density: 0.5, consensus: .peft).combineDense([t1, t2, t3], weights: w)
        XCTAssertEqual(peft, Matrix([[8, 6], [-2, -6]]))
    }

    func testDAREWorked2x2WithFixedMask() {
        let t1 = Matrix([[1, 2], [3, 4]]), t2 = Matrix([[-2, 1], [-1, 4]])
        let masks: [[Bool]] = [[true, false, false, true], [true, true, false, false]]
        let w: [Float] = [1, 0.5]
        // 1/ρ = 2: τ̃1 = [[2,0],[0,8]], τ̃2 = [[-4,2],[0,0]] → Σ w τ̃ = [[0,1],[0,8]]
        XCTAssertEqual(DAREFusion(mode: .linear, density: 0.5).combineDense([t1, t2], weights: w, masks: masks),
                       Matrix([[0, 1], [0, 8]]))
        // L1: τ̃1 ×10/5, τ̃2 ×8/3 = [[-16/3, 8/3],[0,0]] → [[2 − 8/3, 4/3], [0, 8]]
        let l1 = DAREFusion(mode: .linear, density: 0.5, rescale: .l1Norm).combineDense([t1, t2], weights: w, masks: masks)
        assertClose(l1, Matrix([[2 - 8.0 / 3, 4.0 / 3], [0, 8]]), tol: 1e-6)
        // dare_ties (mergekit): x1 = [[2,0],[0,8]], x2 = [[-2,1],[0,0]]
        //   (0,0) sum 0 → + : 2/1   (0,1) + : 1/0.5 = 2   (1,0) nothing: 0   (1,1) 8/1
        XCTAssertEqual(DAREFusion(mode: .ties, density: 0.5).combineDense([t1, t2], weights: w, masks: masks),
                       Matrix([[2, 2], [0, 8]]))
    }

    func testTIESDensityOneIsDisjointMean() throws {
        let input = tinyInput(weights: [1, 1, 1])
        let d = try deltas(input)
        let ones: [Float] = [1, 1, 1]
        // Paper: mean of the entries whose sign matches sgn(Σ τ).
        var want = Matrix(rows: 7, cols: 9)
        for e in 0..<63 {
            let s = d.reduce(Float(0)) { $0 + $1.data[e] }
            let agree = d.map { $0.data[e] }.filter { s >= 0 ? $0 > 0 : $0 < 0 }
            want.data[e] = agree.isEmpty ? 0 : agree.reduce(0, +) / Float(agree.count)
        }
        for c in [SignConsensus.peft, .mergekit] {
            assertClose(TIESFusion(density: 1, consensus: c).combineDense(d, weights: ones), want, "\(c)")
        }
    }

    // MARK: Re-factoring

    private var allMethods: [any FusionMethod] {
        [TIESFusion(density: 0.4), TIESFusion(density: 0.4, consensus: .peft), MagnitudePruneFusion(density: 0.3),
         DAREFusion(mode: .linear, density: 0.6), DAREFusion(mode: .ties, density: 0.6),
         BreadcrumbsFusion(mode: .linear, density: 0.4, gamma: 0.05), BreadcrumbsFusion(mode: .ties, density: 0.4),
         DELLAFusion(mode: .ties), DELLAFusion(mode: .linear)]
    }

    /// The dense combination each method computes from `input` (same random stream as `fuse`).
    private func dense(_ m: any FusionMethod, _ input: ModuleFusionInput) throws -> Matrix {
        let (d, w) = try DenseMerge.taskDeltas(input)
        var rng = input.rng
        switch m {
        case let f as TIESFusion: return f.combineDense(d, weights: w)
        case let f as MagnitudePruneFusion: return f.combineDense(d, weights: w)
        case let f as DAREFusion: return f.combineDense(d, weights: w, rng: &rng)
        case let f as BreadcrumbsFusion: return f.combineDense(d, weights: w)
        case let f as DELLAFusion: return f.combineDense(d, weights: w, rng: &rng)
        default: XCTFail("unexpected method \(m.name)"); return Matrix(rows: 0, cols: 0)
        }
    }

    private func withRank(_ m: any FusionMethod, _ r: Int?) -> any FusionMethod {
        switch m {
        case var f as TIESFusion: f.rank = r; return f
        case var f as MagnitudePruneFusion: f.rank = r; return f
        case var f as DAREFusion: f.rank = r; return f
        case var f as BreadcrumbsFusion: f.rank = r; return f
        case var f as DELLAFusion: f.rank = r; return f
        default: return m
        }
    }

    func testFullRankRefactorReproducesDenseCombination() throws {
        let input = tinyInput()
        for m in allMethods {
            let fused = try withRank(m, 7).fuse(input)
            XCTAssertEqual(fused.rank, 7, m.name)
            XCTAssertEqual(fused.A.shape, [7, 9], m.name)
            XCTAssertEqual(fused.B.shape, [7, 7], m.name)
            assertClose(fused.B.matmul(fused.A), try dense(m, input), tol: 1e-4, m.name)
            XCTAssertEqual(fused.retainedEnergy ?? 0, 1, accuracy: 1e-5, m.name)
        }
    }

    func testDefaultRankIsLargestInputRankAndTruncationIsOptimal() throws {
        let input = tinyInput()
        for m in allMethods {
            let fused = try m.fuse(input)
            XCTAssertEqual(fused.rank, 5, m.name)
            // Eckart–Young: the error equals the energy of the dropped singular values.
            let target = try dense(m, input)
            let s = try Linalg.svd(target)
            let dropped = s.S.dropFirst(5).reduce(0.0) { $0 + Double($1) * Double($1) }
            let err = (fused.B.matmul(fused.A) - target).frobeniusNorm
            let total = target.frobeniusNorm * target.frobeniusNorm
            XCTAssertGreaterThan(dropped, 1e-3 * total, m.name)   // the truncation is not trivial
            XCTAssertEqual(err * err, dropped, accuracy: 1e-4 * total, m.name)
        }
    }

    func testSeedReproducibility() throws {
        for m in allMethods {
            let a = try m.fuse(tinyInput(rngSeed: 42)), b = try m.fuse(tinyInput(rngSeed: 42))
            XCTAssertEqual(a.A, b.A, m.name)
            XCTAssertEqual(a.B, b.B, m.name)
        }
        // A different seed draws a different DARE / DELLA mask and so a different result.
        var r1 = SeededRNG(seed: 1, stream: "m"), r2 = SeededRNG(seed: 2, stream: "m")
        let m1 = DenseMerge.bernoulliMask(count: 200, density: 0.5, rng: &r1)
        let m2 = DenseMerge.bernoulliMask(count: 200, density: 0.5, rng: &r2)
        XCTAssertNotEqual(m1, m2)
        let random: [any FusionMethod] = [DAREFusion(mode: .linear, density: 0.5), DAREFusion(mode: .ties, density: 0.5),
                                          DELLAFusion(mode: .ties), DELLAFusion(mode: .linear)]
        for m in random {
            let a = try dense(m, tinyInput(rngSeed: 1)), b = try dense(m, tinyInput(rngSeed: 2))
            XCTAssertGreaterThan(a.maxAbsDifference(b), 1e-3, m.name)
        }
        // Deterministic methods do not depend on the seed.
        let t1 = try dense(TIESFusion(), tinyInput(rngSeed: 1)), t2 = try dense(TIESFusion(), tinyInput(rngSeed: 2))
        XCTAssertEqual(t1, t2)
    }

    func testRandomizedRefactorKeepsTruncatedSVDEnergy() throws {
        // 600x520 > randomizedThreshold: DenseRefactor takes the randomized path. The target is
        // a merged-looking update: a rank-20 weighted sum plus a flat, full-rank tail (what
        // trimming and dropping add), the hard case for a randomized range finder.
        let input = tinyInput(out: 600, in: 520, ranks: [8, 8, 4], weights: [1, 0.7, -0.5])
        XCTAssertGreaterThan(min(input.outFeatures, input.inFeatures), DenseRefactor.randomizedThreshold)
        var noiseRNG = SeededRNG(seed: 77)
        let target = input.weightedSum() + Matrix.randomNormal(600, 520, std: 0.5, rng: &noiseRNG)
        var rng = input.rng
        let fused = try DenseRefactor.factor(target, rank: 8, rng: &rng)
        XCTAssertEqual(fused.rank, 8)
        let total = target.frobeniusNorm * target.frobeniusNorm
        let exact = try Linalg.svd(target).retainedEnergy(rank: 8)
        XCTAssertLessThan(exact, 0.95)   // a real tail
        let err = (fused.B.matmul(fused.A) - target).frobeniusNorm
        let kept = 1 - err * err / total   // energy actually captured by B·A
        XCTAssertGreaterThanOrEqual(kept, 0.999 * exact)
        XCTAssertEqual(fused.retainedEnergy ?? 0, kept, accuracy: 1e-3)
    }

    // MARK: Selection and validation

    func testTopMagnitudeKeepsExactlyKWithTies() {
        let m = Matrix(rows: 2, cols: 5, data: [1, -3, 3, 0, 2, 3, -1, 0, 3, 2])
        // |x| = 3 four times; k = 3 keeps the first three of them in row-major order.
        XCTAssertEqual(DenseMerge.topMagnitudeMask(m, count: 3),
                       [false, true, true, false, false, true, false, false, false, false])
        XCTAssertEqual(DenseMerge.topMagnitudeMask(m, count: 6).filter { $0 }.count, 6)
        XCTAssertEqual(DenseMerge.topMagnitudeMask(m, count: 0).filter { $0 }.count, 0)
        var vals: [Float] = [5, 1, 4, 1, 5, 9, 2, 6]
        XCTAssertEqual(DenseMerge.kthLargest(&vals, 1), 9)
        vals = [5, 1, 4, 1, 5, 9, 2, 6]
        XCTAssertEqual(DenseMerge.kthLargest(&vals, 3), 5)
        vals = [5, 1, 4, 1, 5, 9, 2, 6]
        XCTAssertEqual(DenseMerge.kthLargest(&vals, 8), 1)
    }

    func testNamesAndInvalidParameters() {
        XCTAssertEqual(allMethods.map(\.name), ["ties", "ties", "magnitude_prune", "dare_linear", "dare_ties",
                                                "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"])
        let input = tinyInput()
        for m in [TIESFusion(density: 0), MagnitudePruneFusion(density: 1.5), DAREFusion(density: -1),
                  BreadcrumbsFusion(density: 0), DELLAFusion(density: .nan)] as [any FusionMethod] {
            XCTAssertThrowsError(try m.fuse(input), m.name) { e in
                guard case FusionError.invalidParameter(_, "density", _, _) = e else { return XCTFail("\(e)") }
            }
        }
        XCTAssertThrowsError(try BreadcrumbsFusion(gamma: 1).fuse(input))
        XCTAssertThrowsError(try DELLAFusion(epsilon: -0.1).fuse(input))
        XCTAssertThrowsError(try TIESFusion(rank: -1).fuse(input))
    }

    func testNonFiniteInputIsRejected() {
        var input = tinyInput()
        input.terms[1].module.A.data[3] = .nan
        XCTAssertThrowsError(try TIESFusion().fuse(input)) { e in
            guard case FusionError.nonFinite = e else { return XCTFail("\(e)") }
        }
    }
}

/// Checks the PEFT conventions against PEFT itself: outputs of peft.utils.merge_utils `ties`
/// (`total` and `frequency`) and `magnitude_prune` on fixed dense task deltas, made by
/// scripts/make_dense_fusion_fixtures.py (peft 0.21.2).
final class DenseMethodsPEFTFixtureTests: XCTestCase {
    private struct Fixture: Decodable {
        struct Case: Decodable {
            var method: String
            var sign: String?
            var density: Double
            var weights: [Float]
            var result: [Float]
        }
        var rows: Int
        var cols: Int
        var deltas: [[Float]]
        var cases: [Case]
    }

    private func load() throws -> Fixture {
        let rel = "Fixtures/Fusion/peft_dense_merge.json"
        var url = Bundle.module.resourceURL?.appendingPathComponent(rel)
        if url == nil || !FileManager.default.fileExists(atPath: url!.path) {
            url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent(rel)
        }
        return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url!))
    }

    func testMatchesPEFTTiesAndMagnitudePrune() throws {
        let fx = try load()
        let deltas = fx.deltas.map { Matrix(rows: fx.rows, cols: fx.cols, data: $0) }
        XCTAssertEqual(fx.cases.count, 12)
        for c in fx.cases {
            let want = Matrix(rows: fx.rows, cols: fx.cols, data: c.result)
            let got: Matrix
            switch (c.method, c.sign) {
            case ("ties", "total"?):
                got = TIESFusion(density: c.density, consensus: .peft).combineDense(deltas, weights: c.weights)
            case ("ties", "frequency"?):
                got = TIESFusion(density: c.density, signElection: .unweighted, signMethod: .count, divisor: .agreeingCount)
                    .combineDense(deltas, weights: c.weights)
            case ("magnitude_prune", nil):
                got = MagnitudePruneFusion(density: c.density).combineDense(deltas, weights: c.weights)
            default:
                XCTFail("unknown fixture case \(c.method) \(c.sign ?? "-")"); continue
            }
            XCTAssertLessThan(got.maxAbsDifference(want), 1e-5 * max(1, want.maxAbs),
                              "\(c.method) \(c.sign ?? "") density \(c.density) weights \(c.weights)")
        }
    }
}
