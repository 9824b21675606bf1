import Foundation

// SMoRA (Zhao et al., "Each Rank Could be an Expert: Single-Ranked Mixture of Experts LoRA for
// Multi-Task Learning", arXiv 2501.15103; `train --variant smora`). One LoRA module whose ranks are
// the experts: a trained router W_g (r, in) scores them per token, the top-k of x W_gᵀ + d are
// kept, and each kept rank is weighted by the softmax of its router logit over the kept ones:
//
//     l = x W_gᵀ        keep = top-k of (l + d)        w_j = softmax_{keep}(l)_j
//     y += s · Σ_{j ∈ keep} w_j u_j B[:, j],   u = x Aᵀ
//
// A, B and W_g are trained; d balances the ranks without an auxiliary loss: after every step
// d_j += rate · sign(c̄ − c_j) (DeepSeek-V3's rule, which the paper adopts). The paper's code is not
// public; the gate weights (softmax over the kept logits, as top-k MoE routers do) and the router's
// initialisation (uniform ±1/√in, as PEFT's A, so the first steps already rank differently per
// token) are our reading of its description. The router reads the module's undropped input, as
// at inference. Files: a PEFT folder (`top_k`, `bias_u` in the config; `lora_A`, `lora_B`,
// `lora_router.weight` (r, in) and `lora_topk_bias` (r) per module), applied unmerged.

public enum SMoRADefaults {
    public static let rank = 16
    public static let topK = 4
    public static let alpha = 32.0
    public static let biasRate = 0.001
}

public final class SMoRAVariant: RankGatedVariant {
    public let name = "smora"
    public var parameters = ParamSet()
    public let topK: Int
    public let biasRate: Double
    private let template: LoRAParameters
    var biases: [[Float]]
    var moduleNames: [String] { template.modules.map(\.name) }

    public init(config c: LlamaConfig, options o: TrainingOptions, topK: Int, biasRate: Double) throws {
        try Self.validate(topK: topK, rank: o.rank, biasRate: biasRate, kind: "SMoRA")
        self.topK = topK
        self.biasRate = biasRate
        let p = LoRAParameters.initialize(config: c, rank: o.rank, alpha: o.alpha, targets: o.targets, rsLoRA: o.rsLoRA,
                                          seed: o.seed, layers: o.layers)
        for m in p.modules {
            var rng = SeededRNG(seed: o.seed, stream: "smora_router.\(m.layer).\(m.target.rawValue)")
            let bound = 1 / Float(m.inFeatures).squareRoot()
            parameters.add("\(m.name).lora_A", shape: [m.rank, m.inFeatures], values: m.A)
            parameters.add("\(m.name).lora_B", shape: [m.outFeatures, m.rank], values: m.B)
            parameters.add("\(m.name).lora_router", shape: [m.rank, m.inFeatures],
                           values: (0..<(m.rank * m.inFeatures)).map { _ in (2 * rng.nextUniform() - 1) * bound })
        }
        template = p
        biases = p.modules.map { [Float](repeating: 0, count: $0.rank) }
    }

    public func factors() -> LoRAParameters {
        RoutedFactors.factors(template, parameters, routerKey: "lora_router") { i, w in RankGate(topK: topK, bias: biases[i], router: w) }
    }

    public func parameterGradients(_ g: LoRAGradients) -> ParamSet {
        RoutedFactors.gradients(g, template, parameters, routerKey: "lora_router")
    }

    public var storedBytes: Int { template.modules.reduce(0) { $0 + 4 * $1.rank * (2 * $1.inFeatures + $1.outFeatures + 1) } }
}
