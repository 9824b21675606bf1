import Foundation

// Small building blocks for the generators: named parameter sets, dense layers as
// forward/backward pairs over row-major batches (GEMMs through BLAS), tanh, Adam.

/// Named Float tensors in a fixed order (weights of a network, or their gradients).
public struct ParamSet: Sendable, Equatable {
    public private(set) var names: [String] = []
    public private(set) var shapes: [String: [Int]] = [:]
    public var values: [String: [Float]] = [:]

    public init() {}

    public mutating func add(_ name: String, shape: [Int], values v: [Float]) {
        precondition(v.count == shape.reduce(1, *) && shapes[name] == nil)
        names.append(name); shapes[name] = shape; values[name] = v
    }

    public func zeros() -> ParamSet {
        var z = ParamSet()
        for n in names { z.add(n, shape: shapes[n]!, values: [Float](repeating: 0, count: values[n]!.count)) }
        return z
    }

    public subscript(_ n: String) -> [Float] {
        get { values[n]! }
        set { values[n] = newValue }
    }

    public var count: Int { names.reduce(0) { $0 + values[$1]!.count } }

    /// self += f · other
    public mutating func add(_ other: ParamSet, scaledBy f: Float) {
        for n in names { BLAS.axpy(count: values[n]!.count, alpha: f, x: other.values[n]!, y: &values[n]!) }
    }

    /// Dense backward into this set's gradients: W += dYᵀ x, and b += Σ_n dY when `b` is named.
    mutating func denseBackward(_ w: String, _ b: String?, x: [Float], rows N: Int, inFeatures I: Int, outFeatures O: Int, dY: [Float]) {
        var dW = values.removeValue(forKey: w)!
        var db = b.map { values.removeValue(forKey: $0)! } ?? [Float](repeating: 0, count: O)
        Dense.backward(x, rows: N, inFeatures: I, outFeatures: O, dY: dY, dW: &dW, db: &db)
        values[w] = dW
        if let b { values[b] = db }
    }

    public var globalNorm: Double {
        var s = 0.0
        for n in names { for v in values[n]! { s += Double(v) * Double(v) } }
        return s.squareRoot()
    }
}

/// Adam (Kingma & Ba 2015) over a ParamSet, with optional global-norm clipping of the gradient.
public struct ParamAdam: Sendable {
    public var lr: Float
    public var beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8
    public var maxGradNorm: Double?
    /// AdamW's decoupled weight decay λ: x·(1 − lr·λ) before the step (0: plain Adam).
    public var weightDecay: Float = 0
    /// Parameters updated lazily: entries whose gradient is exactly 0 keep their value and
    /// moments. For per-position tables that a mini-batch touches only a few rows of, dense Adam
    /// would keep moving every untouched row along its stale momentum.
    public var lazy: Set<String> = []
    var m: ParamSet, v: ParamSet
    public private(set) var step = 0

    public init(like p: ParamSet, lr: Float, maxGradNorm: Double? = nil) {
        self.lr = lr; self.maxGradNorm = maxGradNorm
        m = p.zeros(); v = p.zeros()
    }

    public mutating func update(_ p: inout ParamSet, grads gIn: ParamSet) {
        var g = gIn
        if let mx = maxGradNorm {
            let n = g.globalNorm
            if n > mx { for k in g.names { g.values[k] = g.values[k]!.map { $0 * Float(mx / n) } } }
        }
        step += 1
        for k in p.names {
            var mv = m.values[k]!, vv = v.values[k]!, pv = p.values[k]!
            AdamRule.step(&pv, g.values[k]!, &mv, &vv, t: step, lr: lr, beta1: beta1, beta2: beta2, eps: eps,
                          decay: 1 - lr * weightDecay, skipZeroGradient: lazy.contains(k))
            m.values[k] = mv; v.values[k] = vv; p.values[k] = pv
        }
    }

    /// Restores moments and step (from a checkpoint).
    mutating func restore(step: Int, m: ParamSet, v: ParamSet) {
        self.step = step; self.m = m; self.v = v
    }
}

/// Dense layer y = x Wᵀ (+ b) on row-major batches.
enum Dense {
    /// y (N, out) = x (N, in) · Wᵀ (W: (out, in)) + b, or y += … when `accumulate`.
    static func forward(_ x: [Float], rows N: Int, inFeatures I: Int, _ W: [Float], _ b: [Float]?, outFeatures O: Int,
                        into y: inout [Float], accumulate: Bool = false) {
        precondition(x.count >= N * I && W.count == O * I && y.count >= N * O)
        if let b, !accumulate {
            for n in 0..<N { for o in 0..<O { y[n * O + o] = b[o] } }
        } else if let b {
            for n in 0..<N { for o in 0..<O { y[n * O + o] += b[o] } }
        }
        let beta: Float = (accumulate || b != nil) ? 1 : 0
        BLAS.gemm(transA: false, transB: true, m: N, n: O, k: I, alpha: 1, a: x, lda: I, b: W, ldb: I, beta: beta, c: &y, ldc: O)
    }

    /// Given dY (N, out): dW += dYᵀ x (out, in) and db += Σ_n dY.
    static func backward(_ x: [Float], rows N: Int, inFeatures I: Int, outFeatures O: Int, dY: [Float],
                         dW: inout [Float], db: inout [Float]) {
        BLAS.gemm(transA: true, transB: false, m: O, n: I, k: N, alpha: 1, a: dY, lda: O, b: x, ldb: I, beta: 1, c: &dW, ldc: I)
        for n in 0..<N { for o in 0..<O { db[o] += dY[n * O + o] } }
    }

    /// dX (N, in) += dY (N, out) · W (out, in).
    static func inputGradient(dY: [Float], rows N: Int, _ W: [Float], inFeatures I: Int, outFeatures O: Int, into dX: inout [Float]) {
        BLAS.gemm(transA: false, transB: false, m: N, n: I, k: O, alpha: 1, a: dY, lda: O, b: W, ldb: I, beta: 1, c: &dX, ldc: I)
    }
}

enum Activation {
    /// In place: v ← tanh(v).
    static func tanhForward(_ v: inout [Float]) { for i in v.indices { v[i] = tanh(v[i]) } }
    /// d(pre) = d(post) · (1 − post²), given the post-activation values.
    static func tanhBackward(post: [Float], _ d: inout [Float]) { for i in d.indices { d[i] *= 1 - post[i] * post[i] } }
}
