/// aTLAS (Zhang et al., "Knowledge Composition using Task Vectors with Learned Anisotropic
/// Scaling", arXiv 2407.02880) on LoRA adapters: one learnable coefficient per (adapter,
/// coefficient group), c = θ directly, so dL/dθ is the sum of the exact block gradients
/// dL/dc_{i,b} over the blocks of the group. The paper starts at λ = 0 on top of a pre-trained
/// model; here the start is `initialCoefficient`, by default (`AtlasDefaults`) 1/n, the mean of
/// the adapters, since the point of fusing adapters is to start from them (their plain sum, 1, is
/// n times too strong for one task). Penalties λ₁‖θ‖₁ + λ₂‖θ‖₂² act on c itself.
public enum AtlasDefaults {
    /// The default start of every coefficient over `n` adapters: 1/n, the `linear` mean.
    public static func start(adapters n: Int) -> Double { 1 / Double(max(n, 1)) }
}

struct LinearCoefficientMap: CoefficientMap {
    let adapters: Int
    let blocks: Int
    let groupOf: [Int]
    let groupCount: Int
    let granularity: CoefficientGranularity

    init(problem: LearnedProblem, granularity: CoefficientGranularity) {
        let g = problem.groups(granularity)
        adapters = problem.adapterCount
        blocks = problem.blocks.count
        groupOf = g.ofBlock
        groupCount = g.count
        self.granularity = granularity
    }

    var parameterCount: Int { adapters * groupCount }

    func initialParameters(_ o: LearnedFusionOptions) -> [Double] {
        [Double](repeating: o.initialCoefficient, count: parameterCount)
    }

    func coefficients(_ theta: [Double]) -> [[Double]] {
        (0..<adapters).map { a in (0..<blocks).map { b in theta[a * groupCount + groupOf[b]] } }
    }

    func pullback(_ theta: [Double], _ dc: [[Double]]) -> [Double] {
        var g = [Double](repeating: 0, count: parameterCount)
        for a in 0..<adapters { for b in 0..<blocks { g[a * groupCount + groupOf[b]] += dc[a][b] } }
        return g
    }
}
