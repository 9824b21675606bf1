import XCTest
@testable import LoRAFuse

final class MergeIntoBaseTests: VectorTestCase {
    func module(_ out: Int, _ inn: Int, rank: Int, scale: Float, seed: UInt64, kind: LoRAModuleKind = .linear) -> LoRAModule {
        var rng = SeededRNG(seed: seed)
        return LoRAModule(A: Matrix.randomNormal(rank, inn, rng: &rng), B: Matrix.randomNormal(out, rank, rng: &rng), scale: scale, kind: kind)
    }

    func adapter(_ name: String, _ modules: [String: LoRAModule]) -> LoRAAdapter {
        LoRAAdapter(name: name, modules: modules)
    }

    let q = "base_model.model.model.layers.0.self_attn.q_proj"
    let k = "base_model.model.model.layers.0.self_attn.k_proj"
    let v = "base_model.model.model.layers.0.self_attn.v_proj"
    let emb = "base_model.model.model.embed_tokens"

    func testHFMergeEqualsDenseSum() throws {
        let shapes: [(String, [Int])] = [("model.layers.0.self_attn.q_proj.weight", [8, 6]),
                                         ("model.layers.0.self_attn.v_proj.weight", [4, 6]),
                                         ("model.embed_tokens.weight", [10, 6]),
                                         ("model.norm.weight", [6])]
        var tensors: [SafetensorsTensor] = []
        var w: [String: [Float]] = [:]
        for (i, (n, s)) in shapes.enumerated() {
            w[n] = random(s.reduce(1, *), seed: UInt64(i))
            tensors.append(SafetensorsTensor(name: n, shape: s, values: w[n]!))
        }
        let base = try writeCheckpoint("base", tensors, maxShardBytes: 200)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: base + "/tokenizer.json"))
        let a1 = adapter("a1", [q: module(8, 6, rank: 2, scale: 2, seed: 1), v: module(4, 6, rank: 3, scale: 0.5, seed: 2),
                                emb: module(6, 10, rank: 2, scale: 1, seed: 3, kind: .embedding)])   // B (dim, r), A (r, vocab)
        let a2 = adapter("a2", [q: module(8, 6, rank: 4, scale: 0.25, seed: 4)])
        let out = dir("merged")
        let r = try MergeIntoBase.merge(base: base, adapters: [(a1, 1), (a2, -0.5)], output: out, options: .init(maxShardBytes: 200))
        XCTAssertEqual(r.merged.count, 3)
        XCTAssertEqual(r.copied, 1)
        let ck = try HFCheckpoint(path: out)
        func dense(_ m: LoRAModule, _ wt: Float) -> Matrix { m.delta().scaled(by: wt) }
        let eq = Matrix(rows: 8, cols: 6, data: w["model.layers.0.self_attn.q_proj.weight"]!)
            + dense(a1.modules[q]!, 1) + dense(a2.modules[q]!, -0.5)
        XCTAssertLessThan(maxAbsDiff(try ck.floats("model.layers.0.self_attn.q_proj.weight"), eq.data), 1e-5)
        let ev = Matrix(rows: 4, cols: 6, data: w["model.layers.0.self_attn.v_proj.weight"]!) + dense(a1.modules[v]!, 1)
        XCTAssertLessThan(maxAbsDiff(try ck.floats("model.layers.0.self_attn.v_proj.weight"), ev.data), 1e-5)
        // Embedding LoRA: B·A is (dim, vocab); the table (vocab, dim) gets its transpose.
        let ee = Matrix(rows: 10, cols: 6, data: w["model.embed_tokens.weight"]!) + dense(a1.modules[emb]!, 1).transposed()
        XCTAssertLessThan(maxAbsDiff(try ck.floats("model.embed_tokens.weight"), ee.data), 1e-5)
        XCTAssertEqual(try ck.floats("model.norm.weight"), w["model.norm.weight"]!)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/config.json"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/tokenizer.json"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/model.safetensors.index.json"))

        // --dtype bf16 converts every float tensor.
        let out2 = dir("merged-bf16")
        try MergeIntoBase.merge(base: base, adapters: [(a1, 1)], output: out2, options: .init(dtype: "bf16"))
        XCTAssertEqual(try HFCheckpoint(path: out2).info("model.norm.weight").dtype, "BF16")
    }

    func testHFMergeErrorsNameTheModule() throws {
        let base = try writeCheckpoint("base", [SafetensorsTensor(name: "model.layers.0.self_attn.q_proj.weight", shape: [8, 6],
                                                                  values: random(48, seed: 1))])
        let wrongShape = adapter("bad", [q: module(8, 5, rank: 2, scale: 1, seed: 1)])
        XCTAssertThrowsError(try MergeIntoBase.merge(base: base, adapters: [(wrongShape, 1)], output: dir("o1"))) { e in
            guard case let CheckpointError.shapeMismatch(t, expected, actual, _) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(t, "model.layers.0.self_attn.q_proj.weight")
            XCTAssertEqual(expected, [8, 5])
            XCTAssertEqual(actual, [8, 6])
        }
        let missing = adapter("miss", [k: module(8, 6, rank: 2, scale: 1, seed: 1)])
        XCTAssertThrowsError(try MergeIntoBase.merge(base: base, adapters: [(missing, 1)], output: dir("o2"))) { e in
            guard case let CheckpointError.unmappedModule(_, m, tried) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(m, k)
            XCTAssertTrue(tried.contains("model.layers.0.self_attn.k_proj.weight"))
        }
        XCTAssertThrowsError(try MergeIntoBase.merge(base: base, adapters: [(wrongShape, 1)], output: dir("o3"), options: .init(format: .gguf)))
    }

    func testPermutationMatchesLlamaCpp() {
        // One head of dim 4: GGUF rows are HF rows [0, 2, 1, 3] (halves → adjacent pairs).
        let m = Matrix([[0], [1], [2], [3]])
        XCTAssertEqual((try m.ropePermutedForGGUF(heads: 1)).data, [0, 2, 1, 3])
        let big = Matrix(rows: 24, cols: 3, data: (0..<72).map(Float.init))
        XCTAssertEqual((try (try big.ropePermutedForGGUF(heads: 3)).ropeUnpermutedFromGGUF(heads: 3)), big)
        // Two heads of dim 4: head 1 is permuted within itself.
        XCTAssertEqual((try Matrix(rows: 8, cols: 1, data: (0..<8).map(Float.init)).ropePermutedForGGUF(heads: 2)).data,
                       [0, 2, 1, 3, 4, 6, 5, 7])
        XCTAssertEqual(TensorNames.ggufName(forHF: "model.layers.3.self_attn.o_proj.weight"), "blk.3.attn_output.weight")
        XCTAssertEqual(TensorNames.hfName(forGGUF: "blk.12.ffn_down.weight"), "model.layers.12.mlp.down_proj.weight")
        XCTAssertEqual(TensorNames.hfName(forGGUF: "token_embd.weight"), "model.embed_tokens.weight")
        XCTAssertNil(TensorNames.hfName(forGGUF: "rope_freqs.weight"))
    }

    /// A tiny llama GGUF: hidden 32, 4 heads of dim 8, 2 KV heads; q/k stored permuted as
    /// llama.cpp's converter writes them.
    func tinyGGUF() throws -> (String, [String: Matrix]) {
        var hf: [String: Matrix] = [:]
        func mat(_ r: Int, _ c: Int, _ s: UInt64) -> Matrix { Matrix(rows: r, cols: c, data: random(r * c, seed: s, std: 0.1)) }
        hf["q"] = mat(32, 32, 1); hf["k"] = mat(16, 32, 2); hf["v"] = mat(16, 32, 3); hf["emb"] = mat(64, 32, 4)
        var w = try GGUFWriter()
        try w.set("general.architecture", .string("llama"))
        try w.set("general.name", .string("tiny"))
        try w.set("general.file_type", .uint32(0))
        try w.set("llama.attention.head_count", .uint32(4))
        try w.set("llama.attention.head_count_kv", .uint32(2))
        try w.set("llama.embedding_length", .uint32(32))
        try w.set("llama.block_count", .uint32(1))
        try w.set("tokenizer.ggml.tokens", .array(.string, [.string("a"), .string("b")]))
        try w.addTensor("token_embd.weight", matrix: hf["emb"]!)
        try w.addTensor("blk.0.attn_norm.weight", dims: [32], values: [Float](repeating: 1, count: 32))
        try w.addTensor("blk.0.attn_q.weight", matrix: (try hf["q"]!.ropePermutedForGGUF(heads: 4)))
        try w.addTensor("blk.0.attn_k.weight", matrix: (try hf["k"]!.ropePermutedForGGUF(heads: 2)))
        try w.addTensor("blk.0.attn_v.weight", matrix: hf["v"]!)
        let path = dir("tiny.gguf")
        try w.write(to: path)
        return (path, hf)
    }

    func ggufAdapter() -> LoRAAdapter {
        adapter("g", [q: module(32, 32, rank: 2, scale: 0.5, seed: 11), k: module(16, 32, rank: 2, scale: 0.5, seed: 12),
                      v: module(16, 32, rank: 2, scale: 0.5, seed: 13), emb: module(32, 64, rank: 2, scale: 1, seed: 14, kind: .embedding)])
    }

    func testGGUFMergeUnpermutesToWPlusDelta() throws {
        let (path, hf) = try tinyGGUF()
        let ad = ggufAdapter()
        let out = dir("merged.gguf")
        let r = try MergeIntoBase.merge(base: path, adapters: [(ad, 0.8)], output: out, options: .init(dtype: "f32"))
        XCTAssertEqual(r.merged.count, 4)
        let g = try GGUFFile(path: out)
        XCTAssertEqual(g.metadata["general.name"]?.asString, "tiny")
        XCTAssertEqual(g.metadata["llama.attention.head_count_kv"]?.asInt, 2)
        XCTAssertEqual(g.metadata["tokenizer.ggml.tokens"]?.asStringArray ?? [], ["a", "b"])
        XCTAssertEqual(g.tensorInfo("blk.0.attn_norm.weight")?.type, .f32)
        let qBack = (try g.matrix("blk.0.attn_q.weight").ropeUnpermutedFromGGUF(heads: 4))
        XCTAssertLessThan(qBack.maxAbsDifference(hf["q"]! + ad.modules[q]!.delta().scaled(by: 0.8)), 1e-5)
        let kBack = (try g.matrix("blk.0.attn_k.weight").ropeUnpermutedFromGGUF(heads: 2))
        XCTAssertLessThan(kBack.maxAbsDifference(hf["k"]! + ad.modules[k]!.delta().scaled(by: 0.8)), 1e-5)
        XCTAssertLessThan(try g.matrix("blk.0.attn_v.weight").maxAbsDifference(hf["v"]! + ad.modules[v]!.delta().scaled(by: 0.8)), 1e-5)
        XCTAssertLessThan(try g.matrix("token_embd.weight").maxAbsDifference(hf["emb"]! + ad.modules[emb]!.delta().transposed().scaled(by: 0.8)), 1e-5)

        // Q8_0 output: 2-D tensors quantized, norms F32, file type 7, values within Q8_0 error.
        let out8 = dir("merged-q8.gguf")
        try MergeIntoBase.merge(base: path, adapters: [(ad, 0.8)], output: out8, options: .init(dtype: "q8_0"))
        let g8 = try GGUFFile(path: out8)
        XCTAssertEqual(g8.tensorInfo("blk.0.attn_q.weight")?.type, .q8_0)
        XCTAssertEqual(g8.tensorInfo("blk.0.attn_norm.weight")?.type, .f32)
        XCTAssertEqual(g8.metadata["general.file_type"]?.asInt, 7)
        XCTAssertLessThan(try g8.matrix("blk.0.attn_q.weight").maxAbsDifference(try g.matrix("blk.0.attn_q.weight")), 0.02)
    }

    func testGGUFBaseToHFOutput() throws {
        let (path, hf) = try tinyGGUF()
        let ad = ggufAdapter()
        let out = dir("hf-out")
        try MergeIntoBase.merge(base: path, adapters: [(ad, 1)], output: out, options: .init(format: .hf))
        let ck = try HFCheckpoint(path: out)
        let wq = Matrix(rows: 32, cols: 32, data: try ck.floats("model.layers.0.self_attn.q_proj.weight"))
        XCTAssertLessThan(wq.maxAbsDifference(hf["q"]! + ad.modules[q]!.delta()), 1e-5)
        let wk = Matrix(rows: 16, cols: 32, data: try ck.floats("model.layers.0.self_attn.k_proj.weight"))
        XCTAssertLessThan(wk.maxAbsDifference(hf["k"]! + ad.modules[k]!.delta()), 1e-5)
        XCTAssertEqual(try ck.info("model.layers.0.input_layernorm.weight").shape, [32])
        let cfg = try JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))))
        XCTAssertEqual(cfg["num_attention_heads"]?.intValue, 4)
        XCTAssertEqual(cfg["num_key_value_heads"]?.intValue, 2)
        XCTAssertEqual(cfg["vocab_size"]?.intValue, 64)
        XCTAssertEqual(cfg["tie_word_embeddings"]?.boolValue, true)
    }
}

/// merge-into-base against PEFT's own merge_and_unload on the PEFT format fixtures
/// (rank/alpha patterns, rsLoRA in BF16, embedding LoRA + modules_to_save lm_head).
/// Fixtures: scripts/make_merge_fixtures.py.
final class MergeIntoBasePEFTTests: VectorTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").path

    func testMatchesPEFTMergeAndUnload() throws {
        let base = Self.fixtures + "/merge/base"
        for name in ["patterns", "rslora", "embedding"] {
            let ad = try AdapterIO.read(path: Self.fixtures + "/peft/" + name)
            let out = dir("merged-" + name)
            let report = try MergeIntoBase.merge(base: base, adapters: [(ad, 1)], output: out, options: .init(dtype: "f32"))
            XCTAssertFalse(report.merged.isEmpty)
            let expected = try SafetensorsFile(path: Self.fixtures + "/merge/\(name).merged.safetensors")
            let got = try HFCheckpoint(path: out)
            XCTAssertEqual(Set(got.names), Set(expected.names), name)
            for n in expected.names {
                var e = try expected.floats(n)
                if name == "embedding" && n == "model.embed_tokens.weight" {
                    // PEFT reloads the saved base_layer (F16 copy of the base table) before merging;
                    // lorafuse keeps the base's own F32 values: remove that rounding from PEFT's side.
                    let b = try HFCheckpoint(path: base).floats(n)
                    let r = rounded(b, .f16)
                    e = (0..<e.count).map { e[$0] - r[$0] + b[$0] }
                }
                let scale = max(e.map { abs($0) }.max() ?? 1, 1)
                XCTAssertLessThan(maxAbsDiff(try got.floats(n), e), 2e-6 * scale, "\(name): \(n)")
            }
        }
    }
}

/// The q/k un-permutation on the real default model agrees with transformers' own GGUF loader
/// (fixture: scripts/make_vector_fixtures.py).
final class RealModelPermutationTests: XCTestCase {
    func testUnpermutedSmolLM2RowsMatchTransformers() throws {
        let env = ProcessInfo.processInfo.environment["LORAFUSE_HOME"]
        let home = (env?.isEmpty == false) ? env! : NSHomeDirectory() + "/.cache/lorafuse"
        let model = home + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: model) else {
            return XCTFail("default model missing at \(model): run scripts/setup.sh")
        }
        let g = try GGUFFile(path: model)
        let fixture = try SafetensorsFile(path: MergeIntoBasePEFTTests.fixtures + "/vectors/smollm2_qk_rows.safetensors")
        for (gguf, hf, heads, rows) in [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 9, 128),
                                        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 3, 64)] {
            let w = (try g.matrix(gguf).ropeUnpermutedFromGGUF(heads: heads)).rows(0..<rows)
            let expected = try fixture.matrix(hf)
            XCTAssertEqual(w.maxAbsDifference(expected), 0, hf)
            // Without the un-permutation the rows differ: the check has teeth.
            XCTAssertGreaterThan(try g.matrix(gguf).rows(0..<rows).maxAbsDifference(expected), 0.01)
        }
    }
}
