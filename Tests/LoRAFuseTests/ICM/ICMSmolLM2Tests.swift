import Foundation
import XCTest
@testable import LoRAFuse

/// ICM-Fusion on the real model and two committed suite adapters (all seven projections of 30
/// layers, rank 8): the pipeline runs on real shapes, the fused adapter has the inputs' layout and
/// helps both tasks over the base model, and the saved generator re-makes it exactly.
final class ICMSmolLM2Tests: XCTestCase {
    func testFuseTwoSuiteAdaptersOnSmolLM2() throws {
        let path = ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: path) else {
            return XCTFail("SmolLM2 model missing at \(path): run scripts/setup.sh (or `make test`) to fetch it")
        }
        let model = try LlamaModel.load(path: path)
        let names = ["add_2digit", "sub_2digit"]
        let tasks = names.map { n in ICMPipeline.TaskInput(
            name: n, adapterPath: SuiteAdapterTests.adapters + "/" + n,
            shots: EvalTask(name: n, examples: Array((try! TaskData.read(path: "\(SuiteAdapterTests.tasks)/\(n).train.jsonl")).examples.prefix(4))))
        }
        var g = ICMGeneratorOptions()
        g.steps = 30; g.metaSteps = 2; g.innerSteps = 1; g.metaTokens = 128
        var f = ICMFusionOptions()
        f.steps = 2; f.adaptSteps = 2; f.tokens = 256
        let r = try ICMPipeline.fuse(model: model, tasks: tasks, options: ICMPipelineOptions(generator: g, fusion: f))
        let input = try PEFTAdapter.read(directory: tasks[0].adapterPath)
        XCTAssertEqual(r.adapter.moduleNames, input.moduleNames)
        XCTAssertEqual(r.adapter.moduleNames.count, 30 * 7)
        XCTAssertEqual(r.adapter.modules.values.first?.rank, 8)
        XCTAssertTrue(r.adapter.modules.values.allSatisfy { $0.A.data.allSatisfy(\.isFinite) && $0.B.data.allSatisfy(\.isFinite) })

        let ev = Evaluator(model: model, options: EvalOptions(computeAccuracy: false))
        let tests = try names.map { n in
            EvalTask(name: n, examples: Array(try TaskData.read(path: "\(SuiteAdapterTests.tasks)/\(n).test.jsonl").examples.prefix(4)))
        }
        let base = try tests.map { try ev.evaluate($0).loss }
        let fusedEval = Evaluator(model: try model.with([(r.adapter, 1)]), options: EvalOptions(computeAccuracy: false))
        let fused = try tests.map { try fusedEval.evaluate($0).loss }
        for i in names.indices { XCTAssertLessThan(fused[i], base[i], "\(names[i]): fused \(fused[i]) vs base \(base[i])") }

        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try r.generator.save(to: dir + "/gen.safetensors")
        let again = try ICMPipeline.fuse(model: model, tasks: tasks, options: ICMPipelineOptions(generator: g, fusion: f),
                                         generator: .saved(path: dir + "/gen.safetensors"))
        for n in input.moduleNames {
            XCTAssertEqual(again.adapter.modules[n]!.A.data, r.adapter.modules[n]!.A.data, n)
            XCTAssertEqual(again.adapter.modules[n]!.B.data, r.adapter.modules[n]!.B.data, n)
        }
    }
}
