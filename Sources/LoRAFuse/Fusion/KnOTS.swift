/// KnOTS (Stoica et al., "Model Merging with SVD to Tie the KnOTS", arXiv 2410.19735).
///
/// The paper's observation: LoRA updates of different tasks live in nearly unrelated subspaces,
/// so merging rules that act entry by entry (TIES, DARE) work badly on them directly. KnOTS
/// first puts all tasks into one shared basis, then merges there:
///
///  1. Concatenate the task updates column-wise: X = [ΔW_1 | … | ΔW_n]   (out, n·in),
///     ΔW_i = s_i B_i A_i **unweighted** (the user weights w_i enter only in step 4).
///  2. SVD X = U S Vᵀ and keep the singular values above a threshold.
///  3. Split Vᵀ (k, n·in) column-wise into per-task blocks V_iᵀ (k, in), so ΔW_i = U S V_iᵀ
///     exactly (up to the dropped singular values): U S is shared, V_iᵀ holds the task.
///  4. Merge the V_iᵀ with an entry-wise rule (TIES, linear, DARE) into V_mergedᵀ.
///  5. ΔW = U S V_mergedᵀ, then refactor to the requested LoRA rank.
///
/// How lorafuse computes it without ever forming X (out·n·in floats):
///
///     X = L · D,   L = [s_1 B_1 | … | s_n B_n]   (out, R),   D = blockdiag(A_1, …, A_n)   (R, n·in)
///
/// Dᵀ is block diagonal, so its thin QR is the block-diagonal of the per-task QRs
/// A_iᵀ = Q_i R_i (Q_i (in, p_i) orthonormal columns, R_i (p_i, r_i), p_i = min(in, r_i)):
///
///     D = blockdiag(R_iᵀ) · blockdiag(Q_iᵀ),   X = (L · blockdiag(R_iᵀ)) · blockdiag(Q_iᵀ)
///
/// `Linalg.productSVD(left: L, right: blockdiag(R_iᵀ))` (a (out, R) times (R, P) product, P = Σ p_i,
/// tiny) gives U S Wᵀ; since blockdiag(Q_iᵀ) has orthonormal rows, X = U S (Wᵀ blockdiag(Q_iᵀ)) is
/// an SVD of X and the per-task slices are V_iᵀ = Wᵀ[:, block i] · Q_iᵀ  (k, in). Memory: the
/// n slices V_iᵀ (k·n·in floats, k ≤ R) plus the factors; never (R, n·in) or (out, n·in).
///
/// Reading of the paper and deviations (documented choices):
/// - Threshold: the reference keeps S > 1e-4 in absolute terms (on float64 SVDs of LoRA updates of
///   a particular magnitude). lorafuse keeps S > `relativeThreshold` · S_max (default 1e-4), which
///   is scale invariant (a task vector times 1000 keeps the same directions) and drops only
///   round-off directions of a rank-deficient concatenation.
/// - Weights: the paper merges with uniform weights and a global scaling coefficient; here the
///   merge rules take the user weights w_i (see `MergeRule`), so the `.linear` rule reproduces
///   task arithmetic exactly: U S Σ_i w_i V_iᵀ = Σ_i w_i ΔW_i when no singular value is dropped.
/// - Output rank: ΔW = (U S)(V_mergedᵀ) is already factored with inner dimension k, so the
///   re-ranking is a second `productSVD` (no dense SVD). `rank == nil` keeps all k directions
///   (exact, like `cat`); retained energy is reported when a rank truncates.
public struct KnOTSFusion: FusionMethod {
    /// How the per-task V_iᵀ blocks (k, in) are combined into one.
    public enum MergeRule: Sendable, Equatable {
        /// Σ_i w_i V_iᵀ: KnOTS-TA (task arithmetic in the aligned basis).
        case linear
        /// TIES (Yadav et al. 2023) on the aligned blocks (KnOTS-TIES, the paper's main variant):
        /// per task keep the `density` fraction of entries of V_iᵀ with the largest |·| (ties at the
        /// threshold are kept); τ_i = w_i · trimmed V_iᵀ; per entry elect the sign of Σ_i τ_i; merge
        /// the τ_i that agree with it, divided by their count (the disjoint mean of the TIES paper and
        /// of PEFT) or, with `disjointMean == false`, summed.
        case ties(density: Double, disjointMean: Bool = true)
        /// DARE (Yu et al. 2024) on the aligned blocks (KnOTS-DARE): each entry of V_iᵀ survives with
        /// probability `density` and is rescaled by 1/density; then Σ_i w_i V_iᵀ. Randomness from
        /// the module's seeded stream.
        case dare(density: Double)
    }

    public var name: String { "knots" }
    public var mergeRule: MergeRule
    /// Target rank of the fused LoRA; nil keeps every retained direction (rank k ≤ Σ r_i).
    public var rank: Int?
    /// Singular values ≤ relativeThreshold · S_max are dropped in step 2.
    public var relativeThreshold: Double

    public init(mergeRule: MergeRule = .ties(density: 0.2), rank: Int? = nil, relativeThreshold: Double = 1e-4) {
        self.mergeRule = mergeRule
        self.rank = rank
        self.relativeThreshold = relativeThreshold
    }

    /// Steps 1–3: the shared U S and the per-task V_iᵀ, computed from the factors.
    /// Terms with a zero weight or scale are left out: they contribute nothing to the merge and
    /// would only bend the shared basis.
    public static func alignedBasis(_ terms: [FusionTerm], relativeThreshold: Double)
        throws -> (US: Matrix, S: [Float], V: [Matrix]) {
        precondition(!terms.isEmpty)
        let out = terms[0].module.outFeatures
        // L = [s_1 B_1 | …]  (out, R);  per task A_iᵀ = Q_i R_i.
        let left = Matrix.hconcat(terms.map { $0.module.B.scaled(by: $0.module.scale) })   // (out, R)
        var qs: [Matrix] = []        // Q_i (in, p_i)
        var rts: [Matrix] = []       // R_iᵀ (r_i, p_i)
        for t in terms {
            let (q, r) = try Linalg.qr(t.module.A.transposed())   // (in, p_i), (p_i, r_i)
            qs.append(q)
            rts.append(r.transposed())
        }
        let R = rts.reduce(0) { $0 + $1.rows }
        let P = rts.reduce(0) { $0 + $1.cols }
        var core = Matrix(rows: R, cols: P)                         // blockdiag(R_iᵀ)  (R, P)
        var r0 = 0, p0 = 0
        for rt in rts {
            for i in 0..<rt.rows { for j in 0..<rt.cols { core[r0 + i, p0 + j] = rt[i, j] } }
            r0 += rt.rows
            p0 += rt.cols
        }
        let svd = try Linalg.productSVD(left: left, right: core)   // U (out, m), S, Wᵀ (m, P)
        let smax = Double(svd.S.first ?? 0)
        let k = smax > 0 ? svd.S.prefix { Double($0) > relativeThreshold * smax }.count : 0
        let t = svd.truncated(to: k)
        var V: [Matrix] = []
        p0 = 0
        for q in qs {
            let w = t.Vt.columns(p0..<(p0 + q.cols))                // (k, p_i)
            V.append(w.matmul(q, transposeOther: true))             // (k, in)
            p0 += q.cols
        }
        let us = k > 0 ? t.U.scalingColumns(by: t.S) : Matrix(rows: out, cols: 0)
        return (us, t.S, V)
    }

    /// Step 4 on the aligned blocks V_iᵀ (all (k, in)).
    public static func merge(_ V: [Matrix], weights: [Float], rule: MergeRule, rng: inout SeededRNG) -> Matrix {
        precondition(V.count == weights.count && !V.isEmpty)
        let rows = V[0].rows, cols = V[0].cols, count = rows * cols
        var merged = Matrix(rows: rows, cols: cols)
        switch rule {
        case .linear:
            for (v, w) in zip(V, weights) where w != 0 { merged.add(v, scaledBy: w) }
        case let .dare(density):
            let p = Float(density)
            for (v, w) in zip(V, weights) where w != 0 {
                var kept = v
                for e in 0..<count { kept.data[e] = rng.nextUniform() < p ? v.data[e] / p : 0 }
                merged.add(kept, scaledBy: w)
            }
        case let .ties(density, disjointMean):
            // Trim: per task, the top-density entries by magnitude.
            let keep = max(1, min(count, Int((density * Double(count)).rounded(.up))))
            var taus: [[Float]] = []
            for (v, w) in zip(V, weights) {
                var mags = v.data.map { abs($0) }
                let threshold: Float
                if keep >= count {
                    threshold = 0
                } else {
                    mags.sort(by: >)
                    threshold = mags[keep - 1]
                }
                taus.append(v.data.map { abs($0) >= threshold && $0 != 0 ? $0 * w : 0 })
            }
            for e in 0..<count {
                var total: Float = 0
                for t in taus { total += t[e] }
                if total == 0 { continue }
                var acc: Float = 0
                var n = 0
                for t in taus where t[e] != 0 && (t[e] > 0) == (total > 0) {
                    acc += t[e]
                    n += 1
                }
                merged.data[e] = disjointMean && n > 0 ? acc / Float(n) : acc
            }
        }
        return merged
    }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        let terms = input.terms.filter { $0.effectiveScale != 0 }
        let empty = FusedModule(A: Matrix(rows: 0, cols: input.inFeatures), B: Matrix(rows: input.outFeatures, cols: 0),
                                retainedEnergy: 1)
        if terms.isEmpty { return empty }
        let (us, _, V) = try Self.alignedBasis(terms, relativeThreshold: relativeThreshold)
        if us.cols == 0 { return empty }
        var rng = input.rng
        let vMerged = Self.merge(V, weights: terms.map(\.weight), rule: mergeRule, rng: &rng)   // (k, in)
        guard let r = rank, r < us.cols else {
            return FusedModule(A: vMerged, B: us)
        }
        // Step 5: ΔW = (U S)(V_mergedᵀ) is a product with inner dimension k: re-rank it exactly.
        let s = try Linalg.productSVD(left: us, right: vMerged)
        let kept = min(r, s.rank)
        let t = s.truncated(to: kept)
        return FusedModule(A: t.Vt, B: t.U.scalingColumns(by: t.S), retainedEnergy: s.retainedEnergy(rank: kept))
    }
}
