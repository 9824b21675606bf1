import Foundation

// LoRAMoE (Dou et al., "LoRAMoE: Alleviate World Knowledge Forgetting in Large Language Models via
// MoE-Style Plugin", arXiv 2312.09979; `train --variant loramoe`). Each targeted projection gets E
// LoRA experts (A_i (r, in), B_i (out, r)) and a router W_g (E, in) without bias; every expert is
// used for every token, weighted by a dense softmax:
//
//     w = softmax(x W_gᵀ)            y += (α/r) · Σ_i w_i B_i (A_i x)
//
// A, B and W_g are trained. The localized balancing constraint splits the experts in two halves
// (the first for world knowledge, the second for downstream tasks) and adds
// β · CV²(Q ⊙ I) to the loss, Q[m, i] = Σ over sequence m's tokens of w_i, I = 1 ± δ by whether
// expert i's half is sequence m's type (`LlamaTrainingEngine.localizedBalance`). Examples are
// downstream tasks unless `train --knowledge-data` gives world-knowledge ones.
//
// Inside lorafuse the E experts of a module are one LoRA of rank E·r whose ranks are gated in
// groups of r (`RankGate.ranksPerExpert`), so sessions, batched decode and the server run it on
// the same unmerged path as SMoRA. Files: the layout of the authors' PEFT fork — config `r` (per
// expert), `lora_alpha`, `lora_nums`, `blc_alpha`, `blc_weight`; tensors `<module>.lora_A{i}.weight`,
// `<module>.lora_B{i}.weight`, `<module>.lora_route.weight` — in safetensors.
//
// Defaults are the released run_loramoe.sh (8 experts of rank 4, α 32, on gate, up and down)
// except the constraint, which that script turns off (blc_alpha = blc_weight = 0): we default it on
// at δ = β = 0.1 (`--blc-weight 0` is the script's run).

public enum LoRAMoEDefaults {
    public static let experts = 8
    public static let rank = 4
    public static let alpha = 32.0
    public static let targets: [Projection] = [.gate, .up, .down]
    public static let blcAlpha: Float = 0.1
    public static let blcWeight: Float = 0.1
}

public final class LoRAMoEVariant: TrainingVariant {
    public let name = "loramoe"
    public var parameters = ParamSet()
    public let experts: Int
    /// Rank of each expert.
    public let expertRank: Int
    public let balance: ExpertBalance
    private let template: LoRAParameters

    /// `options.rank` is each expert's rank; the scale is α/r of one expert, as LoRAMoE's layer.
    public init(config c: LlamaConfig, options o: TrainingOptions, experts: Int, balance: ExpertBalance) throws {
        guard experts >= 2 else {
            throw TrainError.badOption(option: "experts", reason: "LoRAMoE mixes at least 2 experts per module, got \(experts)")
        }
        guard balance.alpha.isFinite, balance.alpha >= 0, balance.alpha < 1 else {
            throw TrainError.badOption(option: "blc-alpha", reason: "δ weights the groups by 1 ± δ: need 0 ≤ δ < 1, got \(balance.alpha)")
        }
        guard balance.weight.isFinite, balance.weight >= 0 else {
            throw TrainError.badOption(option: "blc-weight", reason: "must be finite and ≥ 0, got \(balance.weight)")
        }
        guard !o.rsLoRA else {
            throw TrainError.badOption(option: "rslora", reason: "LoRAMoE scales each expert by α/r; rsLoRA is not part of it")
        }
        self.experts = experts
        self.expertRank = o.rank
        self.balance = balance
        var p = LoRAParameters.initialize(config: c, rank: experts * o.rank, alpha: o.alpha, targets: o.targets,
                                          seed: o.seed, layers: o.layers)
        let s = LoRAParameters.scale(rank: o.rank, alpha: o.alpha, rsLoRA: false)
        for i in p.modules.indices {
            let m = p.modules[i]
            p.modules[i].scale = s
            var rng = SeededRNG(seed: o.seed, stream: "loramoe_router.\(m.layer).\(m.target.rawValue)")
            let bound = 1 / Float(m.inFeatures).squareRoot()     // kaiming_uniform_(a=√5), as the authors' router
            parameters.add("\(m.name).lora_A", shape: [m.rank, m.inFeatures], values: m.A)
            parameters.add("\(m.name).lora_B", shape: [m.outFeatures, m.rank], values: m.B)
            parameters.add("\(m.name).lora_route", shape: [experts, m.inFeatures],
                           values: (0..<(experts * m.inFeatures)).map { _ in (2 * rng.nextUniform() - 1) * bound })
        }
        p.rank = o.rank        // the config's r is one expert's, as the authors' fork writes it
        template = p
    }

    public func factors() -> LoRAParameters {
        var p = RoutedFactors.factors(template, parameters, routerKey: "lora_route") { _, w in
            RankGate(topK: experts, bias: [Float](repeating: 0, count: experts), router: w, ranksPerExpert: expertRank)
        }
        p.expertBalance = balance
        return p
    }

    public func parameterGradients(_ g: LoRAGradients) -> ParamSet {
        RoutedFactors.gradients(g, template, parameters, routerKey: "lora_route")
    }

    public var storedBytes: Int { template.modules.reduce(0) { $0 + 4 * ($1.rank * ($1.inFeatures + $1.outFeatures) + experts * $1.inFeatures) } }

    public func adapter(name: String, baseModel: String?) -> LoRAAdapter {
        var a = factors().adapter(name: name, baseModel: baseModel)
        a.metadata.rank = expertRank
        a.metadata.experts = experts
        // Through the shortest decimal of the Float, so the config says 0.1 and not 0.10000000149.
        a.metadata.blcAlpha = Double("\(balance.alpha)")
        a.metadata.blcWeight = Double("\(balance.weight)")
        return a
    }

    public func writeFiles(into dir: URL, name: String, baseModel: String?, path: String) throws {
        try PEFTAdapter.writeFiles(adapter(name: name, baseModel: baseModel), into: dir, dtype: .f32, path: path)
    }
}
