import Foundation
import XCTest
@testable import LoRAFuse

/// A tiny llama: hidden 8, 2 heads of dim 4, 1 kv head, ffn 12, vocab 10.
enum TinyLlama {
    static let hidden = 8, heads = 2, kvHeads = 1, headDim = 4, ffn = 12, vocab = 10
    static let hints = ModelHints(architecture: "llama", heads: AttentionHeads(heads: heads, kvHeads: kvHeads))
    static let p = "base_model.model."

    static func module(_ out: Int, _ inp: Int, r: Int, scale: Float, kind: LoRAModuleKind = .linear, rng: inout SeededRNG) -> LoRAModule {
        LoRAModule(A: .randomNormal(r, inp, std: 0.5, rng: &rng), B: .randomNormal(out, r, std: 0.5, rng: &rng), scale: scale, kind: kind)
    }

    /// Every module kind lorafuse maps, with ranks 2 and 3 and α = 4 (so s = α/r), except
    /// `down_proj`, whose scale 0.5 no shared α gives (it must be folded into B).
    static func adapter(seed: UInt64 = 1, consistentScales: Bool = false) -> LoRAAdapter {
        var rng = SeededRNG(seed: seed)
        let kv = kvHeads * headDim
        var m: [String: LoRAModule] = [:]
        let l0 = p + "model.layers.0."
        m[l0 + "self_attn.q_proj"] = module(hidden, hidden, r: 2, scale: 2, rng: &rng)
        m[l0 + "self_attn.k_proj"] = module(kv, hidden, r: 2, scale: 2, rng: &rng)
        m[l0 + "self_attn.v_proj"] = module(kv, hidden, r: 2, scale: 2, rng: &rng)
        m[l0 + "self_attn.o_proj"] = module(hidden, hidden, r: 2, scale: 2, rng: &rng)
        m[l0 + "mlp.gate_proj"] = module(ffn, hidden, r: 3, scale: 4.0 / 3, rng: &rng)
        m[l0 + "mlp.up_proj"] = module(ffn, hidden, r: 2, scale: 2, rng: &rng)
        m[l0 + "mlp.down_proj"] = module(hidden, ffn, r: 2, scale: consistentScales ? 2 : 0.5, rng: &rng)
        m[p + "model.layers.1.self_attn.q_proj"] = module(hidden, hidden, r: 2, scale: 2, rng: &rng)
        // Embedding LoRA in PEFT layout: A (r, vocab), B (hidden, r).
        m[p + "model.embed_tokens"] = module(hidden, vocab, r: 2, scale: 2, kind: .embedding, rng: &rng)
        m[p + "lm_head"] = module(vocab, hidden, r: 2, scale: 2, rng: &rng)
        var meta = AdapterMetadata()
        meta.rank = 2
        meta.alpha = 4
        return LoRAAdapter(name: "tiny", modules: m, metadata: meta)
    }
}

func assertSameInteropDeltas(_ a: LoRAAdapter, _ b: LoRAAdapter, tolerance: Float = 1e-5, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(Set(a.modules.keys), Set(b.modules.keys), "module sets", file: file, line: line)
    for (n, ma) in a.modules {
        guard let mb = b.modules[n] else { continue }
        XCTAssertEqual(ma.kind, mb.kind, n, file: file, line: line)
        let da = ma.delta(), db = mb.delta()
        XCTAssertEqual(da.shape, db.shape, n, file: file, line: line)
        guard da.shape == db.shape else { continue }
        XCTAssertLessThanOrEqual(da.maxAbsDifference(db), tolerance * max(1, da.maxAbs), n, file: file, line: line)
    }
}

func contentHash(_ path: String) throws -> [UInt8] {
    // FNV-1a over every file under path: enough to see any change.
    var paths = [path]
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
        paths = try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { (path as NSString).appendingPathComponent($0) }
    }
    var h: UInt64 = 0xcbf29ce484222325
    for p in paths {
        for b in Array(p.utf8) + Array(try Data(contentsOf: URL(fileURLWithPath: p))) { h = (h ^ UInt64(b)) &* 0x100000001b3 }
    }
    return withUnsafeBytes(of: h) { Array($0) }
}

final class TensorNamesTests: XCTestCase {
    func testNameTableBothWays() {
        let pairs = [
            ("model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight"),
            ("model.layers.3.self_attn.k_proj.weight", "blk.3.attn_k.weight"),
            ("model.layers.3.self_attn.v_proj.weight", "blk.3.attn_v.weight"),
            ("model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"),
            ("model.layers.12.mlp.gate_proj.weight", "blk.12.ffn_gate.weight"),
            ("model.layers.12.mlp.up_proj.weight", "blk.12.ffn_up.weight"),
            ("model.layers.12.mlp.down_proj.weight", "blk.12.ffn_down.weight"),
            ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
            ("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"),
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("model.layers.1.self_attn.q_proj", "blk.1.attn_q"),
        ]
        for (hf, g) in pairs {
            XCTAssertEqual(TensorNames.ggufName(forHF: hf), g, hf)
            XCTAssertEqual(TensorNames.hfName(forGGUF: g), hf, g)
        }
        XCTAssertEqual(TensorNames.ggufTensor(forPEFTModule: "base_model.model.model.layers.2.mlp.down_proj"), "blk.2.ffn_down.weight")
        XCTAssertEqual(TensorNames.peftModule(forGGUFTensor: "blk.2.ffn_down.weight"), "base_model.model.model.layers.2.mlp.down_proj")
        XCTAssertEqual(TensorNames.peftModule(forGGUFTensor: "token_embd.weight"), "base_model.model.model.embed_tokens")
        XCTAssertNil(TensorNames.ggufName(forHF: "model.layers.x.self_attn.q_proj"))
        XCTAssertNil(TensorNames.ggufName(forHF: "model.layers.01.self_attn.q_proj"))
        XCTAssertNil(TensorNames.ggufName(forHF: "model.layers.0.self_attn.qkv_proj"))
        XCTAssertNil(TensorNames.hfName(forGGUF: "blk.0.attn_qkv.weight"))
        XCTAssertNil(TensorNames.hfName(forGGUF: "rope_freqs.weight"))
        XCTAssertEqual(TensorNames.ropeRole(ofGGUF: "blk.4.attn_q.weight"), .query)
        XCTAssertEqual(TensorNames.ropeRole(ofGGUF: "blk.4.attn_k.weight"), .key)
        XCTAssertNil(TensorNames.ropeRole(ofGGUF: "blk.4.attn_v.weight"))
    }

    func testRopePermutationMatchesConverterReshape() throws {
        // One head of dim 4: HF rows (0, 1 | 2, 3) pair (0,2), (1,3); GGUF puts pairs adjacent.
        let w = Matrix([[0], [1], [2], [3]])
        XCTAssertEqual(try w.ropePermutedForGGUF(heads: 1).data, [0, 2, 1, 3])
        // Two heads of dim 6: the reshape(n_head, 2, hd/2, in).swapaxes(1, 2) index formula,
        // computed independently: new[h][j][t] = old[h][t][j].
        var rows: [[Float]] = []
        for k in 0..<12 { rows.append([Float(k), Float(100 + k)]) }
        let m = Matrix(rows)
        var expected: [Float] = []
        for h in 0..<2 { for j in 0..<3 { for t in 0..<2 { let src = h * 6 + t * 3 + j; expected += [Float(src), Float(100 + src)] } } }
        let perm = try m.ropePermutedForGGUF(heads: 2)
        XCTAssertEqual(perm.data, expected)
        XCTAssertEqual(try perm.ropeUnpermutedFromGGUF(heads: 2), m)
        XCTAssertNotEqual(perm, m)
        XCTAssertThrowsError(try m.ropePermutedForGGUF(heads: 5)) { XCTAssertEqual($0 as? TensorNamesError, .badHeadCount(rows: 12, heads: 5)) }
        XCTAssertThrowsError(try m.ropePermutedForGGUF(heads: 4))   // head_dim 3 is odd
    }
}

final class GGUFLoRATests: TempDirTestCase {
    func testRoundTripPermutesQKAndSwapsTokenEmbd() throws {
        let a = TinyLlama.adapter()
        let path = tmp.appendingPathComponent("tiny.gguf").path
        try GGUFLoRA.write(a, to: path, dtype: .f32, hints: TinyLlama.hints)

        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.metadata["general.type"], .string("adapter"))
        XCTAssertEqual(f.metadata["adapter.type"], .string("lora"))
        XCTAssertEqual(f.metadata["general.architecture"], .string("llama"))
        XCTAssertEqual(f.metadata["adapter.lora.alpha"], .float32(4))   // s·r of the rank-2 modules
        XCTAssertEqual(f.metadata["llama.attention.head_count"], .uint32(2))
        XCTAssertEqual(f.metadata["llama.attention.head_count_kv"], .uint32(1))
        XCTAssertEqual(f.tensors.count, 2 * a.modules.count)

        let l0 = TinyLlama.p + "model.layers.0."
        // Linear: lora_a dims [n_in, r] = A; lora_b dims [r, n_out] = B (q/k rows permuted).
        XCTAssertEqual(f.tensorInfo("blk.0.attn_q.weight.lora_a")?.dims, [8, 2])
        XCTAssertEqual(f.tensorInfo("blk.0.attn_q.weight.lora_b")?.dims, [2, 8])
        XCTAssertEqual(f.tensorInfo("blk.0.attn_k.weight.lora_b")?.dims, [2, 4])
        let q = a.modules[l0 + "self_attn.q_proj"]!, k = a.modules[l0 + "self_attn.k_proj"]!, v = a.modules[l0 + "self_attn.v_proj"]!
        XCTAssertEqual(try f.matrix("blk.0.attn_q.weight.lora_a"), q.A)
        XCTAssertEqual(try f.matrix("blk.0.attn_q.weight.lora_b"), try q.B.ropePermutedForGGUF(heads: 2))
        XCTAssertEqual(try f.matrix("blk.0.attn_k.weight.lora_b"), try k.B.ropePermutedForGGUF(heads: 1))
        XCTAssertEqual(try f.matrix("blk.0.attn_v.weight.lora_b"), v.B)
        XCTAssertNotEqual(try f.matrix("blk.0.attn_q.weight.lora_b"), q.B)
        // llama.cpp's ΔW for q, alpha/r · b·a with r = b.ne[0], is the permuted HF ΔW.
        let ggufQ = try f.matrix("blk.0.attn_q.weight.lora_b").matmul(try f.matrix("blk.0.attn_q.weight.lora_a")).scaled(by: 4 / 2)
        XCTAssertLessThan(ggufQ.maxAbsDifference(try q.delta().ropePermutedForGGUF(heads: 2)), 1e-5)
        // token_embd: lora_a dims [r, n_vocab], lora_b dims [r, n_embd]; the graph gathers rows
        // of lora_a: ΔE (vocab, embd) = alpha/r · lora_a·lora_bᵀ = (s·B·A)ᵀ.
        XCTAssertEqual(f.tensorInfo("token_embd.weight.lora_a")?.dims, [2, 10])
        XCTAssertEqual(f.tensorInfo("token_embd.weight.lora_b")?.dims, [2, 8])
        let e = a.modules[TinyLlama.p + "model.embed_tokens"]!
        let ggufE = try f.matrix("token_embd.weight.lora_a").matmul(try f.matrix("token_embd.weight.lora_b"), transposeOther: true).scaled(by: 2)
        XCTAssertLessThan(ggufE.maxAbsDifference(e.delta().transposed()), 1e-5)
        // down_proj's scale 0.5 is not alpha/r = 2: folded into B by 0.5·2/4.
        let down = a.modules[l0 + "mlp.down_proj"]!
        XCTAssertLessThan(try f.matrix("blk.0.ffn_down.weight.lora_b").maxAbsDifference(down.B.scaled(by: 0.25)), 1e-6)
        XCTAssertEqual(f.tensorInfo("blk.0.ffn_gate.weight.lora_a")?.dims, [8, 3])

        // Reading undoes everything: same ΔW, same kinds, heads taken from the file.
        let back = try GGUFLoRA.read(path: path)
        assertSameInteropDeltas(a, back)
        XCTAssertEqual(back.modules[TinyLlama.p + "model.embed_tokens"]?.kind, .embedding)
        XCTAssertEqual(back.modules[l0 + "self_attn.q_proj"]?.B, q.B)
        XCTAssertEqual(back.metadata.rank, 2)
        XCTAssertEqual(back.metadata.alpha, 4)
        XCTAssertEqual(back.name, "tiny")
    }

    func testHalfPrecisionAndNonLlamaArchitectureIsNotPermuted() throws {
        let a = TinyLlama.adapter(consistentScales: true)
        let path = tmp.appendingPathComponent("q.gguf").path
        try GGUFLoRA.write(a, to: path, dtype: .f16, hints: ModelHints(architecture: "qwen2"))
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.tensorInfo("blk.0.attn_q.weight.lora_b")?.type, .f16)
        let q = a.modules[TinyLlama.p + "model.layers.0.self_attn.q_proj"]!
        XCTAssertLessThan(try f.matrix("blk.0.attn_q.weight.lora_b").maxAbsDifference(q.B), 2e-3)   // unpermuted
        let back = try GGUFLoRA.read(path: path)
        XCTAssertEqual(back.sourceDType, .f16)
        assertSameInteropDeltas(a, back, tolerance: 5e-3)
    }

    func testHeadCountsRequiredForQK() throws {
        let a = TinyLlama.adapter()
        let path = tmp.appendingPathComponent("x.gguf").path
        XCTAssertThrowsError(try GGUFLoRA.write(a, to: path, dtype: .f32)) {
            guard case .headsRequired(_, let t)? = $0 as? GGUFLoRAError else { return XCTFail("\($0)") }
            XCTAssertTrue(t.contains("attn_"), t)
            XCTAssertTrue("\($0)".contains("--heads"))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        // Without q/k no heads are needed.
        var noQK = a
        noQK.modules = a.modules.filter { !$0.key.hasSuffix("q_proj") && !$0.key.hasSuffix("k_proj") }
        try GGUFLoRA.write(noQK, to: path, dtype: .f32)
        assertSameInteropDeltas(noQK, try GGUFLoRA.read(path: path))
        // A file with q but no recorded head counts: the reader needs hints.
        var w = try GGUFWriter()
        try w.set("general.architecture", .string("llama"))
        try w.set("general.type", .string("adapter"))
        try w.set("adapter.type", .string("lora"))
        try w.set("adapter.lora.alpha", .float32(2))
        try w.addTensor("blk.0.attn_q.weight.lora_a", matrix: Matrix(rows: 1, cols: 8, repeating: 1))
        try w.addTensor("blk.0.attn_q.weight.lora_b", matrix: Matrix(rows: 8, cols: 1, data: (0..<8).map(Float.init)))
        let bare = tmp.appendingPathComponent("bare.gguf").path
        try w.write(to: bare)
        XCTAssertThrowsError(try GGUFLoRA.read(path: bare)) { XCTAssertTrue("\($0)".contains("head counts"), "\($0)") }
        let read = try GGUFLoRA.read(path: bare, hints: TinyLlama.hints)
        let m = try XCTUnwrap(read.modules[TinyLlama.p + "model.layers.0.self_attn.q_proj"])
        XCTAssertEqual(m.B.data, [0, 2, 1, 3, 4, 6, 5, 7])   // undone per head of dim 4
        XCTAssertEqual(m.scale, 2)
        XCTAssertEqual(m.inFeatures, 8)
    }

    func testReaderErrors() throws {
        func file(_ name: String, _ build: (inout GGUFWriter) throws -> Void) throws -> String {
            var w = try GGUFWriter()
            try build(&w)
            let p = tmp.appendingPathComponent(name).path
            try w.write(to: p)
            return p
        }
        func adapterKeys(_ w: inout GGUFWriter) throws {
            try w.set("general.architecture", .string("qwen2"))
            try w.set("general.type", .string("adapter"))
            try w.set("adapter.type", .string("lora"))
        }
        let model = try file("model.gguf") { try $0.set("general.architecture", .string("llama")) }
        XCTAssertThrowsError(try GGUFLoRA.read(path: model)) { XCTAssertEqual($0 as? GGUFLoRAError, .notAnAdapter(path: model, generalType: "absent")) }
        let cvec = try file("cvec.gguf") { try $0.set("general.type", .string("adapter")); try $0.set("adapter.type", .string("control_vector")) }
        XCTAssertThrowsError(try GGUFLoRA.read(path: cvec)) { XCTAssertEqual($0 as? GGUFLoRAError, .notLoRA(path: cvec, adapterType: "\"control_vector\"")) }
        let f64 = try file("f64.gguf") { try adapterKeys(&$0); try $0.set("adapter.lora.alpha", .float64(8)) }
        XCTAssertThrowsError(try GGUFLoRA.read(path: f64)) { guard case .invalidMetadata(_, "adapter.lora.alpha", _, _)? = $0 as? GGUFLoRAError else { return XCTFail("\($0)") } }
        let lone = try file("lone.gguf") { try adapterKeys(&$0); try $0.addTensor("blk.0.attn_v.weight.lora_a", matrix: Matrix(rows: 2, cols: 4)) }
        XCTAssertThrowsError(try GGUFLoRA.read(path: lone)) { XCTAssertEqual($0 as? GGUFLoRAError, .missingPartner(path: lone, base: "blk.0.attn_v.weight", missing: "blk.0.attn_v.weight.lora_b")) }
        let odd = try file("odd.gguf") { try adapterKeys(&$0); try $0.addTensor("blk.0.attn_v.weight", matrix: Matrix(rows: 2, cols: 4)) }
        XCTAssertThrowsError(try GGUFLoRA.read(path: odd)) { XCTAssertEqual($0 as? GGUFLoRAError, .unexpectedTensor(path: odd, tensor: "blk.0.attn_v.weight")) }
        let rank = try file("rank.gguf") { w in
            try adapterKeys(&w)
            try w.addTensor("blk.0.attn_v.weight.lora_a", matrix: Matrix(rows: 2, cols: 4))
            try w.addTensor("blk.0.attn_v.weight.lora_b", matrix: Matrix(rows: 4, cols: 3))
        }
        XCTAssertThrowsError(try GGUFLoRA.read(path: rank)) { guard case .badShape? = $0 as? GGUFLoRAError else { return XCTFail("\($0)") } }
        let unmapped = try file("unmapped.gguf") { w in
            try adapterKeys(&w)
            try w.addTensor("blk.0.attn_qkv.weight.lora_a", matrix: Matrix(rows: 2, cols: 4))
            try w.addTensor("blk.0.attn_qkv.weight.lora_b", matrix: Matrix(rows: 4, cols: 2))
        }
        XCTAssertThrowsError(try GGUFLoRA.read(path: unmapped)) { XCTAssertEqual($0 as? GGUFLoRAError, .unmappedTensor(path: unmapped, tensor: "blk.0.attn_qkv.weight")) }
        // No alpha: llama.cpp applies scale 1. Norm tensors are skipped as llama.cpp does.
        let plain = try file("plain.gguf") { w in
            try adapterKeys(&w)
            try w.addTensor("blk.0.attn_v.weight.lora_a", matrix: Matrix(rows: 2, cols: 4, repeating: 1))
            try w.addTensor("blk.0.attn_v.weight.lora_b", matrix: Matrix(rows: 4, cols: 2, repeating: 1))
            try w.addTensor("blk.0.attn_norm.weight", dims: [4], values: [1, 1, 1, 1])
        }
        let p = try GGUFLoRA.read(path: plain)
        XCTAssertEqual(p.modules.count, 1)
        XCTAssertEqual(p.modules.values.first?.scale, 1)
    }

    func testWriterErrorsAndInputProtection() throws {
        var a = TinyLlama.adapter()
        let path = tmp.appendingPathComponent("e.gguf").path
        var bad = a
        bad.modules["base_model.model.model.layers.0.self_attn.qkv_proj"] = a.modules.values.first!
        XCTAssertThrowsError(try GGUFLoRA.write(bad, to: path, dtype: .f32, hints: TinyLlama.hints)) {
            XCTAssertEqual($0 as? GGUFLoRAError, .unmappedModule(path: path, module: "base_model.model.model.layers.0.self_attn.qkv_proj"))
        }
        var extra = a
        extra.extraTensors["base_model.model.lm_head.weight"] = Matrix(rows: 2, cols: 2)
        XCTAssertThrowsError(try GGUFLoRA.write(extra, to: path, dtype: .f32, hints: TinyLlama.hints)) { XCTAssertTrue("\($0)".contains("modules_to_save"), "\($0)") }
        var conv = a
        conv.metadata.fanInFanOut = true
        XCTAssertThrowsError(try GGUFLoRA.write(conv, to: path, dtype: .f32, hints: TinyLlama.hints))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))

        try GGUFLoRA.write(a, to: path, dtype: .f32, hints: TinyLlama.hints)
        let before = try contentHash(path)
        let read = try GGUFLoRA.read(path: path)
        XCTAssertThrowsError(try GGUFLoRA.write(read, to: path, dtype: .f32, hints: TinyLlama.hints, force: true)) {
            guard case .isInput? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try GGUFLoRA.write(a, to: path, dtype: .f32, hints: TinyLlama.hints)) {
            guard case .exists? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        a.sourcePath = nil
        XCTAssertThrowsError(try AdapterIO.write(a, to: path, format: .gguf, dtype: .f32, hints: TinyLlama.hints, protecting: [path]))
        XCTAssertEqual(try contentHash(path), before)
        // No temporary files are left behind.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp.path).filter { $0.hasPrefix(".") }, [])
    }

    func testBaseShapeChecksLikeLlamaCpp() throws {
        let dims: [String: [Int]] = ["blk.0.attn_q.weight": [8, 8], "blk.0.attn_k.weight": [8, 4], "token_embd.weight": [8, 10]]
        try GGUFLoRA.checkAgainstBase(pairs: [("blk.0.attn_k.weight", [8, 2], [2, 4]), ("token_embd.weight", [2, 10], [2, 8])],
                                      baseDims: dims, path: "x", baseName: "b")
        XCTAssertThrowsError(try GGUFLoRA.checkAgainstBase(pairs: [("blk.0.attn_k.weight", [8, 2], [2, 8])], baseDims: dims, path: "x", baseName: "b")) {
            guard case .baseShapeMismatch? = $0 as? GGUFLoRAError else { return XCTFail("\($0)") }
        }
        // token_embd with the linear layout (not swapped) is rejected.
        XCTAssertThrowsError(try GGUFLoRA.checkAgainstBase(pairs: [("token_embd.weight", [8, 2], [2, 10])], baseDims: dims, path: "x", baseName: "b"))
        XCTAssertThrowsError(try GGUFLoRA.checkAgainstBase(pairs: [("output.weight", [8, 2], [2, 10])], baseDims: dims, path: "x", baseName: "b")) {
            XCTAssertEqual($0 as? GGUFLoRAError, .notInBase(path: "x", tensor: "output.weight", base: "b"))
        }
    }

    /// The real SmolLM2 GGUF (tied embeddings, 9 heads / 3 kv heads): an adapter of its shapes
    /// passes llama.cpp's checks; one of the wrong shapes or with lm_head does not.
    func testAgainstSmolLM2Base() throws {
        let home = ProcessInfo.processInfo.environment["LORAFUSE_HOME"] ?? (NSHomeDirectory() + "/.cache/lorafuse")
        let model = home + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: model) else {
            return XCTFail("\(model) is missing: run scripts/setup.sh (make test does)")
        }
        let hints = try ModelHints.load(path: model)
        XCTAssertEqual(hints.architecture, "llama")
        XCTAssertEqual(hints.heads, AttentionHeads(heads: 9, kvHeads: 3))
        var rng = SeededRNG(seed: 7)
        let p = TinyLlama.p + "model.layers.0."
        var m: [String: LoRAModule] = [:]
        m[p + "self_attn.q_proj"] = TinyLlama.module(576, 576, r: 2, scale: 1, rng: &rng)
        m[p + "self_attn.k_proj"] = TinyLlama.module(192, 576, r: 2, scale: 1, rng: &rng)
        m[p + "mlp.down_proj"] = TinyLlama.module(576, 1536, r: 2, scale: 1, rng: &rng)
        m[TinyLlama.p + "model.embed_tokens"] = TinyLlama.module(576, 49152, r: 2, scale: 1, kind: .embedding, rng: &rng)
        let a = LoRAAdapter(name: "smol", modules: m)
        let out = tmp.appendingPathComponent("smol.gguf").path
        try GGUFLoRA.write(a, to: out, dtype: .f16, hints: hints)
        try GGUFLoRA.validate(adapterPath: out, basePath: model)
        // Factors, not ΔW (the embedding's is 49152 × 576): q's B comes back un-permuted.
        let back = try GGUFLoRA.read(path: out)
        XCTAssertEqual(Set(back.modules.keys), Set(a.modules.keys))
        for (n, x) in a.modules {
            let y = try XCTUnwrap(back.modules[n])
            XCTAssertEqual(y.kind, x.kind)
            XCTAssertLessThan(y.A.maxAbsDifference(x.A), 4e-3, n)
            XCTAssertLessThan(y.B.maxAbsDifference(x.B), 4e-3, n)
        }

        var wrong = a
        wrong.modules[p + "self_attn.k_proj"] = TinyLlama.module(576, 576, r: 2, scale: 1, rng: &rng)
        XCTAssertThrowsError(try GGUFLoRA.write(wrong, to: out + "2", dtype: .f16, hints: hints)) {
            guard case .baseShapeMismatch(_, "blk.0.attn_k.weight", _)? = $0 as? GGUFLoRAError else { return XCTFail("\($0)") }
        }
        var head = a
        head.modules[TinyLlama.p + "lm_head"] = TinyLlama.module(49152, 576, r: 1, scale: 1, rng: &rng)
        XCTAssertThrowsError(try GGUFLoRA.write(head, to: out + "3", dtype: .f16, hints: hints)) {
            guard case .notInBase(_, "output.weight", _)? = $0 as? GGUFLoRAError else { return XCTFail("\($0)") }
        }
    }

    func testHintsFromHFConfig() throws {
        let cfg = tmp.appendingPathComponent("config.json")
        try Data(#"{"model_type": "mistral", "num_attention_heads": 32, "num_key_value_heads": 8}"#.utf8).write(to: cfg)
        let h = try ModelHints.load(path: tmp.path)
        XCTAssertEqual(h.architecture, "llama")
        XCTAssertEqual(h.heads, AttentionHeads(heads: 32, kvHeads: 8))
        XCTAssertNil(h.baseTensorDims)
        try Data(#"{"model_type": "llama", "num_attention_heads": 4}"#.utf8).write(to: cfg)
        XCTAssertEqual(try ModelHints.load(path: cfg.path).heads, AttentionHeads(heads: 4, kvHeads: 4))
        XCTAssertThrowsError(try ModelHints.load(path: tmp.appendingPathComponent("nope").path))
    }
}

final class MLXAdapterTests: TempDirTestCase {
    func testRoundTripPadsRanksAndFoldsScales() throws {
        let a = TinyLlama.adapter()
        let dir = tmp.appendingPathComponent("mlx").path
        try MLXAdapter.write(a, to: dir, dtype: .f32)
        let st = try SafetensorsFile(path: dir + "/adapters.safetensors")
        XCTAssertEqual(st.metadata["format"], "mlx")
        // lora_a (in, r), lora_b (r, out), every rank padded to the largest (3).
        XCTAssertEqual(try st.info("model.layers.0.self_attn.k_proj.lora_a").shape, [8, 3])
        XCTAssertEqual(try st.info("model.layers.0.self_attn.k_proj.lora_b").shape, [3, 4])
        XCTAssertEqual(try st.info("model.layers.0.mlp.down_proj.lora_a").shape, [12, 3])
        XCTAssertEqual(try st.info("model.embed_tokens.lora_a").shape, [10, 3])   // (num_embeddings, r)
        XCTAssertEqual(try st.info("model.embed_tokens.lora_b").shape, [3, 8])    // (r, dims)
        XCTAssertEqual(try st.info("lm_head.lora_b").shape, [3, 10])
        let q = a.modules[TinyLlama.p + "model.layers.0.self_attn.q_proj"]!
        let la = try st.matrix("model.layers.0.self_attn.q_proj.lora_a"), lb = try st.matrix("model.layers.0.self_attn.q_proj.lora_b")
        // ΔW = scale · (lora_a · lora_b)ᵀ with the config's scale.
        let cfg = try JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/adapter_config.json"))))
        XCTAssertEqual(cfg["fine_tune_type"]?.stringValue, "lora")
        XCTAssertEqual(cfg["num_layers"]?.intValue, -1)
        let lp = try XCTUnwrap(cfg["lora_parameters"])
        XCTAssertEqual(lp["rank"]?.intValue, 3)
        XCTAssertEqual(lp["scale"]?.doubleValue, 2)
        XCTAssertEqual(lp["dropout"]?.doubleValue, 0)
        XCTAssertEqual(lp["keys"]?.arrayValue?.compactMap(\.stringValue),
                       ["lm_head", "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "model.embed_tokens",
                        "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"])
        XCTAssertLessThan(la.matmul(lb).transposed().scaled(by: 2).maxAbsDifference(q.delta()), 1e-5)
        // Embedding: ΔE = scale · lora_a · lora_b = (s·B·A)ᵀ.
        let e = a.modules[TinyLlama.p + "model.embed_tokens"]!
        let ea = try st.matrix("model.embed_tokens.lora_a"), eb = try st.matrix("model.embed_tokens.lora_b")
        XCTAssertLessThan(ea.matmul(eb).scaled(by: 2).maxAbsDifference(e.delta().transposed()), 1e-5)

        let back = try MLXAdapter.read(directory: dir)
        assertSameInteropDeltas(a, back)
        XCTAssertEqual(back.modules[TinyLlama.p + "model.embed_tokens"]?.kind, .embedding)
        XCTAssertEqual(back.modules.values.map(\.rank).max(), 3)
        XCTAssertEqual(back.metadata.rank, 3)
        XCTAssertEqual(back.metadata.alpha, 6)
    }

    func testConfigErrors() throws {
        let a = TinyLlama.adapter()
        let dir = tmp.appendingPathComponent("m").path
        try MLXAdapter.write(a, to: dir, dtype: .bf16)
        XCTAssertEqual(try MLXAdapter.read(directory: dir).sourceDType, .bf16)
        let cfg = URL(fileURLWithPath: dir + "/adapter_config.json")
        let cases: [(String, String)] = [
            (#"{"fine_tune_type": "dora", "num_layers": 2, "lora_parameters": {"rank": 3, "scale": 2}}"#, "dora"),
            (#"{"fine_tune_type": "full"}"#, "full"),
            (#"{"num_layers": 2}"#, "lora_parameters"),
            (#"{"lora_parameters": {"rank": 0, "scale": 2}}"#, "rank"),
            (#"{"lora_parameters": {"rank": 3}}"#, "scale"),
            (#"{"lora_parameters": {"rank": 3, "scale": 2, "keys": [1]}}"#, "keys"),
            (#"[1, 2]"#, "object"),
            (#"{"lora_parameters": "#, "JSON"),
        ]
        for (text, word) in cases {
            try Data(text.utf8).write(to: cfg)
            XCTAssertThrowsError(try MLXAdapter.read(directory: dir), text) {
                XCTAssertNotNil($0 as? MLXAdapterError, "\($0)")
                XCTAssertTrue("\($0)".contains(word), "\($0) should mention \(word)")
            }
        }
        // A config without fine_tune_type (older mlx-lm) reads as LoRA.
        try Data(#"{"num_layers": -1, "lora_parameters": {"rank": 3, "scale": 2.0, "dropout": 0.0}}"#.utf8).write(to: cfg)
        assertSameInteropDeltas(a, try MLXAdapter.read(directory: dir), tolerance: 2e-2)
        try FileManager.default.removeItem(at: cfg)
        XCTAssertThrowsError(try MLXAdapter.read(directory: dir)) { XCTAssertEqual($0 as? MLXAdapterError, .missingFile(path: dir, file: "adapter_config.json")) }
    }
}

final class AdapterInteropTests: TempDirTestCase {
    func testDetection() throws {
        let a = TinyLlama.adapter()
        let peft = tmp.appendingPathComponent("peft").path, mlx = tmp.appendingPathComponent("mlx").path
        let gguf = tmp.appendingPathComponent("a.gguf").path
        try AdapterIO.write(a, to: peft, format: .peft, dtype: .f32)
        try AdapterIO.write(a, to: mlx, format: .mlx, dtype: .f32)
        try AdapterIO.write(a, to: gguf, format: .gguf, dtype: .f32, hints: TinyLlama.hints)
        XCTAssertEqual(try AdapterIO.detect(path: peft), .peft)
        XCTAssertEqual(try AdapterIO.detect(path: mlx), .mlx)
        XCTAssertEqual(try AdapterIO.detect(path: gguf), .gguf)
        for p in [peft, mlx, gguf] { assertSameInteropDeltas(a, try AdapterIO.read(path: p)) }
        let junk = tmp.appendingPathComponent("junk.bin").path
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: junk))
        XCTAssertThrowsError(try AdapterIO.read(path: junk)) { XCTAssertTrue("\($0)".contains("GGUF LoRA"), "\($0)") }
        XCTAssertThrowsError(try AdapterIO.read(path: tmp.appendingPathComponent("none").path)) {
            guard case .notFound? = $0 as? AdapterIOError else { return XCTFail("\($0)") }
        }
        let empty = tmp.appendingPathComponent("empty")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        XCTAssertThrowsError(try AdapterIO.detect(path: empty.path))
    }

    /// PEFT → GGUF → MLX → PEFT through `AdapterIO.convert` (what `lorafuse convert` runs)
    /// gives back the same ΔW, and never touches its inputs.
    func testConvertRoundTripPEFTtoGGUFtoMLXtoPEFT() throws {
        let a = TinyLlama.adapter()
        let peft = tmp.appendingPathComponent("peft").path
        try PEFTAdapter.write(a, to: peft, dtype: .f32)
        let gguf = tmp.appendingPathComponent("a.gguf").path, mlx = tmp.appendingPathComponent("mlx").path
        let peft2 = tmp.appendingPathComponent("peft2").path
        let h0 = try contentHash(peft)
        let s1 = try AdapterIO.convert(input: peft, output: gguf, format: .gguf, hints: TinyLlama.hints)
        XCTAssertEqual(s1.inputFormat, .peft)
        XCTAssertEqual(s1.modules, a.modules.count)
        XCTAssertNil(s1.validatedAgainstBase)
        XCTAssertEqual(try contentHash(peft), h0)
        let h1 = try contentHash(gguf)
        // No hints: the GGUF carries its architecture and head counts.
        let s2 = try AdapterIO.convert(input: gguf, output: mlx, format: .mlx)
        XCTAssertEqual(s2.inputFormat, .gguf)
        XCTAssertEqual(try contentHash(gguf), h1)
        let h2 = try contentHash(mlx)
        try AdapterIO.convert(input: mlx, output: peft2, format: .peft, dtype: .f32)
        XCTAssertEqual(try contentHash(mlx), h2)
        let back = try PEFTAdapter.read(directory: peft2)
        assertSameInteropDeltas(a, back)
        XCTAssertEqual(back.modules[TinyLlama.p + "model.embed_tokens"]?.kind, .embedding)
        // And GGUF → GGUF keeps the permutation consistent (read undoes, write redoes).
        let gguf2 = tmp.appendingPathComponent("b.gguf").path
        try AdapterIO.convert(input: gguf, output: gguf2, format: .gguf)
        assertSameInteropDeltas(a, try AdapterIO.read(path: gguf2))
        // Converting onto the input is refused.
        XCTAssertThrowsError(try AdapterIO.convert(input: mlx, output: mlx, format: .mlx))
        XCTAssertEqual(try contentHash(mlx), h2)
    }

    func testMLXWriterProtectsInputsAndLeavesNoTemporaries() throws {
        let a = TinyLlama.adapter()
        let dir = tmp.appendingPathComponent("m").path
        try MLXAdapter.write(a, to: dir, dtype: .f32)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: dir + "/README.md"))
        let read = try MLXAdapter.read(directory: dir)
        XCTAssertThrowsError(try MLXAdapter.write(read, to: dir, dtype: .f32, force: true)) {
            guard case .isInput? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        var other = a
        other.modules = a.modules.filter { $0.key.hasSuffix("v_proj") }
        XCTAssertThrowsError(try MLXAdapter.write(other, to: dir, dtype: .f32)) {   // holds an adapter: not without --force
            guard case .exists? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        try MLXAdapter.write(other, to: dir, dtype: .f32, force: true)   // replaced whole, README included
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/README.md"))
        assertSameInteropDeltas(other, try MLXAdapter.read(directory: dir))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp.path).filter { $0.hasPrefix(".") }, [])
    }
}

/// Cross-checks against the real peers (Fixtures/interop, made by scripts/verify_gguf_lora.py
/// --make-fixture): a PEFT adapter from peft, PEFT's ΔW in GGUF layout, and a GGUF LoRA written
/// by gguf-py following llama.cpp's converter.
final class InteropFixtureTests: XCTestCase {
    let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").appendingPathComponent("interop")
    let hints = ModelHints(architecture: "llama", heads: AttentionHeads(heads: 2, kvHeads: 1))

    func testReadsTheConvertersLayout() throws {
        let peft = try PEFTAdapter.read(directory: dir.appendingPathComponent("peft").path)
        XCTAssertEqual(peft.modules.count, 15)
        XCTAssertEqual(Array(peft.extraTensors.keys), ["base_model.model.model.embed_tokens.base_layer.weight"])
        let ref = dir.appendingPathComponent("reference.gguf").path
        // The converter records no head counts, so q/k need hints.
        XCTAssertThrowsError(try GGUFLoRA.read(path: ref)) { guard case .headsRequired? = $0 as? GGUFLoRAError else { return XCTFail("\($0)") } }
        let g = try AdapterIO.read(path: ref, hints: hints)
        assertSameInteropDeltas(peft, g)
        XCTAssertEqual(g.modules["base_model.model.model.embed_tokens"]?.kind, .embedding)
    }

    func testWritesWhatTheConverterWritesAndPEFTsDelta() throws {
        let peft = try PEFTAdapter.read(directory: dir.appendingPathComponent("peft").path)
        let ours = try GGUFFile(data: Data(try GGUFLoRA.serialize(peft, dtype: .f32, hints: hints)))
        let ref = try GGUFFile(path: dir.appendingPathComponent("reference.gguf").path)
        XCTAssertEqual(ours.metadata["adapter.lora.alpha"], ref.metadata["adapter.lora.alpha"])
        XCTAssertEqual(ours.metadata["general.type"], ref.metadata["general.type"])
        XCTAssertEqual(ours.metadata["adapter.type"], ref.metadata["adapter.type"])
        XCTAssertEqual(ours.metadata["general.architecture"], ref.metadata["general.architecture"])
        XCTAssertEqual(Set(ours.tensors.map(\.name)), Set(ref.tensors.map(\.name)))
        for t in ref.tensors {
            XCTAssertEqual(ours.tensorInfo(t.name)?.dims, t.dims, t.name)
            XCTAssertEqual(try ours.matrix(t.name), try ref.matrix(t.name), t.name)
        }
        // llama.cpp's ΔW from our file equals PEFT's get_delta_weight (permuted for q/k).
        let expected = try SafetensorsFile(path: dir.appendingPathComponent("expected_gguf_delta.safetensors").path)
        XCTAssertEqual(expected.names.count, 15)
        let alpha: Float = 8
        for name in expected.names {
            let a = try ours.matrix(name + ".lora_a"), b = try ours.matrix(name + ".lora_b")
            let r = Float(b.cols)   // b.ne[0]
            let got = name == "token_embd.weight"
                ? a.matmul(b, transposeOther: true).scaled(by: alpha / r)     // (vocab, r)·(r, dim)
                : b.matmul(a).scaled(by: alpha / r)                          // (out, r)·(r, in)
            let want = try expected.matrix(name)
            XCTAssertLessThanOrEqual(got.maxAbsDifference(want), 1e-5 * max(1, want.maxAbs), name)
        }
    }
}
