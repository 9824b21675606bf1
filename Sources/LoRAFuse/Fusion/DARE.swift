/// DARE — Drop And REscale (Yu et al. 2023, "Language Models are Super Mario: Absorbing
/// Abilities from Homologous Models as a Free Lunch", arXiv 2311.03099) on each module's dense ΔW:
///
///     τ_i = s_i B_i A_i,   m_i ~ Bernoulli(ρ) per entry (seeded),   τ̃_i = rescale(m_i ⊙ τ_i)
///     dare_linear:  ΔW = Σ_i w_i τ̃_i                (÷ Σ w_i with `normalize`)
///     dare_ties:    ΔW = TIES elect + disjoint merge of the τ̃_i (see `TIESFusion`)
///     B', A' = rank-r truncated SVD of ΔW
///
/// Rescale (`DropRescale`): default `.inverseProbability`, τ̃ = m ⊙ τ / ρ — the paper's and PEFT's
/// rule, unbiased (E[τ̃] = τ); `.l1Norm` is mergekit's (keeps ‖τ_i‖₁ exactly). The mask draws one
/// uniform per entry, row-major, task after task, from this module's stream `input.rng`, so the
/// result depends only on the seed and the module name. dare_ties' consensus default is
/// mergekit's, as for `ties` (PEFT: `SignConsensus.peft`). Default density 0.5 (a moderate
/// drop; the paper goes up to 0.9 drop rate on full fine-tunes, LoRA deltas are already
/// low-rank). Default rank: the largest input rank.
public struct DAREFusion: FusionMethod {
    public var name: String { mode == .linear ? "dare_linear" : "dare_ties" }
    public var mode: DenseMergeMode
    /// Keep probability ρ ∈ (0, 1].
    public var density: Double
    public var rank: Int?
    public var rescale: DropRescale
    /// Used by `.ties` only.
    public var consensus: SignConsensus
    /// Used by `.linear` only: divide by Σ w_i (mergekit's `normalize`).
    public var normalize: Bool

    public init(mode: DenseMergeMode = .linear, density: Double = 0.5, rank: Int? = nil,
                rescale: DropRescale = .inverseProbability, signElection: SignElection = .weighted,
                signMethod: SignMethod = .sum, divisor: DisjointDivisor = .weightSum, normalize: Bool = false) {
        self.mode = mode
        self.density = density
        self.rank = rank
        self.rescale = rescale
        self.consensus = SignConsensus(election: signElection, method: signMethod, divisor: divisor)
        self.normalize = normalize
    }

    /// Draws each task's keep mask from `rng` (task after task, row-major), then combines.
    public func combineDense(_ deltas: [Matrix], weights: [Float], rng: inout SeededRNG) -> Matrix {
        var masks: [[Bool]] = []
        masks.reserveCapacity(deltas.count)
        for d in deltas { masks.append(DenseMerge.bernoulliMask(count: d.count, density: density, rng: &rng)) }
        return combineDense(deltas, weights: weights, masks: masks)
    }

    /// The combination with given keep masks (one per task, row-major, true = kept).
    public func combineDense(_ deltas: [Matrix], weights: [Float], masks: [[Bool]]) -> Matrix {
        precondition(masks.count == deltas.count, "\(masks.count) masks for \(deltas.count) deltas")
        let dropped = zip(deltas, masks).map { DenseMerge.dareDrop($0, mask: $1, density: density, rescale: rescale) }
        switch mode {
        case .linear: return DenseMerge.weightedSum(dropped, weights: weights, normalize: normalize)
        case .ties: return DenseMerge.disjointMerge(dropped, weights: weights, consensus: consensus)
        }
    }

    public func fuse(_ input: ModuleFusionInput) throws -> FusedModule {
        return try DenseMerge.fuse(input, method: name, density: density, rank: rank) { deltas, weights, rng in
            combineDense(deltas, weights: weights, rng: &rng)
        }
    }
}
