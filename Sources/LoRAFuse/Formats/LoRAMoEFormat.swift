import Foundation

// LoRAMoE's files (the authors' PEFT fork, github.com/Ablustrund/LoRAMoE): a PEFT folder whose
// config adds `lora_nums` (experts per module), `blc_alpha` and `blc_weight`, with `r` the rank of
// one expert, and whose tensors per module are `lora_A{i}.weight` (r, in), `lora_B{i}.weight`
// (out, r) for i < lora_nums and `lora_route.weight` (lora_nums, in). In memory the experts are
// stacked into one module of rank lora_nums·r with a dense router gate (`Train/LoRAMoE.swift`).

extension PEFTAdapter {
    /// Which factor of a LoRAMoE module a key holds.
    enum LoRAMoEPart: Hashable {
        case A(Int), B(Int), route
    }

    /// `<module>.lora_A3.weight` → (module, .A(3)); `<module>.lora_route.weight` → (module, .route).
    static func loraMoEPart(_ key: String) -> (module: String, part: LoRAMoEPart)? {
        guard key.hasSuffix(".weight") else { return nil }
        let stem = key.dropLast(".weight".count)
        guard let dot = stem.lastIndex(of: ".") else { return nil }
        let module = String(stem[..<dot]), leaf = stem[stem.index(after: dot)...]
        if leaf == "lora_route" { return (module, .route) }
        for (prefix, make) in [("lora_A", LoRAMoEPart.A), ("lora_B", LoRAMoEPart.B)] where leaf.hasPrefix(prefix) {
            let digits = leaf.dropFirst(prefix.count)
            guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let i = Int(digits) else { return nil }
            return (module, make(i))
        }
        return nil
    }

    static func readLoRAMoE(file: SafetensorsFile, meta: AdapterMetadata, experts E: Int, directory: String) throws -> LoRAAdapter {
        let r = meta.rank
        guard !meta.useRSLoRA else {
            throw PEFTError.unsupportedOption(path: directory, option: "use_rslora", value: "true", reason: "LoRAMoE scales each expert by lora_alpha / r")
        }
        guard meta.rankPattern.isEmpty && meta.alphaPattern.isEmpty else {
            throw PEFTError.unsupportedOption(path: directory, option: "rank_pattern", value: "(set)", reason: "a LoRAMoE config has one r and lora_alpha for every expert")
        }
        var parts: [String: [LoRAMoEPart: String]] = [:]
        for key in file.names {
            guard let (module, part) = loraMoEPart(key) else {
                throw PEFTError.invalidConfig(path: directory, field: key, reason: "not a LoRAMoE tensor (expected <module>.lora_A{i}.weight, lora_B{i}.weight or lora_route.weight, as lora_nums = \(E) says)")
            }
            switch part {
            case .A(let i), .B(let i):
                guard i < E else {
                    throw PEFTError.invalidConfig(path: directory, field: key, reason: "expert \(i), but lora_nums is \(E) (experts 0…\(E - 1))")
                }
            case .route: break
            }
            parts[module, default: [:]][part] = key
        }
        guard !parts.isEmpty else { throw PEFTError.invalidConfig(path: directory, field: "(tensors)", reason: "no LoRAMoE tensors") }
        var modules: [String: LoRAModule] = [:]
        var sourceDType: DType?
        let scale = Float(meta.alpha / Double(r))
        for (module, p) in parts.sorted(by: { naturalLess($0.key, $1.key) }) {
            func key(_ part: LoRAMoEPart, _ name: String) throws -> String {
                guard let k = p[part] else { throw PEFTError.missingPartner(path: directory, tensor: p.values.sorted().first!, missing: "\(module).\(name).weight") }
                return k
            }
            let routeKey = try key(.route, "lora_route")
            let route = try file.finiteMatrix(routeKey)                         // (E, in)
            guard route.rows == E else {
                throw PEFTError.invalidConfig(path: directory, field: routeKey, reason: "shape [\(route.rows), \(route.cols)], expected [\(E), in] (one router row per expert)")
            }
            let nIn = route.cols
            var A = [Float](), Bs: [Matrix] = []
            for i in 0..<E {
                let ak = try key(.A(i), "lora_A\(i)"), bk = try key(.B(i), "lora_B\(i)")
                let a = try file.finiteMatrix(ak), b = try file.finiteMatrix(bk)
                if sourceDType == nil { sourceDType = try file.info(ak).floatType }
                guard a.rows == r else { throw PEFTError.rankMismatch(path: directory, module: "\(module) (expert \(i))", configRank: r, tensorRank: a.rows) }
                guard a.cols == nIn, b.cols == r, Bs.first.map({ $0.rows == b.rows }) ?? true else {
                    throw PEFTError.factorShapeMismatch(path: directory, module: "\(module) (expert \(i))", aShape: [a.rows, a.cols], bShape: [b.rows, b.cols])
                }
                A += a.data
                Bs.append(b)
            }
            let nOut = Bs[0].rows, R = E * r
            var B = [Float](repeating: 0, count: nOut * R)                    // (out, E·r): expert i in columns i·r…
            for (i, b) in Bs.enumerated() {
                for o in 0..<nOut { for j in 0..<r { B[o * R + i * r + j] = b.data[o * r + j] } }
            }
            let gate = RankGate(topK: E, bias: [Float](repeating: 0, count: E), router: route.data, ranksPerExpert: r)
            modules[module] = LoRAModule(A: Matrix(rows: R, cols: nIn, data: A), B: Matrix(rows: nOut, cols: R, data: B),
                                         scale: scale, rankGate: gate)
        }
        let name = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
        return LoRAAdapter(name: name, modules: modules, metadata: meta, sourceDType: sourceDType ?? .f32, sourcePath: directory)
    }

    /// Whether `prepare` writes the LoRAMoE layout: a module gated in expert groups by a router.
    static func isLoRAMoE(_ adapter: LoRAAdapter) -> Bool {
        adapter.modules.values.contains { $0.rankGate.map { $0.router != nil && $0.isDense } ?? false }
    }

    static func prepareLoRAMoE(_ adapter: LoRAAdapter, path: String) throws -> (JSONValue, [SafetensorsTensor]) {
        let meta = adapter.metadata, names = adapter.moduleNames
        guard let first = names.first, let g0 = adapter.modules[first]!.rankGate else {
            throw PEFTError.invalidConfig(path: path, field: "lora_nums", reason: "module '\(names.first ?? "?")' has no router; every LoRAMoE module has one")
        }
        let E = g0.experts, r = g0.ranksPerExpert, alpha = Double(adapter.modules[first]!.scale) * Double(r)
        var tensors: [SafetensorsTensor] = []
        for n in names {
            let m = adapter.modules[n]!
            guard let g = m.rankGate, let w = g.router, g.isDense, g.experts == E, g.ranksPerExpert == r,
                  abs(Double(m.scale) * Double(r) - alpha) <= 1e-6 * max(1, abs(alpha)) else {
                throw PEFTError.invalidConfig(path: path, field: "lora_nums", reason: "module '\(n)' is not a LoRAMoE module of \(E) experts of rank \(r) and α \(alpha), as '\(first)' is; one config describes them all")
            }
            try SafetensorsFile.checkFinite(m.A.data, tensor: n + " (A)", path: path)
            try SafetensorsFile.checkFinite(m.B.data, tensor: n + " (B)", path: path)
            try SafetensorsFile.checkFinite(w, tensor: n + ".lora_route", path: path)
            let nIn = m.inFeatures, nOut = m.outFeatures, R = E * r
            for i in 0..<E {
                tensors.append(SafetensorsTensor(name: "\(n).lora_A\(i).weight", shape: [r, nIn],
                                                 values: Array(m.A.data[(i * r * nIn)..<((i + 1) * r * nIn)])))   // (r, in)
                var b = [Float](repeating: 0, count: nOut * r)
                for o in 0..<nOut { for j in 0..<r { b[o * r + j] = m.B.data[o * R + i * r + j] } }
                tensors.append(SafetensorsTensor(name: "\(n).lora_B\(i).weight", shape: [nOut, r], values: b))     // (out, r)
            }
            tensors.append(SafetensorsTensor(name: "\(n).lora_route.weight", shape: [E, nIn], values: w))             // (E, in)
        }
        var targets = Set<String>()
        for n in names { targets.insert(String(n.split(separator: ".").last ?? Substring(n))) }
        func optString(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
        let fields: [String: JSONValue] = [
            "peft_type": .string("LORA"),
            "task_type": optString(meta.taskType),
            "base_model_name_or_path": optString(meta.baseModel),
            "r": .int(r),
            "lora_alpha": .double(alpha),
            "lora_nums": .int(E),
            "blc_alpha": .double(meta.blcAlpha ?? 0),
            "blc_weight": .double(meta.blcWeight ?? 0),
            "target_modules": .array(targets.sorted().map { .string($0) }),
            "layers_to_transform": meta.layersToTransform.map { .array($0.map { .int($0) }) } ?? .null,
            "fan_in_fan_out": .bool(false),
            "bias": .string("none"),
            "lora_dropout": .number("0.0"),
            "inference_mode": .bool(true),
            "modules_to_save": .null,
        ]
        let config = JSONValue.object(fields.keys.sorted().map { ($0, fields[$0]!) })
        return (config, tensors)
    }
}
