import Foundation

/// A way of training an adapter other than learning every A and B entry directly (`lorafuse train
/// --variant`). The trainer optimises `parameters` with AdamW; the forward and backward passes of
/// `LlamaTrainingEngine` see the LoRA factors the parameters stand for, and the factors' gradients
/// are pulled back to the parameters. So a variant that reparametrises LoRA (NOLA) needs no change
/// to the model's passes, only `factors()` and its adjoint `parameterGradients`.
///
/// Plain LoRA is the trainer without a variant (the factors are the parameters).
public protocol TrainingVariant: AnyObject {
    /// The `--variant` name.
    var name: String { get }
    /// The trained values: what AdamW updates and checkpoints hold.
    var parameters: ParamSet { get set }
    /// The LoRA factors of the current parameters, as the forward pass applies them.
    func factors() -> LoRAParameters
    /// ∂L/∂parameters from ∂L/∂(A, B) of `factors()` (the adjoint of `factors`).
    func parameterGradients(_ g: LoRAGradients) -> ParamSet
    /// Bytes of the trained values as stored (the files add a config and a header).
    var storedBytes: Int { get }
    /// Writes the variant's own files into the existing folder `dir`; `eval`, `generate`,
    /// `report`, `serve` and `convert` read that folder as an adapter.
    func writeFiles(into dir: URL, name: String, baseModel: String?, path: String) throws
}

/// The variants `lorafuse train --variant` knows, by name.
public enum TrainingVariants {
    public static let names = ["lora", "nola"]
}

/// AdamW (the same per-element rule as `AdamW`) over a variant's named parameters.
struct ParamAdamW: Sendable {
    var weightDecay: Float
    private(set) var step = 0
    private(set) var m: ParamSet, v: ParamSet

    init(like p: ParamSet, weightDecay: Float) {
        self.weightDecay = weightDecay
        m = p.zeros(); v = p.zeros()
    }

    mutating func update(_ p: inout ParamSet, grads g: ParamSet, lr: Float) {
        step += 1
        for k in p.names {
            var pv = p[k], mv = m[k], vv = v[k]
            AdamRule.step(&pv, g[k], &mv, &vv, t: step, lr: lr, decay: 1 - lr * weightDecay)
            p[k] = pv; m[k] = mv; v[k] = vv
        }
    }

    mutating func restore(step: Int, m: ParamSet, v: ParamSet) {
        self.step = step; self.m = m; self.v = v
    }
}

extension ParamSet {
    /// torch.nn.utils.clip_grad_norm_ (as `LoRAGradients.clip`): scale by maxNorm / (norm + 1e-6)
    /// when the norm exceeds maxNorm. Returns the norm before clipping.
    @discardableResult
    mutating func clip(maxNorm: Double) -> Double {
        let n = globalNorm
        let coef = Float(maxNorm / (n + 1e-6))
        if maxNorm / (n + 1e-6) < 1 { for k in names { self[k] = self[k].map { $0 * coef } } }
        return n
    }
}
