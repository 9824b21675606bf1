import Foundation

// FlyLoRA training (`train --variant flylora`). Per module (see Adapter/RankGate.swift for the
// forward): A (r, in) is frozen, sparse and random — p = ⌊in·k/r⌋ non-zeros per row at random
// columns, each N(0, 1/r²), the authors' "sparse" initialisation (their fork: p = in // (r // k),
// std 1/r) — and acts as the router; B (out, r) starts at 0 and is the only trained value; the
// balancing bias d starts at 0 and after every optimizer step moves by ±rate towards an even use
// of the ranks (`RankGate.balance`). Scale α/r as LoRA. The authors' MMLU run uses r = 32, k = 8,
// α = 64, rate 0.001: the defaults here.
//
// The gradient of B is LoRA's with the unkept ranks' u zeroed: dB = s · dYᵀ (u ⊙ keep); A gets
// none. The output is a PEFT folder as the authors' PEFT fork writes it (adapter_config.json with
// top_k, bias_u and init_lora_weights "sparse"; adapter_model.safetensors with lora_A, lora_B and
// lora_topk_bias per module). Stock PEFT ignores top_k and would apply every rank to every token,
// so `convert` and the GGUF/MLX writers refuse FlyLoRA adapters.

/// The authors' settings (NeurIPS 2025 code, scripts/run_mmlu.sh).
public enum FlyLoRADefaults {
    public static let rank = 32
    public static let topK = 8
    public static let alpha = 64.0
    public static let biasRate = 0.001
}

public final class FlyLoRAVariant: RankGatedVariant {
    public let name = "flylora"
    public var parameters = ParamSet()
    public let topK: Int
    public let biasRate: Double
    private let template: LoRAParameters           // A and the module layout; B and d come from the state
    var biases: [[Float]]
    var moduleNames: [String] { template.modules.map(\.name) }

    /// `options` give the rank, α, targets, layers and seed (of A), as for LoRA.
    public init(config c: LlamaConfig, options o: TrainingOptions, topK: Int, biasRate: Double) throws {
        try Self.validate(topK: topK, rank: o.rank, biasRate: biasRate, kind: "FlyLoRA")
        self.topK = topK
        self.biasRate = biasRate
        var p = LoRAParameters.initialize(config: c, rank: o.rank, alpha: o.alpha, targets: o.targets, rsLoRA: o.rsLoRA,
                                          seed: o.seed, layers: o.layers)
        for i in p.modules.indices {
            let m = p.modules[i]
            p.modules[i].A = Self.sparseA(seed: o.seed, layer: m.layer, target: m.target, rank: m.rank, inFeatures: m.inFeatures, topK: topK)
            p.modules[i].rankGate = RankGate(topK: topK, bias: [Float](repeating: 0, count: m.rank))
            p.modules[i].trainsA = false
            parameters.add(Self.tensorName(m.name), shape: [m.outFeatures, m.rank], values: m.B)
        }
        template = p
        biases = p.modules.map { [Float](repeating: 0, count: $0.rank) }
    }

    static func tensorName(_ module: String) -> String { "\(module).lora_B" }

    /// The frozen router of one module (r, in): each row has ⌊in·k/r⌋ (≥ 1) non-zeros at distinct
    /// random columns, drawn N(0, 1/r²), from the module's own seeded stream.
    static func sparseA(seed: UInt64, layer: Int, target: Projection, rank r: Int, inFeatures n: Int, topK k: Int) -> [Float] {
        var rng = SeededRNG(seed: seed, stream: "flylora_A.\(layer).\(target.rawValue)")
        let p = max(1, min(n, n * k / r))
        var A = [Float](repeating: 0, count: r * n)
        for i in 0..<r {
            let cols = rng.permutation(n).prefix(p)
            for j in cols { A[i * n + j] = rng.nextNormal() / Float(r) }
        }
        return A
    }

    public func factors() -> LoRAParameters {
        var p = template
        for i in p.modules.indices {
            p.modules[i].B = parameters[Self.tensorName(p.modules[i].name)]
            p.modules[i].rankGate = RankGate(topK: topK, bias: biases[i])
        }
        return p
    }

    public func parameterGradients(_ g: LoRAGradients) -> ParamSet {
        var out = parameters.zeros()
        for (i, m) in template.modules.enumerated() { out[Self.tensorName(m.name)] = g.dB[i] }
        return out
    }

    public var storedBytes: Int { template.modules.reduce(0) { $0 + 4 * $1.rank * ($1.inFeatures + $1.outFeatures + 1) } }
}
