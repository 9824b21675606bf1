import Foundation

/// One adapter's contribution to one module: w_i · ΔW_i with ΔW_i = s_i · B_i · A_i.
public struct FusionTerm: Sendable {
    public var module: LoRAModule
    /// User weight w_i; negative subtracts the skill.
    public var weight: Float
    /// Position of the adapter in the fusion's input list.
    public var adapterIndex: Int

    public init(module: LoRAModule, weight: Float, adapterIndex: Int) {
        self.module = module
        self.weight = weight
        self.adapterIndex = adapterIndex
    }

    /// w_i · s_i, the factor that turns B_i·A_i into this term's share of the sum.
    public var effectiveScale: Float { weight * module.scale }

    /// w_i · s_i · B_i · A_i, dense (out, in).
    public func weightedDelta() -> Matrix {
        var d = module.B.matmul(module.A)
        d.scale(by: effectiveScale)
        return d
    }
}

/// Everything a method sees of one module.
public struct ModuleFusionInput: Sendable {
    public var name: String
    public var kind: LoRAModuleKind
    public var outFeatures: Int
    public var inFeatures: Int
    /// Only the adapters that adapt this module (absent ones count as zero).
    public var terms: [FusionTerm]
    /// Number of adapters in the whole fusion, present here or not.
    public var adapterCount: Int
    /// This module's random stream: a function of the seed and the module name only.
    public var rng: SeededRNG

    public init(name: String, kind: LoRAModuleKind, outFeatures: Int, inFeatures: Int,
                terms: [FusionTerm], adapterCount: Int, rng: SeededRNG) {
        self.name = name
        self.kind = kind
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        self.terms = terms
        self.adapterCount = adapterCount
        self.rng = rng
    }

    /// Σ w_i ΔW_i as a dense (out, in) matrix, one GEMM per adapter accumulated in place.
    public func weightedSum() -> Matrix {
        var sum = Matrix(rows: outFeatures, cols: inFeatures)
        for t in terms where t.effectiveScale != 0 {
            sum.data.withUnsafeMutableBufferPointer { pc in
                t.module.B.data.withUnsafeBufferPointer { pb in
                    t.module.A.data.withUnsafeBufferPointer { pa in
                        BLAS.gemm(transA: false, transB: false, m: outFeatures, n: inFeatures, k: t.module.rank,
                                  alpha: t.effectiveScale, a: pb.baseAddress!, lda: t.module.rank,
                                  b: pa.baseAddress!, ldb: inFeatures, beta: 1, c: pc.baseAddress!, ldc: inFeatures)
                    }
                }
            }
        }
        return sum
    }

    /// The sum of ranks of the inputs: the rank `cat` produces and the default cap elsewhere.
    public var totalRank: Int { terms.reduce(0) { $0 + $1.module.rank } }
    public var maxRank: Int { terms.map(\.module.rank).max() ?? 0 }
}

/// A fused module as factors with the scale folded in: ΔW = B · A.
public struct FusedModule: Sendable {
    public var A: Matrix   // (r, in)
    public var B: Matrix   // (out, r)
    /// ‖kept‖² / ‖target‖² when the method truncated a rank (svd, dense methods); nil when exact.
    public var retainedEnergy: Double?

    public init(A: Matrix, B: Matrix, retainedEnergy: Double? = nil) {
        precondition(A.rows == B.cols, "fused rank mismatch: A \(A.shape), B \(B.shape)")
        self.A = A
        self.B = B
        self.retainedEnergy = retainedEnergy
    }

    public var rank: Int { A.rows }
}

/// A static fusion rule applied module by module. Implementations are value types holding
/// their parameters; `fuse` must be a pure function of its input (randomness from `input.rng`).
public protocol FusionMethod: Sendable {
    /// The name used on the command line and in YAML configs.
    var name: String { get }
    func fuse(_ input: ModuleFusionInput) throws -> FusedModule
}

public enum FusionError: Error, CustomStringConvertible {
    case noAdapters
    case weightCount(adapters: Int, weights: Int)
    case shapeMismatch(module: String, adapter1: String, shape1: [Int], adapter2: String, shape2: [Int])
    case kindMismatch(module: String, adapter1: String, kind1: LoRAModuleKind, adapter2: String, kind2: LoRAModuleKind)
    case unknownMethod(String, known: [String])
    case invalidParameter(method: String, parameter: String, value: String, expected: String)
    /// A parameter is set that the method does not read; `accepted` is what it does read.
    case unexpectedParameter(method: String, parameter: String, accepted: [String])
    case nonFinite(module: String, adapter: String)
    /// FlyLoRA adapters that cannot be averaged on one A.
    case rankGatedMismatch(adapter1: String, adapter2: String, module: String, reason: String)

    public var description: String {
        func s(_ shape: [Int]) -> String { shape.map(String.init).joined(separator: "x") }
        switch self {
        case .noAdapters:
            return "no adapters to fuse"
        case let .weightCount(a, w):
            return "got \(w) weights for \(a) adapters"
        case let .shapeMismatch(m, a1, s1, a2, s2):
            return "module \(m): adapter '\(a1)' has ΔW of shape \(s(s1)) but '\(a2)' has \(s(s2)); the adapters were trained on different base models"
        case let .kindMismatch(m, a1, k1, a2, k2):
            return "module \(m): adapter '\(a1)' adapts it as \(k1.rawValue) but '\(a2)' as \(k2.rawValue)"
        case let .unknownMethod(n, known):
            return "unknown fusion method '\(n)'; known methods: \(known.joined(separator: ", "))"
        case let .invalidParameter(m, p, v, e):
            return "method \(m): \(p) = \(v) is invalid; expected \(e)"
        case let .unexpectedParameter(m, p, accepted):
            var text = "method \(m) does not take parameter \(p) (it takes: "
                + (accepted.isEmpty ? "no parameters but seed" : accepted.joined(separator: ", ")) + ")"
            if m == "lego" && p == "rescale" {
                text += "; LEGO's reweighting (both, unit, output, none) is now called reweight"
            }
            return text
        case let .nonFinite(m, a):
            return "module \(m) of adapter '\(a)' contains NaN or infinite values"
        case let .rankGatedMismatch(a1, a2, m, r):
            return "FlyLoRA adapters '\(a1)' and '\(a2)' cannot be fused: module \(m): \(r)"
        }
    }
}

/// Refactors a dense update into rank-r factors through a (randomized, for large modules)
/// truncated SVD: B = U_r · S_r, A = V_rᵀ — PEFT's convention for its `*_svd` methods.
public enum DenseRefactor {
    /// Modules with min(out, in) above this use the randomized SVD; below it LAPACK's exact one.
    public static let randomizedThreshold = 512

    public static func factor(_ dense: Matrix, rank: Int, rng: inout SeededRNG) throws -> FusedModule {
        let r = max(0, min(rank, min(dense.rows, dense.cols)))
        let total = dense.frobeniusNorm
        if r == 0 || total == 0 {
            return FusedModule(A: Matrix(rows: r, cols: dense.cols), B: Matrix(rows: dense.rows, cols: r),
                               retainedEnergy: total == 0 ? 1 : 0)
        }
        let s: SVDResult
        if min(dense.rows, dense.cols) > randomizedThreshold {
            s = try Linalg.randomizedSVD(dense, rank: r, oversample: 16, powerIterations: 3, rng: &rng)
        } else {
            s = try Linalg.svd(dense).truncated(to: r)
        }
        let kept = s.S.reduce(0.0) { $0 + Double($1) * Double($1) }
        return FusedModule(A: s.Vt, B: s.U.scalingColumns(by: s.S), retainedEnergy: min(1, kept / (total * total)))
    }
}
