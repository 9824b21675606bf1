/// Model Breadcrumbs (Davari & Belilovsky 2023, "Model Breadcrumbs: Scaling Multi-Task Model
/// Merging with Sparse Masks", arXiv 2312.06795) on each module's dense ΔW:
///
///     τ_i = s_i B_i A_i;  over the module, drop the ⌊γ·n⌋ largest |τ_i| (outliers) and the
///     n − ⌊ρ·n⌋ − ⌊γ·n⌋ smallest, keeping ⌊ρ·n⌋ entries in between (n = out·in)
///     breadcrumbs:       ΔW = Σ_i w_i τ̃_i             (÷ Σ w_i with `normalize`)
///     breadcrumbs_ties:  ΔW = TIES elect + disjoint merge of the τ̃_i (see `TIESFusion`)
///     B', A' = rank-r truncated SVD of ΔW
///
/// Density is the kept fraction, as in mergekit (`magnitude_outliers`); the paper's bottom
/// fraction β is 1 − ρ − γ. If ρ + γ > 1, fewer outliers are dropped so ⌊ρ·n⌋ stay (mergekit's
/// rule). Ties in magnitude: earlier row-major entries rank higher. Defaults: γ = 0.01 (paper
/// and mergekit), ρ = 0.1 (keep the 10% below the top 1%; a choice, the paper tunes β per
/// setting), plain sum for `breadcrumbs` (the paper's task arithmetic), mergekit's consensus for
/// `breadcrumbs_ties` as for `ties`. Default rank: the largest input rank.
public struct BreadcrumbsFusion: FusionMethod {
    public var name: String { mode == .linear ? "breadcrumbs" : "breadcrumbs_ties" }
    public var mode: DenseMergeMode
    /// Kept fraction ρ ∈ (0, 1].
    public var density: Double
    /// Fraction γ ∈ [0, 1) of largest-magnitude entries dropped as outliers.
    public var gamma: Double
    public var rank: Int?
    public var consensus: SignConsensus
    public var normalize: Bool

    public init(mode: DenseMergeMode = .linear, density: Double = 0.1, gamma: Double = 0.01, rank: Int? = nil,
                signElection: SignElection = .weighted, signMethod: SignMethod = .sum,
                divisor: DisjointDivisor = .weightSum, normalize: Bool = false) {
        self.mode = mode
        self.density = density
        self.gamma = gamma
        self.rank = rank
        self.consensus = SignConsensus(election: signElection, method: signMethod, divisor: divisor)
        self.normalize = normalize
    }

    public func combineDense(_ deltas: [Matrix], weights: [Float]) -> Matrix {
        let kept = Parallel.map(deltas) { DenseMerge.breadcrumbs($0, density: density, gamma: gamma) }
        switch mode {
        case .linear: return DenseMerge.weightedSum(kept, weights: weights, normalize: normalize)
        case .ties: return DenseMerge.disjointMerge(kept, weights: weights, consensus: consensus)
        }
    }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        guard gamma >= 0, gamma < 1 else {
            throw FusionError.invalidParameter(method: name, parameter: "gamma", value: "\(gamma)", expected: "a number in [0, 1)")
        }
        return try DenseMerge.fuse(input, method: name, density: density, rank: rank) { deltas, weights, _ in
            combineDense(deltas, weights: weights)
        }
    }
}
