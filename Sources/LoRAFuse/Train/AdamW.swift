import Foundation

/// AdamW (Loshchilov & Hutter 2019) as PyTorch's `torch.optim.AdamW` computes it, per element:
///
///     p ← p·(1 − lr·λ)                       (decoupled weight decay)
///     m ← β₁m + (1−β₁)g,   v ← β₂v + (1−β₂)g²
///     p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
public struct AdamW: Sendable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    public var weightDecay: Float = 0
    /// Number of updates done (t of the bias correction).
    public internal(set) var step = 0
    /// First and second moments, parallel to `LoRAParameters.modules`.
    public internal(set) var mA: [[Float]], vA: [[Float]], mB: [[Float]], vB: [[Float]]

    public init(like p: LoRAParameters, weightDecay: Float = 0, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8) {
        mA = p.modules.map { [Float](repeating: 0, count: $0.A.count) }
        vA = mA
        mB = p.modules.map { [Float](repeating: 0, count: $0.B.count) }
        vB = mB
        self.weightDecay = weightDecay
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
    }

    /// One update of every A and B with learning rate `lr`.
    public mutating func update(_ p: inout LoRAParameters, grads: LoRAGradients, lr: Float) {
        step += 1
        let decay = 1 - lr * weightDecay
        let (t, b1, b2, eps) = (step, beta1, beta2, self.eps)
        func apply(_ w: inout [Float], _ g: [Float], _ m: inout [Float], _ v: inout [Float]) {
            AdamRule.step(&w, g, &m, &v, t: t, lr: lr, beta1: b1, beta2: b2, eps: eps, decay: decay)
        }
        for i in p.modules.indices {
            apply(&p.modules[i].A, grads.dA[i], &mA[i], &vA[i])
            apply(&p.modules[i].B, grads.dB[i], &mB[i], &vB[i])
        }
    }

    /// Restores moments and step (from a checkpoint).
    mutating func restore(step: Int, mA: [[Float]], vA: [[Float]], mB: [[Float]], vB: [[Float]]) {
        self.step = step
        self.mA = mA; self.vA = vA; self.mB = mB; self.vB = vB
    }
}

/// The Adam update of one flat array, shared by every optimizer in the library (AdamW above, the
/// learned-fusion coefficients, the ICM generator and its fusion parameters):
///
///     m ← β₁m + (1−β₁)g,   v ← β₂v + (1−β₂)g²
///     x ← x·decay − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
///
/// `t` is the 1-based update number. With `skipZeroGradient`, entries whose gradient is exactly 0
/// keep their value and moments (lazy Adam, for tables a batch touches only a few rows of).
enum AdamRule {
    // Specialised for the two element types the library uses, over raw buffers: this runs over
    // every trainable value once per training step.
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    static func step<T: BinaryFloatingPoint>(_ x: inout [T], _ g: [T], _ m: inout [T], _ v: inout [T], t: Int, lr: T,
                                             beta1: T = 0.9, beta2: T = 0.999, eps: T = 1e-8, decay: T = 1,
                                             skipZeroGradient: Bool = false) {
        precondition(g.count == x.count && m.count == x.count && v.count == x.count, "Adam: arrays of different lengths")
        let bc1 = 1 - T(pow(Double(beta1), Double(t)))
        let bc2Sqrt = (1 - T(pow(Double(beta2), Double(t)))).squareRoot()
        let stepSize = lr / bc1
        let c1 = 1 - beta1, c2 = 1 - beta2
        x.withUnsafeMutableBufferPointer { x in
            m.withUnsafeMutableBufferPointer { m in
                v.withUnsafeMutableBufferPointer { v in
                    g.withUnsafeBufferPointer { g in
                        for j in 0..<x.count where !skipZeroGradient || g[j] != 0 {
                            m[j] = beta1 * m[j] + c1 * g[j]
                            v[j] = beta2 * v[j] + c2 * g[j] * g[j]
                            x[j] = x[j] * decay - stepSize * m[j] / (v[j].squareRoot() / bc2Sqrt + eps)
                        }
                    }
                }
            }
        }
    }
}

/// Learning rate per optimizer step as HF's `get_cosine_schedule_with_warmup` (the scheduler is
/// stepped after each update, so update k ≥ 1 uses the factor at s = k − 1):
/// s < warmup: s / warmup; else 0.5·(1 + cos(π·(s − warmup)/(total − warmup))).
public struct LRSchedule: Sendable, Equatable {
    public var peak: Float
    public var warmup: Int
    public var total: Int

    public init(peak: Float, warmup: Int, total: Int) {
        self.peak = peak
        self.warmup = warmup
        self.total = total
    }

    /// Learning rate of update `step` (1-based).
    public func lr(step: Int) -> Float {
        let s = step - 1
        if s < warmup { return peak * Float(s) / Float(max(1, warmup)) }
        let progress = Double(s - warmup) / Double(max(1, total - warmup))
        return peak * Float(max(0, 0.5 * (1 + cos(Double.pi * progress))))
    }
}

extension LoRAGradients {
    /// torch.nn.utils.clip_grad_norm_: when the global norm exceeds `maxNorm`, scale every gradient
    /// by maxNorm / (norm + 1e-6). Returns the norm before clipping.
    @discardableResult
    public mutating func clip(maxNorm: Double) -> Double {
        let n = globalNorm
        let coef = maxNorm / (n + 1e-6)
        if coef < 1 { scale(by: Float(coef)) }
        return n
    }
}
