import Foundation

// Generator state file: one safetensors file (F32; the basis vectors bf16) with
//   vae.<param>                        the Fusion VAE's weights
//   basis.mean, basis.vectors, basis.sigma   its fixed decoder basis P, U (K, V), σ
//   cond.mean, cond.std                condition standardisation
//   task.<i>.condition / .description / .stats_mean / .stats_std / .latent_mean / .latent_var
//   fusion.<i>.weights / .rho / .log_gain / .logits / .log_scale   learned fusion parameters per task set
// and metadata "icm.config" (JSON): options, VAE config, adapter layout, task names, fusion keys.

extension ICMGenerator {
    /// 2: the whole-adapter Fusion VAE over a fixed basis (1 was the chunked VAE).
    static let stateVersion = 2

    public func save(to path: String) throws {
        var ts: [SafetensorsTensor] = []
        for n in vae.params.names { ts.append(SafetensorsTensor(name: "vae." + n, shape: vae.params.shapes[n]!, values: vae.params[n])) }
        let b = vae.basis
        ts.append(SafetensorsTensor(name: "basis.mean", shape: [b.length], values: b.mean))
        ts.append(SafetensorsTensor(name: "basis.vectors", shape: [b.size, b.length], values: b.vectors, dtype: .bf16))
        ts.append(SafetensorsTensor(name: "basis.sigma", shape: [b.size], values: b.sigma))
        ts.append(SafetensorsTensor(name: "cond.mean", shape: [conditionMean.count], values: conditionMean))
        ts.append(SafetensorsTensor(name: "cond.std", shape: [conditionStd.count], values: conditionStd))
        for (i, t) in tasks.enumerated() {
            let p = "task.\(i)."
            ts.append(SafetensorsTensor(name: p + "condition", shape: [t.condition.count], values: t.condition))
            if let d = t.description { ts.append(SafetensorsTensor(name: p + "description", shape: [d.count], values: d)) }
            ts.append(SafetensorsTensor(name: p + "stats_mean", shape: [t.stats.mean.count], values: t.stats.mean))
            ts.append(SafetensorsTensor(name: p + "stats_std", shape: [t.stats.std.count], values: t.stats.std))
            ts.append(SafetensorsTensor(name: p + "latent_mean", shape: [vae.config.latent], values: t.latentMean))
            ts.append(SafetensorsTensor(name: p + "latent_var", shape: [vae.config.latent], values: t.latentVar))
        }
        let keys = fusions.keys.sorted()
        for (i, k) in keys.enumerated() {
            let f = fusions[k]!
            ts.append(SafetensorsTensor(name: "fusion.\(i).weights", shape: [f.weights.count], values: f.weights))
            ts.append(SafetensorsTensor(name: "fusion.\(i).rho", shape: [f.rho.count], values: f.rho))
            ts.append(SafetensorsTensor(name: "fusion.\(i).log_gain", shape: [2], values: f.logGain))
            ts.append(SafetensorsTensor(name: "fusion.\(i).logits", shape: [f.logits.count], values: f.logits))
            ts.append(SafetensorsTensor(name: "fusion.\(i).log_scale", shape: [1], values: [f.logScale]))
        }
        let layoutJSON: [String: Any] = [
            "chunk_size": layout.chunkSize, "rank": layout.rank, "alpha": layout.alpha, "rslora": layout.rsLoRA,
            "targets": layout.targets.map(\.rawValue),
            "modules": layout.modules.map { [$0.layer, Projection.allCases.firstIndex(of: $0.target)!, $0.inFeatures, $0.outFeatures] },
        ]
        let enc = JSONEncoder()
        let opts = try JSONSerialization.jsonObject(with: enc.encode(options))
        let vcfg = try JSONSerialization.jsonObject(with: enc.encode(vae.config))
        var cfg: [String: Any] = ["format": "lorafuse-icm-generator", "version": Self.stateVersion, "basis_residual": basisResidual, "options": opts, "vae": vcfg,
                                  "layout": layoutJSON, "tasks": tasks.map(\.name), "fusion_keys": keys]
        if let b = baseModel { cfg["base_model"] = b }
        let data = try JSONSerialization.data(withJSONObject: cfg, options: [.sortedKeys])
        try SafetensorsWriter.write(tensors: ts, metadata: ["icm.config": String(decoding: data, as: UTF8.self)],
                                    dtype: .f32, to: URL(fileURLWithPath: path))
    }

    public static func load(path: String) throws -> ICMGenerator {
        let f = try SafetensorsFile(path: path)
        func bad(_ field: String, _ r: String) -> ICMError { .badState(path: path, field: field, reason: r) }
        guard let s = f.metadata["icm.config"], let cfg = try JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any],
              cfg["format"] as? String == "lorafuse-icm-generator" else { throw bad("icm.config", "missing or not a lorafuse ICM generator") }
        guard (cfg["version"] as? Int) == stateVersion else {
            throw bad("icm.config.version", "this generator file is version \((cfg["version"] as? Int).map(String.init) ?? "?"), lorafuse reads version \(stateVersion) (the Fusion VAE became a whole-adapter VAE over a fixed basis); train it again")
        }
        let dec = JSONDecoder()
        guard let oj = cfg["options"], let vj = cfg["vae"], let lj = cfg["layout"] as? [String: Any],
              let names = cfg["tasks"] as? [String] else { throw bad("icm.config", "missing options/vae/layout/tasks") }
        let options = try dec.decode(ICMGeneratorOptions.self, from: JSONSerialization.data(withJSONObject: oj))
        let vcfg = try dec.decode(FusionVAEConfig.self, from: JSONSerialization.data(withJSONObject: vj))
        guard let cs = lj["chunk_size"] as? Int, let rank = lj["rank"] as? Int, let alpha = (lj["alpha"] as? NSNumber)?.doubleValue,
              let rs = lj["rslora"] as? Bool, let tg = lj["targets"] as? [String], let mods = lj["modules"] as? [[Int]] else {
            throw bad("icm.config.layout", "incomplete")
        }
        let targets = try tg.map { s -> Projection in guard let t = Projection(rawValue: s) else { throw bad("layout.targets", "unknown '\(s)'") }; return t }
        let s0 = LoRAParameters.scale(rank: rank, alpha: alpha, rsLoRA: rs)
        var tm: [TrainableLoRAModule] = []
        for m in mods {
            guard m.count == 4, m[1] >= 0, m[1] < Projection.allCases.count else { throw bad("layout.modules", "bad entry \(m)") }
            tm.append(TrainableLoRAModule(layer: m[0], target: Projection.allCases[m[1]], rank: rank, inFeatures: m[2], outFeatures: m[3],
                                          scale: s0, A: [Float](repeating: 0, count: rank * m[2]), B: [Float](repeating: 0, count: m[3] * rank)))
        }
        let layout = ChunkLayout(like: LoRAParameters(modules: tm, rank: rank, alpha: alpha, rsLoRA: rs, targets: targets), chunkSize: cs)
        let basis = ParameterBasis(mean: try f.floats("basis.mean"), vectors: try f.floats("basis.vectors"), sigma: try f.floats("basis.sigma"))
        let V = layout.chunkCount * layout.chunkSize
        guard basis.length == V, basis.size == vcfg.basis, basis.vectors.count == basis.size * V else {
            throw bad("basis", "expected \(vcfg.basis) vectors of \(V) values, found \(basis.size) and \(basis.length) (vectors \(basis.vectors.count))")
        }
        var vae = FusionVAE(config: vcfg, basis: basis, seed: 0)
        for n in vae.params.names {
            let v = try f.floats("vae." + n)
            guard v.count == vae.params[n].count else { throw bad("vae." + n, "expected \(vae.params[n].count) values, found \(v.count)") }
            vae.params[n] = v
        }
        var tasks: [ICMTaskRecord] = []
        for (i, name) in names.enumerated() {
            let p = "task.\(i)."
            tasks.append(ICMTaskRecord(name: name, condition: try f.floats(p + "condition"),
                                       description: f.contains(p + "description") ? try f.floats(p + "description") : nil,
                                       stats: TensorStats(mean: try f.floats(p + "stats_mean"), std: try f.floats(p + "stats_std")),
                                       latentMean: try f.floats(p + "latent_mean"), latentVar: try f.floats(p + "latent_var")))
        }
        let g = ICMGenerator(layout: layout, vae: vae, tasks: tasks, options: options,
                             conditionMean: try f.floats("cond.mean"), conditionStd: try f.floats("cond.std"))
        g.baseModel = cfg["base_model"] as? String
        g.basisResidual = (cfg["basis_residual"] as? NSNumber)?.doubleValue ?? 0
        for (i, k) in ((cfg["fusion_keys"] as? [String]) ?? []).enumerated() {
            var fp = ICMFusionParameters(weights: try f.floats("fusion.\(i).weights"), rho: try f.floats("fusion.\(i).rho"),
                                         logGain: try f.floats("fusion.\(i).log_gain"))
            fp.logits = try f.floats("fusion.\(i).logits")
            fp.logScale = try f.floats("fusion.\(i).log_scale").first ?? 0
            g.fusions[k] = fp
        }
        return g
    }
}
