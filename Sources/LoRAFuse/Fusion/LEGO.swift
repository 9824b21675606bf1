import Foundation

/// LoRA-LEGO (Zhao et al., "Merging LoRAs like Playing LEGO", arXiv 2409.16167).
///
/// A rank-r LoRA is a sum of r rank-1 "Minimal Semantic Units" (MSUs) b_j a_jᵀ, invariant to their
/// order, and concatenating LoRAs sums their updates. LEGO pools the units of all adapters,
/// clusters them into k groups and keeps one unit per group (the centroid), giving a rank-k LoRA,
/// then corrects the scale with a "dual reweighting". The paper's exact distance and reweighting
/// formulas were not available to us; the choices below are ours and documented.
///
/// Units. Adapter i with weight w_i and scale s_i contributes, for j < r_i,
///
///     b = √|w_i s_i| · B_i[:, j]   (out),    a = sgn(w_i s_i) · √|w_i s_i| · A_i[j, :]   (in)
///
/// so Σ_j b aᵀ = w_i s_i B_i A_i: concatenating all units is exactly task arithmetic. Splitting
/// the factor as √ on both sides balances b and a.
///
/// Representation. Each unit is the vector [b; a] (out + in) and clustered by Euclidean distance;
/// the centroid of a cluster is the mean of its members' [b; a], read back as (b̄, ā). The
/// pair (b, a) and (−b, −a) is the same unit, so before clustering the sign is canonicalised: the
/// entry of a with the largest |·| (first one on ties) is made positive. Without that, two copies
/// of one unit with opposite signs would average to zero. (b c, a / c) is also the same unit; the
/// balanced √ split above fixes that scale choice.
///
/// Clustering. k-means++ seeding (Arthur & Vassilvitskii 2007) from the module's seeded stream,
/// then Lloyd iterations until the assignment stops changing or `maxIterations`. Distances go
/// through one GEMM per iteration: ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖². An empty cluster is re-seeded with
/// the unit farthest from its centroid. With k ≥ number of units every unit is its own cluster.
///
/// Dual reweighting (our reading of the paper's two corrections, each switchable):
///  1. `unitNormRescale` (counters norm decay): averaging units that are not parallel shrinks them
///     (‖mean‖ ≤ mean ‖·‖). Each merged unit b̄ āᵀ is rescaled so its Frobenius norm ‖b̄‖·‖ā‖ equals
///     the mean of its members' ‖b‖·‖a‖ (both factors by the same √ factor).
///  2. `outputRescale` (counters variance growth/shrink of the sum): the merged update is scaled
///     so that ‖ΔW_merged‖_F = ‖Σ_i w_i ΔW_i‖_F, the target computed from the factors
///     (‖Σ w_i ΔW_i‖² = Σ_ij w_i w_j ⟨ΔW_i, ΔW_j⟩ with `deltaInnerProduct`), never densely.
public struct LEGOFusion: FusionMethod {
    public var name: String { "lego" }
    /// Number of clusters = rank of the fused LoRA; nil uses the largest input rank.
    public var rank: Int?
    public var unitNormRescale: Bool
    public var outputRescale: Bool
    public var maxIterations: Int

    public init(rank: Int? = nil, unitNormRescale: Bool = true, outputRescale: Bool = true, maxIterations: Int = 50) {
        self.rank = rank
        self.unitNormRescale = unitNormRescale
        self.outputRescale = outputRescale
        self.maxIterations = maxIterations
    }

    /// All units of the input as rows [b; a] of a (N, out + in) matrix, sign-canonicalised.
    public static func units(_ terms: [FusionTerm], outFeatures out: Int, inFeatures inF: Int) -> Matrix {
        let n = terms.reduce(0) { $0 + $1.module.rank }
        let d = out + inF
        var X = Matrix(rows: n, cols: d)
        var row = 0
        for t in terms {
            let c = t.effectiveScale
            let root = abs(c).squareRoot()
            let sgn: Float = c < 0 ? -1 : 1
            let A = t.module.A, B = t.module.B
            for j in 0..<t.module.rank {
                // The canonical sign: the largest-|·| entry of a positive.
                var best = 0
                var bestMag: Float = -1
                for x in 0..<inF where abs(A[j, x]) > bestMag { bestMag = abs(A[j, x]); best = x }
                let flip: Float = (sgn * A[j, best]) < 0 ? -1 : 1
                let base = row * d
                for o in 0..<out { X.data[base + o] = flip * root * B[o, j] }
                for x in 0..<inF { X.data[base + out + x] = flip * sgn * root * A[j, x] }
                row += 1
            }
        }
        return X
    }

    /// Seeded k-means++ and Lloyd iterations on the rows of `X`. Returns the cluster of every row
    /// (in 0..<min(k, N)); every cluster is non-empty.
    public static func kmeans(_ X: Matrix, k: Int, maxIterations: Int, rng: inout SeededRNG) -> [Int] {
        let n = X.rows, d = X.cols
        let k = min(k, n)
        if k <= 0 { return [Int](repeating: 0, count: n) }
        if k == n { return Array(0..<n) }
        let sq = (0..<n).map { i -> Double in
            var s = 0.0
            for v in X.row(i) { s += Double(v) * Double(v) }
            return s
        }
        func dist2(_ i: Int, _ c: ArraySlice<Float>) -> Double {
            var s = 0.0
            for (v, w) in zip(X.row(i), c) { let t = Double(v) - Double(w); s += t * t }
            return s
        }
        // k-means++ seeding.
        var centers = Matrix(rows: k, cols: d)
        var chosen = Int(rng.next() % UInt64(n))
        func setCenter(_ c: Int, _ i: Int) {
            for x in 0..<d { centers.data[c * d + x] = X.data[i * d + x] }
        }
        setCenter(0, chosen)
        var nearest = (0..<n).map { dist2($0, X.row(chosen)) }
        for c in 1..<k {
            let total = nearest.reduce(0, +)
            if total <= 0 {
                // Fewer distinct units than clusters: any unused point (duplicates) will do.
                chosen = (chosen + 1) % n
            } else {
                var target = rng.nextDouble() * total
                chosen = n - 1
                for i in 0..<n {
                    target -= nearest[i]
                    if target < 0 && nearest[i] > 0 { chosen = i; break }
                }
            }
            setCenter(c, chosen)
            for i in 0..<n { nearest[i] = min(nearest[i], dist2(i, X.row(chosen))) }
        }
        // Lloyd iterations.
        var assign = [Int](repeating: -1, count: n)
        for _ in 0..<max(1, maxIterations) {
            let dots = X.matmul(centers, transposeOther: true)      // (n, k)
            var csq = [Double](repeating: 0, count: k)
            for c in 0..<k { for v in centers.row(c) { csq[c] += Double(v) * Double(v) } }
            var changed = false
            var best = [Double](repeating: 0, count: n)
            for i in 0..<n {
                var bc = 0
                var bd = Double.infinity
                for c in 0..<k {
                    let dd = sq[i] - 2 * Double(dots[i, c]) + csq[c]
                    if dd < bd { bd = dd; bc = c }
                }
                best[i] = bd
                if assign[i] != bc { assign[i] = bc; changed = true }
            }
            // Re-seed empty clusters with the worst-served units.
            var counts = [Int](repeating: 0, count: k)
            for a in assign { counts[a] += 1 }
            for c in 0..<k where counts[c] == 0 {
                var worst = -1
                var wd = -1.0
                for i in 0..<n where counts[assign[i]] > 1 && best[i] > wd { wd = best[i]; worst = i }
                if worst < 0 { break }
                counts[assign[worst]] -= 1
                assign[worst] = c
                counts[c] = 1
                best[worst] = 0
                changed = true
            }
            // Centroids.
            centers = Matrix(rows: k, cols: d)
            for i in 0..<n {
                let c = assign[i]
                for x in 0..<d { centers.data[c * d + x] += X.data[i * d + x] }
            }
            for c in 0..<k where counts[c] > 0 {
                let f = 1 / Float(counts[c])
                for x in 0..<d { centers.data[c * d + x] *= f }
            }
            if !changed { break }
        }
        return assign
    }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        let terms = input.terms.filter { $0.effectiveScale != 0 }
        let out = input.outFeatures, inF = input.inFeatures
        if terms.isEmpty {
            return FusedModule(A: Matrix(rows: 0, cols: inF), B: Matrix(rows: out, cols: 0), retainedEnergy: 1)
        }
        let X = Self.units(terms, outFeatures: out, inFeatures: inF)   // (N, out + in)
        let k = min(rank ?? input.maxRank, X.rows)
        var rng = input.rng
        let assign = Self.kmeans(X, k: k, maxIterations: maxIterations, rng: &rng)
        let d = out + inF
        var B = Matrix(rows: out, cols: k)      // (out, k)
        var A = Matrix(rows: k, cols: inF)      // (k, in)
        var counts = [Int](repeating: 0, count: k)
        var memberNorm = [Double](repeating: 0, count: k)    // Σ ‖b‖·‖a‖ of the members
        for i in 0..<X.rows {
            let c = assign[i]
            counts[c] += 1
            var nb = 0.0, na = 0.0
            for o in 0..<out { let v = X.data[i * d + o]; B[o, c] += v; nb += Double(v) * Double(v) }
            for x in 0..<inF { let v = X.data[i * d + out + x]; A[c, x] += v; na += Double(v) * Double(v) }
            memberNorm[c] += (nb * na).squareRoot()
        }
        for c in 0..<k where counts[c] > 0 {
            var fb = 1 / Float(counts[c]), fa = fb
            if unitNormRescale {
                var nb = 0.0, na = 0.0
                for o in 0..<out { nb += Double(B[o, c]) * Double(B[o, c]) }
                for x in 0..<inF { na += Double(A[c, x]) * Double(A[c, x]) }
                let current = (nb * na).squareRoot() / Double(counts[c] * counts[c])
                let target = memberNorm[c] / Double(counts[c])
                if current > 0 {
                    let g = Float((target / current).squareRoot())
                    fb *= g
                    fa *= g
                }
            }
            for o in 0..<out { B[o, c] *= fb }
            for x in 0..<inF { A[c, x] *= fa }
        }
        if outputRescale {
            let target = Self.weightedSumNorm(terms)
            let merged = LoRAModule(A: A, B: B, scale: 1).deltaNorm
            if merged > 0 {
                let g = Float((target / merged).squareRoot())
                B.scale(by: g)
                A.scale(by: g)
            }
        }
        return FusedModule(A: A, B: B)
    }

    /// ‖Σ_i w_i ΔW_i‖_F from the factors: Σ_ij w_i w_j ⟨ΔW_i, ΔW_j⟩.
    public static func weightedSumNorm(_ terms: [FusionTerm]) -> Double {
        var total = 0.0
        for i in terms.indices {
            for j in i..<terms.count {
                let ip = Double(terms[i].weight) * Double(terms[j].weight) * deltaInnerProduct(terms[i].module, terms[j].module)
                total += i == j ? ip : 2 * ip
            }
        }
        return max(total, 0).squareRoot()
    }
}
