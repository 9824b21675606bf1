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
        let bc1 = 1 - Float(pow(Double(beta1), Double(step)))
        let bc2Sqrt = (1 - Float(pow(Double(beta2), Double(step)))).squareRoot()
        let stepSize = lr / bc1, decay = 1 - lr * weightDecay
        let (b1, b2, eps) = (beta1, beta2, self.eps)
        func apply(_ w: inout [Float], _ g: [Float], _ m: inout [Float], _ v: inout [Float]) {
            for j in w.indices {
                let gj = g[j]
                m[j] = b1 * m[j] + (1 - b1) * gj
                v[j] = b2 * v[j] + (1 - b2) * gj * gj
                w[j] = w[j] * decay - stepSize * m[j] / (v[j].squareRoot() / bc2Sqrt + eps)
            }
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
