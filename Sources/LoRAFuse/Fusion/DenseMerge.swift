/// Shared building blocks of the dense fusion methods (`ties`, `dare_*`, `magnitude_prune`,
/// `breadcrumbs*`, `della*`): sparsifiers acting on one task's dense ΔW, the TIES sign election and
/// disjoint merge, and the plain weighted sum.
///
/// Conventions common to all of them, shared by PEFT (`*_svd` paths of `add_weighted_adapter`)
/// and mergekit:
/// - Sparsification acts on the *unweighted* task delta τ_i = s_i · B_i · A_i (PEFT's
///   `get_delta_weight`, mergekit's θ_i − θ_0); the user weight w_i is applied afterwards. For
///   magnitude pruning and random masks this is the same as pruning w_i·τ_i (a scalar does not
///   change the order of magnitudes nor the L1 ratio) except when w_i = 0.
/// - Everything is per module: peak memory is the N dense (out, in) task deltas plus O(out·in)
///   scratch, never a whole model.

/// Which quantity the TIES sign election looks at.
public enum SignElection: String, Sendable, CaseIterable {
    /// On the weighted deltas w_i·τ̃_i (mergekit). With a negative weight the task votes with
    /// the sign it actually contributes to the sum.
    case weighted
    /// On the unweighted pruned deltas τ̃_i (PEFT's `ties`/`dare_ties`); the agreement mask
    /// compares sgn(τ̃_i), not sgn(w_i τ̃_i), with the elected sign.
    case unweighted
}

/// How the elected sign is computed from the stacked entries x_i.
public enum SignMethod: String, Sendable, CaseIterable {
    /// sgn(Σ_i x_i) — PEFT `total`, mergekit `sum` (the TIES paper's rule).
    case sum
    /// sgn(Σ_i sgn(x_i)) — PEFT `frequency`, mergekit `count`.
    case count
}

/// The denominator of the TIES disjoint merge, per entry.
public enum DisjointDivisor: String, Sendable, CaseIterable {
    /// max(1, #{i : agreeing and nonzero}) — PEFT's `disjoint_merge`.
    case agreeingCount
    /// Σ_i w_i·[agree_i], replaced by 1 where it is exactly 0 — mergekit with `normalize: true`.
    /// With mixed-sign weights this can be small and amplify the entry (mergekit's behaviour).
    case weightSum
    /// 1: the plain sum of agreeing entries — mergekit with `normalize: false`.
    case none
}

/// How survivors of a random drop are rescaled.
public enum DropRescale: String, Sendable, CaseIterable {
    /// Divide each survivor by its keep probability (1/ρ for DARE — PEFT and the DARE paper;
    /// 1/p_ij for DELLA — the DELLA paper). Unbiased: E[τ̃] = τ.
    case inverseProbability
    /// Multiply the masked task by ‖τ‖₁ / ‖mask ⊙ τ‖₁ (mergekit `rescale`, L1 norm), left
    /// unscaled when either norm is below 1e-7.
    case l1Norm
    /// No rescaling.
    case none
}

/// Whether a DARE / breadcrumbs / DELLA variant ends with a plain weighted sum or with the
/// TIES sign election and disjoint merge.
public enum DenseMergeMode: String, Sendable, CaseIterable {
    case linear
    case ties
}

/// TIES consensus settings, shared by `ties`, `dare_ties`, `breadcrumbs_ties` and `della`.
/// The default is mergekit's, because it is defined on the weighted task vectors (ΔW) and so
/// lets a negative weight vote with the sign it really contributes.
public struct SignConsensus: Sendable, Equatable {
    public var election: SignElection
    public var method: SignMethod
    public var divisor: DisjointDivisor

    public init(election: SignElection = .weighted, method: SignMethod = .sum, divisor: DisjointDivisor = .weightSum) {
        self.election = election
        self.method = method
        self.divisor = divisor
    }

    /// PEFT's `ties` / `dare_ties` (`majority_sign_method="total"`).
    public static let peft = SignConsensus(election: .unweighted, method: .sum, divisor: .agreeingCount)
    /// mergekit's `ties` (`normalize: true`, `consensus_method: sum`).
    public static let mergekit = SignConsensus(election: .weighted, method: .sum, divisor: .weightSum)
}

public enum DenseMerge {
    // MARK: Inputs and output

    /// The unweighted task deltas τ_i = s_i·B_i·A_i, (out, in) each, and the weights w_i.
    /// Throws `FusionError.nonFinite` on NaN/∞, which would break magnitude ordering.
    public static func taskDeltas(_ input: ModuleFusionInput) throws -> (deltas: [Matrix], weights: [Float]) {
        var deltas: [Matrix] = []
        deltas.reserveCapacity(input.terms.count)
        for t in input.terms {
            let d = t.module.delta()   // (out, in)
            if d.data.contains(where: { !$0.isFinite }) {
                throw FusionError.nonFinite(module: input.name, adapter: "#\(t.adapterIndex + 1)")
            }
            deltas.append(d)
        }
        return (deltas, input.terms.map(\.weight))
    }

    /// Re-factors the combined ΔW to `rank` (nil: the largest input rank, as PEFT's `*_svd`).
    public static func refactor(_ dense: Matrix, rank: Int?, input: ModuleFusionInput,
                                rng: inout SeededRNG) throws -> FusedModule {
        try DenseRefactor.factor(dense, rank: rank ?? input.maxRank, rng: &rng)
    }

    /// The frame every dense method shares: check the parameters, form the unweighted task
    /// deltas of this module, `combine` them, and re-factor to `rank`.
    static func fuse(_ input: ModuleFusionInput, method: String, density: Double, rank: Int?,
                     combine: ([Matrix], [Float], inout SeededRNG) -> Matrix) throws -> FusedModule {
        try checkDensity(density, method: method)
        try checkRank(rank, method: method)
        var rng = input.rng
        let (deltas, weights) = try taskDeltas(input)
        if deltas.isEmpty {
            return try DenseRefactor.factor(Matrix(rows: input.outFeatures, cols: input.inFeatures), rank: 0, rng: &rng)
        }
        let dense = combine(deltas, weights, &rng)
        return try refactor(dense, rank: rank, input: input, rng: &rng)
    }

    /// Validates a density parameter in (0, 1].
    static func checkDensity(_ density: Double, method: String, name: String = "density") throws {
        guard density > 0, density <= 1, density.isFinite else {
            throw FusionError.invalidParameter(method: method, parameter: name, value: "\(density)", expected: "a number in (0, 1]")
        }
    }

    static func checkRank(_ rank: Int?, method: String) throws {
        if let r = rank, r < 0 {
            throw FusionError.invalidParameter(method: method, parameter: "rank", value: "\(r)", expected: "a non-negative integer")
        }
    }

    static func checkShapes(_ deltas: [Matrix], weights: [Float]) {
        precondition(deltas.count == weights.count, "\(deltas.count) deltas but \(weights.count) weights")
        if let f = deltas.first {
            precondition(deltas.allSatisfy { $0.rows == f.rows && $0.cols == f.cols }, "task deltas differ in shape")
        }
    }

    // MARK: Combination

    /// Σ_i w_i τ̃_i, divided by Σ_i w_i when `normalize` (mergekit's `normalize` for methods
    /// without consensus; a |Σ w| below 1e-8 is treated as 1, as mergekit does).
    public static func weightedSum(_ deltas: [Matrix], weights: [Float], normalize: Bool = false) -> Matrix {
        checkShapes(deltas, weights: weights)
        guard let f = deltas.first else { return Matrix(rows: 0, cols: 0) }
        var out = Matrix(rows: f.rows, cols: f.cols)
        for (d, w) in zip(deltas, weights) where w != 0 { out.add(d, scaledBy: w) }
        if normalize {
            let s = weights.reduce(0, +)
            if abs(s) >= 1e-8 { out.scale(by: 1 / s) }
        }
        return out
    }

    /// TIES elect-and-merge (Yadav et al. 2023, steps 2–3) on already-sparsified task deltas τ̃_i:
    ///
    ///     x_i = w_i τ̃_i (weighted election) or τ̃_i (unweighted)
    ///     γ   = +1 if Σ_i x_i ≥ 0 (sum) / Σ_i sgn(x_i) ≥ 0 (count), else −1   (ties go to +)
    ///     a_i = [sgn(x_i) = γ]                                  (zeros never agree)
    ///     ΔW  = Σ_i w_i τ̃_i a_i / D,  D = max(1, Σ a_i) | Σ w_i a_i (0 → 1) | 1
    ///
    /// Task-major passes over contiguous memory (votes, then agreeing sums), with two scratch
    /// arrays of one module's size.
    public static func disjointMerge(_ deltas: [Matrix], weights: [Float], consensus: SignConsensus) -> Matrix {
        checkShapes(deltas, weights: weights)
        guard let f = deltas.first else { return Matrix(rows: 0, cols: 0) }
        let n = f.count
        let weighted = consensus.election == .weighted
        let bySum = consensus.method == .sum
        let byCount = consensus.divisor == .agreeingCount
        // Pass 1: votes, then the elected sign in place.
        var elected = [Float](repeating: 0, count: n)
        elected.withUnsafeMutableBufferPointer { g in
            for (d, w) in zip(deltas, weights) {
                let ew: Float = weighted ? w : 1
                d.data.withUnsafeBufferPointer { p in
                    for e in 0..<n {
                        let x = ew * p[e]
                        g[e] += bySum ? x : sign(x)
                    }
                }
            }
            for e in 0..<n { g[e] = g[e] >= 0 ? 1 : -1 }
        }
        // Pass 2: agreeing weighted values and the divisor.
        var out = Matrix(rows: f.rows, cols: f.cols)
        var den = [Float](repeating: 0, count: n)
        out.data.withUnsafeMutableBufferPointer { o in
            den.withUnsafeMutableBufferPointer { q in
                elected.withUnsafeBufferPointer { g in
                    for (d, w) in zip(deltas, weights) {
                        let ew: Float = weighted ? w : 1
                        let dw: Float = byCount ? 1 : w
                        d.data.withUnsafeBufferPointer { p in
                            for e in 0..<n where sign(ew * p[e]) == g[e] {
                                o[e] += w * p[e]
                                q[e] += dw
                            }
                        }
                    }
                }
                switch consensus.divisor {
                case .agreeingCount: for e in 0..<n { o[e] /= max(1, q[e]) }
                case .weightSum: for e in 0..<n where q[e] != 0 { o[e] /= q[e] }
                case .none: break
                }
            }
        }
        return out
    }

    @inline(__always) static func sign(_ x: Float) -> Float { x > 0 ? 1 : (x < 0 ? -1 : 0) }

    // MARK: Sparsifiers


    /// Number of entries a magnitude pruning keeps: ⌊density·n⌋, computed in Double like PEFT's
    /// and mergekit's `int(density * numel)`, so the two agree on the count.
    public static func keepCount(density: Double, count n: Int) -> Int {
        if density >= 1 { return n }
        return max(0, min(n, Int((density * Double(n)).rounded(.down))))
    }

    /// Mask of the `k` largest-magnitude entries of `m` over the whole module. The order is by
    /// |x| descending with ties broken by the lower flat (row-major) index first, so exactly `k`
    /// entries are kept even when magnitudes tie at the threshold. O(n) on average (quickselect
    /// for the threshold, then one pass).
    public static func topMagnitudeMask(_ m: Matrix, count k: Int) -> [Bool] {
        let n = m.count
        if k <= 0 { return [Bool](repeating: false, count: n) }
        if k >= n { return [Bool](repeating: true, count: n) }
        var mags = m.data.map { abs($0) }
        let t = kthLargest(&mags, k)
        var greater = 0
        for x in m.data where abs(x) > t { greater += 1 }
        var equalsLeft = k - greater
        var mask = [Bool](repeating: false, count: n)
        for (e, x) in m.data.enumerated() {
            let a = abs(x)
            if a > t {
                mask[e] = true
            } else if a == t && equalsLeft > 0 {
                mask[e] = true
                equalsLeft -= 1
            }
        }
        return mask
    }

    /// The k-th largest value (k in 1...n) of `values`, which are reordered. Quickselect with a
    /// median-of-three pivot and a three-way partition, so runs of equal values (many zeros in
    /// already-sparse deltas) cost one pass.
    static func kthLargest(_ values: inout [Float], _ k: Int) -> Float {
        let n = values.count
        precondition(k >= 1 && k <= n)
        let target = n - k   // index in ascending order
        return values.withUnsafeMutableBufferPointer { v -> Float in
            var lo = 0, hi = n - 1
            while lo < hi {
                let a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi]
                let pivot = max(min(a, b), min(max(a, b), c))
                var lt = lo, i = lo, gt = hi
                while i <= gt {
                    let x = v[i]
                    if x < pivot {
                        v.swapAt(lt, i); lt += 1; i += 1
                    } else if x > pivot {
                        v.swapAt(i, gt); gt -= 1
                    } else {
                        i += 1
                    }
                }
                if target < lt { hi = lt - 1 } else if target > gt { lo = gt + 1 } else { return pivot }
            }
            return v[target]
        }
    }

    /// Keeps the ⌊density·n⌋ largest-magnitude entries of `m` (TIES trim, PEFT
    /// `magnitude_based_pruning`, mergekit `magnitude`), zeroing the rest.
    public static func trimToTop(_ m: Matrix, density: Double) -> Matrix {
        if density >= 1 { return m }
        let mask = topMagnitudeMask(m, count: keepCount(density: density, count: m.count))
        var out = m
        for e in 0..<out.count where !mask[e] { out.data[e] = 0 }
        return out
    }

    /// Model Breadcrumbs' mask (mergekit `magnitude_outliers`): drop the ⌊γ·n⌋ largest and the
    /// n − ⌊ρ·n⌋ − ⌊γ·n⌋ smallest magnitudes, keeping ⌊ρ·n⌋ entries; when ρ + γ > 1 fewer top
    /// entries are dropped so ⌊ρ·n⌋ are still kept. Same tie order as `topMagnitudeMask`.
    public static func breadcrumbs(_ m: Matrix, density: Double, gamma: Double) -> Matrix {
        if density >= 1 { return m }
        let n = m.count
        let target = keepCount(density: density, count: n)
        var top = max(0, Int((gamma * Double(n)).rounded(.down)))
        if n - target - top < 0 { top = n - target }
        let upper = topMagnitudeMask(m, count: top + target)
        let outliers = topMagnitudeMask(m, count: top)
        var out = m
        for e in 0..<n where !upper[e] || outliers[e] { out.data[e] = 0 }
        return out
    }

    /// DARE's keep mask: each entry kept independently with probability ρ, one uniform draw
    /// per entry in row-major order (`nextDouble() < ρ`). All true when ρ ≥ 1 (no draws).
    public static func bernoulliMask(count n: Int, density: Double, rng: inout SeededRNG) -> [Bool] {
        if density >= 1 { return [Bool](repeating: true, count: n) }
        var mask = [Bool](repeating: false, count: n)
        for e in 0..<n { mask[e] = rng.nextDouble() < density }
        return mask
    }

    /// DARE's drop and rescale (Yu et al. 2023) with a given keep mask: τ̃ = m ⊙ τ, then
    /// ÷ ρ (`.inverseProbability`), L1-rescaled (`.l1Norm`), or left as is.
    public static func dareDrop(_ m: Matrix, mask: [Bool], density: Double, rescale: DropRescale) -> Matrix {
        precondition(mask.count == m.count, "mask of \(mask.count) entries for a \(m.rows)x\(m.cols) matrix")
        if density >= 1 { return m }
        var out = m
        for e in 0..<out.count where !mask[e] { out.data[e] = 0 }
        switch rescale {
        case .inverseProbability: out.scale(by: Float(1 / density))
        case .l1Norm: l1Rescale(&out, original: m)
        case .none: break
        }
        return out
    }

    /// DELLA's MagPrune (Deep et al. 2024): in each row of n entries, rank by |x| ascending
    /// (rank 0 = smallest, ties by lower column first) and keep entry j with probability
    ///
    ///     p_j = (ρ − ε) + 2ε · rank_j / (n − 1)      (n = 1: p = ρ)
    ///
    /// with ε clamped to min(ε, ρ, 1 − ρ) so every p_j lies in [0, 1] (mergekit instead
    /// rejects such ε). Survivors are divided by p_j (paper) or L1-rescaled over the module.
    public static func dellaDrop(_ m: Matrix, density: Double, epsilon: Double, rescale: DropRescale,
                                 rng: inout SeededRNG) -> Matrix {
        if density >= 1 { return m }
        let eps = max(0, min(epsilon, density, 1 - density))
        var out = m
        let cols = m.cols
        var order = [Int](repeating: 0, count: cols)
        var prob = [Double](repeating: 0, count: cols)
        for i in 0..<m.rows {
            let base = i * cols
            for j in 0..<cols { order[j] = j }
            order.sort { a, b in
                let x = abs(m.data[base + a]), y = abs(m.data[base + b])
                return x < y || (x == y && a < b)
            }
            for (r, j) in order.enumerated() {
                prob[j] = cols > 1 ? (density - eps) + 2 * eps * Double(r) / Double(cols - 1) : density
            }
            for j in 0..<cols {
                let keep = rng.nextDouble() < prob[j]
                if !keep {
                    out.data[base + j] = 0
                } else if rescale == .inverseProbability {
                    out.data[base + j] = Float(Double(m.data[base + j]) / prob[j])
                }
            }
        }
        if rescale == .l1Norm { l1Rescale(&out, original: m) }
        return out
    }

    /// masked · ‖original‖₁ / ‖masked‖₁, unless either norm is below 1e-7 (mergekit's guard).
    static func l1Rescale(_ masked: inout Matrix, original: Matrix) {
        var before = 0.0, after = 0.0
        for x in original.data { before += Double(abs(x)) }
        for x in masked.data { after += Double(abs(x)) }
        if before < 1e-7 || after < 1e-7 { return }
        masked.scale(by: Float(before / after))
    }
}
