import Foundation

/// One module of one adapter, as `lorafuse inspect` reports it.
public struct ModuleAnalysis: Sendable, Codable, Equatable {
    public var module: String
    public var kind: LoRAModuleKind
    public var rank: Int
    /// α implied by the module's scale: scale·r, or scale·√r for an rsLoRA adapter.
    public var alpha: Double
    public var scale: Double
    public var shapeA: [Int]
    public var shapeB: [Int]
    /// Shape of ΔW = B·A, (out, in).
    public var deltaShape: [Int]
    public var parameters: Int
    /// ‖s·B·A‖_F from the factors (`LoRAModule.deltaNorm`).
    public var deltaNorm: Double
}

public struct AdapterSummary: Sendable, Codable, Equatable {
    public var name: String
    public var path: String?
    public var baseModel: String?
    public var useRSLoRA: Bool
    public var configRank: Int
    public var configAlpha: Double
    public var moduleCount: Int
    public var parameters: Int
    /// ‖τ‖_F of the whole task vector (all modules), √(Σ_m ‖ΔW_m‖²).
    public var taskVectorNorm: Double
    public var modules: [ModuleAnalysis]
    /// FlyLoRA: ranks kept per token (nil for a plain LoRA); ‖ΔW‖ above is then of every rank.
    public var topK: Int? = nil
    /// "FlyLoRA", "SMoRA", "LoRAMoE" or "MixLoRA" when `topK` is set (LoRAMoE: `topK` is the experts, all used).
    public var gateKind: String? = nil
    /// LoRAMoE, MixLoRA: the rank of one expert (the table shows each module's experts stacked).
    public var expertRank: Int? = nil
    /// Experts a gate chooses among (MixLoRA: per layer).
    public var experts: Int? = nil
}

/// Similarity of two adapters' whole task vectors (all modules concatenated).
public struct PairAnalysis: Sendable, Codable, Equatable {
    public var adapterA: String
    public var adapterB: String
    /// ⟨τ_a, τ_b⟩ / (‖τ_a‖ ‖τ_b‖); modules that only one adapter adapts add 0 to the inner product
    /// and their norm to the norms. nil when either task vector is zero.
    public var cosine: Double?
    /// Among the entries where both ΔW's are nonzero, the fraction with opposite signs (the
    /// interference TIES resolves). Exact for modules with out·in ≤ `exactEntryLimit`, an estimate
    /// from uniformly sampled entries (with replacement) above it; modules are combined weighted by their
    /// entry counts. nil when no entry is nonzero in both.
    public var signConflictRate: Double?
    public var sharedModules: Int
    /// Modules whose entries were all evaluated / sampled.
    public var exactModules: Int
    public var sampledModules: Int
    /// Number of ΔW entries actually evaluated (all of the exact modules plus the samples).
    public var evaluatedEntries: Int
}

public struct AdapterAnalysis: Sendable, Codable, Equatable {
    public var adapters: [AdapterSummary]
    public var pairs: [PairAnalysis]
    /// Entries sampled per module above `exactEntryLimit` for the sign-conflict rate.
    public var samplesPerModule: Int
    public var exactEntryLimit: Int
    public var seed: UInt64
    public var warnings: [String]
}

/// Adapter statistics computed from the factors only (no dense ΔW beyond small modules).
public enum AdapterAnalyzer {
    /// Modules with at most this many ΔW entries are compared exactly for sign conflicts.
    public static let exactEntryLimit = 65_536

    public static func analyze(_ adapters: [LoRAAdapter], samplesPerModule: Int = 4096, seed: UInt64 = 0) -> AdapterAnalysis {
        var warnings: [String] = []
        let summaries = adapters.map { summarize($0) }
        var pairs: [PairAnalysis] = []
        for i in adapters.indices {
            for j in (i + 1)..<adapters.count {
                pairs.append(compare(adapters[i], adapters[j], samplesPerModule: samplesPerModule, seed: seed,
                                     normA: summaries[i].taskVectorNorm, normB: summaries[j].taskVectorNorm,
                                     warnings: &warnings))
            }
        }
        return AdapterAnalysis(adapters: summaries, pairs: pairs, samplesPerModule: samplesPerModule,
                               exactEntryLimit: exactEntryLimit, seed: seed, warnings: warnings)
    }

    public static func summarize(_ a: LoRAAdapter) -> AdapterSummary {
        var modules: [ModuleAnalysis] = []
        var sq = 0.0
        for name in a.moduleNames {
            let m = a.modules[name]!
            let r = Double(m.rank)
            let n = m.deltaNorm
            sq += n * n
            modules.append(ModuleAnalysis(module: name, kind: m.kind, rank: m.rank,
                                          alpha: Double(m.scale) * (a.metadata.useRSLoRA ? r.squareRoot() : r),
                                          scale: Double(m.scale), shapeA: m.A.shape, shapeB: m.B.shape,
                                          deltaShape: m.deltaShape, parameters: m.parameterCount, deltaNorm: n))
        }
        return AdapterSummary(name: a.name, path: a.sourcePath, baseModel: a.metadata.baseModel,
                              useRSLoRA: a.metadata.useRSLoRA, configRank: a.metadata.rank, configAlpha: a.metadata.alpha,
                              moduleCount: modules.count, parameters: a.parameterCount,
                              taskVectorNorm: sq.squareRoot(), modules: modules,
                              topK: a.modules.values.compactMap { $0.rankGate?.topK }.first,
                              gateKind: a.modules.values.compactMap { $0.rankGate?.kindName }.first,
                              expertRank: a.modules.values.compactMap { $0.rankGate.flatMap { $0.isDense || $0.wholeFFN ? $0.ranksPerExpert : nil } }.first,
                              experts: a.modules.values.compactMap { $0.rankGate?.experts }.first)
    }

    /// Cosine and sign-conflict rate of two adapters. Sampled entries depend only on the seed and
    /// the module name, so every pair is compared on the same entries.
    /// `normA`/`normB` are the task-vector norms when already known (from `summarize`).
    public static func compare(_ a: LoRAAdapter, _ b: LoRAAdapter, samplesPerModule: Int, seed: UInt64,
                               normA: Double? = nil, normB: Double? = nil,
                               warnings: inout [String]) -> PairAnalysis {
        func norm2(_ x: LoRAAdapter) -> Double { x.modules.values.reduce(0.0) { let n = $1.deltaNorm; return $0 + n * n } }
        let na = normA.map { $0 * $0 } ?? norm2(a)
        let nb = normB.map { $0 * $0 } ?? norm2(b)
        var ip = 0.0
        var shared = 0, exact = 0, sampled = 0, evaluated = 0
        var conflicts = 0.0, both = 0.0   // entry counts, sampled modules scaled to their size
        for name in a.moduleNames {
            guard let ma = a.modules[name], let mb = b.modules[name] else { continue }
            guard ma.deltaShape == mb.deltaShape else {
                warnings.append("module \(name): '\(a.name)' has ΔW \(ma.deltaShape) but '\(b.name)' has \(mb.deltaShape); left out of their comparison")
                continue
            }
            shared += 1
            ip += deltaInnerProduct(ma, mb)
            let out = ma.outFeatures, inF = ma.inFeatures
            let size = out * inF
            var c = 0, n = 0
            if size <= exactEntryLimit {
                let da = ma.delta(), db = mb.delta()
                for e in 0..<size {
                    let x = da.data[e], y = db.data[e]
                    if x != 0 && y != 0 {
                        n += 1
                        if (x > 0) != (y > 0) { c += 1 }
                    }
                }
                exact += 1
                evaluated += size
                conflicts += Double(c)
                both += Double(n)
            } else {
                var rng = SeededRNG(seed: seed, stream: name)
                let count = max(1, samplesPerModule)
                for _ in 0..<count {
                    let i = Int(rng.next() % UInt64(out)), j = Int(rng.next() % UInt64(inF))
                    let x = entry(ma, i, j), y = entry(mb, i, j)
                    if x != 0 && y != 0 {
                        n += 1
                        if (x > 0) != (y > 0) { c += 1 }
                    }
                }
                sampled += 1
                evaluated += count
                let w = Double(size) / Double(count)
                conflicts += Double(c) * w
                both += Double(n) * w
            }
        }
        let denom = (na * nb).squareRoot()
        return PairAnalysis(adapterA: a.name, adapterB: b.name, cosine: denom > 0 ? ip / denom : nil,
                            signConflictRate: both > 0 ? conflicts / both : nil, sharedModules: shared,
                            exactModules: exact, sampledModules: sampled, evaluatedEntries: evaluated)
    }

    /// ΔW[i, j] = s · B[i, :] · A[:, j], from the factors.
    static func entry(_ m: LoRAModule, _ i: Int, _ j: Int) -> Float {
        var acc: Float = 0
        for k in 0..<m.rank { acc += m.B[i, k] * m.A[k, j] }
        return m.scale * acc
    }

    /// A plain-text report: one block per adapter, then the pairwise table.
    public static func table(_ r: AdapterAnalysis) -> String {
        func f(_ x: Double?, _ digits: Int = 4) -> String { x.map { String(format: "%.\(digits)f", $0) } ?? "-" }
        var lines: [String] = []
        for a in r.adapters {
            lines.append("\(a.name): \(a.moduleCount) modules, \(a.parameters) parameters, ‖τ‖_F = \(f(a.taskVectorNorm))"
                         + (a.useRSLoRA ? " (rsLoRA)" : ""))
            if let k = a.topK {
                if a.gateKind == "MixLoRA" {
                    let e = a.experts ?? 0, r = a.expertRank ?? 0
                    lines.append("  MixLoRA: each layer's FFN is \(e) experts, each the frozen FFN with its own rank-\(r) LoRA on gate, up and down (the table stacks them: rank \(e)×\(r)); a trained router per layer sends every token to \(k) of them, weighted by the renormalised softmax (router weights not counted in the parameters); ‖ΔW‖ counts every expert at weight 1. Runs unmerged; not convertible to plain PEFT, GGUF or MLX.")
                } else if a.gateKind == "LoRAMoE" {
                    lines.append("  LoRAMoE: \(k) experts of rank \(a.expertRank ?? 0) per module (the table stacks them: rank \(k)×\(a.expertRank ?? 0)), every one used for every token, weighted by the softmax of a trained router x·W_gᵀ (router weights not counted in the parameters); ‖ΔW‖ counts every expert at weight 1. Runs unmerged; not convertible to plain PEFT, GGUF or MLX.")
                } else if a.gateKind == "SMoRA" {
                    lines.append("  SMoRA: each token keeps the \(k) ranks of largest x·W_gᵀ + d (trained router W_g, balancing bias d), weighted by the softmax of their router logits; ‖ΔW‖ counts every rank at weight 1. Runs unmerged; not convertible to plain PEFT, GGUF or MLX.")
                } else {
                    lines.append("  FlyLoRA: each token keeps the \(k) ranks of largest |x·Aᵀ + d| (frozen sparse A, balancing bias d); ‖ΔW‖ counts every rank, so it overstates what one token gets. Runs unmerged; not convertible to plain PEFT, GGUF or MLX.")
                }
            }
            lines.append("  " + ["module", "kind", "rank", "alpha", "scale", "ΔW shape", "params", "‖ΔW‖_F"]
                .joined(separator: "\t"))
            for m in a.modules {
                lines.append("  " + [m.module, m.kind.rawValue, String(m.rank), f(m.alpha, 2), f(m.scale), m.deltaShape.map(String.init).joined(separator: "x"),
                                     String(m.parameters), f(m.deltaNorm)].joined(separator: "\t"))
            }
        }
        if !r.pairs.isEmpty {
            lines.append("")
            lines.append(["adapter A", "adapter B", "cosine", "sign conflict", "shared", "exact", "sampled", "entries"]
                .joined(separator: "\t"))
            for p in r.pairs {
                lines.append([p.adapterA, p.adapterB, f(p.cosine), f(p.signConflictRate), String(p.sharedModules),
                              String(p.exactModules), String(p.sampledModules), String(p.evaluatedEntries)].joined(separator: "\t"))
            }
            lines.append("sign conflict: exact for modules with ≤ \(r.exactEntryLimit) entries, estimated from \(r.samplesPerModule) seeded samples (seed \(r.seed)) per larger module")
        }
        for w in r.warnings { lines.append("warning: \(w)") }
        return lines.joined(separator: "\n")
    }
}
