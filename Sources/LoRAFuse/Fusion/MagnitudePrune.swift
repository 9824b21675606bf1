/// Magnitude pruning then task arithmetic (PEFT's `magnitude_prune` / `magnitude_prune_svd`;
/// the trim step of TIES without sign election, Yadav et al. 2023, arXiv 2306.01708):
///
///     τ_i = s_i B_i A_i,   τ̃_i = τ_i ⊙ top_k(|τ_i|),  k = ⌊ρ·out·in⌋
///     ΔW  = Σ_i w_i τ̃_i   (÷ Σ_i w_i with `normalize`, mergekit's option)
///     B', A' = rank-r truncated SVD of ΔW
///
/// Pruning the unweighted τ_i or w_i τ_i keeps the same entries (PEFT prunes τ_i). Ties at the
/// threshold: exactly k entries kept, earlier row-major entries first. Default: PEFT's plain sum
/// (no normalisation), matching `linear`'s task arithmetic. Default density 0.2 as `ties`;
/// default rank the largest input rank.
public struct MagnitudePruneFusion: FusionMethod {
    public var name: String { "magnitude_prune" }
    public var density: Double
    public var rank: Int?
    public var normalize: Bool

    public init(density: Double = 0.2, rank: Int? = nil, normalize: Bool = false) {
        self.density = density
        self.rank = rank
        self.normalize = normalize
    }

    public func combineDense(_ deltas: [Matrix], weights: [Float]) -> Matrix {
        let trimmed = Parallel.map(deltas) { DenseMerge.trimToTop($0, density: density) }
        return DenseMerge.weightedSum(trimmed, weights: weights, normalize: normalize)
    }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        return try DenseMerge.fuse(input, method: name, density: density, rank: rank) { deltas, weights, _ in
            combineDense(deltas, weights: weights)
        }
    }
}
