import Foundation

// MixLoRA's files (the authors' `mixlora` package, github.com/TUDB-Labs/MixLoRA, mixlora/config.py
// and model.py): `adapter_config.json` with peft_type "MIXLORA", routing_strategy "mixtral",
// num_experts, top_k, r, lora_alpha (and optionally `expert_lora` {r, lora_alpha} for the experts),
// router_aux_loss_coef, router_init_range, jitter_noise, act_fn; tensors
//
//   mixlora.layers.{l}.self_attn.{q,k,v,o}_proj.lora_A.weight (r, in) / lora_B.weight (out, r)
//   mixlora.layers.{l}.gate.weight                                (E, C)  the router
//   mixlora.layers.{l}.experts.{e}.{gate,up,down}_proj.lora_A.weight / lora_B.weight
//
// We write them in `adapter_model.safetensors`; the authors' loader reads `adapter_model.bin`
// (`torch.save(safetensors.torch.load_file(path), 'adapter_model.bin')` makes one). In memory each
// FFN projection's experts are one stacked module (`Train/MixLoRA.swift`).

extension PEFTAdapter {
    static func isMixLoRA(_ adapter: LoRAAdapter) -> Bool {
        adapter.modules.values.contains { $0.rankGate?.wholeFFN == true }
    }

    /// The parts of a MixLoRA tensor key.
    enum MixLoRAKey: Equatable {
        case attention(layer: Int, proj: Projection, factor: Character)
        case router(layer: Int)
        case expert(layer: Int, expert: Int, proj: Projection, factor: Character)
    }

    static func mixLoRAKey(_ key: String) -> MixLoRAKey? {
        let parts = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 4, parts[0] == "mixlora", parts[1] == "layers", let l = Int(parts[2]), l >= 0 else { return nil }
        func proj(_ s: String) -> Projection? {
            guard s.hasSuffix("_proj") else { return nil }
            return Projection(rawValue: String(s.dropLast("_proj".count)))
        }
        func factor(_ a: String, _ w: String) -> Character? {
            guard w == "weight" else { return nil }
            return a == "lora_A" ? "A" : a == "lora_B" ? "B" : nil
        }
        if parts.count == 5, parts[3] == "gate", parts[4] == "weight" { return .router(layer: l) }
        if parts.count == 7, parts[3] == "self_attn", let p = proj(parts[4]), let f = factor(parts[5], parts[6]) {
            return .attention(layer: l, proj: p, factor: f)
        }
        if parts.count == 8, parts[3] == "experts", let e = Int(parts[4]), e >= 0, let p = proj(parts[5]),
           MixLoRADefaults.ffn.contains(p), let f = factor(parts[6], parts[7]) {
            return .expert(layer: l, expert: e, proj: p, factor: f)
        }
        return nil
    }

    static func readMixLoRA(file: SafetensorsFile, config: JSONValue, directory: String) throws -> LoRAAdapter {
        func bad(_ f: String, _ r: String) -> PEFTError { .invalidConfig(path: directory, field: f, reason: r) }
        func int(_ k: String, in c: JSONValue = config, default d: Int? = nil) throws -> Int {
            guard let v = c[k], !v.isNull else {
                if let d { return d }
                throw bad(k, "missing (a MixLoRA config needs it)")
            }
            guard let i = v.intValue, i > 0 else { throw bad(k, "must be a positive integer, got \(v.serialized())") }
            return i
        }
        func number(_ k: String, in c: JSONValue = config, default d: Double? = nil) throws -> Double {
            guard let v = c[k], !v.isNull else {
                if let d { return d }
                throw bad(k, "missing (a MixLoRA config needs it)")
            }
            guard let x = v.doubleValue, x.isFinite else { throw bad(k, "must be a number, got \(v.serialized())") }
            return x
        }
        let strategy = config["routing_strategy"]?.stringValue ?? "(missing)"
        guard strategy == "mixtral" else {
            throw PEFTError.unsupportedOption(path: directory, option: "routing_strategy", value: strategy,
                                              reason: "lorafuse runs MixLoRA's top-k (\"mixtral\") routing; the dynamic and switch variants are not supported")
        }
        if let a = config["act_fn"], !a.isNull, a.stringValue != "silu" {
            throw PEFTError.unsupportedOption(path: directory, option: "act_fn", value: a.serialized(), reason: "the experts reuse the model's SiLU FFN")
        }
        for k in ["use_dora", "use_rslora"] where config[k]?.boolValue == true {
            throw PEFTError.unsupportedOption(path: directory, option: k, value: "true", reason: "MixLoRA adapters here scale each LoRA by lora_alpha / r")
        }
        // jitter_noise only perturbs training inputs; the authors' inference applies it too when
        // set, but its released configs leave it at 0, and a random perturbation has no place in
        // a reproducible eval: it is ignored.
        let E = try int("num_experts"), k = try int("top_k", default: 2)
        guard k <= E else { throw bad("top_k", "\(k) experts per token of num_experts = \(E)") }
        let r = try int("r"), alpha = try number("lora_alpha")
        var er = r, ealpha = alpha
        if let x = config["expert_lora"], !x.isNull {
            er = try int("r", in: x, default: r)
            ealpha = try number("lora_alpha", in: x, default: alpha)
        }
        var meta = AdapterMetadata()
        meta.baseModel = config["base_model_name_or_path"]?.stringValue
        meta.taskType = config["task_type"]?.stringValue
        meta.rank = er
        meta.alpha = ealpha
        meta.experts = E
        meta.topK = k
        meta.routerAuxLoss = config["router_aux_loss_coef"]?.doubleValue

        var attn: [String: [Character: String]] = [:]
        var routers: [Int: String] = [:]
        var experts: [Int: [Projection: [Int: [Character: String]]]] = [:]
        for key in file.names {
            guard let parsed = mixLoRAKey(key) else {
                throw bad(key, "not a MixLoRA tensor (expected mixlora.layers.{l}.self_attn.{p}.lora_A/B.weight, mixlora.layers.{l}.gate.weight or mixlora.layers.{l}.experts.{e}.{gate,up,down}_proj.lora_A/B.weight)")
            }
            switch parsed {
            case let .attention(l, p, f): attn[ModuleAddress.projection(layer: l, p).peft, default: [:]][f] = key
            case let .router(l): routers[l] = key
            case let .expert(l, e, p, f):
                guard e < E else { throw bad(key, "expert \(e), but num_experts is \(E) (experts 0…\(E - 1))") }
                experts[l, default: [:]][p, default: [:]][e, default: [:]][f] = key
            }
        }
        guard !routers.isEmpty || !attn.isEmpty else { throw bad("(tensors)", "no MixLoRA tensors") }
        var modules: [String: LoRAModule] = [:]
        var sourceDType: DType?
        for (module, f) in attn {
            guard let ak = f["A"] else { throw PEFTError.missingPartner(path: directory, tensor: f["B"]!, missing: "\(module).lora_A.weight") }
            guard let bk = f["B"] else { throw PEFTError.missingPartner(path: directory, tensor: ak, missing: "\(module).lora_B.weight") }
            let A = try file.finiteMatrix(ak), B = try file.finiteMatrix(bk)
            if sourceDType == nil { sourceDType = try file.info(ak).floatType }
            guard A.rows == r else { throw PEFTError.rankMismatch(path: directory, module: module, configRank: r, tensorRank: A.rows) }
            guard B.cols == A.rows else { throw PEFTError.factorShapeMismatch(path: directory, module: module, aShape: [A.rows, A.cols], bShape: [B.rows, B.cols]) }
            modules[module] = LoRAModule(A: A, B: B, scale: Float(alpha / Double(r)))
        }
        for l in Set(routers.keys).union(experts.keys).sorted() {
            guard let rk = routers[l] else {
                throw PEFTError.missingPartner(path: directory, tensor: "mixlora.layers.\(l).experts.…", missing: "mixlora.layers.\(l).gate.weight")
            }
            let router = try file.finiteMatrix(rk)                                // (E, C)
            guard router.rows == E else { throw bad(rk, "shape [\(router.rows), \(router.cols)], expected [\(E), hidden] (one row per expert)") }
            guard let projs = experts[l], !projs.isEmpty else { throw bad(rk, "a router for layer \(l) but no experts there") }
            for (p, byExpert) in projs {
                let module = ModuleAddress.projection(layer: l, p).peft
                var A = [Float](), Bs: [Matrix] = []
                for e in 0..<E {
                    let name = "mixlora.layers.\(l).experts.\(e).\(p.rawValue)_proj"
                    guard let f = byExpert[e], let ak = f["A"], let bk = f["B"] else {
                        throw PEFTError.missingPartner(path: directory, tensor: rk, missing: "\(name).lora_\(byExpert[e]?["A"] == nil ? "A" : "B").weight")
                    }
                    let a = try file.finiteMatrix(ak), b = try file.finiteMatrix(bk)
                    if sourceDType == nil { sourceDType = try file.info(ak).floatType }
                    guard a.rows == er else { throw PEFTError.rankMismatch(path: directory, module: name, configRank: er, tensorRank: a.rows) }
                    guard b.cols == er, A.isEmpty || a.cols == A.count / (e * er), Bs.first.map({ $0.rows == b.rows }) ?? true else {
                        throw PEFTError.factorShapeMismatch(path: directory, module: name, aShape: [a.rows, a.cols], bShape: [b.rows, b.cols])
                    }
                    A += a.data
                    Bs.append(b)
                }
                let nIn = A.count / (E * er), nOut = Bs[0].rows, R = E * er
                if p != .down && nIn != router.cols {
                    throw bad(rk, "shape [\(E), \(router.cols)], but the experts' \(p.rawValue)_proj input is \(nIn) wide")
                }
                var B = [Float](repeating: 0, count: nOut * R)
                for (e, b) in Bs.enumerated() { for o in 0..<nOut { for j in 0..<er { B[o * R + e * er + j] = b.data[o * er + j] } } }
                let gate = RankGate(topK: k, bias: [Float](repeating: 0, count: E), router: router.data, ranksPerExpert: er, wholeFFN: true)
                modules[module] = LoRAModule(A: Matrix(rows: R, cols: nIn, data: A), B: Matrix(rows: nOut, cols: R, data: B),
                                             scale: Float(ealpha / Double(er)), rankGate: gate)
            }
        }
        var targets = Set<String>()
        for n in modules.keys { targets.insert(String(n.split(separator: ".").last ?? Substring(n))) }
        meta.targetModules = targets.sorted()
        let name = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
        return LoRAAdapter(name: name, modules: modules, metadata: meta, sourceDType: sourceDType ?? .f32, sourcePath: directory)
    }

    static func prepareMixLoRA(_ adapter: LoRAAdapter, path: String) throws -> (JSONValue, [SafetensorsTensor]) {
        let meta = adapter.metadata, names = adapter.moduleNames
        guard let ref = names.compactMap({ adapter.modules[$0]!.rankGate }).first(where: \.wholeFFN) else {
            throw PEFTError.invalidConfig(path: path, field: "num_experts", reason: "no MixLoRA module")
        }
        let E = ref.experts, k = ref.topK, er = ref.ranksPerExpert
        var tensors: [SafetensorsTensor] = []
        var routersWritten = Set<Int>()
        var attnRank: Int?, attnAlpha: Double?, expertAlpha: Double?
        var targets = Set<String>()
        for n in names {
            let m = adapter.modules[n]!
            guard case let .projection(l, p)? = ModuleAddress(peft: n) else {
                throw PEFTError.invalidConfig(path: path, field: "target_modules", reason: "module '\(n)' is not a layer projection; MixLoRA files hold attention and FFN projections only")
            }
            targets.insert(p.peftName)
            try SafetensorsFile.checkFinite(m.A.data, tensor: n + " (A)", path: path)
            try SafetensorsFile.checkFinite(m.B.data, tensor: n + " (B)", path: path)
            if let g = m.rankGate {
                guard g.wholeFFN, let w = g.router, g.experts == E, g.topK == k, g.ranksPerExpert == er else {
                    throw PEFTError.invalidConfig(path: path, field: "num_experts", reason: "module '\(n)' is not a MixLoRA module of \(E) experts of rank \(er), top-\(k), as the others are")
                }
                let a = Double(m.scale) * Double(er)
                if let x = expertAlpha, abs(x - a) > 1e-6 * max(1, abs(a)) {
                    throw PEFTError.invalidConfig(path: path, field: "lora_alpha", reason: "module '\(n)' has α \(a), others \(x); one config describes every expert")
                }
                expertAlpha = a
                if routersWritten.insert(l).inserted {
                    try SafetensorsFile.checkFinite(w, tensor: "mixlora.layers.\(l).gate", path: path)
                    tensors.append(SafetensorsTensor(name: "mixlora.layers.\(l).gate.weight", shape: [E, w.count / E], values: w))
                }
                let nIn = m.inFeatures, nOut = m.outFeatures, R = E * er
                for e in 0..<E {
                    let stem = "mixlora.layers.\(l).experts.\(e).\(p.rawValue)_proj"
                    tensors.append(SafetensorsTensor(name: stem + ".lora_A.weight", shape: [er, nIn],
                                                     values: Array(m.A.data[(e * er * nIn)..<((e + 1) * er * nIn)])))
                    var b = [Float](repeating: 0, count: nOut * er)
                    for o in 0..<nOut { for j in 0..<er { b[o * er + j] = m.B.data[o * R + e * er + j] } }
                    tensors.append(SafetensorsTensor(name: stem + ".lora_B.weight", shape: [nOut, er], values: b))
                }
            } else {
                let a = Double(m.scale) * Double(m.rank)
                if let r0 = attnRank, r0 != m.rank || abs(attnAlpha! - a) > 1e-6 * max(1, abs(a)) {
                    throw PEFTError.invalidConfig(path: path, field: "r", reason: "attention module '\(n)' has rank \(m.rank), α \(a); others \(r0), \(attnAlpha!): one config describes them all")
                }
                attnRank = m.rank; attnAlpha = a
                let stem = "mixlora.layers.\(l).self_attn.\(p.rawValue)_proj"
                tensors.append(SafetensorsTensor(name: stem + ".lora_A.weight", shape: [m.rank, m.inFeatures], values: m.A.data))
                tensors.append(SafetensorsTensor(name: stem + ".lora_B.weight", shape: [m.outFeatures, m.rank], values: m.B.data))
            }
        }
        func optString(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
        let r = attnRank ?? er, alpha = attnAlpha ?? expertAlpha!
        var fields: [String: JSONValue] = [
            "peft_type": .string("MIXLORA"),
            "task_type": optString(meta.taskType ?? "CAUSAL_LM"),
            "base_model_name_or_path": optString(meta.baseModel),
            "r": .int(r),
            "lora_alpha": .double(alpha),
            "lora_dropout": .number("0.0"),
            "bias": .string("none"),
            "target_modules": .array(targets.sorted().map { .string($0) }),
            "routing_strategy": .string("mixtral"),
            "num_experts": .int(E),
            "top_k": .int(k),
            "act_fn": .string("silu"),
            "router_aux_loss_coef": .double(meta.routerAuxLoss ?? Double(MixLoRADefaults.auxLoss)),
            "router_init_range": .double(Double("\(MixLoRADefaults.routerInitRange)")!),
            "jitter_noise": .number("0.0"),
        ]
        if er != r || abs(expertAlpha! - alpha) > 1e-6 * max(1, abs(alpha)) {
            fields["expert_lora"] = .object([("lora_alpha", .double(expertAlpha!)), ("r", .int(er))])
        }
        let config = JSONValue.object(fields.keys.sorted().map { ($0, fields[$0]!) })
        return (config, tensors)
    }
}
