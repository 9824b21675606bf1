import Foundation
import XCTest
@testable import LoRAFuse

/// `lorafuse fuse --method icm-fusion` and `generate-adapter` end to end on the tiny HF fixture:
/// checkpoints in the adapter folder join the VAE's samples, a saved generator re-makes the fused
/// adapter byte for byte, and ICM-LoRA / SG-LoRA generate from it.
final class ICMCLITests: XCTestCase {
    func testFuseSaveReuseAndGenerate() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-icm-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let modelDir = try LearnedFusionCLITests.chatModel(in: tmp)
        let model = try LlamaModel.load(path: modelDir)
        var paths: [String] = []
        for i in 0..<2 {
            var a = TrainFixtures.randomLoRA(model.config, targets: [.q, .v], rank: 2, seed: 40 + UInt64(i), std: 0.3)
            let p = tmp + "/task\(i)"
            try PEFTAdapter.write(a.adapter(name: "task\(i)"), to: p, dtype: .f32)
            for m in a.modules.indices { a.modules[m].B = a.modules[m].B.map { 0.5 * $0 } }
            try PEFTAdapter.write(a.adapter(name: "task\(i)"), to: p + "/checkpoint-3", dtype: .f32)
            paths.append(p)
        }
        try "{\"prompt\": \"ab\", \"answer\": \"cd\"}\n{\"prompt\": \"ef\", \"answer\": \"gh\"}\n"
            .write(toFile: tmp + "/s0.jsonl", atomically: true, encoding: .utf8)
        try "{\"prompt\": \"12\", \"answer\": \"34\"}\n{\"prompt\": \"56\", \"answer\": \"78\"}\n"
            .write(toFile: tmp + "/s1.jsonl", atomically: true, encoding: .utf8)
        try "{\"tasks\": [{\"name\": \"task0\", \"description\": \"ab cd\"}, {\"name\": \"task1\", \"description\": \"12 34\"}]}"
            .write(toFile: tmp + "/manifest.json", atomically: true, encoding: .utf8)
        let small = ["--chunk-size", "16", "--hidden", "8", "--latent", "4", "--vae-steps", "10", "--meta-steps", "2",
                     "--fusion-steps", "2", "--adapt-steps", "1", "--model", modelDir]
        let gen = tmp + "/gen.safetensors"
        let r = try CLITests.run(["fuse", "--method", "icm-fusion", paths[0], paths[1], "--shots", tmp + "/s0.jsonl", tmp + "/s1.jsonl",
                                  "--save-generator", gen, "-o", tmp + "/fused"] + small)
        XCTAssertEqual(r.code, 0, r.stderr)
        // Each task's second shot is held out to choose the adaptation step.
        XCTAssertTrue(r.stderr.contains("task0: 2 adapters (final + checkpoints), 1 shots"), r.stderr)
        XCTAssertTrue(r.stderr.contains("kept step"), r.stderr)
        XCTAssertEqual(r.stderr.components(separatedBy: "meta step").count - 1, 2, r.stderr)
        let fused = try PEFTAdapter.read(directory: tmp + "/fused")
        XCTAssertEqual(fused.moduleNames, try PEFTAdapter.read(directory: paths[0]).moduleNames)

        // The saved generator re-makes the same file without training.
        let again = try CLITests.run(["fuse", "--method", "icm-fusion", paths[0], paths[1], "--shots", tmp + "/s0.jsonl", tmp + "/s1.jsonl",
                                      "--generator", gen, "-o", tmp + "/fused2"] + small)
        XCTAssertEqual(again.code, 0, again.stderr)
        XCTAssertFalse(again.stderr.contains("vae step"), again.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: tmp + "/fused/adapter_model.safetensors")),
                       try Data(contentsOf: URL(fileURLWithPath: tmp + "/fused2/adapter_model.safetensors")))

        // ICM-LoRA from a known task's condition; SG-LoRA from a description (the generator needs
        // the manifest's descriptions, so it is trained again here).
        let lora = try CLITests.run(["generate-adapter", "--method", "icm-lora", "--generator", gen, "--task", "task1",
                                     "-o", tmp + "/gen-icm"] + small)
        XCTAssertEqual(lora.code, 0, lora.stderr)
        XCTAssertTrue(lora.stderr.contains("nearest known task, task1"), lora.stderr)
        // The generated adapter is a real one: the inputs' modules and shapes, a finite and
        // nonzero ΔW in every module, and it changes what the model predicts on the shots.
        let generated = try PEFTAdapter.read(directory: tmp + "/gen-icm")
        let task1 = try PEFTAdapter.read(directory: paths[1])
        XCTAssertEqual(generated.moduleNames, task1.moduleNames)
        for name in task1.moduleNames {
            let g = try XCTUnwrap(generated.modules[name]), t = try XCTUnwrap(task1.modules[name])
            XCTAssertEqual(g.deltaShape, t.deltaShape, name)
            let d = g.delta()
            XCTAssertTrue(d.data.allSatisfy(\.isFinite), name)
            XCTAssertGreaterThan(d.frobeniusNorm, 1e-6, name)
        }
        let shots = try TaskData.read(path: tmp + "/s1.jsonl")
        let ev = Evaluator(model: model, options: EvalOptions(computeAccuracy: false))
        let baseLoss = try ev.evaluate(shots).loss
        let adaptedLoss = try Evaluator(model: try model.with([(generated, 1)], mode: .merged),
                                        options: EvalOptions(computeAccuracy: false)).evaluate(shots).loss
        XCTAssertTrue(adaptedLoss.isFinite)
        XCTAssertGreaterThan(abs(adaptedLoss - baseLoss), 1e-4, "the generated adapter changes the model's loss")
        let sg = try CLITests.run(["generate-adapter", "--method", "sg-lora", paths[0], paths[1], "--shots", tmp + "/s0.jsonl", tmp + "/s1.jsonl",
                                   "--manifest", tmp + "/manifest.json", "--description", "ab cd", "--top-k", "1", "-o", tmp + "/gen-sg"] + small)
        XCTAssertEqual(sg.code, 0, sg.stderr)
        XCTAssertTrue(sg.stderr.contains("sg-lora: task0 α=1.000"), sg.stderr)

        let bad = try CLITests.run(["generate-adapter", "--method", "sg-lora", "--generator", gen, "-o", tmp + "/x"])
        XCTAssertEqual(bad.code, 1)
        XCTAssertTrue(bad.stderr.contains("sg-lora needs --description"), bad.stderr)
    }
    /// `fuse --method icm-fusion` reads adapters through `AdapterIO`, as `fuse --help` promises:
    /// the same two adapters as PEFT directories, or as a GGUF LoRA and an mlx-lm directory
    /// (written by the library's writers), give the same fused adapter.
    func testFuseReadsGGUFAndMLXAdapters() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-icm-fmt-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let modelDir = try LearnedFusionCLITests.chatModel(in: tmp)
        let model = try LlamaModel.load(path: modelDir)
        let hints = try ModelHints.load(path: modelDir)
        for i in 0..<2 {
            let a = TrainFixtures.randomLoRA(model.config, targets: [.q, .k, .v], rank: 2, seed: 50 + UInt64(i), std: 0.3)
            try PEFTAdapter.write(a.adapter(name: "task\(i)"), to: tmp + "/peft/task\(i)", dtype: .f32)
        }
        let peft = [tmp + "/peft/task0", tmp + "/peft/task1"]
        try GGUFLoRA.write(try PEFTAdapter.read(directory: peft[0]), to: tmp + "/gguf/task0.gguf", dtype: .f32, hints: hints)
        try MLXAdapter.write(try PEFTAdapter.read(directory: peft[1]), to: tmp + "/mlx/task1", dtype: .f32)
        XCTAssertEqual(try AdapterIO.detect(path: tmp + "/gguf/task0.gguf"), .gguf)
        XCTAssertEqual(try AdapterIO.detect(path: tmp + "/mlx/task1"), .mlx)
        try "{\"prompt\": \"ab\", \"answer\": \"cd\"}\n{\"prompt\": \"ef\", \"answer\": \"gh\"}\n"
            .write(toFile: tmp + "/s0.jsonl", atomically: true, encoding: .utf8)
        try "{\"prompt\": \"12\", \"answer\": \"34\"}\n{\"prompt\": \"56\", \"answer\": \"78\"}\n"
            .write(toFile: tmp + "/s1.jsonl", atomically: true, encoding: .utf8)
        let rest = ["--shots", tmp + "/s0.jsonl", tmp + "/s1.jsonl", "--chunk-size", "16", "--hidden", "8", "--latent", "4",
                    "--vae-steps", "10", "--meta-steps", "2", "--fusion-steps", "2", "--adapt-steps", "1", "--model", modelDir]
        let a = try CLITests.run(["fuse", "--method", "icm-fusion"] + peft + ["-o", tmp + "/from-peft"] + rest)
        XCTAssertEqual(a.code, 0, a.stderr)
        let b = try CLITests.run(["fuse", "--method", "icm-fusion", tmp + "/gguf/task0.gguf", tmp + "/mlx/task1", "-o", tmp + "/from-gguf-mlx"] + rest)
        XCTAssertEqual(b.code, 0, b.stderr)
        XCTAssertTrue(b.stderr.contains("task0: 1 adapters (final + checkpoints), 1 shots"), "named after the file: \(b.stderr)")
        XCTAssertTrue(b.stderr.contains("task1: 1 adapters"), b.stderr)
        let x = try PEFTAdapter.read(directory: tmp + "/from-peft"), y = try PEFTAdapter.read(directory: tmp + "/from-gguf-mlx")
        XCTAssertEqual(x.moduleNames, y.moduleNames)
        for n in x.moduleNames {
            let dx = x.modules[n]!.delta(), dy = y.modules[n]!.delta()
            XCTAssertLessThanOrEqual(zip(dx.data, dy.data).map { abs($0 - $1) }.max()!, 1e-5 * max(1, dx.data.map(abs).max()!), n)
        }
    }
}
