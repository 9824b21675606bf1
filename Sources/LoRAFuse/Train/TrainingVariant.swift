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
    public static let names = ["lora", "nola", "lora-pro", "flexora", "flylora", "smora", "loramoe", "mixlora"]
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

/// A variant whose modules choose ranks per token (FlyLoRA, SMoRA): the balancing bias of every
/// module is updated by rule after each step from the ranks its tokens kept, checkpointed beside
/// the parameters, and written with the adapter (`lora_topk_bias`, `top_k`, `bias_u`).
protocol RankGatedVariant: TrainingVariant {
    var topK: Int { get }
    var biasRate: Double { get }
    /// Module names, in `factors()` order.
    var moduleNames: [String] { get }
    /// Per module, the balancing bias d (r).
    var biases: [[Float]] { get set }
}

extension RankGatedVariant {
    /// Checks k and the bias rate before anything is allocated (`kind` names the method).
    static func validate(topK: Int, rank: Int, biasRate: Double, kind: String) throws {
        guard topK >= 1 && topK < rank else {
            throw TrainError.badOption(option: "top-k", reason: "\(kind) keeps k of the r ranks per token: need 1 ≤ k < --rank (\(rank)), got \(topK)")
        }
        guard biasRate.isFinite && biasRate >= 0 else {
            throw TrainError.badOption(option: "bias-rate", reason: "must be finite and ≥ 0, got \(biasRate)")
        }
    }

    public func observe(_ grads: LoRAGradients) {
        guard biasRate > 0 else { return }
        for i in biases.indices where !grads.rankCounts[i].isEmpty {
            RankGate.balance(&biases[i], counts: grads.rankCounts[i], rate: Float(biasRate))
        }
    }

    public var auxiliaryState: ParamSet {
        get {
            var s = ParamSet()
            for (n, d) in zip(moduleNames, biases) { s.add("\(n).lora_topk_bias", shape: [d.count], values: d) }
            return s
        }
        set {
            for (i, n) in moduleNames.enumerated() { biases[i] = newValue["\(n).lora_topk_bias"] }
        }
    }

    /// The adapter as trained so far, with the gate's config for the writer.
    public func adapter(name: String, baseModel: String?) -> LoRAAdapter {
        var a = factors().adapter(name: name, baseModel: baseModel)
        a.metadata.topK = topK
        a.metadata.biasRate = biasRate
        return a
    }

    public func writeFiles(into dir: URL, name: String, baseModel: String?, path: String) throws {
        try PEFTAdapter.writeFiles(adapter(name: name, baseModel: baseModel), into: dir, dtype: .f32, path: path)
    }
}

/// SMoRA and LoRAMoE train A, B and a router per module, stored as `<module>.lora_A`, `.lora_B`
/// and `<module>.<routerKey>`: the factors from those values and the gradients back to them.
enum RoutedFactors {
    /// `template` with A, B from `parameters` and each module's gate from `gate(index, router)`.
    static func factors(_ template: LoRAParameters, _ parameters: ParamSet, routerKey: String,
                        gate: (Int, [Float]) -> RankGate) -> LoRAParameters {
        var p = template
        for i in p.modules.indices {
            let n = p.modules[i].name
            p.modules[i].A = parameters["\(n).lora_A"]
            p.modules[i].B = parameters["\(n).lora_B"]
            p.modules[i].rankGate = gate(i, parameters["\(n).\(routerKey)"])
        }
        return p
    }

    static func gradients(_ g: LoRAGradients, _ template: LoRAParameters, _ parameters: ParamSet, routerKey: String) -> ParamSet {
        var out = parameters.zeros()
        for (i, m) in template.modules.enumerated() {
            out["\(m.name).lora_A"] = g.dA[i]
            out["\(m.name).lora_B"] = g.dB[i]
            out["\(m.name).\(routerKey)"] = g.dRouter[i]
        }
        return out
    }
}
