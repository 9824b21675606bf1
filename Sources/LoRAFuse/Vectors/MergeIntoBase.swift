import Foundation

/// One tensor of the base that received adapter updates.
public struct MergedTensorReport: Codable, Sendable, Equatable {
    public var tensor: String
    /// `adapter:module` pairs added into it.
    public var sources: [String]
    /// ‖Σ w·s·B·A‖_F added (before any row permutation, which keeps the norm).
    public var deltaNorm: Double
}

public struct MergeIntoBaseReport: Codable, Sendable {
    public var base: String
    public var output: String
    public var format: String
    public var dtype: String
    public var merged: [MergedTensorReport]
    public var copied: Int
    public var bytesWritten: Int
    public var outputFiles: [String]
    public var seconds: Double
}

/// Bakes LoRA adapters into a base model: W' = W + Σ_i w_i · s_i · B_i · A_i per adapted weight.
///
/// Adapter module names map to checkpoint tensors by dropping PEFT's `base_model.model.` prefix
/// and adding `.weight` (`base_model.model.model.layers.0.self_attn.q_proj` →
/// `model.layers.0.self_attn.q_proj.weight`), then to GGUF names for a GGUF base (`blk.0.attn_q.weight`).
/// Embedding LoRA (B·A is (dim, vocab)) is added transposed into the (vocab, dim) table, and
/// `fan_in_fan_out` adapters likewise. For a llama GGUF base the q/k updates get llama.cpp's row
/// permutation before being added (PEFT adapters are trained on the HF layout).
///
/// HF bases stream tensor by tensor into sharded safetensors (config and tokenizer files copied).
/// GGUF output keeps every metadata key (general.file_type updated), 1-D tensors (norms) in F32
/// and the rest in the chosen type; the GGUF writer assembles the file in memory, so that path
/// needs memory for the output model (fine for the small GGUF models lorafuse runs on CPU).
/// A GGUF base can also be written as HF safetensors (dequantized, q/k un-permuted, a llama
/// config.json derived from the metadata; the tokenizer stays in the GGUF).
public enum MergeIntoBase {
    public enum Format: String, Sendable, Codable { case hf, gguf }

    public struct Options: Sendable {
        public var format: Format?
        /// `f32`, `f16`, `bf16` or (GGUF only) `q8_0`; nil: the base's dtype (HF) or f16 (GGUF).
        public var dtype: String?
        public var maxShardBytes: Int
        public var progress: (@Sendable (Int, Int) -> Void)?
        /// Replace an existing output (never an input).
        public var force: Bool

        public init(format: Format? = nil, dtype: String? = nil, maxShardBytes: Int = 2_000_000_000, force: Bool = false,
                    progress: (@Sendable (Int, Int) -> Void)? = nil) {
            self.force = force
            self.format = format
            self.dtype = dtype
            self.maxShardBytes = maxShardBytes
            self.progress = progress
        }
    }

    /// Candidate checkpoint tensor names for a PEFT module name, most likely first:
    /// `base_model.model.model.layers.0.self_attn.q_proj` → `model.layers.0.self_attn.q_proj.weight`.
    static func hfCandidates(forModule module: String) -> [String] {
        var stem = module
        stem = ModuleAddress.strippingPEFTPrefix(stem)
        var out = [stem + ".weight"]
        if !stem.hasPrefix("model.") { out.append("model." + stem + ".weight") }
        if stem.hasPrefix("model.model.") { out.append(String(stem.dropFirst(6)) + ".weight") }
        return out
    }

    /// One adapter module's contribution to one base tensor.
    struct Contribution {
        var label: String
        var module: LoRAModule
        /// w·s.
        var factor: Float
        /// Add (B·A)ᵀ instead of B·A (embedding tables, fan_in_fan_out).
        var transposed: Bool
    }

    /// Adds the contributions into `w` (rows, cols) in place through BLAS (beta = 1).
    static func accumulate(_ contributions: [Contribution], into w: inout Matrix) {
        for c in contributions {
            let a = c.module.A, b = c.module.B   // (r, in), (out, r)
            if c.transposed {
                // w (in, out) += f · Aᵀ · Bᵀ
                BLAS.gemm(transA: true, transB: true, m: w.rows, n: w.cols, k: a.rows, alpha: c.factor,
                          a: a.data, lda: a.cols, b: b.data, ldb: b.cols, beta: 1, c: &w.data, ldc: w.cols)
            } else {
                BLAS.gemm(transA: false, transB: false, m: w.rows, n: w.cols, k: a.rows, alpha: c.factor,
                          a: b.data, lda: b.cols, b: a.data, ldb: a.cols, beta: 1, c: &w.data, ldc: w.cols)
            }
        }
    }

    static func deltaMatrix(_ contributions: [Contribution], rows: Int, cols: Int) -> Matrix {
        var d = Matrix(rows: rows, cols: cols)
        accumulate(contributions, into: &d)
        return d
    }

    /// Resolves every adapter module to a base tensor name (in HF naming), with shape checks.
    /// `shapeOf` returns the base tensor's (rows, cols) in PyTorch layout, nil if absent.
    static func plan(adapters: [(adapter: LoRAAdapter, weight: Float)], baseLabel: String,
                     shapeOf: (String) -> [Int]?) throws -> [String: [Contribution]] {
        var out: [String: [Contribution]] = [:]
        for (ad, w) in adapters {
            for name in ad.moduleNames {
                let m = ad.modules[name]!
                let cands = hfCandidates(forModule: name)
                var hit: (String, [Int])? = nil
                for c in cands { if let s = shapeOf(c) { hit = (c, s); break } }
                guard let (tensor, shape) = hit else {
                    throw CheckpointError.unmappedModule(adapter: ad.sourcePath ?? ad.name, module: name,
                                                         tried: cands.joined(separator: ", ") + " in \(baseLabel)")
                }
                let transposed = m.kind == .embedding || ad.metadata.fanInFanOut
                let expected = transposed ? [m.inFeatures, m.outFeatures] : [m.outFeatures, m.inFeatures]
                guard shape == expected else {
                    throw CheckpointError.shapeMismatch(tensor: tensor, expected: expected, actual: shape,
                                                        context: "adapter \(ad.sourcePath ?? ad.name) module \(name) (ΔW\(transposed ? "ᵀ" : "") of rank \(m.rank)) vs base \(baseLabel)")
                }
                out[tensor, default: []].append(Contribution(label: "\(ad.name):\(name)", module: m, factor: w * m.scale,
                                                             transposed: transposed))
            }
        }
        return out
    }

    /// PEFT `modules_to_save` copies (e.g. `base_model.model.lm_head.weight`) replace the base
    /// tensor of the same name whole, as PEFT's merge_and_unload does; the adapter weight does not
    /// scale them. Saved base layers (`….base_layer.weight`, from save_embedding_layers) are the
    /// base's own values and are ignored. Two adapters replacing the same tensor is an error.
    static func replacements(adapters: [(adapter: LoRAAdapter, weight: Float)], baseLabel: String,
                             shapeOf: (String) -> [Int]?) throws -> [String: (label: String, values: [Float])] {
        var out: [String: (label: String, values: [Float])] = [:]
        for (ad, _) in adapters {
            for (name, m) in ad.extraTensors.sorted(by: { naturalLess($0.key, $1.key) }) where !name.contains(".base_layer.") {
                let stem = ModuleAddress.strippingPEFTPrefix(name)
                let cands = [stem, "model." + stem]
                var hit: (String, [Int])? = nil
                for c in cands { if let s = shapeOf(c) { hit = (c, s); break } }
                guard let (tensor, shape) = hit else {
                    throw CheckpointError.unmappedModule(adapter: ad.sourcePath ?? ad.name, module: name,
                                                         tried: cands.joined(separator: ", ") + " in \(baseLabel) (modules_to_save)")
                }
                guard shape.reduce(1, *) == m.count else {
                    throw CheckpointError.shapeMismatch(tensor: tensor, expected: ad.metadata.extraTensorShapes[name] ?? m.shape, actual: shape,
                                                        context: "adapter \(ad.sourcePath ?? ad.name) modules_to_save tensor \(name) vs base \(baseLabel)")
                }
                if let prev = out[tensor] {
                    throw CheckpointError.unsupported(what: tensor, reason: "replaced by two adapters' modules_to_save (\(prev.label) and \(ad.name)); bake them one at a time")
                }
                out[tensor] = ("\(ad.name):\(name) (modules_to_save)", m.data)
            }
        }
        return out
    }

    public static func isGGUF(_ path: String) -> Bool {
        guard InputFile.isRegularFile(path), let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: 4)) == Data("GGUF".utf8)
    }

    /// Bakes `adapters` into `base` and writes the merged model to `output` through
    /// `OutputGuard`: never onto the base or an adapter, an existing output replaced only with
    /// `options.force`, and built under a temporary name so an interrupted run leaves no
    /// half-written model (an HF folder appears with all its shards and config, or not at all).
    /// GGUF output: a `.gguf` path is the file; an existing folder gets `<base>.merged.gguf`
    /// inside it; any other path becomes a folder holding `model.gguf`.
    @discardableResult
    public static func merge(base: String, adapters: [(adapter: LoRAAdapter, weight: Float)], output: String,
                             options: Options = Options()) throws -> MergeIntoBaseReport {
        for (a, _) in adapters { try a.requireDense("merging into the base weights") }
        let gguf = isGGUF(base)
        let format = options.format ?? (gguf ? .gguf : .hf)
        if !gguf && format == .gguf {
            throw CheckpointError.unsupported(what: base, reason: "GGUF output needs a GGUF base; an HF base writes HF safetensors (--format hf)")
        }
        let inputs = [base] + adapters.compactMap { $0.adapter.sourcePath }
        guard !output.trimmingCharacters(in: .whitespaces).isEmpty else { throw OutputGuardError.emptyPath(what: "-o/--output") }
        if format == .gguf {
            var isDir: ObjCBool = false
            var file: String?
            if FileManager.default.fileExists(atPath: output, isDirectory: &isDir), isDir.boolValue {
                file = (output as NSString).appendingPathComponent(((base as NSString).lastPathComponent as NSString).deletingPathExtension + ".merged.gguf")
            } else if output.hasSuffix(".gguf") {
                file = output
            }
            if let file {
                let target = try OutputGuard.check(file, kind: .file, inputs: inputs, force: options.force)
                var report: MergeIntoBaseReport?
                try OutputGuard.writeFile(target) { tmp in
                    report = try mergeGGUF(base: base, adapters: adapters, outFile: tmp.path, options: options)
                }
                report!.output = file
                return report!
            }
            var report = try OutputGuard.buildDirectory(output, inputs: inputs, force: options.force) { tmp in
                try mergeGGUF(base: base, adapters: adapters, outFile: (tmp as NSString).appendingPathComponent("model.gguf"), options: options)
            }
            report.output = (output as NSString).appendingPathComponent("model.gguf")
            return report
        }
        var report = try OutputGuard.buildDirectory(output, inputs: inputs, force: options.force) { tmp in
            gguf ? try mergeGGUFToHF(base: base, adapters: adapters, output: tmp, options: options)
                 : try mergeHF(base: base, adapters: adapters, output: tmp, options: options)
        }
        report.output = output
        return report
    }

    // MARK: HF → HF

    static func mergeHF(base: String, adapters: [(adapter: LoRAAdapter, weight: Float)], output: String,
                        options: Options) throws -> MergeIntoBaseReport {
        let start = Date()
        var outType: DType? = nil
        if let d = options.dtype {
            guard let t = DType(name: d) else {
                throw CheckpointError.unsupported(what: "--dtype \(d)", reason: "HF output is f32, f16 or bf16 (q8_0 is for GGUF output)")
            }
            outType = t
        }
        let ck = try HFCheckpoint(path: base)
        let contributions = try plan(adapters: adapters, baseLabel: base) { name in
            guard let i = ck.infos[name], i.floatType != nil, i.shape.count == 2 else { return nil }
            return i.shape
        }
        let replaced = try replacements(adapters: adapters, baseLabel: base) { name in
            guard let i = ck.infos[name], i.floatType != nil else { return nil }
            return i.shape
        }
        let plan = ck.names.map { n -> PlannedTensor in
            let i = ck.infos[n]!
            return PlannedTensor(name: n, shape: i.shape, dtype: i.floatType.map { (outType ?? $0).rawValue } ?? i.dtype)
        }
        let writer = try StreamingShardedWriter(directory: URL(fileURLWithPath: output), plan: plan, maxShardBytes: options.maxShardBytes)
        var values: [Float] = [], scratch: [UInt8] = [], bytes: [UInt8] = []
        var merged: [MergedTensorReport] = []
        for (k, t) in plan.enumerated() {
            let info = ck.infos[t.name]!
            if let rep = replaced[t.name], contributions[t.name] == nil {
                TensorCodec.encode(rep.values, dtype: DType(rawValue: t.dtype)!, into: &bytes)
                merged.append(MergedTensorReport(tensor: t.name, sources: [rep.label], deltaNorm: 0))
            } else if let cs = contributions[t.name] {
                if let rep = replaced[t.name] { values = rep.values } else { try ck.readFloats(t.name, into: &values, scratch: &scratch) }
                var w = Matrix(rows: info.shape[0], cols: info.shape[1], data: values)
                values = []
                let norm = deltaMatrix(cs, rows: w.rows, cols: w.cols).frobeniusNorm
                accumulate(cs, into: &w)
                TensorCodec.encode(w.data, dtype: DType(rawValue: t.dtype)!, into: &bytes)
                merged.append(MergedTensorReport(tensor: t.name, sources: cs.map(\.label), deltaNorm: norm))
            } else if info.floatType != nil && info.dtype != t.dtype {
                try ck.readFloats(t.name, into: &values, scratch: &scratch)
                TensorCodec.encode(values, dtype: DType(rawValue: t.dtype)!, into: &bytes)
            } else {
                try ck.readRaw(t.name, into: &bytes)
            }
            try writer.write(name: t.name, bytes: bytes)
            options.progress?(k + 1, plan.count)
        }
        var files = try writer.finish()
        files += try ck.copyCompanionFiles(to: output)
        let dts = Set(plan.map(\.dtype)).sorted()
        return MergeIntoBaseReport(base: base, output: output, format: "hf", dtype: outType?.rawValue ?? dts.joined(separator: ","),
                                   merged: merged, copied: plan.count - merged.count, bytesWritten: writer.bytesWritten,
                                   outputFiles: files, seconds: Date().timeIntervalSince(start))
    }

    // MARK: GGUF base

    /// PyTorch-layout (rows, cols) of a GGUF tensor: dims [ne0, ne1] → (ne1, ne0).
    static func torchShape(_ t: GGUFTensorInfo) -> [Int] {
        t.dims.count == 1 ? [t.dims[0]] : [t.dims.dropFirst().reduce(1, *), t.dims[0]]
    }

    struct GGUFContext {
        let file: GGUFFile
        let arch: String
        let heads: Int?
        let kvHeads: Int?
        /// HF name → GGUF name for the tensors present.
        let hfToGGUF: [String: String]

        init(path: String) throws {
            file = try GGUFFile(path: path)
            arch = file.metadata["general.architecture"]?.asString ?? "llama"
            heads = file.metadata["\(arch).attention.head_count"]?.asInt
            kvHeads = file.metadata["\(arch).attention.head_count_kv"]?.asInt ?? heads
            var map: [String: String] = [:]
            for t in file.tensors { if let h = TensorNames.hfName(forGGUF: t.name) { map[h] = t.name } }
            hfToGGUF = map
        }

        /// Head count for the llama.cpp row permutation of this GGUF tensor, nil when not permuted.
        func permutationHeads(_ ggufName: String) throws -> Int? {
            guard TensorNames.ropePermutedArchitectures.contains(arch), ggufName.hasSuffix(".weight"),
                  let role = TensorNames.ropeRole(ofGGUF: ggufName) else { return nil }
            guard let h = role == .query ? heads : kvHeads else {
                throw CheckpointError.unsupported(what: file.path, reason: "\(arch).attention.head_count is missing; cannot undo the q/k row permutation")
            }
            return h
        }
    }

    static func ggmlType(_ name: String?) throws -> GGMLType {
        switch name?.lowercased() ?? "f16" {
        case "f32": return .f32
        case "f16": return .f16
        case "bf16": return .bf16
        case "q8_0", "q8": return .q8_0
        default: throw CheckpointError.unsupported(what: "--dtype \(name!)", reason: "GGUF output is f32, f16, bf16 or q8_0")
        }
    }

    /// llama.cpp `general.file_type` for the chosen tensor type.
    static func fileType(_ t: GGMLType) -> UInt32 {
        switch t {
        case .f32: return 0
        case .f16: return 1
        case .q8_0: return 7
        case .bf16: return 32
        default: return 1
        }
    }

    static func mergeGGUF(base: String, adapters: [(adapter: LoRAAdapter, weight: Float)], outFile outPath: String,
                          options: Options) throws -> MergeIntoBaseReport {
        let start = Date()
        let target = try ggmlType(options.dtype)
        let ctx = try GGUFContext(path: base)
        let contributions = try plan(adapters: adapters, baseLabel: base) { hf in
            guard let g = ctx.hfToGGUF[hf], let t = ctx.file.tensorInfo(g), t.dims.count == 2 else { return nil }
            return torchShape(t)
        }
        var byGGUF: [String: (String, [Contribution])] = [:]
        for (hf, cs) in contributions { byGGUF[ctx.hfToGGUF[hf]!] = (hf, cs) }
        var replacedGGUF: [String: (label: String, values: [Float])] = [:]
        for (hf, r) in try replacements(adapters: adapters, baseLabel: base, shapeOf: { hf in
            guard let g = ctx.hfToGGUF[hf], let t = ctx.file.tensorInfo(g) else { return nil }
            return torchShape(t)
        }) { replacedGGUF[ctx.hfToGGUF[hf]!] = r }

        var writer = try GGUFWriter(alignment: ctx.file.alignment)
        for key in ctx.file.metadataKeys where key != "general.alignment" {
            var v = ctx.file.metadata[key]!
            if key == "general.file_type" { v = .uint32(fileType(target)) }
            try writer.set(key, v)
        }
        var merged: [MergedTensorReport] = []
        for (k, t) in ctx.file.tensors.enumerated() {
            guard t.type.canDequantize else {
                try writer.addRawTensor(t.name, dims: t.dims, type: t.type, bytes: try ctx.file.rawBytes(t.name))
                continue
            }
            var values = try ctx.file.floats(t.name)
            if let rep = replacedGGUF[t.name] {
                // modules_to_save values are in HF layout: permute q/k rows like the converter.
                values = rep.values
                if let h = try ctx.permutationHeads(t.name) {
                    let s = torchShape(t)
                    values = try Matrix(rows: s[0], cols: s[1], data: values).ropePermutedForGGUF(heads: h).data
                }
                if byGGUF[t.name] == nil { merged.append(MergedTensorReport(tensor: t.name, sources: [rep.label], deltaNorm: 0)) }
            }
            if let (_, cs) = byGGUF[t.name] {
                let shape = torchShape(t)
                var w = Matrix(rows: shape[0], cols: shape[1], data: values)
                var delta = deltaMatrix(cs, rows: shape[0], cols: shape[1])   // HF layout
                let norm = delta.frobeniusNorm
                if let h = try ctx.permutationHeads(t.name) { delta = try delta.ropePermutedForGGUF(heads: h) }
                w.add(delta)
                values = w.data
                merged.append(MergedTensorReport(tensor: t.name, sources: cs.map(\.label), deltaNorm: norm))
            }
            var type = target
            if t.dims.count == 1 || t.dims.dropFirst().allSatisfy({ $0 == 1 }) { type = .f32 }   // norms, biases
            if type == .q8_0 && t.dims[0] % 32 != 0 { type = .f16 }
            try writer.addTensor(t.name, dims: t.dims, values: values, type: type)
            options.progress?(k + 1, ctx.file.tensors.count)
        }
        let fm = FileManager.default
        try writer.write(to: outPath)
        let size = (try? fm.attributesOfItem(atPath: outPath)[.size] as? Int) ?? 0
        return MergeIntoBaseReport(base: base, output: outPath, format: "gguf", dtype: target.name, merged: merged,
                                   copied: ctx.file.tensors.count - merged.count, bytesWritten: size,
                                   outputFiles: [(outPath as NSString).lastPathComponent], seconds: Date().timeIntervalSince(start))
    }

    /// GGUF base → HF safetensors: dequantized, q/k rows back in HF order, llama config.json.
    static func mergeGGUFToHF(base: String, adapters: [(adapter: LoRAAdapter, weight: Float)], output: String,
                              options: Options) throws -> MergeIntoBaseReport {
        let start = Date()
        let outType: DType
        if let d = options.dtype {
            guard let t = DType(name: d) else {
                throw CheckpointError.unsupported(what: "--dtype \(d)", reason: "HF output is f32, f16 or bf16")
            }
            outType = t
        } else {
            outType = .f32
        }
        let ctx = try GGUFContext(path: base)
        let contributions = try plan(adapters: adapters, baseLabel: base) { hf in
            guard let g = ctx.hfToGGUF[hf], let t = ctx.file.tensorInfo(g), t.dims.count == 2 else { return nil }
            return torchShape(t)
        }
        let replaced = try replacements(adapters: adapters, baseLabel: base) { hf in
            guard let g = ctx.hfToGGUF[hf], let t = ctx.file.tensorInfo(g) else { return nil }
            return torchShape(t)
        }
        var plan: [PlannedTensor] = []
        var sources: [String: GGUFTensorInfo] = [:]
        for t in ctx.file.tensors {
            guard let hf = TensorNames.hfName(forGGUF: t.name) else {
                throw CheckpointError.unsupported(what: base, reason: "tensor '\(t.name)' has no Hugging Face name in the llama mapping")
            }
            guard t.type.canDequantize else {
                throw CheckpointError.unsupported(what: base, reason: "tensor '\(t.name)' of type \(t.type.name) cannot be dequantized")
            }
            plan.append(PlannedTensor(name: hf, shape: torchShape(t), dtype: outType.rawValue))
            sources[hf] = t
        }
        let writer = try StreamingShardedWriter(directory: URL(fileURLWithPath: output), plan: plan, maxShardBytes: options.maxShardBytes)
        var bytes: [UInt8] = []
        var merged: [MergedTensorReport] = []
        for (k, p) in plan.enumerated() {
            let t = sources[p.name]!
            var values = try ctx.file.floats(t.name)
            let rep = replaced[p.name]
            if let rep { values = rep.values }
            if rep != nil && contributions[p.name] == nil {
                merged.append(MergedTensorReport(tensor: p.name, sources: [rep!.label], deltaNorm: 0))
            } else if p.shape.count == 2 {
                var w = Matrix(rows: p.shape[0], cols: p.shape[1], data: values)
                if rep == nil, let h = try ctx.permutationHeads(t.name) { w = try w.ropeUnpermutedFromGGUF(heads: h) }
                if let cs = contributions[p.name] {
                    merged.append(MergedTensorReport(tensor: p.name, sources: cs.map(\.label),
                                                     deltaNorm: deltaMatrix(cs, rows: w.rows, cols: w.cols).frobeniusNorm))
                    accumulate(cs, into: &w)
                }
                values = w.data
            }
            TensorCodec.encode(values, dtype: outType, into: &bytes)
            try writer.write(name: p.name, bytes: bytes)
            options.progress?(k + 1, plan.count)
        }
        var files = try writer.finish()
        try writeJSON(llamaConfig(ctx, hasLMHead: sources["lm_head.weight"] != nil, dtype: outType),
                      to: (output as NSString).appendingPathComponent("config.json"))
        files.append("config.json")
        return MergeIntoBaseReport(base: base, output: output, format: "hf", dtype: outType.rawValue, merged: merged,
                                   copied: plan.count - merged.count, bytesWritten: writer.bytesWritten,
                                   outputFiles: files, seconds: Date().timeIntervalSince(start))
    }

    /// A transformers LlamaConfig from GGUF llama metadata.
    static func llamaConfig(_ ctx: GGUFContext, hasLMHead: Bool, dtype: DType) -> JSONValue {
        let m = ctx.file.metadata, a = ctx.arch
        func int(_ k: String) -> JSONValue { m["\(a).\(k)"]?.asInt.map { .int($0) } ?? .null }
        func dbl(_ k: String) -> JSONValue { m["\(a).\(k)"]?.asDouble.map { .double($0) } ?? .null }
        let vocab = ctx.file.tensorInfo("token_embd.weight").map { JSONValue.int(torchShape($0)[0]) } ?? .null
        let torchDType = dtype == .f32 ? "float32" : dtype == .f16 ? "float16" : "bfloat16"
        return .object([
            ("architectures", .array([.string("LlamaForCausalLM")])),
            ("model_type", .string("llama")),
            ("hidden_size", int("embedding_length")),
            ("intermediate_size", int("feed_forward_length")),
            ("num_hidden_layers", int("block_count")),
            ("num_attention_heads", int("attention.head_count")),
            ("num_key_value_heads", m["\(a).attention.head_count_kv"] != nil ? int("attention.head_count_kv") : int("attention.head_count")),
            ("max_position_embeddings", int("context_length")),
            ("rms_norm_eps", dbl("attention.layer_norm_rms_epsilon")),
            ("rope_theta", m["\(a).rope.freq_base"] != nil ? dbl("rope.freq_base") : .double(10000)),
            ("vocab_size", vocab),
            ("tie_word_embeddings", .bool(!hasLMHead)),
            ("bos_token_id", m["tokenizer.ggml.bos_token_id"]?.asInt.map { .int($0) } ?? .null),
            ("eos_token_id", m["tokenizer.ggml.eos_token_id"]?.asInt.map { .int($0) } ?? .null),
            ("torch_dtype", .string(torchDType)),
            ("hidden_act", .string("silu")),
        ])
    }
}
