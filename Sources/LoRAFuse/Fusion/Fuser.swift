import Foundation

/// Per-module outcome of a fusion, for reports and `--json`.
public struct ModuleFusionReport: Sendable, Codable {
    public var module: String
    public var rank: Int
    public var adapters: Int
    public var retainedEnergy: Double?
}

public struct FusionReport: Sendable {
    public var method: String
    public var modules: [ModuleFusionReport]
    public var warnings: [String]
    public var seconds: Double
}

/// Drives a `FusionMethod` over every module of a set of adapters.
public enum Fuser {
    /// Fuses `adapters` with `weights` (one per adapter) module by module. Peak memory is one
    /// module's worth of dense work on top of the inputs and outputs.
    ///
    /// - Modules missing from some adapters are fused from the others (the missing ΔW is zero),
    ///   with a warning naming them.
    /// - `progress(done, total, moduleName)` is called after each module.
    public static func fuse(_ adapters: [LoRAAdapter], weights: [Float], method: any FusionMethod,
                            seed: UInt64 = 0, name: String = "fused",
                            progress: ((Int, Int, String) -> Void)? = nil) throws -> (LoRAAdapter, FusionReport) {
        guard !adapters.isEmpty else { throw FusionError.noAdapters }
        guard adapters.count == weights.count else {
            throw FusionError.weightCount(adapters: adapters.count, weights: weights.count)
        }
        if adapters.contains(where: \.isRankGated) {
            return try fuseRankGated(adapters, weights: weights, method: method, name: name)
        }
        let start = Date()
        var names = Set<String>()
        for a in adapters { names.formUnion(a.modules.keys) }
        let ordered = names.sorted(by: naturalLess)
        var warnings: [String] = []
        var missing: [String: [String]] = [:]  // adapter -> modules it lacks
        var fused: [String: LoRAModule] = [:]
        var reports: [ModuleFusionReport] = []

        for (done, moduleName) in ordered.enumerated() {
            var terms: [FusionTerm] = []
            var first: (adapter: String, module: LoRAModule)?
            for (i, a) in adapters.enumerated() {
                guard let m = a.modules[moduleName] else {
                    missing[a.name, default: []].append(moduleName)
                    continue
                }
                if let f = first {
                    if f.module.deltaShape != m.deltaShape {
                        throw FusionError.shapeMismatch(module: moduleName, adapter1: f.adapter, shape1: f.module.deltaShape,
                                                        adapter2: a.name, shape2: m.deltaShape)
                    }
                    if f.module.kind != m.kind {
                        throw FusionError.kindMismatch(module: moduleName, adapter1: f.adapter, kind1: f.module.kind,
                                                       adapter2: a.name, kind2: m.kind)
                    }
                } else {
                    first = (a.name, m)
                }
                terms.append(FusionTerm(module: m, weight: weights[i], adapterIndex: i))
            }
            let proto = first!.module
            let input = ModuleFusionInput(name: moduleName, kind: proto.kind, outFeatures: proto.outFeatures,
                                          inFeatures: proto.inFeatures, terms: terms, adapterCount: adapters.count,
                                          rng: SeededRNG(seed: seed, stream: moduleName))
            let out: FusedModule
            do {
                out = try method.fuse(input)
            } catch let e as LinalgError {
                // LAPACK only knows the matrix shape; say which module of which adapters it was.
                throw ModuleFusionError(module: moduleName, adapters: terms.map { adapters[$0.adapterIndex].name },
                                        underlying: "\(e)")
            }
            if AdapterValidation.firstNonFinite(out.A.data) != nil || AdapterValidation.firstNonFinite(out.B.data) != nil {
                throw ModuleFusionError(module: moduleName, adapters: terms.map { adapters[$0.adapterIndex].name },
                                        underlying: "the fused factors are not finite (weight × ΔW overflowed Float; weights \(terms.map(\.weight)))")
            }
            fused[moduleName] = LoRAModule(A: out.A, B: out.B, scale: 1, kind: proto.kind)
            reports.append(ModuleFusionReport(module: moduleName, rank: out.rank, adapters: terms.count,
                                              retainedEnergy: out.retainedEnergy))
            progress?(done + 1, ordered.count, moduleName)
        }
        for a in adapters {
            if let m = missing[a.name], !m.isEmpty {
                let shown = m.prefix(3).joined(separator: ", ")
                warnings.append("adapter '\(a.name)' lacks \(m.count) module(s) that others adapt (\(shown)\(m.count > 3 ? ", …" : "")); treated as zero there")
            }
        }

        var meta = AdapterMetadata()
        let first = adapters[0].metadata
        meta.baseModel = first.baseModel
        meta.taskType = first.taskType
        meta.fanInFanOut = first.fanInFanOut
        var targets = Set<String>()
        for a in adapters { targets.formUnion(a.metadata.targetModules) }
        meta.targetModules = targets.sorted()
        // The scale is folded into B, so alpha = r for every module (scaling 1), as PEFT's
        // add_weighted_adapter does. The most common rank is the default; others are patterns.
        var counts: [Int: Int] = [:]
        for m in fused.values { counts[m.rank, default: 0] += 1 }
        let defaultRank = counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }?.key ?? 0
        meta.rank = defaultRank
        meta.alpha = Double(defaultRank)
        for (n, m) in fused where m.rank != defaultRank {
            let key = peftPatternKey(forModule: n)
            meta.rankPattern[key] = m.rank
            meta.alphaPattern[key] = Double(m.rank)
        }
        if adapters.allSatisfy({ $0.metadata.layersToTransform == first.layersToTransform }) {
            meta.layersToTransform = first.layersToTransform
        }
        // modules_to_save tensors are carried only when every adapter has identical ones.
        var extras: [String: Matrix] = [:]
        if let e0 = adapters.first?.extraTensors, !e0.isEmpty {
            if adapters.allSatisfy({ $0.extraTensors == e0 }) {
                extras = e0
                meta.modulesToSave = first.modulesToSave
                meta.extraTensorShapes = first.extraTensorShapes
            } else {
                warnings.append("modules_to_save tensors differ between adapters; they are not carried into the fused adapter")
            }
        }
        let adapter = LoRAAdapter(name: name, modules: fused, metadata: meta, extraTensors: extras,
                                  sourceDType: adapters[0].sourceDType)
        let report = FusionReport(method: method.name, modules: reports, warnings: warnings,
                                  seconds: Date().timeIntervalSince(start))
        return (adapter, report)
    }
}

/// PEFT matches `rank_pattern` keys as a suffix of the module path after an optional prefix;
/// the module path without PEFT's wrapper prefix is an exact, unambiguous key.
public func peftPatternKey(forModule name: String) -> String {
    ModuleAddress.strippingPEFTPrefix(name)
}

/// A fusion step that failed inside one module (a LAPACK error, an overflow), with the module and
/// the adapters that were being fused there.
public struct ModuleFusionError: Error, CustomStringConvertible, Equatable {
    public var module: String
    public var adapters: [String]
    public var underlying: String

    public var description: String {
        "fusing module \(module) of \(adapters.joined(separator: ", ")): \(underlying)"
    }
}
