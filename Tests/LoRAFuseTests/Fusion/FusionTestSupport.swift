import XCTest
@testable import LoRAFuse

/// Test helpers for the fusion tests: random adapters and dense references built with plain
/// loops (no BLAS), so the factored code paths are checked against something independent.
enum FusionFixture {
    static func module(out: Int, in inF: Int, rank r: Int, alpha: Float, rsLoRA: Bool = false,
                       rng: inout SeededRNG) -> LoRAModule {
        let A = Matrix.randomNormal(r, inF, std: 0.5, rng: &rng)
        let B = Matrix.randomNormal(out, r, std: 0.5, rng: &rng)
        let scale = rsLoRA ? alpha / Float(r).squareRoot() : alpha / Float(r)
        return LoRAModule(A: A, B: B, scale: scale)
    }

    /// s · B · A with plain loops in Double.
    static func denseDelta(_ m: LoRAModule) -> Matrix {
        var d = Matrix(rows: m.outFeatures, cols: m.inFeatures)
        for i in 0..<m.outFeatures {
            for j in 0..<m.inFeatures {
                var acc = 0.0
                for k in 0..<m.rank { acc += Double(m.B[i, k]) * Double(m.A[k, j]) }
                d[i, j] = Float(acc * Double(m.scale))
            }
        }
        return d
    }

    /// Σ w_i s_i B_i A_i with plain loops.
    static func denseSum(_ modules: [LoRAModule], _ weights: [Float]) -> Matrix {
        var sum = Matrix(rows: modules[0].outFeatures, cols: modules[0].inFeatures)
        for (m, w) in zip(modules, weights) {
            let d = denseDelta(m)
            for e in 0..<sum.data.count { sum.data[e] += w * d.data[e] }
        }
        return sum
    }

    /// B · A of a fused module with plain loops.
    static func denseFused(_ f: FusedModule) -> Matrix {
        denseDelta(LoRAModule(A: f.A, B: f.B, scale: 1))
    }

    static func input(_ modules: [LoRAModule], _ weights: [Float], name: String = "layers.0.q_proj",
                      seed: UInt64 = 0) -> ModuleFusionInput {
        let terms = zip(modules, weights).enumerated().map { FusionTerm(module: $1.0, weight: $1.1, adapterIndex: $0) }
        return ModuleFusionInput(name: name, kind: .linear, outFeatures: modules[0].outFeatures,
                                 inFeatures: modules[0].inFeatures, terms: terms, adapterCount: modules.count,
                                 rng: SeededRNG(seed: seed, stream: name))
    }

    /// Mixed ranks (2, 3, 5), one rsLoRA-scaled module, weights with a negative one.
    static func mixed(out: Int = 11, in inF: Int = 9, seed: UInt64 = 7) -> ([LoRAModule], [Float]) {
        var rng = SeededRNG(seed: seed)
        let ms = [module(out: out, in: inF, rank: 2, alpha: 4, rng: &rng),
                  module(out: out, in: inF, rank: 3, alpha: 6, rsLoRA: true, rng: &rng),
                  module(out: out, in: inF, rank: 5, alpha: 16, rng: &rng)]
        return (ms, [0.7, -0.4, 1.3])
    }

    static func relError(_ a: Matrix, _ b: Matrix) -> Double {
        let diff = a - b
        return diff.frobeniusNorm / max(b.frobeniusNorm, 1e-30)
    }
}
