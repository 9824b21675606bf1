import Foundation

/// How adapters join the base weights at run time.
public enum LoRAMode: String, Sendable, CaseIterable {
    /// y = x Wᵀ + Σ_i w_i s_i (x A_iᵀ) B_iᵀ beside the untouched W: two skinny GEMMs per adapter
    /// per module. Switching adapters costs nothing; each token pays O((in + out)·r) extra.
    case unmerged
    /// W' = W + Σ_i w_i s_i B_i A_i, computed into a copy of only the touched weights: decoding
    /// runs at base speed, the base stays exact, and switching never needs a reload.
    case merged
}

public enum LoRARuntimeError: Error, CustomStringConvertible, Equatable {
    case unknownModule(adapter: String, module: String)
    case shapeMismatch(adapter: String, module: String, expected: [Int], actual: [Int])
    case unsupportedTensor(adapter: String, tensor: String, reason: String)
    case unresolvedSequenceRouter

    public var description: String {
        switch self {
        case let .unknownModule(adapter, module):
            return "adapter '\(adapter)': module '\(module)' is not in the model (expected model.layers.N.self_attn.{q,k,v,o}_proj, model.layers.N.mlp.{gate,up,down}_proj, model.embed_tokens or lm_head)"
        case let .shapeMismatch(adapter, module, expected, actual):
            return "adapter '\(adapter)': module '\(module)' has ΔW shape \(actual), the model's weight is \(expected)"
        case let .unsupportedTensor(adapter, tensor, reason):
            return "adapter '\(adapter)': tensor '\(tensor)' is not supported at run time: \(reason)"
        case .unresolvedSequenceRouter:
            return "a per-request (sequence) router picks its adapters from the prompt: resolve it with the prompt (SequenceRouting.resolve) before making a session"
        }
    }
}

/// One LoRA pair ready for the forward pass: y += coef · (x Aᵀ) Bᵀ.
struct LoRAFactors: Sendable {
    var A: [Float]     // (r, in)   — embedding: (r, V)
    var B: [Float]     // (out, r)  — embedding: (C, r)
    var rank: Int
    var coef: Float    // adapter weight × scale
    /// FlyLoRA: the ranks kept per token (nil: all).
    var gate: RankGate? = nil
}

/// Adapters prepared for one model, handed to a session as a value: the model itself never holds
/// adapters, so sequences with different adapters (routing, serving, an evaluator beside a
/// trainer) share one loaded model without stepping on each other.
///
/// Built by `LlamaModel.prepare(_:mode:)`, which checks everything first. Unmerged factors are
/// applied beside the base weights; merged sets hold copies of only the touched weights
/// (W + Σ w_i s_i B_i A_i), everything else reads the base. Immutable, so one set may serve any
/// number of sessions on any threads.
public struct AdapterSet: Sendable {
    /// Names and weights of the adapters, in the order given.
    public let adapters: [AdapterWeight]
    public let mode: LoRAMode
    /// The model the set was prepared for; sessions of other models refuse it.
    let modelID: ObjectIdentifier?
    /// Unmerged factors per linear id (`LlamaWeights.linearID`).
    let linearFactors: [Int: [LoRAFactors]]
    let embedFactors: [LoRAFactors]
    /// Merged weight copies per linear id, (out, in); and the merged embedding (V, C).
    let mergedLinear: [Int: [Float]]
    let mergedEmbed: [Float]?
    let maxRank: Int
    /// Experts gated per token (a routed model, Routing/), applied beside the factors above.
    let routed: RoutedLayers?
    /// MixLoRA: per layer, its FFN as a mixture of whole-FFN experts (`MixtureFFN`); that layer's
    /// gate, up and down then have no entries in `linearFactors`.
    var mixtures: [Int: MixtureFFN] = [:]
    /// A per-request router (`route --method sequence`): the set stands for "the adapters its
    /// classifier picks for the prompt"; `SequenceRouting.resolve` gives the set to run. Sessions
    /// refuse an unresolved one.
    var sequence: SequenceRouting? = nil
    /// Which preparation this set came from: sequences whose sets share it can share LoRA GEMMs
    /// in a batch.
    let identity = Identity()
    final class Identity: Sendable {}

    /// No adapters: the base model.
    public static let none = AdapterSet(adapters: [], mode: .unmerged, modelID: nil, linearFactors: [:],
                                        embedFactors: [], mergedLinear: [:], mergedEmbed: nil, maxRank: 0, routed: nil)

    public var isEmpty: Bool { adapters.isEmpty }

    /// Whether adapters are chosen per token by gates (a routed model).
    public var isRouted: Bool { routed != nil || sequence != nil }

    /// The per-request router of a `sequence` routed model (nil for every other set).
    public var perRequestRouter: SequenceRouting? { sequence }

    /// The routing policy of a routed set.
    public var routingPolicy: RoutingPolicy? { routed?.policy }

    /// Whether the set changes the base weights themselves (merged mode), so its sequences cannot
    /// share the base product with other sequences.
    public var changesBaseWeights: Bool { !mergedLinear.isEmpty || mergedEmbed != nil }
}

/// An adapter's name and the weight it is applied with.
public struct AdapterWeight: Sendable, Equatable {
    public var name: String
    public var weight: Float
}

extension LlamaModel {
    enum Target: Hashable {
        case linear(Int)
        case embedding
    }

    /// Maps a PEFT module name (`base_model.model.model.layers.3.mlp.down_proj`, `…embed_tokens`,
    /// `base_model.model.lm_head`; the `base_model.model.` prefix is optional) to a weight.
    func target(of module: String) -> Target? {
        switch ModuleAddress(peft: module) {
        case .embedding?: return .embedding
        case .lmHead?: return .linear(LlamaWeights.lmHeadID(layers: layerCount))
        case let .projection(l, p)? where l < layerCount: return .linear(LlamaWeights.linearID(layer: l, p))
        default: return nil
        }
    }

    /// Prepares `adapters` (each with its weight w_i) for this model's forward pass. Everything is
    /// checked first. The adapter's `fan_in_fan_out` flag needs no handling: PEFT stores A (r, in)
    /// and B (out, r) either way. PEFT's copy of the base embedding (`save_embedding_layers`,
    /// `….base_layer.weight`) is ignored; other non-LoRA tensors (`modules_to_save`) are refused.
    ///
    /// Embedding LoRA (`lora_embedding_A` (r, V), `lora_embedding_B` (C, r)) adds coef·B·A[:, token]
    /// to the looked-up row, as PEFT does; with tied embeddings it does not change lm_head.
    public func prepare(_ adapters: [(LoRAAdapter, Float)], mode: LoRAMode = .unmerged) throws -> AdapterSet {
        if adapters.isEmpty { return .none }
        if mode == .merged { for (a, _) in adapters { try a.requireDense("merged mode (W + s·B·A written into a copy of the weights)") } }
        let C = config.hiddenSize, V = config.vocabSize
        var plan: [(Target, LoRAFactors)] = []
        var mixParts: [(adapter: String, module: String, id: Int, gate: RankGate, factors: LoRAFactors)] = []
        for (adapter, weight) in adapters {
            for t in adapter.extraTensors.keys.sorted() where !t.hasSuffix(".base_layer.weight") {
                throw LoRARuntimeError.unsupportedTensor(adapter: adapter.name, tensor: t,
                                                         reason: t.contains("magnitude") ? "DoRA magnitude vectors are not supported"
                                                             : "full replacement weights (modules_to_save) cannot be applied at run time")
            }
            for name in adapter.moduleNames {
                let m = adapter.modules[name]!
                guard let tgt = target(of: name) else {
                    throw LoRARuntimeError.unknownModule(adapter: adapter.name, module: name)
                }
                let expected: [Int]
                switch tgt {
                case .embedding: expected = [C, V]
                case .linear(let id): expected = [base.linears[id].outFeatures, base.linears[id].inFeatures]
                }
                let isEmbedding = tgt == .embedding
                guard m.deltaShape == expected, (m.kind == .embedding) == isEmbedding else {
                    throw LoRARuntimeError.shapeMismatch(adapter: adapter.name, module: name, expected: expected,
                                                         actual: m.kind == .embedding && !isEmbedding ? [m.A.cols, m.B.rows] : m.deltaShape)
                }
                if let g = m.rankGate, g.wholeFFN, case .linear(let id) = tgt {
                    mixParts.append((adapter.name, name, id, g, LoRAFactors(A: m.A.data, B: m.B.data, rank: m.rank, coef: weight * m.scale)))
                    continue
                }
                plan.append((tgt, LoRAFactors(A: m.A.data, B: m.B.data, rank: m.rank, coef: weight * m.scale, gate: m.rankGate)))
            }
        }
        let mixtures = try mixtureLayers(mixParts, adapterCount: adapters.count)
        var linearFactors: [Int: [LoRAFactors]] = [:], embedFactors: [LoRAFactors] = []
        var mergedLinear: [Int: [Float]] = [:], mergedEmbed: [Float]?
        var maxRank = 0
        switch mode {
        case .unmerged:
            for (tgt, f) in plan {
                switch tgt {
                case .embedding: embedFactors.append(f)
                case .linear(let id): linearFactors[id, default: []].append(f)
                }
                maxRank = max(maxRank, f.rank)
            }
        case .merged:
            for (tgt, f) in plan {
                switch tgt {
                case .embedding:
                    var e = mergedEmbed ?? base.embedFloats()
                    // E' (V, C) += coef · Aᵀ (V, r) · Bᵀ (r, C)
                    f.A.withUnsafeBufferPointer { a in
                        f.B.withUnsafeBufferPointer { b in
                            e.withUnsafeMutableBufferPointer { e in
                                BLAS.gemm(transA: true, transB: true, m: V, n: C, k: f.rank, alpha: f.coef,
                                          a: a.baseAddress!, lda: V, b: b.baseAddress!, ldb: f.rank,
                                          beta: 1, c: e.baseAddress!, ldc: C)
                            }
                        }
                    }
                    mergedEmbed = e
                case .linear(let id):
                    let out = base.linears[id].outFeatures, inF = base.linears[id].inFeatures
                    var w = mergedLinear[id] ?? base.linears[id].floatWeight()
                    // W' (out, in) += coef · B (out, r) · A (r, in)
                    f.A.withUnsafeBufferPointer { a in
                        f.B.withUnsafeBufferPointer { b in
                            w.withUnsafeMutableBufferPointer { w in
                                BLAS.gemm(transA: false, transB: false, m: out, n: inF, k: f.rank, alpha: f.coef,
                                          a: b.baseAddress!, lda: f.rank, b: a.baseAddress!, ldb: inF,
                                          beta: 1, c: w.baseAddress!, ldc: inF)
                            }
                        }
                    }
                    mergedLinear[id] = w
                }
            }
        }
        return AdapterSet(adapters: adapters.map { AdapterWeight(name: $0.0.name, weight: $0.1) }, mode: mode,
                          modelID: ObjectIdentifier(self), linearFactors: linearFactors, embedFactors: embedFactors,
                          mergedLinear: mergedLinear, mergedEmbed: mergedEmbed, maxRank: maxRank, routed: nil,
                          mixtures: mixtures)
    }

    /// MixLoRA modules grouped into one `MixtureFFN` per layer. A MixLoRA adapter must be alone
    /// in its set: the experts replace the layer's FFN, so another adapter's down_proj LoRA would
    /// have no single FFN to act on.
    private func mixtureLayers(_ parts: [(adapter: String, module: String, id: Int, gate: RankGate, factors: LoRAFactors)],
                               adapterCount: Int) throws -> [Int: MixtureFFN] {
        guard let first = parts.first else { return [:] }
        if adapterCount > 1 {
            throw RankGateError.notDense(adapter: first.adapter, module: first.module,
                                        operation: "applying it together with other adapters", kind: "MixLoRA")
        }
        let P = Projection.allCases.count, C = config.hiddenSize
        var byLayer: [Int: [Projection: (String, RankGate, LoRAFactors)]] = [:]
        for p in parts {
            let proj = Projection.allCases[p.id % P]
            guard p.id / P < layerCount, [.gate, .up, .down].contains(proj) else {
                throw LoRARuntimeError.unknownModule(adapter: p.adapter, module: p.module + " (MixLoRA experts sit on mlp.gate_proj, up_proj, down_proj)")
            }
            byLayer[p.id / P, default: [:]][proj] = (p.module, p.gate, p.factors)
        }
        var out: [Int: MixtureFFN] = [:]
        for (l, mods) in byLayer {
            let ref = mods.values.min { $0.0 < $1.0 }!
            for (module, g, _) in mods.values {
                guard g.router?.count == g.experts * C, g.experts == ref.1.experts, g.topK == ref.1.topK,
                      g.ranksPerExpert == ref.1.ranksPerExpert, g.router == ref.1.router else {
                    throw LoRARuntimeError.shapeMismatch(adapter: first.adapter, module: module + " (MixLoRA router)",
                                                         expected: [ref.1.experts, C], actual: [g.experts, (g.router?.count ?? 0) / max(g.experts, 1)])
                }
            }
            out[l] = MixtureFFN(experts: ref.1.experts, topK: ref.1.topK, rank: ref.1.ranksPerExpert, router: ref.1.router!,
                                gate: mods[.gate]?.2, up: mods[.up]?.2, down: mods[.down]?.2)
        }
        return out
    }

    /// This model with `adapters` applied, as a `CausalLM` for the evaluator, generator and chat.
    public func with(_ adapters: AdapterSet) -> AdaptedLlama { AdaptedLlama(model: self, adapters: adapters) }

    /// `with(prepare(adapters, mode:))`.
    public func with(_ adapters: [(LoRAAdapter, Float)], mode: LoRAMode = .unmerged) throws -> AdaptedLlama {
        with(try prepare(adapters, mode: mode))
    }

    /// The weight a forward pass with `adapters` uses for a module (base, or base + merged
    /// adapters), (out, in). For tests and the reference forward; `module` is an HF / PEFT name.
    public func effectiveWeight(module: String, adapters: AdapterSet = .none) -> Matrix? {
        switch target(of: module) {
        case .embedding?: return Matrix(rows: config.vocabSize, cols: config.hiddenSize, data: adapters.mergedEmbed ?? base.embedFloats())
        case .linear(let id)?:
            return Matrix(rows: base.linears[id].outFeatures, cols: base.linears[id].inFeatures,
                          data: adapters.mergedLinear[id] ?? base.linears[id].floatWeight())
        case nil: return nil
        }
    }
}

/// A loaded model seen through one adapter set: what the evaluator, generator and chat run on.
/// Holds no copy of the model's weights; many of these can share one `LlamaModel`.
public final class AdaptedLlama: CausalLM, @unchecked Sendable {
    public let model: LlamaModel
    public let adapters: AdapterSet

    init(model: LlamaModel, adapters: AdapterSet) {
        self.model = model
        self.adapters = adapters
    }

    public var vocabSize: Int { model.vocabSize }
    public var tokenizer: BPETokenizer { model.tokenizer }
    public var contextLength: Int { model.contextLength }
    public var config: LlamaConfig { model.config }

    public func makeSession(maxTokens: Int) throws -> any InferenceSession {
        try model.makeLlamaSession(maxTokens: maxTokens, adapters: adapters)
    }

    /// A per-request router's choice for `prompt`, as a model with the chosen adapters (nil when
    /// the adapters do not depend on the prompt).
    public func routedForPrompt(_ prompt: [Int]) throws -> (key: String, model: any CausalLM)? {
        guard let seq = adapters.sequence else { return nil }
        let r = try seq.resolve(model: model, prompt: prompt)
        return (r.key, AdaptedLlama(model: model, adapters: r.set))
    }

    public func makeLlamaSession(maxTokens: Int) throws -> LlamaSession {
        try model.makeLlamaSession(maxTokens: maxTokens, adapters: adapters)
    }

    /// Logits (T, V) of `tokens` from a fresh session.
    public func logits(tokens: [Int]) throws -> Matrix {
        try model.logits(tokens: tokens, adapters: adapters)
    }

    public func effectiveWeight(module: String) -> Matrix? {
        model.effectiveWeight(module: module, adapters: adapters)
    }
}
