import Foundation
import XCTest
@testable import LoRAFuse

/// Fixtures made by scripts/make_model_fixtures.py (transformers 5.x + peft 0.21.2).
enum ModelFixtures {
    static func path(_ name: String) -> String {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures/model/\(name)").path
    }

    static let tinyLogits = try! SafetensorsFile(path: path("tiny_logits.safetensors"))

    static func tokens(_ file: SafetensorsFile, _ name: String) -> [Int] {
        try! file.floats(name).map { Int($0) }
    }

    /// A byte-level tokenizer over the first `n` byte symbols, no merges (the tiny models' one).
    static func byteTokenizer(_ n: Int) -> BPETokenizer {
        var chars: [String] = []
        for b in 33...126 { chars.append(String(UnicodeScalar(UInt8(b)))) }
        for b in 161...255 where b != 173 { chars.append(String(UnicodeScalar(UInt8(b)))) }
        return try! BPETokenizer(tokens: Array(chars.prefix(n)), merges: [], preTokenizer: .gpt2)
    }

    static func tempDir() -> String {
        let d = NSTemporaryDirectory() + "lorafuse-model-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }
}

final class LlamaModelTests: XCTestCase {
    // Tolerances. The tiny models' logits are O(1) after 2 layers, so fp32 rounding differences
    // (BLAS blocking vs PyTorch's kernels, exp/cos implementations) stay near 1e-6; 1e-4 leaves room.
    let tinyTol: Float = 1e-4

    private func assertClose(_ a: Matrix, _ b: Matrix, _ tol: Float, _ what: String,
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.shape, b.shape, what, file: file, line: line)
        guard a.shape == b.shape else { return }
        let d = a.maxAbsDifference(b)
        XCTAssertLessThanOrEqual(d, tol, "\(what): max |Δ| = \(d)", file: file, line: line)
    }

    private func tinyConfig(qwen: Bool) -> LlamaConfig {
        // head_dim 8 ≠ hidden/heads (24/4 = 6) to catch code that assumes they are equal.
        LlamaConfig(modelType: qwen ? "qwen2" : "llama", hiddenSize: 24, intermediateSize: 40, numHiddenLayers: 2,
                    numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 8, vocabSize: 50, rmsNormEps: 1e-5,
                    ropeTheta: 10000, tieWordEmbeddings: qwen, attentionBias: qwen)
    }

    private func randomModel(qwen: Bool, seed: UInt64 = 3) -> LlamaModel {
        let c = tinyConfig(qwen: qwen)
        return LlamaModel(config: c, weights: .random(c, seed: seed, std: 0.3), tokenizer: ModelFixtures.byteTokenizer(50))
    }

    /// A random adapter on every projection (and optionally embed_tokens / lm_head) of `model`.
    private func randomAdapter(_ model: LlamaModel, name: String, seed: UInt64, rank: Int = 3,
                               embedding: Bool = false) -> LoRAAdapter {
        var rng = SeededRNG(seed: seed)
        var modules: [String: LoRAModule] = [:]
        let c = model.config
        for l in 0..<c.numHiddenLayers {
            for p in Projection.allCases {
                let lw = model.base.linears[LlamaWeights.linearID(layer: l, p)]
                modules[ModuleAddress.projection(layer: l, p).peft] = LoRAModule(
                    A: .randomNormal(rank, lw.inFeatures, std: 0.3, rng: &rng),
                    B: .randomNormal(lw.outFeatures, rank, std: 0.3, rng: &rng), scale: 0.5)
            }
        }
        if embedding {
            modules["base_model.model.model.embed_tokens"] = LoRAModule(
                A: .randomNormal(rank, c.vocabSize, std: 0.3, rng: &rng),
                B: .randomNormal(c.hiddenSize, rank, std: 0.3, rng: &rng), scale: 2, kind: .embedding)
            modules["base_model.model.lm_head"] = LoRAModule(
                A: .randomNormal(rank, c.hiddenSize, std: 0.3, rng: &rng),
                B: .randomNormal(c.vocabSize, rank, std: 0.3, rng: &rng), scale: 2)
        }
        return LoRAAdapter(name: name, modules: modules)
    }

    // MARK: Engine vs naive reference

    func testEngineMatchesNaiveReferenceOnRandomModels() throws {
        let tokens = [3, 17, 0, 49, 22, 22, 8, 31, 40, 5, 11]
        for qwen in [false, true] {
            let m = randomModel(qwen: qwen)
            let ref = LlamaReference.logits(m, tokens: tokens)
            assertClose(try m.logits(tokens: tokens), ref, tinyTol, "batched, qwen=\(qwen)")

            // Same logits when the sequence is fed in pieces through the KV cache.
            let s = try m.makeSession(maxTokens: 16)
            var rows: [Matrix] = [try s.feed(Array(tokens[0..<4]))]
            for t in tokens[4...] { rows.append(try s.feed([t])) }
            XCTAssertEqual(s.position, tokens.count)
            assertClose(Matrix.vconcat(rows), ref, tinyTol, "incremental, qwen=\(qwen)")

            // reset() starts over at position 0 with the same cache.
            s.reset()
            XCTAssertEqual(s.position, 0)
            assertClose(try s.feed(tokens), ref, tinyTol, "after reset, qwen=\(qwen)")

            let ls = try m.makeLlamaSession(maxTokens: 16)
            let last = try ls.feed(tokens, lastOnly: true)
            assertClose(last, ref.rows((tokens.count - 1)..<tokens.count), tinyTol, "lastOnly, qwen=\(qwen)")

            // logitsFrom: only rows first..<T, through the protocol too.
            s.reset()
            assertClose(try s.feed(tokens, logitsFrom: 4), ref.rows(4..<tokens.count), tinyTol, "logitsFrom, qwen=\(qwen)")

            // truncate(to:): branch off after 5 tokens; the stale cache rows past 5 are overwritten.
            let other = [7, 7, 30]
            s.truncate(to: 5)
            XCTAssertEqual(s.position, 5)
            let branched = try s.feed(other)
            let refOther = LlamaReference.logits(m, tokens: Array(tokens[0..<5]) + other)
            assertClose(branched, refOther.rows(5..<8), tinyTol, "after truncate, qwen=\(qwen)")
        }
    }

    func testLongPromptCrossesAttentionBlocks() throws {
        // 150 tokens: the batched pass splits queries into blocks of 128 (second block sees keys
        // 0..<150, the first only 0..<128); a second batch of 20 then attends to 170 cached keys.
        let m = randomModel(qwen: true, seed: 9)
        var rng = SeededRNG(seed: 4)
        let tokens = (0..<170).map { _ in Int(rng.next() % 50) }
        let ref = LlamaReference.logits(m, tokens: tokens)
        let s = try m.makeSession(maxTokens: 170)
        let got = Matrix.vconcat([try s.feed(Array(tokens[0..<150])), try s.feed(Array(tokens[150...]))])
        assertClose(got, ref, tinyTol, "170 tokens in two batches")
    }

    func testSessionLimitsAndActivations() throws {
        let m = randomModel(qwen: false)
        let s = try XCTUnwrap(try m.makeSession(maxTokens: 4) as? LlamaSession)
        XCTAssertThrowsError(try s.feed([1, 2, 3, 4, 5])) { e in
            XCTAssertEqual(e as? ModelError, .contextFull(maxTokens: 4, requested: 5))
        }
        XCTAssertThrowsError(try s.feed([50])) { e in
            XCTAssertEqual(e as? ModelError, .tokenOutOfRange(token: 50, vocabSize: 50))
        }
        XCTAssertEqual(s.position, 0, "a refused feed leaves the session unchanged")
        let acts = ForwardActivations()
        s.activations = acts
        _ = try s.feed([1, 2, 3])
        XCTAssertEqual(acts.values["0.x"]?.count, 3 * 24)
        XCTAssertEqual(acts.values["1.gate"]?.count, 3 * 40)
        XCTAssertEqual(acts.values["0.probs0"]?.count, 9)
        XCTAssertEqual(acts.values["0.probs0"]?[1] ?? -1, 0, "causal mask: token 0 does not see token 1")
    }

    /// `finalOnly` keeps just the last hidden state, equal to the full recording's, also past
    /// the 128-row attention blocks and the threaded path the full recording turns off.
    func testFinalOnlyActivationsEqualTheFullRecording() throws {
        let m = randomModel(qwen: false)
        var rng = SeededRNG(seed: 5)
        let tokens = (0..<150).map { _ in Int(rng.next() % 50) }
        var got: [ForwardActivations] = []
        for finalOnly in [false, true] {
            let s = try m.makeLlamaSession(maxTokens: 160)
            let acts = ForwardActivations(finalOnly: finalOnly)
            s.activations = acts
            _ = try s.feed(tokens)
            got.append(acts)
        }
        XCTAssertEqual(got[1].values.keys.sorted(), ["2.h_final"])
        let full = try XCTUnwrap(got[0].values["2.h_final"]), only = try XCTUnwrap(got[1].values["2.h_final"])
        XCTAssertEqual(full.count, 150 * 24)
        XCTAssertLessThan(zip(full, only).map { abs($0 - $1) }.max()!, 1e-4)
    }

    func testUnmergedAndMergedLoRAAgreeWithReference() throws {
        for qwen in [false, true] {
            let m = randomModel(qwen: qwen)
            let tokens = [4, 9, 33, 1, 48, 20, 7]
            let base = try m.logits(tokens: tokens)
            let a1 = randomAdapter(m, name: "one", seed: 11, embedding: true)
            let a2 = randomAdapter(m, name: "two", seed: 12, rank: 2)
            let mix: [(LoRAAdapter, Float)] = [(a1, 0.7), (a2, -0.4)]

            let mergedSet = try m.prepare(mix, mode: .merged)
            let merged = try m.logits(tokens: tokens, adapters: mergedSet)
            let ref = LlamaReference.logits(m, tokens: tokens, adapters: mergedSet)
            // Merged weights equal W + Σ w_i s_i B_i A_i.
            let qName = "model.layers.1.self_attn.q_proj"
            var expectW = Matrix(rows: m.base.linears[LlamaWeights.linearID(layer: 1, .q)].outFeatures,
                                 cols: m.config.hiddenSize, data: m.base.linears[LlamaWeights.linearID(layer: 1, .q)].weight)
            expectW.add(a1.modules["base_model.model." + qName]!.delta(), scaledBy: 0.7)
            expectW.add(a2.modules["base_model.model." + qName]!.delta(), scaledBy: -0.4)
            assertClose(try XCTUnwrap(m.effectiveWeight(module: qName, adapters: mergedSet)), expectW, 1e-5, "merged q_proj")
            XCTAssertEqual(m.effectiveWeight(module: qName)?.data, m.base.linears[LlamaWeights.linearID(layer: 1, .q)].weight,
                           "the model's own weights are untouched")

            let unmergedSet = try m.prepare(mix, mode: .unmerged)
            XCTAssertEqual(unmergedSet.adapters, [AdapterWeight(name: "one", weight: 0.7), AdapterWeight(name: "two", weight: -0.4)])
            let unmerged = try m.with(unmergedSet).logits(tokens: tokens)
            assertClose(merged, ref, tinyTol, "merged vs reference, qwen=\(qwen)")
            assertClose(unmerged, merged, tinyTol, "unmerged vs merged, qwen=\(qwen)")
            XCTAssertGreaterThan(unmerged.maxAbsDifference(base), 0.1, "the adapters change the logits")

            // The base stays exact (bit for bit) with adapter sets alive beside it.
            XCTAssertEqual(try m.logits(tokens: tokens), base)
            XCTAssertEqual(try m.logits(tokens: tokens, adapters: .none), base)
        }
    }

    /// The seam routing and serving need: one loaded model, sequences with different adapters
    /// interleaved token by token (and on two threads at once), each equal to running alone.
    func testSessionsWithDifferentAdaptersShareOneModel() throws {
        let m = randomModel(qwen: false)
        let sets: [AdapterSet] = [.none,
                                  try m.prepare([(randomAdapter(m, name: "a", seed: 21), 1)], mode: .unmerged),
                                  try m.prepare([(randomAdapter(m, name: "b", seed: 22, embedding: true), 0.5)], mode: .merged)]
        let prompt = [3, 14, 15, 9, 2]
        let alone = try sets.map { try m.logits(tokens: prompt, adapters: $0) }
        XCTAssertGreaterThan(alone[1].maxAbsDifference(alone[0]), 0.1)
        XCTAssertGreaterThan(alone[2].maxAbsDifference(alone[1]), 0.1)
        // Interleaved on one thread, one token of each sequence in turn, equals each sequence
        // decoded alone token by token (bit for bit: same kernels, same order).
        func decoded(_ set: AdapterSet) throws -> [Float] {
            let s = try m.makeLlamaSession(maxTokens: prompt.count, adapters: set)
            return try prompt.flatMap { try s.feed([$0]).data }
        }
        let aloneByToken = try sets.map(decoded)
        let sessions = try sets.map { try m.makeLlamaSession(maxTokens: prompt.count, adapters: $0) }
        var rows = [[Float]](repeating: [], count: sets.count)
        for t in prompt { for (i, s) in sessions.enumerated() { rows[i] += try s.feed([t]).data } }
        for i in sets.indices {
            XCTAssertEqual(rows[i], aloneByToken[i], "sequence \(i) interleaved")
            assertClose(Matrix(rows: prompt.count, cols: m.vocabSize, data: rows[i]), alone[i], tinyTol, "decode vs prompt \(i)")
        }
        // Concurrently: each thread its own session, all on the same model.
        let results = UnsafeMutableBufferPointer<Matrix>.allocate(capacity: sets.count)
        results.initialize(repeating: Matrix(rows: 0, cols: 0))
        defer { results.deallocate() }
        let out = UncheckedBox(results)
        DispatchQueue.concurrentPerform(iterations: sets.count) { i in
            out.value[i] = (try? m.logits(tokens: prompt, adapters: sets[i])) ?? Matrix(rows: 0, cols: 0)
        }
        for i in sets.indices { XCTAssertEqual(results[i], alone[i], "sequence \(i) on its own thread") }
        // A session switches adapters with reset(adapters:).
        let s = sessions[0]
        s.reset(adapters: sets[1])
        XCTAssertEqual(try s.feed(prompt), alone[1])
        XCTAssertEqual(s.adapters.adapters.map(\.name), ["a"])
    }

    func testAdapterErrorsNameAdapterModuleAndShapes() throws {
        let m = randomModel(qwen: false)
        var rng = SeededRNG(seed: 1)
        let unknown = LoRAAdapter(name: "weird", modules: [
            "base_model.model.model.layers.7.self_attn.q_proj": LoRAModule(A: .randomNormal(2, 24, rng: &rng), B: .randomNormal(32, 2, rng: &rng), scale: 1)])
        XCTAssertThrowsError(try m.prepare([(unknown, 1)])) { e in
            XCTAssertEqual(e as? LoRARuntimeError, .unknownModule(adapter: "weird", module: "base_model.model.model.layers.7.self_attn.q_proj"))
            XCTAssertTrue("\(e)".contains("weird") && "\(e)".contains("layers.7"))
        }
        let wrongShape = LoRAAdapter(name: "bad", modules: [
            "base_model.model.model.layers.0.self_attn.k_proj": LoRAModule(A: .randomNormal(2, 24, rng: &rng), B: .randomNormal(32, 2, rng: &rng), scale: 1)])
        XCTAssertThrowsError(try m.prepare([(wrongShape, 1)], mode: .merged)) { e in
            XCTAssertEqual(e as? LoRARuntimeError, .shapeMismatch(adapter: "bad", module: "base_model.model.model.layers.0.self_attn.k_proj",
                                                                   expected: [16, 24], actual: [32, 24]))
            XCTAssertTrue("\(e)".contains("[16, 24]") && "\(e)".contains("[32, 24]"))
        }
        var withExtra = randomAdapter(m, name: "saver", seed: 2)
        withExtra.extraTensors["base_model.model.lm_head.modules_to_save.weight"] = Matrix(rows: 50, cols: 24)
        XCTAssertThrowsError(try m.prepare([(withExtra, 1)])) { e in
            guard case .unsupportedTensor(let a, let t, _)? = e as? LoRARuntimeError else { return XCTFail("\(e)") }
            XCTAssertEqual(a, "saver")
            XCTAssertEqual(t, "base_model.model.lm_head.modules_to_save.weight")
        }
        // The model is never changed by preparing adapters, failed or not.
        XCTAssertEqual(try m.logits(tokens: [1, 2]), try randomModel(qwen: false).logits(tokens: [1, 2]))
    }

    // MARK: Parity with transformers on the tiny fixtures

    private func checkTiny(_ model: some CausalLMLogits, key: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let fx = ModelFixtures.tinyLogits
        for i in 0..<3 {
            let toks = ModelFixtures.tokens(fx, "seq\(i).tokens")
            let want = try fx.matrix("\(key).seq\(i)")
            assertClose(try model.logits(tokens: toks), want, tinyTol, "\(key) seq\(i)", file: file, line: line)
        }
    }

    func testTinyLlamaHFDirectoryMatchesTransformers() throws {
        let m = try LlamaModel.load(path: ModelFixtures.path("tiny-llama"))
        XCTAssertEqual(m.config.numKeyValueHeads, 2)
        XCTAssertFalse(m.config.tieWordEmbeddings)
        XCTAssertEqual(m.tokenizer.vocabSize, 96)
        try checkTiny(m, key: "llama")
    }

    func testTinyLlamaGGUFMatchesTransformers() throws {
        // Same weights written by the gguf package with llama.cpp's q/k row permutation: the
        // loader must undo it to reproduce the HF logits.
        let m = try LlamaModel.load(path: ModelFixtures.path("tiny-llama.gguf"))
        XCTAssertEqual(m.config.modelType, "llama")
        XCTAssertEqual(m.config.ropeTheta, 10000)
        let hf = try LlamaModel.load(path: ModelFixtures.path("tiny-llama"))
        for p in Projection.allCases {
            let name = ModuleAddress.projection(layer: 1, p).hf
            XCTAssertEqual(m.effectiveWeight(module: name), hf.effectiveWeight(module: name), name)
        }
        try checkTiny(m, key: "llama")
        // And a PEFT adapter trained on the HF layout applies unchanged.
        try checkTiny(try m.with([(try PEFTAdapter.read(directory: ModelFixtures.path("tiny-llama-lora")), 1)]), key: "llama_lora")
    }

    func testTinyQwen2MatchesTransformers() throws {
        let m = try LlamaModel.load(path: ModelFixtures.path("tiny-qwen2"))
        XCTAssertTrue(m.config.attentionBias)
        XCTAssertTrue(m.config.tieWordEmbeddings)
        XCTAssertNotNil(m.base.linears[LlamaWeights.linearID(layer: 0, .k)].bias)
        XCTAssertNil(m.base.linears[LlamaWeights.linearID(layer: 0, .o)].bias)
        try checkTiny(m, key: "qwen2")
        // The same weights as a qwen2 GGUF (no q/k permutation, biases, no output.weight → tied).
        let g = try LlamaModel.load(path: ModelFixtures.path("tiny-qwen2.gguf"))
        XCTAssertEqual(g.config.modelType, "qwen2")
        XCTAssertTrue(g.config.attentionBias)
        XCTAssertTrue(g.config.tieWordEmbeddings)
        try checkTiny(g, key: "qwen2")
    }

    func testTinyPEFTAdaptersMatchPEFTInBothModes() throws {
        let m = try LlamaModel.load(path: ModelFixtures.path("tiny-llama"))
        let all = try PEFTAdapter.read(directory: ModelFixtures.path("tiny-llama-lora"))
        let embed = try PEFTAdapter.read(directory: ModelFixtures.path("tiny-llama-lora-embed"))
        XCTAssertEqual(embed.modules["base_model.model.model.embed_tokens"]?.kind, .embedding)
        for mode in LoRAMode.allCases {
            try checkTiny(try m.with([(all, 1)], mode: mode), key: "llama_lora")
            try checkTiny(try m.with([(embed, 1)], mode: mode), key: "llama_lora_embed")
        }
        try checkTiny(m, key: "llama")
    }

    // MARK: Loading errors

    func testLoadErrorsNameFileAndTensor() throws {
        let tmp = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let fm = FileManager.default
        let src = ModelFixtures.path("tiny-llama")

        // Unsupported architecture in a GGUF.
        var w = try GGUFWriter()
        try w.set("general.architecture", .string("gpt2"))
        try w.addTensor("token_embd.weight", dims: [4, 8], values: [Float](repeating: 0, count: 32))
        let gpt2 = tmp + "/gpt2.gguf"
        try w.write(to: gpt2)
        XCTAssertThrowsError(try LlamaModel.load(path: gpt2)) { e in
            XCTAssertEqual(e as? ModelError, .unsupportedArchitecture(path: gpt2, architecture: "gpt2"))
            XCTAssertTrue("\(e)".contains("gpt2.gguf") && "\(e)".contains("'gpt2'"))
        }

        // Truncated GGUF: the reader's error comes through.
        let data = try Data(contentsOf: URL(fileURLWithPath: ModelFixtures.path("tiny-llama.gguf")))
        let cut = tmp + "/cut.gguf"
        try data.prefix(data.count / 3).write(to: URL(fileURLWithPath: cut))
        XCTAssertThrowsError(try LlamaModel.load(path: cut)) { e in
            XCTAssertTrue(e is GGUFError, "\(e)")
            XCTAssertTrue("\(e)".contains("cut.gguf"), "\(e)")
        }

        // Missing tensor in an HF directory.
        let st = try SafetensorsFile(path: src + "/model.safetensors")
        let dropped = "model.layers.1.mlp.up_proj.weight"
        let missingDir = tmp + "/missing"
        try fm.createDirectory(atPath: missingDir, withIntermediateDirectories: true)
        for f in ["config.json", "tokenizer.json"] { try fm.copyItem(atPath: src + "/" + f, toPath: missingDir + "/" + f) }
        let kept = try st.names.filter { $0 != dropped }.map { SafetensorsTensor(name: $0, shape: try st.info($0).shape, values: try st.floats($0)) }
        _ = try SafetensorsWriter.write(tensors: kept, dtype: .f32, to: URL(fileURLWithPath: missingDir + "/model.safetensors"))
        XCTAssertThrowsError(try LlamaModel.load(path: missingDir)) { e in
            XCTAssertEqual(e as? ModelError, .missingTensor(path: missingDir + "/model.safetensors", tensor: dropped))
        }

        // Shape mismatch against the config, and an F16 copy of the weights that loads.
        let shapeDir = tmp + "/shape"
        try fm.createDirectory(atPath: shapeDir, withIntermediateDirectories: true)
        try fm.copyItem(atPath: src + "/tokenizer.json", toPath: shapeDir + "/tokenizer.json")
        let all = try st.names.map { SafetensorsTensor(name: $0, shape: try st.info($0).shape, values: try st.floats($0)) }
        _ = try SafetensorsWriter.write(tensors: all, dtype: .f16, to: URL(fileURLWithPath: shapeDir + "/model.safetensors"))
        let cfgText = try String(contentsOfFile: src + "/config.json", encoding: .utf8)
        try cfgText.write(toFile: shapeDir + "/config.json", atomically: true, encoding: .utf8)
        let f16 = try LlamaModel.load(path: shapeDir)
        let toks = ModelFixtures.tokens(ModelFixtures.tinyLogits, "seq0.tokens")
        // F16 rounding of O(0.15) weights moves these O(1) logits by ~1e-3.
        assertClose(try f16.logits(tokens: toks), try ModelFixtures.tinyLogits.matrix("llama.seq0"), 2e-2, "F16 copy")
        try cfgText.replacingOccurrences(of: "\"intermediate_size\": 64", with: "\"intermediate_size\": 48")
            .write(toFile: shapeDir + "/config.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try LlamaModel.load(path: shapeDir)) { e in
            XCTAssertEqual(e as? ModelError, .shapeMismatch(path: shapeDir + "/model.safetensors", tensor: "model.layers.0.mlp.gate_proj.weight",
                                                            expected: [48, 32], actual: [64, 32]))
        }
        XCTAssertThrowsError(try LlamaModel.load(path: tmp + "/nothing")) { e in
            guard case .notAModel? = e as? ModelError else { return XCTFail("\(e)") }
        }
    }

    func testConfigDecodingAndValidation() throws {
        func decode(_ json: String) throws -> LlamaConfig {
            let p = ModelFixtures.tempDir() + "/config.json"
            try json.write(toFile: p, atomically: true, encoding: .utf8)
            return try LlamaConfig.load(configJSON: p)
        }
        let base = #""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100"#
        let c = try decode("{\(base), \"rope_theta\": 500000, \"tie_word_embeddings\": true}")
        XCTAssertEqual(c.numKeyValueHeads, 4)
        XCTAssertEqual(c.headDim, 16)
        XCTAssertEqual(c.ropeTheta, 500000)
        XCTAssertTrue(c.tieWordEmbeddings)
        XCTAssertEqual(try decode("{\(base), \"rope_parameters\": {\"rope_theta\": 1234.0, \"rope_type\": \"default\"}}").ropeTheta, 1234)
        XCTAssertEqual(try decode("{\(base), \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}").ropePositionScale, 2)
        XCTAssertThrowsError(try decode("{\(base), \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}")) { e in
            guard case .unsupportedConfig(_, let field, let value, _)? = e as? ModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "rope_scaling.rope_type")
            XCTAssertEqual(value, "llama3")
        }
        XCTAssertThrowsError(try decode("{\(base), \"model_type\": \"mistral\", \"sliding_window\": 4096, \"max_position_embeddings\": 32768}")) { e in
            guard case .unsupportedConfig(_, let field, _, _)? = e as? ModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "sliding_window")
        }
        XCTAssertThrowsError(try decode("{\(base), \"hidden_act\": \"gelu\"}")) { e in
            guard case .unsupportedConfig(_, let field, let value, _)? = e as? ModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "hidden_act")
            XCTAssertEqual(value, "gelu")
        }
        XCTAssertThrowsError(try decode("{\(base), \"mlp_bias\": true}"))
        XCTAssertThrowsError(try decode("{\(base), \"model_type\": \"gpt_neox\"}")) { e in
            guard case .unsupportedArchitecture(_, let arch)? = e as? ModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(arch, "gpt_neox")
        }
        XCTAssertThrowsError(try decode("{\"hidden_size\": 64}")) { e in
            guard case .missingConfigField(_, let f)? = e as? ModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(f, "intermediate_size")
        }
        // Round trip through Codable.
        let again = try JSONDecoder().decode(LlamaConfig.self, from: try JSONEncoder().encode(c))
        XCTAssertEqual(again, c)
    }

    func testUnpermuteInvertsLlamaCppPermutation() {
        // HF→GGUF: reshape(n_head, 2, d/2, in).swapaxes(1, 2): GGUF row h·d + 2i + j = HF row h·d + j·d/2 + i.
        let heads = 3, d = 4, cols = 2
        let hf = (0..<(heads * d * cols)).map(Float.init)
        var gguf = [Float](repeating: 0, count: hf.count)
        for h in 0..<heads { for i in 0..<(d / 2) { for j in 0..<2 { for c in 0..<cols {
            gguf[(h * d + 2 * i + j) * cols + c] = hf[(h * d + j * d / 2 + i) * cols + c]
        } } } }
        XCTAssertNotEqual(gguf, hf)
        XCTAssertEqual(try RopePermutation.apply(gguf, rows: heads * d, cols: cols, heads: heads, toGGUF: false), hf)
        XCTAssertEqual(try RopePermutation.apply(hf, rows: heads * d, cols: cols, heads: heads, toGGUF: true), gguf)
    }

    func testDefaultModelPath() {
        let p = ModelLocator.defaultModelPath()
        XCTAssertTrue(p.hasSuffix("/models/SmolLM2-135M-Instruct.Q4_1.gguf"), p)
    }
}

/// A pointer handed to concurrentPerform's workers, each writing its own slot.
private struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}

/// What `checkTiny` needs: the base model or the model with adapters.
protocol CausalLMLogits { func logits(tokens: [Int]) throws -> Matrix }
extension LlamaModel: CausalLMLogits {}
extension AdaptedLlama: CausalLMLogits {}

/// `decodeStep`: many sequences, different adapters and positions, one batched forward.
final class BatchedDecodeTests: XCTestCase {
    /// A random adapter on q, v and down (and the embedding) of `m`.
    static func adapter(_ m: LlamaModel, _ name: String, embedding: Bool = false, rng: inout SeededRNG) -> LoRAAdapter {
        var mods: [String: LoRAModule] = [:]
        for l in 0..<m.config.numHiddenLayers {
            for p in [Projection.q, .v, .down] {
                let lw = m.base.linears[LlamaWeights.linearID(layer: l, p)]
                mods[ModuleAddress.projection(layer: l, p).peft] = LoRAModule(
                    A: .randomNormal(3, lw.inFeatures, std: 0.3, rng: &rng), B: .randomNormal(lw.outFeatures, 3, std: 0.3, rng: &rng), scale: 1)
            }
        }
        if embedding {
            mods[ModuleAddress.embedding.peft] = LoRAModule(A: .randomNormal(2, m.vocabSize, std: 0.3, rng: &rng),
                                                            B: .randomNormal(m.config.hiddenSize, 2, std: 0.3, rng: &rng), scale: 1, kind: .embedding)
        }
        return LoRAAdapter(name: name, modules: mods)
    }

    func testBatchedStepEqualsEachSequenceAlone() throws {
        for quantized in [false, true] {
            let m = quantized ? QuantizedModelTests.twins().quantized : QuantizedModelTests.twins().f32
            var rng = SeededRNG(seed: 5)
            let a = try m.prepare([(Self.adapter(m, "a", rng: &rng), 1)])
            let b = try m.prepare([(Self.adapter(m, "b", embedding: true, rng: &rng), 0.7)])
            let merged = try m.prepare([(Self.adapter(m, "c", rng: &rng), 1)], mode: .merged)
            // FlyLoRA: each row keeps its own top-1 of 3 ranks inside the shared LoRA GEMMs.
            var gatedAdapter = Self.adapter(m, "g", rng: &rng)
            for n in gatedAdapter.moduleNames { gatedAdapter.modules[n]!.rankGate = RankGate(topK: 1, bias: [0.1, 0, -0.1]) }
            let gated = try m.prepare([(gatedAdapter, 1)])
            // LoRAMoE: a dense softmax router over 3 one-rank experts, weights per row.
            var moeAdapter = Self.adapter(m, "moe", rng: &rng)
            for n in moeAdapter.moduleNames {
                let nIn = moeAdapter.modules[n]!.inFeatures
                moeAdapter.modules[n]!.rankGate = RankGate(topK: 3, bias: [0, 0, 0], router: (0..<(3 * nIn)).map { _ in rng.nextNormal() })
            }
            let moe = try m.prepare([(moeAdapter, 1)])
            // MixLoRA: each row's top-2 of 3 whole-FFN experts, and a q LoRA (two sequences share it).
            var o = TrainFixtures.variantOptions(steps: 1, rank: 2)
            o.targets = [.q, .gate, .up, .down]
            let mv = try MixLoRAVariant(config: m.config, options: o, experts: 3, topK: 2, loss: MixtureLoss(aux: 0, z: 0))
            for n in mv.parameters.names { mv.parameters[n] = mv.parameters[n].map { _ in rng.nextNormal() * 0.3 } }
            let mix = try m.prepare([(mv.adapter(name: "mix", baseModel: nil), 1)])
            // Twelve sequences: two share `a`, two share `gated`, two `mix`, one base, one merged, one LoRAMoE; prompts of different lengths.
            let sets: [AdapterSet] = [a, .none, b, a, merged, b, .none, gated, gated, moe, mix, mix]
            let prompts: [[Int]] = (0..<sets.count).map { i in (0..<(3 + i)).map { (7 * $0 + 11 * i) % 64 } }
            let steps = [[5, 9, 1], [2, 2, 2], [63, 0, 4], [8, 1, 30], [12, 13, 14], [40, 41, 42], [6, 6, 6], [3, 50, 7], [21, 22, 23], [33, 1, 60],
                         [17, 4, 9], [58, 2, 31]]
            // Reference: each alone, prompt then the steps one token at a time.
            var want: [[Float]] = []
            for (i, set) in sets.enumerated() {
                let s = try m.makeLlamaSession(maxTokens: 20, adapters: set)
                _ = try s.feed(prompts[i])
                want.append(try steps[i].flatMap { try s.feed([$0]).data })
            }
            let sessions = try sets.map { try m.makeLlamaSession(maxTokens: 20, adapters: $0) }
            for (i, s) in sessions.enumerated() { _ = try s.feed(prompts[i]) }
            var got = [[Float]](repeating: [], count: sets.count)
            for k in 0..<3 {
                let l = try m.decodeStep(sessions, tokens: steps.map { $0[k] })
                XCTAssertEqual(l.rows, sets.count)
                for i in sets.indices { got[i] += Array(l.data[(i * m.vocabSize)..<((i + 1) * m.vocabSize)]) }
            }
            for i in sets.indices {
                XCTAssertEqual(sessions[i].position, prompts[i].count + 3)
                let d = zip(got[i], want[i]).map { abs($0 - $1) }.max()!
                XCTAssertLessThan(d, 1e-4, "sequence \(i), quantized=\(quantized)")
            }
        }
    }

    /// Chunked prefill: prompt chunks (with and without logits) and decode tokens of sequences on
    /// different adapters in the same steps, each input's logits as its session alone gives them.
    /// On quantized weights the steps stay within the 8-bit kernels' row limit, as alone.
    func testMixedStepsOfPromptChunksAndDecodeTokensEqualEachAlone() throws {
        for quantized in [false, true] {
            let m = quantized ? QuantizedModelTests.twins().quantized : QuantizedModelTests.twins().f32
            var rng = SeededRNG(seed: 9)
            let a = try m.prepare([(Self.adapter(m, "a", rng: &rng), 1)])
            let b = try m.prepare([(Self.adapter(m, "b", embedding: true, rng: &rng), 0.7)])
            let merged = try m.prepare([(Self.adapter(m, "c", rng: &rng), 1)], mode: .merged)
            let sets: [AdapterSet] = [a, .none, b, a, merged]
            let lengths = quantized ? [4, 7, 3, 8, 5] : [9, 14, 3, 20, 5]
            let prompts = lengths.enumerated().map { i, n in (0..<n).map { (5 * $0 + 13 * i + 1) % 64 } }
            let split = lengths[3] / 2                      // sequence 3 reads its prompt in two chunks
            let next = [[3, 4], [5, 6], [7, 8], [9, 10], [11, 12]]
            // Alone: the logits after each prompt and after each next token.
            var want: [[Float]] = []
            for (i, set) in sets.enumerated() {
                let s = try m.makeLlamaSession(maxTokens: 32, adapters: set)
                var rows = try s.feed(prompts[i], lastOnly: true).data
                for t in next[i] { rows += try s.feed([t]).data }
                want.append(rows)
            }
            let ss = try sets.map { try m.makeLlamaSession(maxTokens: 32, adapters: $0) }
            var got = [[Float]](repeating: [], count: sets.count)
            func run(_ inputs: [(Int, [Int], Bool)]) throws {
                let l = try m.step(inputs.map { StepInput(session: ss[$0.0], tokens: $0.1, wantsLogits: $0.2) })
                let wanting = inputs.filter(\.2)
                XCTAssertEqual(l.rows, wanting.count)
                for (r, w) in wanting.enumerated() { got[w.0] += Array(l.data[(r * m.vocabSize)..<((r + 1) * m.vocabSize)]) }
            }
            // Step 1: whole prompts, and the first half of sequence 3's (no logits).
            try run([(0, prompts[0], true), (1, prompts[1], true), (2, prompts[2], true),
                     (3, Array(prompts[3][..<split]), false), (4, prompts[4], true)])
            // Step 2: four decode tokens and the rest of sequence 3's prompt.
            try run([(0, [next[0][0]], true), (3, Array(prompts[3][split...]), true), (1, [next[1][0]], true),
                     (2, [next[2][0]], true), (4, [next[4][0]], true)])
            // Step 3: sequence 3 catches up alone; then everyone's last token.
            try run([(3, [next[3][0]], true)])
            try run([(0, [next[0][1]], true), (1, [next[1][1]], true), (2, [next[2][1]], true), (3, [next[3][1]], true),
                     (4, [next[4][1]], true)])
            for i in sets.indices {
                XCTAssertEqual(ss[i].position, prompts[i].count + 2)
                XCTAssertEqual(got[i].count, want[i].count, "sequence \(i)")
                let d = zip(got[i], want[i]).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertLessThan(d, 1e-4, "sequence \(i), quantized=\(quantized)")
            }
            XCTAssertThrowsError(try m.step([StepInput(session: ss[0], tokens: [])])) {
                XCTAssertEqual($0 as? BatchedDecodeError, .emptyInput(index: 0))
            }
        }
    }

    func testBadStepsChangeNothing() throws {
        let m = QuantizedModelTests.twins().f32
        let s = try m.makeLlamaSession(maxTokens: 2)
        let t = try m.makeLlamaSession(maxTokens: 4)
        XCTAssertThrowsError(try m.decodeStep([s, t], tokens: [1])) { XCTAssertEqual($0 as? BatchedDecodeError, .mismatchedCounts(sessions: 2, tokens: 1)) }
        XCTAssertThrowsError(try m.decodeStep([s, s], tokens: [1, 2])) { XCTAssertEqual($0 as? BatchedDecodeError, .duplicateSession(index: 1)) }
        XCTAssertThrowsError(try m.decodeStep([s, t], tokens: [1, 64]))
        _ = try s.feed([1, 2])
        XCTAssertThrowsError(try m.decodeStep([t, s], tokens: [1, 2])) { XCTAssertEqual($0 as? ModelError, .contextFull(maxTokens: 2, requested: 3)) }
        XCTAssertEqual(t.position, 0, "a refused step feeds no session")
        let other = QuantizedModelTests.twins().f32
        XCTAssertThrowsError(try other.decodeStep([t], tokens: [1])) { XCTAssertEqual($0 as? BatchedDecodeError, .otherModel(index: 0)) }
    }
}
