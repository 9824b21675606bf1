import Foundation

/// Learned CAT (Prabhakar et al., "LoRA Soups", arXiv 2410.13025): per coefficient group (by
/// default one projection of one layer, as in the paper) a softmax over the adapters,
///     c_{i,b} = S · softmax(θ_{·,g(b)})_i,
/// trained by gradient with every A and B frozen. The paper uses S = 1 (a convex mix); that
/// starts every adapter at 1/n of its strength, far from the adapters' own behaviour when n is
/// a dozen, so the default S = n starts at θ = 0 with c = 1 (the plain sum, `cat` with weights
/// 1) while keeping the softmax's competition: the coefficients of a group always sum to S.
/// `LearnedFusionOptions.catScale = 1` gives the paper's convex mix.
///
/// Gradient through the softmax, p = softmax(θ_g): dL/dθ_j = S · p_j · (ĝ_j − Σ_k p_k ĝ_k) with
/// ĝ_i = Σ_{b in g} dL/dc_{i,b}. Penalties act on θ (toward the uniform mix).
struct SoftmaxCoefficientMap: CoefficientMap {
    let adapters: Int
    let blocks: Int
    let groupOf: [Int]
    let groupCount: Int
    let scale: Double
    let granularity: CoefficientGranularity

    init(problem: LearnedProblem, granularity: CoefficientGranularity, scale: Double) {
        let g = problem.groups(granularity)
        adapters = problem.adapterCount
        blocks = problem.blocks.count
        groupOf = g.ofBlock
        groupCount = g.count
        self.scale = scale
        self.granularity = granularity
    }

    var parameterCount: Int { adapters * groupCount }

    /// θ = 0: the uniform mix. (`initialCoefficient` does not apply: the softmax fixes the sum.)
    func initialParameters(_ o: LearnedFusionOptions) -> [Double] {
        [Double](repeating: 0, count: parameterCount)
    }

    /// p[group][adapter]
    func softmax(_ theta: [Double]) -> [[Double]] {
        (0..<groupCount).map { g in
            let z = (0..<adapters).map { theta[$0 * groupCount + g] }
            let mx = z.max()!
            let e = z.map { exp($0 - mx) }
            let s = e.reduce(0, +)
            return e.map { $0 / s }
        }
    }

    func coefficients(_ theta: [Double]) -> [[Double]] {
        let p = softmax(theta)
        return (0..<adapters).map { a in (0..<blocks).map { b in scale * p[groupOf[b]][a] } }
    }

    func pullback(_ theta: [Double], _ dc: [[Double]]) -> [Double] {
        let p = softmax(theta)
        var gsum = [[Double]](repeating: [Double](repeating: 0, count: adapters), count: groupCount)
        for a in 0..<adapters { for b in 0..<blocks { gsum[groupOf[b]][a] += dc[a][b] } }
        var out = [Double](repeating: 0, count: parameterCount)
        for g in 0..<groupCount {
            let mean = (0..<adapters).reduce(0.0) { $0 + p[g][$1] * gsum[g][$1] }
            for j in 0..<adapters { out[j * groupCount + g] = scale * p[g][j] * (gsum[g][j] - mean) }
        }
        return out
    }
}
