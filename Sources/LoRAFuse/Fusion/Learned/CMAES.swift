import Foundation

/// (μ/μ_w, λ)-CMA-ES (Hansen, "The CMA Evolution Strategy: A Tutorial", arXiv 1604.00772) with
/// the tutorial's default strategy parameters: weighted recombination of the best μ = ⌊λ/2⌋,
/// cumulative step-size adaptation, and rank-one + rank-μ covariance updates. All randomness
/// comes from one seeded generator, so a run is a function of (x0, σ0, seed, objective).
///
/// Box constraints are handled by repair: a sample outside the box is clipped, and the clipped
/// point is what is evaluated and what enters the updates (so the distribution learns the box).
public struct CMAES: Sendable {
    public let dimension: Int
    public let populationSize: Int
    public private(set) var mean: [Double]
    public private(set) var sigma: Double
    public private(set) var generation = 0
    let bounds: ClosedRange<Double>?

    private let weights: [Double]
    private let muEff, cSigma, dSigma, cc, c1, cMu, chiN: Double
    private var pSigma: [Double], pc: [Double]
    private var C: [Double]        // n×n row-major covariance
    private var Bm: [Double]       // eigenvectors, columns
    private var D: [Double]        // √eigenvalues
    private var rng: SeededRNG
    private var pending: [[Double]] = []   // y = (x − m)/σ of the last ask

    public init(mean x0: [Double], sigma: Double, seed: UInt64, populationSize requested: Int? = nil,
                bounds: ClosedRange<Double>? = nil) {
        precondition(!x0.isEmpty && sigma > 0, "CMA-ES needs a non-empty start and σ > 0")
        let n = x0.count
        dimension = n
        self.populationSize = max(2, requested ?? (4 + Int(3 * log(Double(n)))))
        mean = x0
        self.sigma = sigma
        self.bounds = bounds
        let lam = self.populationSize
        let m = lam / 2
        var w = (1...m).map { log(Double(m) + 0.5) - log(Double($0)) }
        let ws = w.reduce(0, +)
        w = w.map { $0 / ws }
        weights = w
        let me = 1 / w.reduce(0) { $0 + $1 * $1 }
        muEff = me
        let nd = Double(n)
        cSigma = (me + 2) / (nd + me + 5)
        dSigma = 1 + 2 * max(0, ((me - 1) / (nd + 1)).squareRoot() - 1) + (me + 2) / (nd + me + 5)
        cc = (4 + me / nd) / (nd + 4 + 2 * me / nd)
        let c1v = 2 / ((nd + 1.3) * (nd + 1.3) + me)
        c1 = c1v
        cMu = min(1 - c1v, 2 * (me - 2 + 1 / me) / ((nd + 2) * (nd + 2) + me))
        chiN = nd.squareRoot() * (1 - 1 / (4 * nd) + 1 / (21 * nd * nd))
        pSigma = [Double](repeating: 0, count: n)
        pc = pSigma
        C = [Double](repeating: 0, count: n * n)
        for i in 0..<n { C[i * n + i] = 1 }
        Bm = C
        D = [Double](repeating: 1, count: n)
        rng = SeededRNG(seed: seed, stream: "cma-es")
    }

    private var muCount: Int { populationSize / 2 }

    private mutating func normal() -> Double {
        var u1 = rng.nextDouble()
        while u1 <= .leastNormalMagnitude { u1 = rng.nextDouble() }
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * rng.nextDouble())
    }

    /// The next generation's λ candidate points (clipped to the bounds).
    public mutating func ask() -> [[Double]] {
        let n = dimension
        pending = []
        var xs: [[Double]] = []
        for _ in 0..<populationSize {
            let z = (0..<n).map { _ in normal() }
            var x = [Double](repeating: 0, count: n)
            for i in 0..<n {
                var y = 0.0
                for j in 0..<n { y += Bm[i * n + j] * D[j] * z[j] }
                x[i] = mean[i] + sigma * y
            }
            if let b = bounds { x = x.map { min(max($0, b.lowerBound), b.upperBound) } }
            pending.append((0..<n).map { (x[$0] - mean[$0]) / sigma })
            xs.append(x)
        }
        return xs
    }

    /// Updates the distribution from the objective values of the points `ask` returned.
    public mutating func tell(_ values: [Double]) {
        precondition(values.count == pending.count, "tell needs one value per asked point")
        let n = dimension, mu = muCount
        let order = values.indices.sorted { values[$0] < values[$1] }
        var yw = [Double](repeating: 0, count: n)
        for k in 0..<mu { for i in 0..<n { yw[i] += weights[k] * pending[order[k]][i] } }
        for i in 0..<n { mean[i] += sigma * yw[i] }
        if let b = bounds { mean = mean.map { min(max($0, b.lowerBound), b.upperBound) } }
        // C^{-1/2} y_w = B D^{-1} Bᵀ y_w
        var t = [Double](repeating: 0, count: n)
        for j in 0..<n {
            var s = 0.0
            for i in 0..<n { s += Bm[i * n + j] * yw[i] }
            t[j] = s / D[j]
        }
        let csn = (cSigma * (2 - cSigma) * muEff).squareRoot()
        for i in 0..<n {
            var s = 0.0
            for j in 0..<n { s += Bm[i * n + j] * t[j] }
            pSigma[i] = (1 - cSigma) * pSigma[i] + csn * s
        }
        generation += 1
        let psNorm = pSigma.reduce(0) { $0 + $1 * $1 }.squareRoot()
        let hSigma: Double = psNorm / (1 - pow(1 - cSigma, Double(2 * generation))).squareRoot()
            < (1.4 + 2 / Double(n + 1)) * chiN ? 1 : 0
        let ccn = (cc * (2 - cc) * muEff).squareRoot()
        for i in 0..<n { pc[i] = (1 - cc) * pc[i] + hSigma * ccn * yw[i] }
        let decay = 1 - c1 - cMu + (1 - hSigma) * c1 * cc * (2 - cc)
        for i in 0..<n {
            for j in 0...i {
                var rankMu = 0.0
                for k in 0..<mu { rankMu += weights[k] * pending[order[k]][i] * pending[order[k]][j] }
                let v = decay * C[i * n + j] + c1 * pc[i] * pc[j] + cMu * rankMu
                C[i * n + j] = v
                C[j * n + i] = v
            }
        }
        sigma *= exp((cSigma / dSigma) * (psNorm / chiN - 1))
        let (vals, vecs) = CMAES.symmetricEigen(C, n: n)
        Bm = vecs
        D = vals.map { max($0, 1e-300).squareRoot() }
        pending = []
    }

    /// Minimises `f` within `budget` evaluations (the start x0 is evaluated first and counts).
    /// `onEvaluation(index, x, f(x))` sees every evaluation (1-based). Returns the best point seen.
    public static func minimize(_ f: ([Double]) throws -> Double, x0: [Double], sigma: Double, budget: Int, seed: UInt64,
                                bounds: ClosedRange<Double>? = nil, populationSize: Int? = nil,
                                onEvaluation: ((Int, [Double], Double) -> Void)? = nil) rethrows -> (x: [Double], value: Double, evaluations: Int) {
        var es = CMAES(mean: x0, sigma: sigma, seed: seed, populationSize: populationSize, bounds: bounds)
        var start = x0
        if let b = bounds { start = start.map { min(max($0, b.lowerBound), b.upperBound) } }
        var best = (x: start, value: try f(start))
        var evals = 1
        onEvaluation?(evals, start, best.value)
        while evals < budget {
            let xs = es.ask()
            var values: [Double] = []
            for x in xs where evals < budget {
                let v = try f(x)
                evals += 1
                onEvaluation?(evals, x, v)
                values.append(v.isNaN ? .infinity : v)
                if v < best.value { best = (x, v) }
            }
            // A generation cut short by the budget cannot update the distribution; it only
            // contributes its evaluations to the best point.
            if values.count == xs.count { es.tell(values) }
        }
        return (best.x, best.value, evals)
    }

    /// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations (Double;
    /// n is the number of adapters, so O(n³) sweeps are negligible). Returns eigenvalues and the
    /// eigenvectors as the columns of an n×n row-major matrix.
    static func symmetricEigen(_ a: [Double], n: Int) -> (values: [Double], vectors: [Double]) {
        var A = a
        var V = [Double](repeating: 0, count: n * n)
        for i in 0..<n { V[i * n + i] = 1 }
        for _ in 0..<100 {
            var off = 0.0, diag = 0.0
            for i in 0..<n {
                diag += A[i * n + i] * A[i * n + i]
                for j in 0..<n where j != i { off += A[i * n + j] * A[i * n + j] }
            }
            if off <= 1e-30 * max(diag, 1e-300) { break }
            for p in 0..<max(n - 1, 0) {
                for q in (p + 1)..<n {
                    let apq = A[p * n + q]
                    if apq == 0 { continue }
                    let theta = (A[q * n + q] - A[p * n + p]) / (2 * apq)
                    let t = (theta >= 0 ? 1 : -1) / (abs(theta) + (theta * theta + 1).squareRoot())
                    let c = 1 / (t * t + 1).squareRoot(), s = t * c
                    for k in 0..<n {
                        let akp = A[k * n + p], akq = A[k * n + q]
                        A[k * n + p] = c * akp - s * akq
                        A[k * n + q] = s * akp + c * akq
                    }
                    for k in 0..<n {
                        let apk = A[p * n + k], aqk = A[q * n + k]
                        A[p * n + k] = c * apk - s * aqk
                        A[q * n + k] = s * apk + c * aqk
                    }
                    for k in 0..<n {
                        let vkp = V[k * n + p], vkq = V[k * n + q]
                        V[k * n + p] = c * vkp - s * vkq
                        V[k * n + q] = s * vkp + c * vkq
                    }
                }
            }
        }
        return ((0..<n).map { A[$0 * n + $0] }, V)
    }
}
