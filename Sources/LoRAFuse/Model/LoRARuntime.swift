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

    public var description: String {
        switch self {
        case let .unknownModule(adapter, module):
            return "adapter '\(adapter)': module '\(module)' is not in the model (expected model.layers.N.self_attn.{q,k,v,o}_proj, model.layers.N.mlp.{gate,up,down}_proj, model.embed_tokens or lm_head)"
        case let .shapeMismatch(adapter, module, expected, actual):
            return "adapter '\(adapter)': module '\(module)' has ΔW shape \(actual), the model's weight is \(expected)"
        case let .unsupportedTensor(adapter, tensor, reason):
            return "adapter '\(adapter)': tensor '\(tensor)' is not supported at run time: \(reason)"
        }
    }
}

extension LlamaModel {
    private enum Target: Hashable {
        case linear(Int)
        case embedding
    }

    /// Maps a PEFT module name (`base_model.model.model.layers.3.mlp.down_proj`, `…embed_tokens`,
    /// `base_model.model.lm_head`; the `base_model.model.` prefix is optional) to a weight.
    private func target(of module: String) -> Target? {
        var name = Substring(module)
        if name.hasPrefix("base_model.model.") { name = name.dropFirst("base_model.model.".count) }
        typealias N = LlamaCheckpointNames
        if name == N.embed.hf { return .embedding }
        if name == N.lmHead.hf { return .linear(LlamaWeights.lmHeadID(layers: layerCount)) }
        let parts = name.split(separator: ".", maxSplits: 3)
        guard parts.count == 4, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]),
              l >= 0, l < layerCount, let e = N.linears.first(where: { $0.hf == parts[3] }) else { return nil }
        return .linear(LlamaWeights.linearID(layer: l, e.slot))
    }

    /// Applies `adapters` (each with its weight w_i) on top of the base weights, replacing any
    /// adapters set before. Everything is checked before anything changes, so an error leaves the
    /// model as it was. The adapter's `fan_in_fan_out` flag needs no handling: PEFT stores A (r, in)
    /// and B (out, r) either way. PEFT's copy of the base embedding (`save_embedding_layers`,
    /// `….base_layer.weight`) is ignored; other non-LoRA tensors (`modules_to_save`) are refused.
    ///
    /// Embedding LoRA (`lora_embedding_A` (r, V), `lora_embedding_B` (C, r)) adds coef·B·A[:, token]
    /// to the looked-up row, as PEFT does; with tied embeddings it does not change lm_head.
    /// Sessions keep their KV caches: reset them after changing adapters. Not thread-safe with
    /// respect to running sessions: change adapters only while no forward pass is running.
    public func setAdapters(_ adapters: [(LoRAAdapter, Float)], mode: LoRAMode = .unmerged) throws {
        let C = config.hiddenSize, V = config.vocabSize
        var plan: [(Target, LoRAFactors)] = []
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
                plan.append((tgt, LoRAFactors(A: m.A.data, B: m.B.data, rank: m.rank, coef: weight * m.scale)))
            }
        }
        clearAdapters()
        switch mode {
        case .unmerged:
            for (tgt, f) in plan {
                switch tgt {
                case .embedding: embedUnmerged.append(f)
                case .linear(let id): unmerged[id].append(f)
                }
                maxLoRARank = max(maxLoRARank, f.rank)
            }
        case .merged:
            for (tgt, f) in plan {
                switch tgt {
                case .embedding:
                    // E' (V, C) += coef · Aᵀ (V, r) · Bᵀ (r, C)
                    f.A.withUnsafeBufferPointer { a in
                        f.B.withUnsafeBufferPointer { b in
                            effectiveEmbed.withUnsafeMutableBufferPointer { e in
                                BLAS.gemm(transA: true, transB: true, m: V, n: C, k: f.rank, alpha: f.coef,
                                          a: a.baseAddress!, lda: V, b: b.baseAddress!, ldb: f.rank,
                                          beta: 1, c: e.baseAddress!, ldc: C)
                            }
                        }
                    }
                case .linear(let id):
                    let out = base.linears[id].outFeatures, inF = base.linears[id].inFeatures
                    // W' (out, in) += coef · B (out, r) · A (r, in); the first write copies W.
                    f.A.withUnsafeBufferPointer { a in
                        f.B.withUnsafeBufferPointer { b in
                            effectiveLinear[id].withUnsafeMutableBufferPointer { w in
                                BLAS.gemm(transA: false, transB: false, m: out, n: inF, k: f.rank, alpha: f.coef,
                                          a: b.baseAddress!, lda: f.rank, b: a.baseAddress!, ldb: inF,
                                          beta: 1, c: w.baseAddress!, ldc: inF)
                            }
                        }
                    }
                }
            }
        }
        activeAdapters = adapters.map { ($0.0.name, $0.1) }
        adapterMode = mode
    }

    /// Back to the exact base weights (merged copies are dropped, nothing is recomputed).
    public func clearAdapters() {
        effectiveEmbed = base.embed
        effectiveLinear = base.linears.map(\.weight)
        unmerged = Array(repeating: [], count: base.linears.count)
        embedUnmerged = []
        maxLoRARank = 0
        activeAdapters = []
    }

    /// The weight the forward pass uses for a module (base, or base + merged adapters), (out, in).
    /// For tests and the reference forward; `module` is an HF / PEFT module name.
    public func effectiveWeight(module: String) -> Matrix? {
        switch target(of: module) {
        case .embedding?: return Matrix(rows: config.vocabSize, cols: config.hiddenSize, data: effectiveEmbed)
        case .linear(let id)?:
            return Matrix(rows: base.linears[id].outFeatures, cols: base.linears[id].inFeatures, data: effectiveLinear[id])
        case nil: return nil
        }
    }
}
