import Foundation
import XCTest
@testable import LoRAFuse

/// `lorafuse train` end to end on the real SmolLM2 model (2 tiny steps): outputs, checkpoints, and
/// that the loss before training equals `lorafuse eval`'s (B = 0 at init, so the adapter is a no-op).
final class TrainCLITests: XCTestCase {
    private func run(_ args: [String]) throws -> CLITests.Run { try CLITests.run(args) }

    /// A temporary folder holding a two-example task file, or nil (a failure recorded) when the
    /// SmolLM2 model these tests train is missing.
    private func workspace() throws -> (dir: String, data: String)? {
        let modelPath = ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: modelPath) else {
            XCTFail("SmolLM2 model missing at \(modelPath): run scripts/setup.sh (or `make test`) to fetch it")
            return nil
        }
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-train-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        let data = tmp + "/d.jsonl"
        try """
        {"prompt": "What is 2 + 3? Reply with the number only.", "answer": "5"}
        {"prompt": "What is 10 + 4? Reply with the number only.", "answer": "14"}
        """.write(toFile: data, atomically: true, encoding: .utf8)
        return (tmp, data)
    }

    /// `eval --compute f32` of the trained folder gives the trainer's last validation loss (the
    /// validation data is `data` itself in these tests).
    private func assertEvalMatchesTrainer(_ out: String, _ data: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let csv = try String(contentsOfFile: out + "/loss.csv", encoding: .utf8).split(separator: "\n")
        let val = try XCTUnwrap(StepLog.parse(csvLine: String(csv.last!))?.valLoss, file: file, line: line)
        let e = try run(["eval", "--adapter", out, "--data", data, "--no-accuracy", "--json", "--quiet", "--compute", "f32"])
        XCTAssertEqual(e.code, 0, e.stderr, file: file, line: line)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as? [String: Any], e.stdout, file: file, line: line)
        XCTAssertEqual(try XCTUnwrap(json["mean_loss"] as? Double, e.stdout, file: file, line: line), val, accuracy: 1e-3, file: file, line: line)
    }

    func testTrainWritesAdapterCurveAndCheckpoints() throws {
        guard let (tmp, data) = try workspace() else { return }
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let out = tmp + "/out"
        let r = try run(["train", "--data", data, "--val", data, "-o", out, "--rank", "2", "--targets", "q,v",
                             "--steps", "2", "--batch", "1", "--lr", "1e-3", "--save-every", "1", "--keep", "1",
                             "--eval-every", "1", "--dtype", "bf16", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("trained 2 steps"), r.stdout)
        let ad = try PEFTAdapter.read(directory: out)
        XCTAssertEqual(ad.modules.count, 2 * 30)
        XCTAssertEqual(ad.sourceDType, .bf16)
        XCTAssertEqual(Set(ad.metadata.targetModules), ["q_proj", "v_proj"])
        XCTAssertEqual(LoRATrainer.checkpointSteps(in: out), [2])
        let csv = try String(contentsOfFile: out + "/loss.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.count, 3)
        XCTAssertTrue(csv[0].hasPrefix("step,lr,train_loss,val_loss"))
        // Step 1 trains with B = 0: its train loss is the base model's loss on the same examples
        // (batch 1: one example), which eval computes through the inference engine.
        let s1 = try XCTUnwrap(StepLog.parse(csvLine: String(csv[1])))
        let model = try SmolLM2ParityTests.model()     // shared with the parity tests
        let task = try TaskData.read(path: data)
        let ev = Evaluator(model: model, options: EvalOptions(computeAccuracy: false))
        let losses = try task.examples.map { ex -> Double in let s = try ev.score(ex); return s.nll / Double(s.tokens) }
        XCTAssertTrue(losses.contains { abs($0 - s1.trainLoss) < 1e-3 }, "step-1 loss \(s1.trainLoss) vs eval \(losses)")
        XCTAssertNotNil(s1.valLoss)
        let svg = try String(contentsOfFile: out + "/loss.svg", encoding: .utf8)
        XCTAssertTrue(svg.contains("<polyline") && svg.contains("val loss"))
    }

    /// `train --variant nola` on the real model: the folder holds only the coefficients and the
    /// config; eval reads it as an adapter with the trainer's final validation loss (with f32
    /// weights, as the trainer computes: the quantized product moves it by up to a few 1e-2 after
    /// steps at this lr); convert writes
    /// it as PEFT; careless flags are refused before the model loads.
    func testTrainNOLAThenEvalAndConvert() throws {
        guard let (tmp, data) = try workspace() else { return }
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let out = tmp + "/nola"
        let r = try run(["train", "--variant", "nola", "--nola-basis", "16", "--data", data, "--val", data, "-o", out,
                         "--rank", "2", "--targets", "q,v", "--steps", "3", "--batch", "2", "--lr", "1e-2", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(30 * 2 * 32) trained values (nola)"), r.stderr)
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: out))
        XCTAssertTrue(files.isSuperset(of: [NOLAVariant.configFile, NOLAVariant.weightsFile, "training.json", "loss.csv"]), "\(files)")
        XCTAssertFalse(files.contains(PEFTAdapter.configFile))
        let record = try String(contentsOfFile: out + "/training.json", encoding: .utf8)
        XCTAssertTrue(record.contains("\"variant\" : \"nola\"") && record.contains("\"nolaBasis\" : 16"), record)
        let csv = try String(contentsOfFile: out + "/loss.csv", encoding: .utf8).split(separator: "\n")
        let val = try XCTUnwrap(StepLog.parse(csvLine: String(csv.last!))?.valLoss)
        let e = try run(["eval", "--adapter", out, "--data", data, "--no-accuracy", "--json", "--quiet", "--compute", "f32"])
        XCTAssertEqual(e.code, 0, e.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as? [String: Any], e.stdout)
        let evalLoss = try XCTUnwrap(json["mean_loss"] as? Double, e.stdout)
        XCTAssertEqual(evalLoss, val, accuracy: 1e-3, "eval of the NOLA folder vs the trainer's last validation loss")
        let i = try run(["inspect", out])
        XCTAssertEqual(i.code, 0, i.stderr)
        XCTAssertTrue(i.stdout.contains("NOLA, \(30 * 2 * 32) coefficients stored in F32 (k_A 16, k_B 16, seed 0)"), i.stdout)
        let peft = tmp + "/peft"
        let c = try run(["convert", out, "--format", "peft", "-o", peft])
        XCTAssertEqual(c.code, 0, c.stderr)
        XCTAssertEqual(try PEFTAdapter.read(directory: peft).modules.count, 60)
        // Refused before any work, with the flag named.
        for (args, needle) in [(["--variant", "dora"], "--variant must be one of lora, nola"),
                               (["--nola-basis", "8"], "--nola-basis is for --variant nola"),
                               (["--variant", "nola", "--init-from", peft], "--init-from sets A and B"),
                               (["--variant", "nola", "--nola-basis", "0"], "--nola-basis must be in 1…65536")] {
            let b = try run(["train", "--data", data, "-o", tmp + "/x"] + args)
            XCTAssertNotEqual(b.code, 0)
            XCTAssertTrue(b.stderr.contains(needle), "\(args): \(b.stderr)")
        }
        let f = try run(["convert", out, "--format", "nola", "-o", tmp + "/y"])
        XCTAssertNotEqual(f.code, 0)
        XCTAssertTrue(f.stderr.contains("peft") && f.stderr.contains("gguf"), f.stderr)
    }

    /// `train --variant flylora` on SmolLM2: a PEFT folder as the authors' fork writes it; eval
    /// agrees with the trainer; inspect says what it is; two runs from one seed average under
    /// `merge --method linear`; what needs a dense ΔW refuses it by name; careless flags refused.
    func testTrainFlyLoRAThenEvalMergeAndRefusals() throws {
        guard let (tmp, data) = try workspace() else { return }
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        func train(_ out: String, _ extra: [String] = []) throws -> CLITests.Run {
            try run(["train", "--variant", "flylora", "--data", data, "--val", data, "-o", out, "--rank", "4", "--top-k", "2",
                     "--targets", "q,v", "--steps", "2", "--batch", "2", "--lr", "1e-2", "--quiet"] + extra)
        }
        let out = tmp + "/fly"
        let r = try train(out)
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(30 * 4 * (576 + 192)) trained values (flylora)"), r.stderr)
        let cfg = try String(contentsOfFile: out + "/adapter_config.json", encoding: .utf8)
        XCTAssertTrue(cfg.contains("\"top_k\": 2") && cfg.contains("\"bias_u\": 0.001"), cfg)
        try assertEvalMatchesTrainer(out, data)
        let i = try run(["inspect", out])
        XCTAssertTrue(i.stdout.contains("FlyLoRA: each token keeps the 2 ranks"), i.stdout)

        let other = tmp + "/fly2"
        XCTAssertEqual(try train(other, ["--lr", "2e-2"]).code, 0)
        let avg = tmp + "/avg"
        let m = try run(["merge", out + ":0.5", other + ":0.5", "--method", "linear", "-o", avg])
        XCTAssertEqual(m.code, 0, m.stderr)
        XCTAssertEqual(try PEFTAdapter.read(directory: avg).modules.values.first?.rankGate?.topK, 2)
        for (args, needle) in [(["merge", out, other, "--method", "ties", "-o", tmp + "/t"], "fusion by 'ties'"),
                               (["convert", out, "--format", "gguf", "-o", tmp + "/f.gguf"], "a GGUF LoRA"),
                               (["merge-into-base", "--adapter", out, "-o", tmp + "/m.gguf"], "merging into the base weights")] {
            let b = try run(args)
            XCTAssertNotEqual(b.code, 0, "\(args)")
            XCTAssertTrue(b.stderr.contains(needle) && b.stderr.contains("FlyLoRA adapter"), "\(args): \(b.stderr)")
        }
        for (args, needle) in [(["--variant", "flylora", "--rank", "4", "--top-k", "4"], "--top-k must be in 1…3"),
                               (["--variant", "flylora", "--top-k", "32"], "--top-k must be in 1…31"),
                               (["--top-k", "2"], "--top-k is for --variant flylora, smora and mixlora"),
                               (["--bias-rate", "0.1"], "--bias-rate is for --variant flylora and smora"),
                               (["--variant", "flylora", "--bias-rate", "-1"], "--bias-rate must be finite and ≥ 0")] {
            let b = try run(["train", "--data", data, "-o", tmp + "/x"] + args)
            XCTAssertNotEqual(b.code, 0)
            XCTAssertTrue(b.stderr.contains(needle), "\(args): \(b.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp + "/x"))
    }

    /// `train --variant smora` on SmolLM2: eval agrees with the trainer, inspect names it, and
    /// fusion and conversion refuse it.
    func testTrainSMoRAThenEvalAndRefusals() throws {
        guard let (tmp, data) = try workspace() else { return }
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let out = tmp + "/smora"
        let r = try run(["train", "--variant", "smora", "--data", data, "--val", data, "-o", out, "--rank", "4", "--top-k", "2",
                         "--targets", "q,v", "--steps", "2", "--batch", "2", "--lr", "1e-2", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        // A, B and the router: 30 layers × 4 × ((576 + 576 + 576) + (576 + 192 + 576)).
        XCTAssertTrue(r.stderr.contains("\(30 * 4 * (1728 + 1344)) trained values (smora)"), r.stderr)
        try assertEvalMatchesTrainer(out, data)
        XCTAssertTrue(try run(["inspect", out]).stdout.contains("SMoRA: each token keeps the 2 ranks"))
        for (args, needle) in [(["merge", out, out, "--method", "linear", "-o", tmp + "/m"], "a router is trained per adapter"),
                               (["convert", out, "--format", "mlx", "-o", tmp + "/mlx"], "an mlx-lm adapter")] {
            let b = try run(args)
            XCTAssertNotEqual(b.code, 0, "\(args)")
            XCTAssertTrue(b.stderr.contains(needle), "\(args): \(b.stderr)")
        }
    }

    /// `train --variant loramoe` on SmolLM2 with world-knowledge examples beside the task ones:
    /// the authors' layout out, eval agreeing with the trainer, inspect naming it, conversion and
    /// the other variants' flags refused.
    func testTrainLoRAMoEThenEvalAndRefusals() throws {
        guard let (tmp, data) = try workspace() else { return }
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let knowledge = tmp + "/k.jsonl"
        try #"{"prompt": "What is the capital of France? Reply with the city name only.", "answer": "Paris"}"#
            .write(toFile: knowledge, atomically: true, encoding: .utf8)
        let out = tmp + "/moe"
        let r = try run(["train", "--variant", "loramoe", "--data", data, "--knowledge-data", knowledge, "--val", data, "-o", out,
                         "--experts", "4", "--rank", "2", "--targets", "q,v", "--steps", "2", "--batch", "3", "--lr", "1e-2", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("3 examples"), r.stderr)
        // 30 layers × (4 experts × 2 ranks × ((576 + 576) + (576 + 192)) + 4 × (576 + 576) router values).
        XCTAssertTrue(r.stderr.contains("\(30 * (8 * (1152 + 768) + 4 * 1152)) trained values (loramoe)"), r.stderr)
        let config = try String(contentsOfFile: out + "/adapter_config.json", encoding: .utf8)
        XCTAssertTrue(config.contains("\"lora_nums\": 4") && config.contains("\"blc_alpha\": 0.1,"), config)
        try assertEvalMatchesTrainer(out, data)
        XCTAssertTrue(try run(["inspect", out]).stdout.contains("LoRAMoE: 4 experts of rank 2"))
        let c = try run(["convert", out, "--format", "gguf", "-o", tmp + "/x.gguf"])
        XCTAssertTrue(c.code != 0 && c.stderr.contains("LoRAMoE adapter"), c.stderr)
        for (args, needle) in [(["--experts", "1"], "--experts must be ≥ 2"),
                               (["--blc-alpha", "1"], "--blc-alpha must be in [0, 1)"),
                               (["--top-k", "2"], "--top-k is for --variant flylora, smora and mixlora")] {
            let b = try run(["train", "--variant", "loramoe", "--data", data, "-o", tmp + "/y"] + args)
            XCTAssertNotEqual(b.code, 0, "\(args)")
            XCTAssertTrue(b.stderr.contains(needle), "\(args): \(b.stderr)")
        }
        let b = try run(["train", "--data", data, "-o", tmp + "/y", "--experts", "4"])
        XCTAssertTrue(b.code != 0 && b.stderr.contains("--experts is for --variant loramoe and mixlora"), b.stderr)
        let same = try run(["train", "--variant", "loramoe", "--data", data, "--knowledge-data", data, "-o", tmp + "/y"])
        XCTAssertTrue(same.code != 0 && same.stderr.contains("is the --data file"), same.stderr)
    }

    /// `train --variant mixlora` on SmolLM2: the authors' layout, eval at the trainer's loss,
    /// inspect's line, convert refused by name, and the options it refuses.
    func testTrainMixLoRAThenEvalAndRefusals() throws {
        guard let (tmp, data) = try workspace() else { return }
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let out = tmp + "/mix"
        let r = try run(["train", "--variant", "mixlora", "--data", data, "--val", data, "-o", out,
                         "--experts", "3", "--top-k", "2", "--rank", "2", "--targets", "q,gate", "--steps", "2", "--batch", "3", "--lr", "1e-2", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        // 30 layers × (q: 2 × (576 + 576) + gate: 3 experts × 2 ranks × (576 + 1536) + router 3 × 576).
        let perLayer: Int = 2 * 1152 + 6 * 2112 + 3 * 576
        XCTAssertTrue(r.stderr.contains("\(30 * perLayer) trained values (mixlora)"), r.stderr)
        let config = try String(contentsOfFile: out + "/adapter_config.json", encoding: .utf8)
        XCTAssertTrue(config.contains("\"peft_type\": \"MIXLORA\"") && config.contains("\"num_experts\": 3"), config)
        try assertEvalMatchesTrainer(out, data)
        XCTAssertTrue(try run(["inspect", out]).stdout.contains("MixLoRA: each layer's FFN is 3 experts"))
        let c = try run(["convert", out, "--format", "gguf", "-o", tmp + "/x.gguf"])
        XCTAssertTrue(c.code != 0 && c.stderr.contains("MixLoRA adapter"), c.stderr)
        for (args, needle) in [(["--experts", "1"], "--experts must be ≥ 2"),
                               (["--top-k", "9"], "--top-k must be in 1…8"),
                               (["--aux-loss", "-1"], "--aux-loss must be finite and ≥ 0"),
                               (["--targets", "q,v", "--steps", "1"], "include at least one of gate, up, down")] {
            let b = try run(["train", "--variant", "mixlora", "--data", data, "-o", tmp + "/y"] + args)
            XCTAssertNotEqual(b.code, 0, "\(args)")
            XCTAssertTrue(b.stderr.contains(needle), "\(args): \(b.stderr)")
        }
        let b = try run(["train", "--data", data, "-o", tmp + "/y", "--z-loss", "0.1"])
        XCTAssertTrue(b.code != 0 && b.stderr.contains("are for --variant mixlora"), b.stderr)
    }

    /// `continual` on SmolLM2: two tasks in turn, a plain PEFT adapter of rank 2 × --rank, the
    /// matrix in continual.json and .md; a missing held-out file and an existing output refused.
    func testContinualWritesAdapterAndMatrix() throws {
        guard let (tmp, data) = try workspace() else { return }
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let a = tmp + "/add.train.jsonl", b = tmp + "/caps.train.jsonl"
        try FileManager.default.copyItem(atPath: data, toPath: a)
        try FileManager.default.copyItem(atPath: data, toPath: tmp + "/add.test.jsonl")
        try #"{"prompt": "Uppercase: cat", "answer": "CAT"}"#.write(toFile: b, atomically: true, encoding: .utf8)
        let out = tmp + "/cont"
        let twice = try run(["continual", a, a, "-o", out])
        XCTAssertTrue(twice.code != 0 && twice.stderr.contains("given twice"), twice.stderr)
        let missing = try run(["continual", a, b, "-o", out])
        XCTAssertTrue(missing.code != 0 && missing.stderr.contains("caps.test.jsonl"), missing.stderr)
        try FileManager.default.copyItem(atPath: b, toPath: tmp + "/caps.test.jsonl")
        let r = try run(["continual", a, b, "-o", out, "--rank", "1", "--targets", "q,v", "--steps", "2", "--batch", "2", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("| after \\ loss on | add | caps | mean |"), r.stdout)
        let ad = try PEFTAdapter.read(directory: out)
        XCTAssertEqual(ad.modules.count, 60)
        XCTAssertEqual(ad.modules.values.first?.rank, 2)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/continual.json"))) as? [String: Any])
        XCTAssertEqual((json["loss"] as? [[Double]])?.count, 2)
        XCTAssertEqual(json["method"] as? String, "ranks")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/continual.md"))
        let again = try run(["continual", a, b, "-o", out, "--steps", "1"])
        XCTAssertTrue(again.code != 0 && again.stderr.contains("--force"), again.stderr)
    }

    /// `--variant lora-pro` on SmolLM2: a plain PEFT adapter out, the memory of the full-size
    /// moments announced, eval agreeing with the trainer, and the flag it does not take refused.
    func testTrainLoRAProWritesPEFT() throws {
        guard let (tmp, data) = try workspace() else { return }
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let out = tmp + "/pro"
        let r = try run(["train", "--variant", "lora-pro", "--data", data, "--val", data, "-o", out,
                         "--rank", "2", "--targets", "q,v", "--steps", "2", "--batch", "2", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("(lora-pro)"), r.stderr)
        // 30 layers × (576·576 + 192·576) values × 2 moments × 4 bytes.
        XCTAssertTrue(r.stderr.contains("full-size AdamW moments take 106 MB"), r.stderr)
        XCTAssertEqual(try PEFTAdapter.read(directory: out).modules.count, 60)
        let record = try String(contentsOfFile: out + "/training.json", encoding: .utf8)
        XCTAssertTrue(record.contains("\"variant\" : \"lora-pro\""), record)
        try assertEvalMatchesTrainer(out, data)
        let b = try run(["train", "--data", data, "-o", tmp + "/x", "--variant", "lora-pro", "--weight-decay", "0.1"])
        XCTAssertNotEqual(b.code, 0)
        XCTAssertTrue(b.stderr.contains("--weight-decay is not used by --variant lora-pro"), b.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp + "/x"))
    }
}
