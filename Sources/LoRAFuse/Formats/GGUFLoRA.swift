import Foundation

/// What the adapter converters may need to know about the base model: its llama.cpp
/// architecture name, its attention head counts (for the q/k RoPE permutation), and, when the
/// base is a GGUF file, the ggml dims of its tensors (for llama.cpp's adapter shape checks).
public struct ModelHints: Sendable {
    public var architecture: String?
    public var heads: AttentionHeads?
    /// Base tensor name → ggml dims (dims[0] contiguous), from a base GGUF.
    public var baseTensorDims: [String: [Int]]?
    /// Where the hints came from, for messages.
    public var source: String?

    public init(architecture: String? = nil, heads: AttentionHeads? = nil,
                baseTensorDims: [String: [Int]]? = nil, source: String? = nil) {
        self.architecture = architecture
        self.heads = heads
        self.baseTensorDims = baseTensorDims
        self.source = source
    }

    /// Reads hints from a base model: a `.gguf` file (`general.architecture`,
    /// `<arch>.attention.head_count`, `<arch>.attention.head_count_kv`, tensor dims) or a Hugging
    /// Face `config.json` (or a directory holding one: `model_type`, `num_attention_heads`,
    /// `num_key_value_heads`, which defaults to the head count as in transformers).
    public static func load(path: String) throws -> ModelHints {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw GGUFLoRAError.badBase(path: path, reason: "no such file or directory")
        }
        if isDir.boolValue {
            return try load(path: (path as NSString).appendingPathComponent("config.json"))
        }
        if path.lowercased().hasSuffix(".gguf") || GGUFLoRA.hasGGUFMagic(path: path) {
            let f = try GGUFFile(path: path)
            return try fromGGUF(f)
        }
        try InputFile.refuseSpecialFile(path)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GGUFLoRAError.badBase(path: path, reason: "cannot read")
        }
        let json: JSONValue
        do { json = try JSONValue.parse(Array(data)) } catch {
            throw GGUFLoRAError.badBase(path: path, reason: "neither GGUF nor a JSON config: \(error)")
        }
        var hints = ModelHints(source: path)
        if let mt = json["model_type"]?.stringValue {
            hints.architecture = ["llama": "llama", "mistral": "llama"][mt] ?? mt
        }
        if let h = json["num_attention_heads"]?.intValue {
            let kv = json["num_key_value_heads"]?.intValue ?? h
            guard h > 0, kv > 0 else { throw GGUFLoRAError.badBase(path: path, reason: "head counts \(h)/\(kv) must be positive") }
            hints.heads = AttentionHeads(heads: h, kvHeads: kv)
        }
        return hints
    }

    static func fromGGUF(_ f: GGUFFile) throws -> ModelHints {
        var hints = ModelHints(source: f.path)
        hints.architecture = f.metadata["general.architecture"]?.asString
        if let arch = hints.architecture {
            hints.heads = try GGUFLoRA.heads(in: f, architecture: arch)
        }
        var dims: [String: [Int]] = [:]
        for t in f.tensors { dims[t.name] = t.dims }
        hints.baseTensorDims = dims
        return hints
    }
}

public enum GGUFLoRAError: Error, CustomStringConvertible, Equatable {
    case notAnAdapter(path: String, generalType: String)
    case notLoRA(path: String, adapterType: String)
    case invalidMetadata(path: String, key: String, expected: String, actual: String)
    case unexpectedTensor(path: String, tensor: String)
    case missingPartner(path: String, base: String, missing: String)
    case badShape(path: String, tensor: String, reason: String)
    case unmappedTensor(path: String, tensor: String)
    case unmappedModule(path: String, module: String)
    case headsRequired(path: String, tensor: String)
    case notInBase(path: String, tensor: String, base: String)
    case baseShapeMismatch(path: String, tensor: String, reason: String)
    case unsupported(path: String, what: String)
    case badBase(path: String, reason: String)
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case let .notAnAdapter(p, t): return "\(p): general.type is \(t), expected \"adapter\" (this GGUF is not an adapter)"
        case let .notLoRA(p, t): return "\(p): adapter.type is \(t), expected \"lora\""
        case let .invalidMetadata(p, k, e, a): return "\(p): metadata '\(k)': expected \(e), got \(a)"
        case let .unexpectedTensor(p, t): return "\(p): tensor '\(t)' is neither <base>.lora_a nor <base>.lora_b"
        case let .missingPartner(p, b, m): return "\(p): LoRA pair for '\(b)' has no '\(m)'"
        case let .badShape(p, t, r): return "\(p): tensor '\(t)': \(r)"
        case let .unmappedTensor(p, t): return "\(p): base tensor '\(t)' has no Hugging Face / PEFT name in lorafuse's table (TensorNames)"
        case let .unmappedModule(p, m): return "\(p): module '\(m)' has no GGUF tensor name in lorafuse's table (TensorNames)"
        case let .headsRequired(p, t):
            return "\(p): '\(t)' is a q/k projection, whose rows llama.cpp permutes for RoPE; the attention head counts are needed: give --base MODEL (a GGUF or config.json) or --heads N --kv-heads M"
        case let .notInBase(p, t, b): return "\(p): LoRA tensor '\(t)' does not exist in base model \(b) (wrong base model?)"
        case let .baseShapeMismatch(p, t, r): return "\(p): tensor '\(t)' has incorrect shape for the base model: \(r)"
        case let .unsupported(p, w): return "\(p): \(w)"
        case let .badBase(p, r): return "\(p): cannot use as base model: \(r)"
        case let .writeFailed(p, r): return "\(p): write failed: \(r)"
        }
    }
}

/// LoRA adapters in GGUF, as llama.cpp's `convert_lora_to_gguf.py` writes them and
/// `llama_adapter_lora_init` (src/llama-adapter.cpp) reads them.
///
/// Metadata: `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (f32),
/// `general.architecture` (must equal the base model's). Tensors come in pairs named
/// `<base tensor>.lora_a` / `<base tensor>.lora_b`, e.g. `blk.0.attn_q.weight.lora_a`:
/// - linear: lora_a has ggml dims [n_in, r] (a row-major (r, n_in) matrix = PEFT's A) and
///   lora_b has dims [r, n_out] (row-major (n_out, r) = PEFT's B). llama.cpp checks
///   base.ne[0] == a.ne[0], base.ne[1] == b.ne[1] and a.ne[1] == b.ne[0].
/// - `token_embd.weight`: A and B are swapped in meaning because the graph gathers rows of
///   lora_a per token (`llm_build_inp_embd`): lora_a has dims [r, n_vocab] (row-major
///   (n_vocab, r) = PEFT's `lora_embedding_A` transposed), lora_b has dims [r, n_embd]
///   (row-major (n_embd, r) = PEFT's `lora_embedding_B`). llama.cpp checks
///   base.ne[0] (n_embd) == b.ne[1] and base.ne[1] (n_vocab) == a.ne[1].
///
/// Scale: llama.cpp uses `alpha / r` per tensor pair with r = lora_b.ne[0] (or 1 when alpha is
/// 0 or absent), times the user's adapter scale. There is ONE alpha per file, and the converter
/// takes PEFT's `lora_alpha` and ignores `rank_pattern` / `alpha_pattern` / `use_rslora`, which
/// silently mis-scales such adapters. This writer instead checks whether one alpha gives every
/// module its own scale s_i (s_i·r_i all equal); if not it writes alpha = s·r of the most common
/// rank and folds the rest into B: B_i' = B_i · s_i·r_i/alpha, so alpha/r_i · B_i'·A_i = s_i·B_i·A_i.
///
/// q/k: for the llama architecture the converter row-permutes the q and k weights (HF's
/// rotate-half RoPE → GGUF's adjacent pairs, `Matrix.ropePermutedForGGUF`), with heads =
/// n_head for q and n_head_kv for k. Permuting the rows of ΔW = B·A is permuting the rows of B,
/// so the writer permutes B of q/k (A unchanged) and the reader undoes it. The head counts come
/// from `ModelHints`; the writer also stores them as `<arch>.attention.head_count(_kv)` so the
/// reader can undo the permutation without a base (llama.cpp ignores those keys in adapters).
///
/// Tensors named `*_norm.weight` (mergekit-extract-lora's layer norms) are skipped on reading,
/// as llama.cpp does.
public enum GGUFLoRA {
    static func hasGGUFMagic(path: String) -> Bool {
        guard InputFile.isRegularFile(path), let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        let head = (try? h.read(upToCount: 4)) ?? nil
        return head.map { Array($0) == Array("GGUF".utf8) } ?? false
    }

    /// Head counts from `<arch>.attention.head_count` / `head_count_kv` (kv defaults to heads).
    static func heads(in f: GGUFFile, architecture arch: String) throws -> AttentionHeads? {
        let hk = "\(arch).attention.head_count", kk = "\(arch).attention.head_count_kv"
        guard let hv = f.metadata[hk] else { return nil }
        guard let h = hv.asInt, h > 0 else {
            throw GGUFLoRAError.invalidMetadata(path: f.path, key: hk, expected: "a positive integer", actual: "\(hv)")
        }
        var kv = h
        if let kvv = f.metadata[kk] {
            guard let k = kvv.asInt, k > 0 else {
                throw GGUFLoRAError.invalidMetadata(path: f.path, key: kk, expected: "a positive integer", actual: "\(kvv)")
            }
            kv = k
        }
        return AttentionHeads(heads: h, kvHeads: kv)
    }

    // MARK: reading

    public static func read(path: String, hints: ModelHints = ModelHints()) throws -> LoRAAdapter {
        let f = try GGUFFile(path: path)
        return try read(file: f, hints: hints)
    }

    public static func read(file f: GGUFFile, hints: ModelHints = ModelHints()) throws -> LoRAAdapter {
        let path = f.path
        func str(_ key: String) throws -> String? {
            guard let v = f.metadata[key] else { return nil }
            guard let s = v.asString else { throw GGUFLoRAError.invalidMetadata(path: path, key: key, expected: "a string", actual: "\(v)") }
            return s
        }
        let gtype = try str("general.type")
        guard gtype == "adapter" else { throw GGUFLoRAError.notAnAdapter(path: path, generalType: gtype.map { "\"\($0)\"" } ?? "absent") }
        let atype = try str("adapter.type")
        guard atype == "lora" else { throw GGUFLoRAError.notLoRA(path: path, adapterType: atype.map { "\"\($0)\"" } ?? "absent") }
        var alpha: Float = 0
        if let v = f.metadata["adapter.lora.alpha"] {
            // llama.cpp reads it with gguf_get_val_f32, which requires the f32 type.
            guard case .float32(let a) = v, a.isFinite else {
                throw GGUFLoRAError.invalidMetadata(path: path, key: "adapter.lora.alpha", expected: "a finite f32", actual: "\(v) (\(v.type))")
            }
            alpha = a
        }
        let arch = try str("general.architecture") ?? hints.architecture ?? ""
        let permuted = TensorNames.ropePermutedArchitectures.contains(arch)
        let heads = try hints.heads ?? heads(in: f, architecture: arch)

        var aT: [String: GGUFTensorInfo] = [:], bT: [String: GGUFTensorInfo] = [:]
        for t in f.tensors {
            if t.name.hasSuffix(".lora_a") { aT[String(t.name.dropLast(7))] = t }
            else if t.name.hasSuffix(".lora_b") { bT[String(t.name.dropLast(7))] = t }
            else if t.name.hasSuffix("_norm.weight") { continue }
            else { throw GGUFLoRAError.unexpectedTensor(path: path, tensor: t.name) }
        }
        var modules: [String: LoRAModule] = [:]
        var dtype: DType?
        for base in Set(aT.keys).union(bT.keys).sorted(by: naturalLess) {
            guard let a = aT[base] else { throw GGUFLoRAError.missingPartner(path: path, base: base, missing: base + ".lora_a") }
            guard let b = bT[base] else { throw GGUFLoRAError.missingPartner(path: path, base: base, missing: base + ".lora_b") }
            guard a.dims.count == 2, b.dims.count == 2 else {
                throw GGUFLoRAError.badShape(path: path, tensor: base, reason: "lora_a dims \(a.dims) and lora_b dims \(b.dims) must both be 2-D")
            }
            guard let module = TensorNames.peftModule(forGGUFTensor: base) else {
                throw GGUFLoRAError.unmappedTensor(path: path, tensor: base)
            }
            let isEmbd = base == "token_embd.weight"
            let am = try f.matrix(a.name), bm = try f.matrix(b.name)
            for (n, m) in [(a.name, am), (b.name, bm)] where !m.data.allSatisfy({ $0.isFinite }) {
                throw GGUFLoRAError.badShape(path: path, tensor: n, reason: "holds a non-finite value")
            }
            if dtype == nil { dtype = [GGMLType.f16: DType.f16, .bf16: .bf16][a.type] ?? .f32 }
            let A: Matrix, B: Matrix
            if isEmbd {
                // lora_a (n_vocab, r) = Aᵀ, lora_b (n_embd, r) = B.
                guard a.dims[0] == b.dims[0] else {
                    throw GGUFLoRAError.badShape(path: path, tensor: base, reason: "token_embd lora_a dims \(a.dims) and lora_b dims \(b.dims) need the same rank in dims[0]")
                }
                A = am.transposed()     // (r, n_vocab)
                B = bm                  // (n_embd, r)
            } else {
                guard a.dims[1] == b.dims[0] else {
                    throw GGUFLoRAError.badShape(path: path, tensor: base, reason: "lora_a dims \(a.dims) ([n_in, r]) and lora_b dims \(b.dims) ([r, n_out]) disagree on the rank")
                }
                A = am                  // (r, n_in)
                var b0 = bm             // (n_out, r)
                if permuted, let role = TensorNames.ropeRole(ofGGUF: base) {
                    guard let h = heads else { throw GGUFLoRAError.headsRequired(path: path, tensor: base) }
                    do { b0 = try b0.ropeUnpermutedFromGGUF(heads: role == .query ? h.heads : h.kvHeads) } catch {
                        throw GGUFLoRAError.badShape(path: path, tensor: b.name, reason: "\(error) (\(h))")
                    }
                }
                B = b0
            }
            let r = A.rows
            let scale = alpha != 0 ? alpha / Float(r) : 1
            modules[module] = LoRAModule(A: A, B: B, scale: scale, kind: isEmbd ? .embedding : .linear)
        }
        var meta = AdapterMetadata()
        var counts: [Int: Int] = [:]
        for m in modules.values { counts[m.rank, default: 0] += 1 }
        meta.rank = counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }?.key ?? 0
        meta.alpha = alpha != 0 ? Double(alpha) : Double(meta.rank)
        meta.targetModules = Set(modules.keys.map { String($0.split(separator: ".").last ?? "") }).sorted()
        let name = (f.metadata["general.name"]?.asString) ?? ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        return LoRAAdapter(name: name, modules: modules, metadata: meta, sourceDType: dtype ?? .f32, sourcePath: path)
    }

    // MARK: writing

    /// One tensor pair as it goes into the file: PyTorch-layout (rows, cols) matrices whose
    /// ggml dims are [cols, rows].
    struct Pair {
        var base: String
        var a: Matrix
        var b: Matrix
        var aDims: [Int] { [a.cols, a.rows] }
        var bDims: [Int] { [b.cols, b.rows] }
    }

    /// The alpha to write and each module's folding factor (1 when one alpha fits all).
    static func chooseAlpha(_ adapter: LoRAAdapter) -> (alpha: Float, factors: [String: Float]) {
        let names = adapter.moduleNames
        guard !names.isEmpty else { return (Float(max(adapter.metadata.rank, 1)), [:]) }
        var counts: [Int: Int] = [:]
        for m in adapter.modules.values { counts[m.rank, default: 0] += 1 }
        let common = counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }!.key
        let ref = adapter.modules[names.first { adapter.modules[$0]!.rank == common }!]!
        var alpha = ref.scale * Float(ref.rank)
        if !(alpha.isFinite && alpha != 0) { alpha = Float(common) }
        var factors: [String: Float] = [:]
        for n in names {
            let m = adapter.modules[n]!
            let want = m.scale * Float(m.rank)
            factors[n] = abs(want - alpha) <= 1e-6 * max(1, abs(alpha)) ? 1 : want / alpha
        }
        return (alpha, factors)
    }

    static func pairs(_ adapter: LoRAAdapter, hints: ModelHints, path: String) throws -> (Float, [Pair]) {
        try adapter.requireDense("a GGUF LoRA (llama.cpp applies every rank to every token)")
        if adapter.metadata.fanInFanOut {
            throw GGUFLoRAError.unsupported(path: path, what: "fan_in_fan_out adapters (GPT-2 Conv1D layers) have no GGUF LoRA mapping")
        }
        let extras = AdapterWriting.fullTensors(adapter)
        if !extras.isEmpty {
            let shown = extras.prefix(4).joined(separator: ", ")
            throw GGUFLoRAError.unsupported(path: path, what: "the adapter carries full tensors (modules_to_save: \(shown)); a GGUF LoRA holds only lora_a/lora_b pairs (llama.cpp rejects other tensors)")
        }
        let arch = hints.architecture ?? "llama"
        let permuted = TensorNames.ropePermutedArchitectures.contains(arch)
        let (alpha, factors) = chooseAlpha(adapter)
        var out: [Pair] = []
        for n in adapter.moduleNames {
            let m = adapter.modules[n]!
            guard let base = TensorNames.ggufTensor(forPEFTModule: n) else { throw GGUFLoRAError.unmappedModule(path: path, module: n) }
            let isEmbd = base == "token_embd.weight"
            guard isEmbd == (m.kind == .embedding) else {
                throw GGUFLoRAError.unsupported(path: path, what: "module '\(n)' is a \(m.kind.rawValue) LoRA but maps to '\(base)'")
            }
            var B = m.B
            if let f = factors[n], f != 1 { B.scale(by: f) }
            if isEmbd {
                out.append(Pair(base: base, a: m.A.transposed(), b: B))   // (n_vocab, r), (n_embd, r)
            } else {
                if permuted, let role = TensorNames.ropeRole(ofGGUF: base) {
                    guard let h = hints.heads else { throw GGUFLoRAError.headsRequired(path: path, tensor: base) }
                    do { B = try B.ropePermutedForGGUF(heads: role == .query ? h.heads : h.kvHeads) } catch {
                        throw GGUFLoRAError.badShape(path: path, tensor: base, reason: "\(error) (\(h))")
                    }
                }
                out.append(Pair(base: base, a: m.A, b: B))                // (r, in), (out, r)
            }
        }
        if let dims = hints.baseTensorDims {
            try checkAgainstBase(pairs: out.map { ($0.base, $0.aDims, $0.bDims) }, baseDims: dims,
                                 path: path, baseName: hints.source ?? "base")
        }
        return (alpha, out)
    }

    /// llama.cpp's adapter-loader shape checks (`llama_adapter_lora_init_impl`), with dims in ggml
    /// order: every base tensor exists; token_embd: base.ne[0] == b.ne[1], base.ne[1] == a.ne[1]
    /// (and a.ne[0] == b.ne[0], which its graph needs); others: base.ne[0] == a.ne[0],
    /// base.ne[1] == b.ne[1], a.ne[1] == b.ne[0].
    public static func checkAgainstBase(pairs: [(base: String, a: [Int], b: [Int])], baseDims: [String: [Int]],
                                        path: String, baseName: String) throws {
        for p in pairs {
            guard let m = baseDims[p.base] else { throw GGUFLoRAError.notInBase(path: path, tensor: p.base, base: baseName) }
            guard m.count >= 2, p.a.count == 2, p.b.count == 2 else {
                throw GGUFLoRAError.baseShapeMismatch(path: path, tensor: p.base, reason: "base dims \(m), lora_a \(p.a), lora_b \(p.b)")
            }
            if p.base.hasSuffix("token_embd.weight") {
                guard m[0] == p.b[1], m[1] == p.a[1], p.a[0] == p.b[0] else {
                    throw GGUFLoRAError.baseShapeMismatch(path: path, tensor: p.base,
                        reason: "base dims \(m) need lora_a [r, \(m[1])] and lora_b [r, \(m[0])]; got lora_a \(p.a), lora_b \(p.b)")
                }
            } else {
                guard m[0] == p.a[0], m[1] == p.b[1], p.a[1] == p.b[0] else {
                    throw GGUFLoRAError.baseShapeMismatch(path: path, tensor: p.base,
                        reason: "base dims \(m) need lora_a [\(m[0]), r] and lora_b [r, \(m[1])]; got lora_a \(p.a), lora_b \(p.b)")
                }
            }
        }
    }

    /// Runs the llama.cpp shape checks on a written GGUF LoRA file against a base GGUF.
    public static func validate(adapterPath: String, basePath: String) throws {
        let f = try GGUFFile(path: adapterPath)
        let base = try GGUFFile(path: basePath)
        let arch = f.metadata["general.architecture"]?.asString
        let baseArch = base.metadata["general.architecture"]?.asString
        guard arch == baseArch else {
            throw GGUFLoRAError.invalidMetadata(path: adapterPath, key: "general.architecture",
                                                expected: "the base model's \(baseArch ?? "absent")", actual: arch ?? "absent")
        }
        var aT: [String: [Int]] = [:], bT: [String: [Int]] = [:]
        for t in f.tensors {
            if t.name.hasSuffix(".lora_a") { aT[String(t.name.dropLast(7))] = t.dims }
            else if t.name.hasSuffix(".lora_b") { bT[String(t.name.dropLast(7))] = t.dims }
            else if !t.name.hasSuffix("_norm.weight") { throw GGUFLoRAError.unexpectedTensor(path: adapterPath, tensor: t.name) }
        }
        var pairs: [(base: String, a: [Int], b: [Int])] = []
        for n in Set(aT.keys).union(bT.keys).sorted(by: naturalLess) {
            guard let a = aT[n] else { throw GGUFLoRAError.missingPartner(path: adapterPath, base: n, missing: n + ".lora_a") }
            guard let b = bT[n] else { throw GGUFLoRAError.missingPartner(path: adapterPath, base: n, missing: n + ".lora_b") }
            pairs.append((n, a, b))
        }
        var dims: [String: [Int]] = [:]
        for t in base.tensors { dims[t.name] = t.dims }
        try checkAgainstBase(pairs: pairs, baseDims: dims, path: adapterPath, baseName: basePath)
    }

    /// The complete file for `adapter` (see the type's documentation for the layout).
    public static func serialize(_ adapter: LoRAAdapter, dtype: DType, hints: ModelHints = ModelHints(),
                                 path: String = "<memory>") throws -> [UInt8] {
        let (alpha, pairs) = try GGUFLoRA.pairs(adapter, hints: hints, path: path)
        let arch = hints.architecture ?? "llama"
        var w = try GGUFWriter()
        try w.set("general.architecture", .string(arch))
        try w.set("general.type", .string("adapter"))
        try w.set("general.name", .string(adapter.name))
        try w.set("adapter.type", .string("lora"))
        try w.set("adapter.lora.alpha", .float32(alpha))
        if let h = hints.heads {
            try w.set("\(arch).attention.head_count", .uint32(UInt32(h.heads)))
            try w.set("\(arch).attention.head_count_kv", .uint32(UInt32(h.kvHeads)))
        }
        let type: GGMLType = [DType.f32: GGMLType.f32, .f16: .f16, .bf16: .bf16][dtype]!
        for p in pairs {
            for (n, m) in [(p.base + ".lora_a", p.a), (p.base + ".lora_b", p.b)] {
                guard m.data.allSatisfy({ $0.isFinite }) else {
                    throw GGUFLoRAError.badShape(path: path, tensor: n, reason: "holds a non-finite value")
                }
                try w.addTensor(n, matrix: m, type: type)
            }
        }
        return w.serialized()
    }

    /// Writes `adapter` as a GGUF LoRA file through `OutputGuard`: never onto an input (the
    /// adapter's source or `protecting`), an existing file replaced only with `force`, written
    /// under a temporary name beside `path` and renamed.
    public static func write(_ adapter: LoRAAdapter, to path: String, dtype: DType, hints: ModelHints = ModelHints(),
                             protecting: [String] = [], force: Bool = false) throws {
        let target = try OutputGuard.check(path, kind: .file, inputs: protecting + [adapter.sourcePath].compactMap { $0 },
                                           force: force)
        let bytes = try serialize(adapter, dtype: dtype, hints: hints, path: path)
        do {
            try OutputGuard.writeFile(target) { tmp in try Data(bytes).write(to: tmp) }
        } catch let e as OutputGuardError {
            throw e
        } catch {
            throw GGUFLoRAError.writeFailed(path: path, reason: "\(error)")
        }
    }
}

/// Helpers shared by the adapter writers.
enum AdapterWriting {
    /// Extra tensors that are real content (modules_to_save copies). PEFT's `*.base_layer.weight`
    /// copies of the base embedding (saved with `save_embedding_layers`, e.g. whenever
    /// embed_tokens is a target) are not: they equal the base, and llama.cpp's converter skips
    /// them too, so the GGUF and MLX writers drop them.
    static func fullTensors(_ adapter: LoRAAdapter) -> [String] {
        adapter.extraTensors.keys.filter { !$0.hasSuffix(".base_layer.weight") }.sorted()
    }

}
