import Foundation
import XCTest
@testable import LoRAFuse

/// `ICMPipeline`'s inputs and options, where the CLI's and the report's ICM defaults live:
/// adapters of every format, task names, the shots each stage sees, the option defaults.
final class ICMPipelineTests: XCTestCase {
    func testTaskInputsReadEveryAdapterFormat() throws {
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = TrainFixtures.model()
        let hints = ModelHints(architecture: "llama", heads: AttentionHeads(heads: model.config.numAttentionHeads,
                                                                            kvHeads: model.config.numKeyValueHeads))
        let a = TrainFixtures.randomLoRA(model.config, targets: [.q, .k, .v], rank: 2, seed: 1).adapter(name: "peft-name")
        try PEFTAdapter.write(a, to: dir + "/peft/add", dtype: .f32)
        try GGUFLoRA.write(a, to: dir + "/gguf/sub.gguf", dtype: .f32, hints: hints)
        try MLXAdapter.write(a, to: dir + "/mlx/rev", dtype: .f32)
        for (i, n) in ["s0", "s1", "s2"].enumerated() {
            try "{\"prompt\": \"p\(i)\", \"answer\": \"a\"}\n".write(toFile: dir + "/\(n).jsonl", atomically: true, encoding: .utf8)
        }
        let inputs = try ICMPipeline.taskInputs(adapters: [dir + "/peft/add", dir + "/gguf/sub.gguf", dir + "/mlx/rev"],
                                                shots: [dir + "/s0.jsonl", dir + "/s1.jsonl", dir + "/s2.jsonl"],
                                                descriptions: ["sub": "subtract", "other": "unused"], hints: hints)
        XCTAssertEqual(inputs.map(\.name), ["add", "sub", "rev"], "named after the path in every format")
        XCTAssertEqual(inputs.map(\.description), [nil, "subtract", nil])
        XCTAssertEqual(inputs.map { $0.shots.examples.first?.prompt }, ["p0", "p1", "p2"])
        for t in inputs {
            let read = try XCTUnwrap(t.adapter, t.name)
            XCTAssertEqual(read.moduleNames, a.moduleNames, t.name)
            for n in a.moduleNames {
                let d0 = a.modules[n]!.delta(), d1 = read.modules[n]!.delta()
                for k in d0.data.indices { XCTAssertEqual(d1.data[k], d0.data[k], accuracy: 1e-5, "\(t.name) \(n)") }
            }
        }
        // The same folder name twice is told apart, as for every other method.
        try PEFTAdapter.write(a, to: dir + "/other/add", dtype: .f32)
        let twice = try ICMPipeline.taskInputs(adapters: [dir + "/peft/add", dir + "/other/add"],
                                               shots: [dir + "/s0.jsonl", dir + "/s1.jsonl"])
        XCTAssertEqual(twice.map(\.name), ["peft/add", "other/add"])
        XCTAssertThrowsError(try ICMPipeline.taskInputs(adapters: [dir + "/peft/add"], shots: []))
    }

    func testTaskNameAndInputRule() throws {
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        FileManager.default.createFile(atPath: dir + "/math.gguf", contents: Data())
        XCTAssertEqual(ICMPipeline.taskName(adapterPath: dir + "/math.gguf"), "math")
        XCTAssertEqual(ICMPipeline.taskName(adapterPath: dir + "/"), (dir as NSString).lastPathComponent)
        XCTAssertEqual(ICMPipeline.taskName(adapterPath: "adapters/code/"), "code")
        XCTAssertNil(ICMPipeline.fusionInputProblem(adapters: 2, shots: 2))
        XCTAssertNotNil(ICMPipeline.fusionInputProblem(adapters: 1, shots: 1))
        XCTAssertTrue(ICMPipeline.fusionInputProblem(adapters: 3, shots: 2)!.contains("3 adapters, 2 shots files"))
        XCTAssertEqual(LearnedFusionMethod.fuseMethodNames.last, "icm-fusion")
        XCTAssertEqual(ICMGenerationMethod.allCases.map(\.rawValue), ["icm-lora", "sg-lora", "icm-fusion"])
    }

    func testOptionDefaultsAndSeed() {
        var o = ICMPipelineOptions()
        XCTAssertEqual(o.maxCheckpoints, 20, "the 20 tail checkpoints scripts/train_tails.sh writes per task")
        XCTAssertEqual(o.selectionFraction, 0.25)
        XCTAssertNil(o.shotsPerTask)
        XCTAssertNil(o.generator.metaSteps, "the generator's default: two rounds over the tasks")
        XCTAssertEqual(o.generator, ICMGeneratorOptions())
        XCTAssertEqual(o.fusion, ICMFusionOptions())
        XCTAssertNil(o.problem())
        o.seed = 9
        XCTAssertEqual(o.generator.seed, 9)
        XCTAssertEqual(o.fusion.seed, 9)
        o.selectionFraction = 1
        XCTAssertNotNil(o.problem())
        o.selectionFraction = 0; o.shotsPerTask = 0
        XCTAssertNotNil(o.problem())
    }

    /// The generator and the fusion learn from the first `shotsPerTask` shots minus the held-out
    /// selection part; the held-out part only picks the adaptation step.
    func testLearningTasksCutThenHoldOut() {
        func task(_ n: String, _ k: Int) -> ICMPipeline.TaskInput {
            ICMPipeline.TaskInput(name: n, adapterPath: n, shots: EvalTask(name: n, examples: (0..<k).map { EvalExample(prompt: "\(n)\($0)", answer: "a") }))
        }
        var o = ICMPipelineOptions()
        o.shotsPerTask = 8
        let (learn, select) = ICMPipeline.learningTasks([task("a", 16), task("b", 3)], options: o)
        XCTAssertEqual(learn.map { $0.shots.examples.count }, [6, 2])
        XCTAssertEqual(select.map { $0.examples.map(\.prompt) }, [["a6", "a7"], ["b2"]])
        o.shotsPerTask = nil; o.selectionFraction = 0
        XCTAssertEqual(ICMPipeline.learningTasks([task("a", 16)], options: o).learn[0].shots.examples.count, 16)
    }

    func testFuseRefusesOneTask() throws {
        let t = ICMPipeline.TaskInput(name: "a", adapterPath: "a", shots: EvalTask(name: "a", examples: [EvalExample(prompt: "p", answer: "a")]))
        XCTAssertThrowsError(try ICMPipeline.fuse(model: TrainFixtures.model(), tasks: [t])) { e in
            XCTAssertTrue("\(e)".contains("at least 2 tasks"), "\(e)")
        }
    }
}
