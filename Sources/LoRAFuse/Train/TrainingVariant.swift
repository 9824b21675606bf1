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
    /// Called after each step's gradients are summed and before the update (FlyLoRA's balancing
    /// bias reads the ranks the step's tokens kept).
    func observe(_ grads: LoRAGradients)
    /// Values that change during training without the optimizer (FlyLoRA's bias): checkpoints
    /// save and restore them beside `parameters`.
    var auxiliaryState: ParamSet { get set }
}

extension TrainingVariant {
    public func observe(_ grads: LoRAGradients) {}
    public var auxiliaryState: ParamSet {
        get { ParamSet() }
        set {}
    }
}

/// The variants `lorafuse train --variant` knows, by name. `lora-pro` is not a `TrainingVariant`:
/// it trains A and B themselves with another update rule (`LoRAOptimizerKind.loraPro`); `flexora`
/// is a search stage (`FlexoraSearch`, whose α-weighted LoRA is a `TrainingVariant`) followed by
/// plain LoRA on the layers it selects.
public enum TrainingVariants {
    public static let names = ["lora", "nola", "lora-pro", "flexora", "flylora", "smora"]
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
