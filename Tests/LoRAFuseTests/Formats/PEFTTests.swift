import XCTest
@testable import LoRAFuse

/// Tests/LoRAFuseTests/Fixtures/peft, found from this file's path (robust to bundle layouts).
let peftFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures").appendingPathComponent("peft")

final class PEFTTests: TempDirTestCase {
    /// Checks every module against PEFT's own `get_delta_weight` and `scaling` (see
    /// scripts/make_format_fixtures.py).
    func checkAgainstPEFT(_ name: String, tolerance: Float = 1e-5) throws -> LoRAAdapter {
        let a = try PEFTAdapter.read(directory: peftFixtures.appendingPathComponent(name).path)
        let expected = try SafetensorsFile(url: peftFixtures.appendingPathComponent("\(name).expected.safetensors"))
        XCTAssertEqual(a.name, name)
        XCTAssertEqual(Set(a.modules.keys), Set(expected.names), "\(name): module set")
        for module in expected.names {
            let m = try XCTUnwrap(a.modules[module])
            let want = try expected.matrix(module)
            // PEFT returns embedding deltas as [num_embeddings, dim]; B·A is [dim, num_embeddings].
            let got = m.kind == .embedding ? m.delta().transposed() : m.delta()
            XCTAssertEqual(got.shape, want.shape, module)
            let scaleWant = try XCTUnwrap(Float(expected.metadata[module] ?? ""))
            XCTAssertEqual(m.scale, scaleWant, accuracy: 1e-6 * max(1, abs(scaleWant)), "\(name) \(module) scale")
            let maxAbs = want.data.map(abs).max() ?? 1
            XCTAssertLessThanOrEqual(got.maxAbsDifference(want), tolerance * max(1, maxAbs), "\(name) \(module) ΔW")
        }
        return a
    }

    func testPatternsFixtureMatchesPEFT() throws {
        let a = try checkAgainstPEFT("patterns")
        XCTAssertEqual(a.sourceDType, .f32)
        XCTAssertEqual(a.metadata.rank, 4)
        XCTAssertEqual(a.metadata.alpha, 8)
        XCTAssertEqual(a.metadata.rankPattern, ["layers.1.self_attn.q_proj": 2, "down_proj": 6])
        XCTAssertEqual(a.metadata.alphaPattern, ["v_proj": 3, "layers\\.0\\.mlp\\.down_proj": 12])
        XCTAssertEqual(a.metadata.taskType, "CAUSAL_LM")
        XCTAssertEqual(a.metadata.targetModules.sorted(), ["down_proj", "q_proj", "v_proj"])
        XCTAssertEqual(a.modules["base_model.model.model.layers.1.self_attn.q_proj"]?.rank, 2)
        XCTAssertEqual(a.modules["base_model.model.model.layers.0.mlp.down_proj"]?.scale, 2)            // 12 / 6
        XCTAssertEqual(a.modules["base_model.model.model.layers.1.mlp.down_proj"]!.scale, 8.0 / 6, accuracy: 1e-7)
        XCTAssertEqual(a.modules["base_model.model.model.layers.0.self_attn.v_proj"]?.scale, 0.75)      // 3 / 4
        XCTAssertEqual(a.metadata.peftExtra["peft_version"], "\"0.21.2\"", "unknown keys kept verbatim")
        XCTAssertTrue(a.extraTensors.isEmpty)
    }

    func testRSLoRAFixtureMatchesPEFT() throws {
        let a = try checkAgainstPEFT("rslora")
        XCTAssertEqual(a.sourceDType, .bf16)
        XCTAssertTrue(a.metadata.useRSLoRA)
        for m in a.modules.values { XCTAssertEqual(m.scale, 16 / Float(8).squareRoot(), accuracy: 1e-6) }
    }

    func testEmbeddingFixtureMatchesPEFT() throws {
        let a = try checkAgainstPEFT("embedding")
        XCTAssertEqual(a.sourceDType, .f16)
        let emb = try XCTUnwrap(a.modules["base_model.model.model.embed_tokens"])
        XCTAssertEqual(emb.kind, .embedding)
        XCTAssertEqual(emb.A.shape, [2, 64])   // (r, num_embeddings)
        XCTAssertEqual(emb.B.shape, [16, 2])   // (dim, r)
        XCTAssertEqual(a.metadata.modulesToSave, ["lm_head"])
        XCTAssertEqual(Set(a.extraTensors.keys), ["base_model.model.lm_head.weight", "base_model.model.model.embed_tokens.base_layer.weight"])
        XCTAssertEqual(a.metadata.extraTensorShapes["base_model.model.lm_head.weight"], [64, 16])
    }

    // MARK: write → read

    func assertSameDeltas(_ a: LoRAAdapter, _ b: LoRAAdapter, tolerance: Float, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(Set(a.modules.keys), Set(b.modules.keys), file: file, line: line)
        for (n, m) in a.modules {
            guard let o = b.modules[n] else { continue }
            XCTAssertEqual(m.kind, o.kind, n, file: file, line: line)
            let d = m.delta(), e = o.delta()
            let scale = max(1, d.data.map(abs).max() ?? 1)
            XCTAssertLessThanOrEqual(d.maxAbsDifference(e), tolerance * scale, n, file: file, line: line)
        }
    }

    func testWriteReadRoundTripKeepsConfigWhenScalesAgree() throws {
        for name in ["patterns", "rslora", "embedding"] {
            let a = try PEFTAdapter.read(directory: peftFixtures.appendingPathComponent(name).path)
            let out = tmp.appendingPathComponent("rt-\(name)")
            try PEFTAdapter.write(a, to: out.path, dtype: .f32)
            let b = try PEFTAdapter.read(directory: out.path)
            XCTAssertEqual(b.name, "rt-\(name)")
            for (n, m) in a.modules {
                XCTAssertEqual(b.modules[n]?.A, m.A, n)
                XCTAssertEqual(b.modules[n]?.B, m.B, "\(n): B unchanged, nothing folded")
                XCTAssertEqual(b.modules[n]?.scale, m.scale, n)
            }
            XCTAssertEqual(b.metadata.useRSLoRA, a.metadata.useRSLoRA)
            XCTAssertEqual(b.metadata.rankPattern, a.metadata.rankPattern)
            XCTAssertEqual(b.metadata.alphaPattern, a.metadata.alphaPattern)
            XCTAssertEqual(b.metadata.peftExtra["peft_version"], "\"0.21.2\"")
            XCTAssertEqual(b.extraTensors, a.extraTensors)
            let weights = try SafetensorsFile(url: out.appendingPathComponent("adapter_model.safetensors"))
            XCTAssertEqual(weights.metadata, ["format": "pt"])
            for (n, s) in a.metadata.extraTensorShapes { XCTAssertEqual(try weights.info(n).shape, s) }
        }
    }

    func testWriteInHalfPrecisions() throws {
        let a = try PEFTAdapter.read(directory: peftFixtures.appendingPathComponent("patterns").path)
        for (dt, tol) in [(DType.f16, Float(2e-3)), (.bf16, 2e-2)] {
            let out = tmp.appendingPathComponent("h-\(dt.rawValue)")
            try PEFTAdapter.write(a, to: out.path, dtype: dt)
            let b = try PEFTAdapter.read(directory: out.path)
            XCTAssertEqual(b.sourceDType, dt)
            assertSameDeltas(a, b, tolerance: tol)
        }
    }

    func testFoldsScalesAndWritesExactPatterns() throws {
        var rng = SeededRNG(seed: 3)
        func mod(_ r: Int, _ s: Float, out: Int = 6, inp: Int = 5) -> LoRAModule {
            LoRAModule(A: Matrix.randomNormal(r, inp, rng: &rng), B: Matrix.randomNormal(out, r, rng: &rng), scale: s)
        }
        var meta = AdapterMetadata()
        meta.baseModel = "tiny"
        meta.rank = 4
        meta.alpha = 8
        let a = LoRAAdapter(name: "x", modules: [
            "base_model.model.model.layers.0.self_attn.q_proj": mod(4, 0.37),
            "base_model.model.model.layers.1.self_attn.q_proj": mod(4, 2),
            "base_model.model.model.layers.10.self_attn.q_proj": mod(3, 1.5),
            "base_model.model.model.layers.1.mlp.down_proj": mod(7, -0.5),
        ], metadata: meta)
        let out = tmp.appendingPathComponent("folded")
        try PEFTAdapter.write(a, to: out.path, dtype: .f32)
        let config = try JSONValue.parse(Array(try Data(contentsOf: out.appendingPathComponent("adapter_config.json"))))
        XCTAssertEqual(config["r"]?.intValue, 4)
        XCTAssertEqual(config["lora_alpha"]?.intValue, 4)
        XCTAssertEqual(config["use_rslora"]?.boolValue, false)
        XCTAssertEqual(config["peft_type"]?.stringValue, "LORA")
        XCTAssertEqual(config["bias"]?.stringValue, "none")
        XCTAssertEqual(config["base_model_name_or_path"]?.stringValue, "tiny")
        XCTAssertEqual(config["inference_mode"]?.boolValue, true)
        XCTAssertEqual(config["target_modules"]?.arrayValue?.compactMap(\.stringValue), ["down_proj", "q_proj"])
        let rp = try XCTUnwrap(config["rank_pattern"]?.objectMembers)
        XCTAssertEqual(rp.map(\.0).sorted(), ["model.layers.1.mlp.down_proj", "model.layers.10.self_attn.q_proj"])
        XCTAssertEqual(config["alpha_pattern"]?["model.layers.10.self_attn.q_proj"]?.intValue, 3)

        let b = try PEFTAdapter.read(directory: out.path)
        assertSameDeltas(a, b, tolerance: 1e-6)
        for m in b.modules.values { XCTAssertEqual(m.scale, 1) }
        XCTAssertEqual(b.modules["base_model.model.model.layers.10.self_attn.q_proj"]?.rank, 3)
    }

    func testAdapterNameInKeysAndMissingPartner() throws {
        let dir = tmp.appendingPathComponent("named")
        try makeAdapter(dir, config: #"{"r": 2, "lora_alpha": 4, "target_modules": "q_proj", "peft_type": "LORA"}"#, tensors: [
            SafetensorsTensor(name: "base_model.model.q_proj.lora_A.default.weight", matrix: Matrix([[1, 2], [3, 4]])),
            SafetensorsTensor(name: "base_model.model.q_proj.lora_B.default.weight", matrix: Matrix([[1, 0], [0, 1], [1, 1]])),
            SafetensorsTensor(name: "base_model.model.emb.lora_embedding_A.default", matrix: Matrix([[1, 2, 3], [4, 5, 6]])),
            SafetensorsTensor(name: "base_model.model.emb.lora_embedding_B.default", matrix: Matrix([[1, 1]])),
        ])
        let a = try PEFTAdapter.read(directory: dir.path)
        XCTAssertEqual(a.moduleNames, ["base_model.model.emb", "base_model.model.q_proj"])
        XCTAssertEqual(a.modules["base_model.model.q_proj"]?.delta(), Matrix([[2, 4], [6, 8], [8, 12]]))
        XCTAssertEqual(a.modules["base_model.model.emb"]?.kind, .embedding)
        XCTAssertEqual(a.metadata.targetModules, ["q_proj"])

        let lonely = tmp.appendingPathComponent("lonely")
        try makeAdapter(lonely, config: #"{"r": 2, "lora_alpha": 4}"#, tensors: [
            SafetensorsTensor(name: "base_model.model.q_proj.lora_A.weight", matrix: Matrix([[1, 2], [3, 4]])),
        ])
        assertPEFTError(try PEFTAdapter.read(directory: lonely.path), "missingPartner") {
            if case .missingPartner(_, "base_model.model.q_proj.lora_A.weight", "base_model.model.q_proj.lora_B") = $0 { return true }; return false
        }
    }

    // MARK: errors

    func makeAdapter(_ dir: URL, config: String, tensors: [SafetensorsTensor], dtype: DType = .f32) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(config.utf8).write(to: dir.appendingPathComponent("adapter_config.json"))
        if !tensors.isEmpty {
            try SafetensorsWriter.write(tensors: tensors, metadata: ["format": "pt"], dtype: dtype,
                                        to: dir.appendingPathComponent("adapter_model.safetensors"))
        }
    }

    var simpleTensors: [SafetensorsTensor] {
        [SafetensorsTensor(name: "base_model.model.q_proj.lora_A.weight", matrix: Matrix([[1, 2], [3, 4]])),
         SafetensorsTensor(name: "base_model.model.q_proj.lora_B.weight", matrix: Matrix([[1, 0], [0, 1]]))]
    }

    func assertPEFTError(_ body: @autoclosure () throws -> Any, _ what: String, file: StaticString = #filePath, line: UInt = #line,
                         _ matches: (PEFTError) -> Bool) {
        do {
            _ = try body()
            XCTFail("expected \(what), got success", file: file, line: line)
        } catch let e as PEFTError {
            XCTAssertTrue(matches(e), "expected \(what), got \(e)", file: file, line: line)
        } catch {
            XCTFail("expected PEFTError \(what), got \(error)", file: file, line: line)
        }
    }

    func testDoRAAndBiasAndLoraBiasRejected() throws {
        let dora = tmp.appendingPathComponent("dora")
        try makeAdapter(dora, config: #"{"r": 2, "lora_alpha": 4, "use_dora": true}"#, tensors: simpleTensors)
        assertPEFTError(try PEFTAdapter.read(directory: dora.path), "use_dora") {
            if case .unsupportedOption(_, "use_dora", _, _) = $0 { return "\($0)".contains("use_dora") }; return false
        }
        let doraTensor = tmp.appendingPathComponent("dora2")
        try makeAdapter(doraTensor, config: #"{"r": 2, "lora_alpha": 4}"#, tensors: simpleTensors + [
            SafetensorsTensor(name: "base_model.model.q_proj.lora_magnitude_vector", shape: [2], values: [1, 1])])
        assertPEFTError(try PEFTAdapter.read(directory: doraTensor.path), "use_dora (tensor)") {
            if case .unsupportedOption(_, "use_dora", _, _) = $0 { return true }; return false
        }
        let bias = tmp.appendingPathComponent("bias")
        try makeAdapter(bias, config: #"{"r": 2, "lora_alpha": 4, "bias": "lora_only"}"#, tensors: simpleTensors)
        assertPEFTError(try PEFTAdapter.read(directory: bias.path), "bias") {
            if case .unsupportedOption(_, "bias", "\"lora_only\"", _) = $0 { return true }; return false
        }
        let lb = tmp.appendingPathComponent("lorabias")
        try makeAdapter(lb, config: #"{"r": 2, "lora_alpha": 4}"#, tensors: simpleTensors + [
            SafetensorsTensor(name: "base_model.model.q_proj.lora_B.bias", shape: [2], values: [1, 1])])
        assertPEFTError(try PEFTAdapter.read(directory: lb.path), "lora_bias") {
            if case .unsupportedOption(_, "lora_bias", _, _) = $0 { return true }; return false
        }
    }

    func testPickleOnlyAndMissingFiles() throws {
        let bin = tmp.appendingPathComponent("bin")
        try makeAdapter(bin, config: #"{"r": 2, "lora_alpha": 4}"#, tensors: [])
        try Data([0x80, 0x02]).write(to: bin.appendingPathComponent("adapter_model.bin"))
        assertPEFTError(try PEFTAdapter.read(directory: bin.path), "pickleOnly") {
            if case .pickleOnly = $0 { return "\($0)".contains("safetensors") }; return false
        }
        let none = tmp.appendingPathComponent("none")
        try makeAdapter(none, config: #"{"r": 2}"#, tensors: [])
        assertPEFTError(try PEFTAdapter.read(directory: none.path), "missingWeights") { if case .missingWeights = $0 { return true }; return false }
        assertPEFTError(try PEFTAdapter.read(directory: tmp.appendingPathComponent("absent").path), "notADirectory") {
            if case .notADirectory = $0 { return true }; return false
        }
        let noConfig = tmp.appendingPathComponent("noconfig")
        try FileManager.default.createDirectory(at: noConfig, withIntermediateDirectories: true)
        assertPEFTError(try PEFTAdapter.read(directory: noConfig.path), "missingConfig") { if case .missingConfig = $0 { return true }; return false }
    }

    func testRankMismatchAndBadConfig() throws {
        let dir = tmp.appendingPathComponent("rank")
        try makeAdapter(dir, config: #"{"r": 3, "lora_alpha": 4}"#, tensors: simpleTensors)
        assertPEFTError(try PEFTAdapter.read(directory: dir.path), "rankMismatch") {
            if case .rankMismatch(_, "base_model.model.q_proj", 3, 2) = $0 { return true }; return false
        }
        let pat = tmp.appendingPathComponent("pattern")
        try makeAdapter(pat, config: #"{"r": 2, "lora_alpha": 4, "rank_pattern": {"q_pr.j": 5}}"#, tensors: simpleTensors)
        assertPEFTError(try PEFTAdapter.read(directory: pat.path), "rankMismatch via regex pattern") {
            if case .rankMismatch(_, "base_model.model.q_proj", 5, 2) = $0 { return true }; return false
        }
        let badRegex = tmp.appendingPathComponent("badregex")
        try makeAdapter(badRegex, config: #"{"r": 2, "lora_alpha": 4, "rank_pattern": {"q_proj(": 5}}"#, tensors: simpleTensors)
        assertPEFTError(try PEFTAdapter.read(directory: badRegex.path), "badPattern") { if case .badPattern(_, "q_proj(", _) = $0 { return true }; return false }
        let notJSON = tmp.appendingPathComponent("notjson")
        try makeAdapter(notJSON, config: "{r: 2}", tensors: simpleTensors)
        assertPEFTError(try PEFTAdapter.read(directory: notJSON.path), "invalidConfig") { if case .invalidConfig = $0 { return true }; return false }
        let shapes = tmp.appendingPathComponent("shapes")
        try makeAdapter(shapes, config: #"{"r": 2, "lora_alpha": 4}"#, tensors: [
            SafetensorsTensor(name: "m.lora_A.weight", matrix: Matrix([[1, 2], [3, 4]])),
            SafetensorsTensor(name: "m.lora_B.weight", matrix: Matrix([[1, 0, 0]]))])
        assertPEFTError(try PEFTAdapter.read(directory: shapes.path), "factorShapeMismatch") {
            if case .factorShapeMismatch(_, "m", [2, 2], [1, 3]) = $0 { return true }; return false
        }
    }

    func testPatternMatchingFollowsPEFT() throws {
        // First matching key wins in file order; keys are regexes anchored at a dot boundary.
        let dir = tmp.appendingPathComponent("order")
        let cfg = #"{"r": 2, "lora_alpha": 2, "rank_pattern": {"proj": 9, "q_proj": 2}, "alpha_pattern": {"j": 100, "layers\\.\\d+\\.q_proj": 6}}"#
        try makeAdapter(dir, config: cfg, tensors: [
            SafetensorsTensor(name: "base_model.model.layers.0.q_proj.lora_A.weight", matrix: Matrix([[1, 2], [3, 4]])),
            SafetensorsTensor(name: "base_model.model.layers.0.q_proj.lora_B.weight", matrix: Matrix([[1, 0], [0, 1]])),
        ])
        // "proj" does not match "...q_proj" (needs a dot before it), so "q_proj" gives r = 2;
        // "j" does not match either, the second alpha key does: α = 6, s = 3.
        let a = try PEFTAdapter.read(directory: dir.path)
        XCTAssertEqual(a.modules["base_model.model.layers.0.q_proj"]?.scale, 3)
    }

    func testNonFiniteTensorNamed() throws {
        let dir = tmp.appendingPathComponent("nan")
        try makeAdapter(dir, config: #"{"r": 2, "lora_alpha": 4}"#, tensors: [
            SafetensorsTensor(name: "base_model.model.q_proj.lora_A.weight", matrix: Matrix([[1, 2], [3, .nan]])),
            SafetensorsTensor(name: "base_model.model.q_proj.lora_B.weight", matrix: Matrix([[1, 0], [0, 1]]))])
        do {
            _ = try PEFTAdapter.read(directory: dir.path)
            XCTFail("NaN accepted")
        } catch let e as SafetensorsError {
            guard case .nonFinite(_, "base_model.model.q_proj.lora_A.weight", 3, _) = e else { return XCTFail("\(e)") }
        }
    }

    func testRefusesInputsAndReplacesExistingOnlyWithForce() throws {
        let src = tmp.appendingPathComponent("src")
        try makeAdapter(src, config: #"{"r": 2, "lora_alpha": 4, "custom_key": {"x": [1, 2]}}"#, tensors: simpleTensors)
        let a = try PEFTAdapter.read(directory: src.path)
        XCTAssertThrowsError(try PEFTAdapter.write(a, to: src.path, dtype: .f32, force: true)) {
            guard case .isInput? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        var b = a
        b.sourcePath = nil
        XCTAssertThrowsError(try PEFTAdapter.write(b, to: src.path + "/", dtype: .f32, protecting: [src.path])) {
            guard case .isInput? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        // Inside an input, or holding one: refused too.
        XCTAssertThrowsError(try PEFTAdapter.write(b, to: src.path + "/sub", dtype: .f32, protecting: [src.path])) {
            guard case .insideInput? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try PEFTAdapter.write(b, to: tmp.path, dtype: .f32, protecting: [src.path], force: true)) {
            guard case .containsInput? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        let other = tmp.appendingPathComponent("other")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: other.appendingPathComponent("README.md"))
        XCTAssertThrowsError(try PEFTAdapter.write(b, to: other.path, dtype: .f32)) {
            guard case .exists? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(try String(contentsOf: other.appendingPathComponent("README.md"), encoding: .utf8), "keep")
        // --force replaces the folder whole: nothing of the old one is left to describe the new adapter.
        try PEFTAdapter.write(b, to: other.path, dtype: .f32, force: true)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: other.path).sorted(),
                       ["adapter_config.json", "adapter_model.safetensors"])
        let c = try PEFTAdapter.read(directory: other.path)
        XCTAssertEqual(c.metadata.peftExtra["custom_key"], #"{"x":[1,2]}"#)
        XCTAssertEqual(c.modules["base_model.model.q_proj"]?.delta(), a.modules["base_model.model.q_proj"]?.delta())
        XCTAssertThrowsError(try PEFTAdapter.write(b, to: "", dtype: .f32)) {
            guard case .emptyPath? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: tmp.path).filter { $0.hasPrefix(".") }
        XCTAssertTrue(leftovers.isEmpty, "temporary directories removed: \(leftovers)")
    }

    func testCarriesFanInFanOutLayersAndModulesToSave() throws {
        let dir = tmp.appendingPathComponent("gpt2ish")
        let cfg = #"{"r": 2, "lora_alpha": 2, "fan_in_fan_out": true, "layers_to_transform": 0, "target_modules": "c_attn", "modules_to_save": ["score"], "task_type": "SEQ_CLS", "base_model_name_or_path": "gpt2"}"#
        try makeAdapter(dir, config: cfg, tensors: [
            SafetensorsTensor(name: "base_model.model.h.0.c_attn.lora_A.weight", matrix: Matrix([[1, 2], [3, 4]])),
            SafetensorsTensor(name: "base_model.model.h.0.c_attn.lora_B.weight", matrix: Matrix([[1, 0], [0, 1], [2, 2]])),
            SafetensorsTensor(name: "base_model.model.score.bias", shape: [3], values: [0.5, -1, 2]),
        ])
        let a = try PEFTAdapter.read(directory: dir.path)
        XCTAssertTrue(a.metadata.fanInFanOut)
        XCTAssertEqual(a.metadata.layersToTransform, [0])
        XCTAssertEqual(a.metadata.targetModules, ["c_attn"])
        XCTAssertEqual(a.extraTensors["base_model.model.score.bias"], Matrix([[0.5, -1, 2]]))
        XCTAssertEqual(a.metadata.extraTensorShapes["base_model.model.score.bias"], [3])
        let out = tmp.appendingPathComponent("gpt2ish-out")
        try PEFTAdapter.write(a, to: out.path, dtype: .f16)
        let b = try PEFTAdapter.read(directory: out.path)
        XCTAssertTrue(b.metadata.fanInFanOut)
        XCTAssertEqual(b.metadata.layersToTransform, [0])
        XCTAssertEqual(b.metadata.modulesToSave, ["score"])
        XCTAssertEqual(b.metadata.taskType, "SEQ_CLS")
        XCTAssertEqual(b.metadata.baseModel, "gpt2")
        XCTAssertEqual(b.extraTensors, a.extraTensors)
        let w = try SafetensorsFile(url: out.appendingPathComponent("adapter_model.safetensors"))
        XCTAssertEqual(try w.info("base_model.model.score.bias").shape, [3], "1-D extra tensor keeps its shape")
        XCTAssertEqual(try w.info("base_model.model.h.0.c_attn.lora_A.weight").dtype, "F16")
    }
}
