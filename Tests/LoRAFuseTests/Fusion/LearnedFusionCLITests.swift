import Foundation
import XCTest
@testable import LoRAFuse

/// `lorafuse fuse` end to end on the tiny HF Llama fixture with two random adapters.
final class LearnedFusionCLITests: XCTestCase {
    /// The tiny HF fixture copied into `tmp`, with a ChatML template (and a newline token in place
    /// of the unused "¡") so prompts are rendered and scored as `lorafuse eval` does.
    static func chatModel(in tmp: String) throws -> String {
        let modelDir = tmp + "/model"
        try FileManager.default.copyItem(atPath: ModelFixtures.path("tiny-llama"), toPath: modelDir)
        let tok = try String(contentsOfFile: modelDir + "/tokenizer.json", encoding: .utf8)
        XCTAssertTrue(tok.contains("\"¡\": 94") || tok.contains("\"¡\":94"))
        try tok.replacingOccurrences(of: "\"¡\"", with: "\"Ċ\"").write(toFile: modelDir + "/tokenizer.json", atomically: true, encoding: .utf8)
        let template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        let config: [String: Any] = ["eos_token": "~", "chat_template": template]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: modelDir + "/tokenizer_config.json"))
        return modelDir
    }

    func testFuseWritesPEFTAdapterAndCoefficients() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-fuse-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let modelDir = try Self.chatModel(in: tmp)
        let model = try LlamaModel.load(path: modelDir)
        XCTAssertFalse(try Evaluator(model: model).promptTokens("ab").isEmpty)
        var paths: [String] = []
        for (i, targets) in [[Projection.q, .v], [.q, .down]].enumerated() {
            let a = TrainFixtures.randomLoRA(model.config, targets: targets, rank: 2, seed: 30 + UInt64(i), std: 0.3)
            let p = tmp + "/ad\(i)"
            try PEFTAdapter.write(a.adapter(name: "ad\(i)"), to: p, dtype: .f32)
            paths.append(p)
        }
        try """
        {"prompt": "ab", "answer": "cd"}
        {"prompt": "ef", "answer": "gh"}
        {"prompt": "ij", "answer": "kl"}
        """.write(toFile: tmp + "/t1.jsonl", atomically: true, encoding: .utf8)
        try """
        {"prompt": "12", "answer": "34"}
        {"prompt": "56", "answer": "78"}
        """.write(toFile: tmp + "/t2.jsonl", atomically: true, encoding: .utf8)
        let out = tmp + "/out"
        let r = try CLITests.run(["fuse", "--method", "atlas", paths[0], paths[1], "--shots", tmp + "/t1.jsonl", tmp + "/t2.jsonl",
                                  "--shots-per-task", "2", "--val", tmp + "/t2.jsonl", "--steps", "4", "--batch", "2",
                                  "--lr", "0.1", "--granularity", "module", "--model", modelDir, "-o", out, "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("atlas: few-shot loss"), r.stdout)
        let fused = try PEFTAdapter.read(directory: out)
        // q is adapted by both (rank 2 + 2 concatenated), v and down by one each.
        XCTAssertEqual(fused.modules["base_model.model.model.layers.0.self_attn.q_proj"]?.rank, 4)
        XCTAssertEqual(fused.modules["base_model.model.model.layers.1.mlp.down_proj"]?.rank, 2)
        XCTAssertEqual(fused.modules.count, 2 * 3)
        let json = try Data(contentsOf: URL(fileURLWithPath: out + "/coefficients.json"))
        let c = try JSONDecoder().decode(LearnedCoefficients.self, from: json)
        XCTAssertEqual(c.method, "atlas")
        XCTAssertEqual(c.granularity, .module)
        XCTAssertEqual(c.adapterNames, ["ad0", "ad1"])
        XCTAssertEqual(c.parameters.count, 2 * 3)   // 2 adapters × {q, v, down}
        XCTAssertEqual(c.lossCurve.count, 5)
        XCTAssertEqual(Set(c.values[0].keys), ["q_proj", "v_proj"])
        // Module granularity: every layer of a projection has the same coefficient.
        XCTAssertEqual(c.values[1]["down_proj"]![0], c.values[1]["down_proj"]![1])
        // The fused q_proj is Σ c_i ΔW_i of the inputs.
        let a0 = try PEFTAdapter.read(directory: paths[0]), a1 = try PEFTAdapter.read(directory: paths[1])
        let n = "base_model.model.model.layers.1.self_attn.q_proj"
        var want = a0.modules[n]!.delta().scaled(by: Float(c.coefficient(adapter: 0, layer: 1, module: "q_proj")))
        want.add(a1.modules[n]!.delta(), scaledBy: Float(c.coefficient(adapter: 1, layer: 1, module: "q_proj")))
        XCTAssertLessThan(fused.modules[n]!.delta().maxAbsDifference(want), 1e-5 * max(want.maxAbs, 1))
        XCTAssertTrue(try String(contentsOfFile: out + "/loss.csv", encoding: .utf8).hasPrefix("step,train_loss,val_loss\n0,"))
        XCTAssertTrue(try String(contentsOfFile: out + "/loss.svg", encoding: .utf8).contains("<polyline"))

        // lorahub through the same command, and a bad method is a usage error.
        let r2 = try CLITests.run(["fuse", "--method", "lorahub", paths[0], paths[1], "--shots", tmp + "/t1.jsonl",
                                   "--evaluations", "6", "--rank", "1", "--model", modelDir, "-o", tmp + "/out2", "--quiet"])
        XCTAssertEqual(r2.code, 0, r2.stderr)
        XCTAssertEqual(try PEFTAdapter.read(directory: tmp + "/out2").modules["base_model.model.model.layers.0.self_attn.q_proj"]?.rank, 1)
        let bad = try CLITests.run(["fuse", "--method", "nope", paths[0], "--shots", tmp + "/t1.jsonl", "-o", tmp + "/x"])
        XCTAssertEqual(bad.code, 1)
        XCTAssertTrue(bad.stderr.contains("atlas, lorahub, cat-learned"), bad.stderr)
    }
}
