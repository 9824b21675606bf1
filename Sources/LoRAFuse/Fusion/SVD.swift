/// Exact truncated SVD of the weighted sum (Eckart–Young optimal rank-r approximation of
/// Σ w_i s_i B_i A_i), computed from the factors:
///
///     Σ w_i s_i B_i A_i = B̃ Ã,  B̃ = [w_1 s_1 B_1 | …] (out, R),  Ã = [A_1; …] (R, in),  R = Σ r_i
///     B̃ = Q_b R_b,  Ãᵀ = Q_a R_a,  R_b R_aᵀ = U_c S V_cᵀ   (R x R)
///     B' = Q_b U_c[:, :r] S[:r],  A' = V_c[:, :r]ᵀ Q_aᵀ
///
/// Cost O((out + in)·R²) instead of PEFT's dense O(out·in·min(out, in)) `torch.linalg.svd`, with
/// the same result up to rounding (same singular vectors, same B = U·S, A = Vᵀ convention).
/// Retained energy = Σ_{k≤r} S_k² / Σ S_k², exact because R ≥ the true rank.
public struct SVDFusion: FusionMethod {
    public var name: String { "svd" }
    /// Target rank; nil keeps the largest input rank (PEFT's default for `svd`).
    public var rank: Int?

    public init(rank: Int? = nil) { self.rank = rank }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        let target = rank ?? input.maxRank
        let terms = input.terms.filter { $0.effectiveScale != 0 }
        if terms.isEmpty || target == 0 {
            return FusedModule(A: Matrix(rows: 0, cols: input.inFeatures), B: Matrix(rows: input.outFeatures, cols: 0),
                               retainedEnergy: terms.isEmpty ? 1 : 0)
        }
        let left = Matrix.hconcat(terms.map { $0.module.B.scaled(by: $0.effectiveScale) })
        let right = Matrix.vconcat(terms.map { $0.module.A })
        let s = try Linalg.productSVD(left: left, right: right)
        let r = min(target, s.rank)
        let t = s.truncated(to: r)
        return FusedModule(A: t.Vt, B: t.U.scalingColumns(by: t.S), retainedEnergy: s.retainedEnergy(rank: r))
    }
}
