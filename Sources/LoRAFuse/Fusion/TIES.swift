/// TIES-Merging (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging
/// Models", arXiv 2306.01708) on each module's dense ΔW, then re-factored to rank r:
///
///     τ_i  = s_i B_i A_i                                   (out, in), unweighted
///     τ̃_i  = τ_i ⊙ top_k(|τ_i|),  k = ⌊ρ·out·in⌋           trim, per task over the module
///     γ    = sgn(Σ_i x_i)  or  sgn(Σ_i sgn(x_i)),  x_i = w_i τ̃_i | τ̃_i   elect (0 → +)
///     ΔW   = Σ_i w_i τ̃_i [sgn(x_i) = γ] / D                disjoint merge
///     B', A' = rank-r truncated SVD of ΔW (B' = U_r S_r, A' = V_rᵀ)
///
/// The two peers differ in x_i and D (see `SignConsensus`):
/// - PEFT (`ties_svd`): x_i = τ̃_i (unweighted), D = max(1, #agreeing nonzero entries).
/// - mergekit (`ties`, normalize): x_i = w_i τ̃_i, D = Σ_i w_i [agree_i] (0 → 1).
///
/// Default: mergekit's (`SignConsensus()`), because TIES is defined on task vectors, i.e. on
/// the deltas actually added, so a negative weight (skill subtraction) votes with the sign it
/// contributes; PEFT's unweighted vote lets it veto entries with the opposite sign. With all
/// weights 1 the two agree and equal the paper's disjoint mean. Pick `SignConsensus.peft` to
/// reproduce PEFT exactly.
///
/// Ties in magnitude at the trim threshold: exactly k entries are kept, earlier (row-major)
/// entries first. k = ⌊ρ·n⌋ as in both peers (`int(density * numel)`).
/// Default density 0.2: the paper's recommended top-20% (k = 20).
/// Default rank: the largest input rank (PEFT's `*_svd` default).
public struct TIESFusion: FusionMethod {
    public var name: String { "ties" }
    /// Fraction ρ ∈ (0, 1] of each task's entries kept by the trim.
    public var density: Double
    /// Target rank; nil keeps the largest input rank.
    public var rank: Int?
    public var consensus: SignConsensus

    public init(density: Double = 0.2, rank: Int? = nil, signElection: SignElection = .weighted,
                signMethod: SignMethod = .sum, divisor: DisjointDivisor = .weightSum) {
        self.density = density
        self.rank = rank
        self.consensus = SignConsensus(election: signElection, method: signMethod, divisor: divisor)
    }

    public init(density: Double = 0.2, rank: Int? = nil, consensus: SignConsensus) {
        self.density = density
        self.rank = rank
        self.consensus = consensus
    }

    /// The dense TIES combination of unweighted task deltas τ_i (all of one shape).
    public func combineDense(_ deltas: [Matrix], weights: [Float]) -> Matrix {
        let trimmed = Parallel.map(deltas) { DenseMerge.trimToTop($0, density: density) }
        return DenseMerge.disjointMerge(trimmed, weights: weights, consensus: consensus)
    }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        return try DenseMerge.fuse(input, method: name, density: density, rank: rank) { deltas, weights, _ in
            combineDense(deltas, weights: weights)
        }
    }
}
