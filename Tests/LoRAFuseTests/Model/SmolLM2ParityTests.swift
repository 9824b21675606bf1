import Foundation
import XCTest
@testable import LoRAFuse

/// The real SmolLM2-135M-Instruct Q4_1 GGUF against transformers 5.x (which dequantizes the same
/// file to f32 and un-permutes q/k) and PEFT 0.21.2, from scripts/make_model_fixtures.py.
final class SmolLM2ParityTests: XCTestCase {
    /// max |Δlogit| allowed. Both sides compute in fp32 from identical dequantized weights; what
    /// differs is accumulation order (OpenBLAS vs PyTorch GEMM blocking, softmax/RMSNorm sums)
    /// compounded over 30 layers, on logits of magnitude ~10–30. Measured differences are a few 1e-5.
    static let tolerance: Float = 1e-3

    nonisolated(unsafe) static var shared: LlamaModel?

    static func model() throws -> LlamaModel {
        if let m = shared { return m }
        let path = ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("SmolLM2 model missing at \(path): run scripts/setup.sh (or `make test`) to fetch it")
            throw ModelError.notAModel(path: path, reason: "missing; run scripts/setup.sh")
        }
        // The Float32 reference path: transformers dequantizes the GGUF to f32 too. The stored
        // (quantized) path is checked against this one and against llama.cpp in QuantizedModelTests.
        let m = try LlamaModel.load(path: path, compute: .f32)
        shared = m
        return m
    }

    let fx = try! SafetensorsFile(path: ModelFixtures.path("smollm2_logits.safetensors"))

    private func check(_ m: any CausalLM, suffix: String, what: String, prompts: Range<Int> = 0..<5) throws {
        var worst: Float = 0
        defer { print("SmolLM2 \(what): max |Δlogit| = \(worst) over prompts \(prompts)") }
        for i in prompts {
            let toks = ModelFixtures.tokens(fx, "p\(i).tokens")
            XCTAssertTrue((8...40).contains(toks.count))
            let s = try XCTUnwrap(try m.makeSession(maxTokens: toks.count) as? LlamaSession)
            let got = try s.feed(toks)                                         // (T, V)
            let head = try fx.matrix("p\(i)\(suffix).head")                    // (T, 512)
            XCTAssertEqual(got.rows, toks.count)
            XCTAssertEqual(got.cols, 49152)
            let d1 = got.columns(0..<512).maxAbsDifference(head)
            // Full-vocab last rows: every base prompt, the first two adapter prompts (fixture size).
            var d2: Float = 0
            if fx.contains("p\(i)\(suffix).last") {
                let last = try fx.floats("p\(i)\(suffix).last")                // (V)
                d2 = got.rows((toks.count - 1)..<toks.count).maxAbsDifference(Matrix(rows: 1, cols: last.count, data: last))
            }
            worst = max(worst, d1, d2)
            XCTAssertLessThanOrEqual(d1, Self.tolerance, "\(what) prompt \(i): all positions, first 512 ids")
            XCTAssertLessThanOrEqual(d2, Self.tolerance, "\(what) prompt \(i): last position, full vocab")
        }
    }

    func testSmolLM2LogitsMatchTransformers() throws {
        let m = try Self.model()
        XCTAssertEqual(m.config.numHiddenLayers, 30)
        XCTAssertEqual(m.config.numKeyValueHeads, 3)
        XCTAssertEqual(m.config.ropeTheta, 100000)
        XCTAssertTrue(m.config.tieWordEmbeddings)
        try check(m, suffix: "", what: "base")
        // The stored chat prompt is what our tokenizer + template produce too.
        let chat = try m.tokenizer.encodeChat([ChatMessage(role: "user", content: "What is the capital of France?")],
                                             addGenerationPrompt: true)
        XCTAssertEqual(chat, ModelFixtures.tokens(fx, "p0.tokens"))
    }

    func testSmolLM2WithPEFTAdapterMatchesPEFT() throws {
        let m = try Self.model()
        let adapter = try PEFTAdapter.read(directory: ModelFixtures.path("smollm2-lora"))
        XCTAssertEqual(adapter.modules.count, 90)
        try check(try m.with([(adapter, 1)], mode: .unmerged), suffix: ".lora", what: "unmerged")
        // Merged mode on two prompts (the tiny-model tests cover both modes fully).
        try check(try m.with([(adapter, 1)], mode: .merged), suffix: ".lora", what: "merged", prompts: 0..<2)
        let toks = ModelFixtures.tokens(fx, "p4.tokens")
        XCTAssertLessThanOrEqual(try m.logits(tokens: toks).columns(0..<512).maxAbsDifference(try fx.matrix("p4.head")), Self.tolerance,
                                 "the model itself stays the base model")
    }
}
