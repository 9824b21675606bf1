/// DELLA-Merging (Deep et al. 2024, "DELLA-Merging: Reducing Interference in Model Merging
/// through Magnitude-Based Sampling", arXiv 2406.11617) on each module's dense ΔW:
///
///     τ_i = s_i B_i A_i (out, in). MagPrune, per row of n = in entries: rank_j = position of
///     |τ_ij| in ascending order (0 … n−1), keep with probability
///         p_j = (ρ − ε) + 2ε · rank_j / (n − 1),   ε ← min(ε, ρ, 1 − ρ)
///     (larger magnitude → more likely kept; mean keep rate ρ), survivors τ_ij / p_j
///     della:         ΔW = TIES elect + disjoint merge of the τ̃_i (see `TIESFusion`)
///     della_linear:  ΔW = Σ_i w_i τ̃_i               (÷ Σ w_i with `normalize`)
///     B', A' = rank-r truncated SVD of ΔW
///
/// Rescale: default `.inverseProbability`, the paper's per-entry 1/p_j (unbiased);
/// `.l1Norm` is mergekit's (`della_magprune` with `rescale`: one factor ‖τ‖₁/‖m ⊙ τ‖₁ for the
/// whole tensor). mergekit rejects ε with ρ ± ε outside (0, 1); here ε is clamped so every p_j
/// stays in [0, 1]. Rows are the rows of B·A (output features for linear modules). Masks draw
/// one uniform per entry, row-major, task after task, from `input.rng`. Ties in magnitude:
/// the lower column ranks lower. mergekit's λ (a final scale) is not separate: scale the
/// weights. Defaults: ρ = 0.5, ε = 0.15 (mergekit's default ε), consensus as for `ties`.
/// Default rank: the largest input rank.
public struct DELLAFusion: FusionMethod {
    public var name: String { mode == .ties ? "della" : "della_linear" }
    public var mode: DenseMergeMode
    /// Mean keep probability ρ ∈ (0, 1].
    public var density: Double
    /// Half-width ε ≥ 0 of the keep-probability ramp.
    public var epsilon: Double
    public var rank: Int?
    public var rescale: DropRescale
    public var consensus: SignConsensus
    public var normalize: Bool

    public init(mode: DenseMergeMode = .ties, density: Double = 0.5, epsilon: Double = 0.15, rank: Int? = nil,
                rescale: DropRescale = .inverseProbability, signElection: SignElection = .weighted,
                signMethod: SignMethod = .sum, divisor: DisjointDivisor = .weightSum, normalize: Bool = false) {
        self.mode = mode
        self.density = density
        self.epsilon = epsilon
        self.rank = rank
        self.rescale = rescale
        self.consensus = SignConsensus(election: signElection, method: signMethod, divisor: divisor)
        self.normalize = normalize
    }

    public func combineDense(_ deltas: [Matrix], weights: [Float], rng: inout SeededRNG) -> Matrix {
        var dropped: [Matrix] = []
        dropped.reserveCapacity(deltas.count)
        for d in deltas {
            dropped.append(DenseMerge.dellaDrop(d, density: density, epsilon: epsilon, rescale: rescale, rng: &rng))
        }
        switch mode {
        case .linear: return DenseMerge.weightedSum(dropped, weights: weights, normalize: normalize)
        case .ties: return DenseMerge.disjointMerge(dropped, weights: weights, consensus: consensus)
        }
    }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        guard epsilon >= 0, epsilon.isFinite else {
            throw FusionError.invalidParameter(method: name, parameter: "epsilon", value: "\(epsilon)", expected: "a number ≥ 0")
        }
        return try DenseMerge.fuse(input, method: name, density: density, rank: rank) { deltas, weights, rng in
            combineDense(deltas, weights: weights, rng: &rng)
        }
    }
}
