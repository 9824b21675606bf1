import Foundation
import XCTest
@testable import LoRAFuse

/// The committed suite adapters (`adapters/`, made by `make adapters`): one per task, small, bf16,
/// described by the manifest, and each one clearly better than the base model on its own task.
final class SuiteAdapterTests: XCTestCase {
    static let adapters = TaskSuiteTests.repoRoot.appendingPathComponent("adapters").path
    static let tasks = TaskSuiteTests.repoRoot.appendingPathComponent("tasks").path

    private func manifest() throws -> AdapterManifest {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: Self.adapters + "/manifest.json"),
                                 "adapters/manifest.json missing: run `make adapters`")
        return try JSONDecoder().decode(AdapterManifest.self, from: data)
    }

    private func taskNames() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: Self.tasks).filter { $0.hasSuffix(".train.jsonl") }
            .map { String($0.prefix(while: { $0 != "." })) }.sorted()
    }

    func testManifestCoversEveryTaskWithASmallBF16Adapter() throws {
        let m = try manifest()
        XCTAssertEqual(m.split, "test")
        XCTAssertEqual(Set(m.adapters.keys), Set(try taskNames()))
        for (task, e) in m.adapters {
            let rec = try XCTUnwrap(e.training, "\(task): no training record")
            XCTAssertLessThanOrEqual(rec.rank, 8, task)
            XCTAssertEqual(rec.dtype, "bf16", task)
            XCTAssertEqual(rec.data, "tasks/\(task).train.jsonl", task)
            XCTAssertLessThan(e.weightsBytes, 8 << 20, "\(task): adapters should be a few MB")
            XCTAssertTrue(e.result.clearlyBetter, "\(task): the manifest records its adapter is not clearly better than the base")
            let ad = try PEFTAdapter.read(directory: Self.adapters + "/" + task)
            XCTAssertEqual(ad.sourceDType, .bf16, task)
            XCTAssertEqual(ad.metadata.rank, rec.rank, task)
        }
    }

    /// Re-measures a slice of the held-out tests (loss only, first 4 examples per task): every
    /// adapter must lower the base model's loss on its own task by at least a quarter there (the
    /// halving the manifest records is over all 50 examples; 4 are too few to hold that bar
    /// everywhere). And for the weakest adapter, the long-tailed task, the whole test split must
    /// give the manifest's own numbers: they were measured, not written down.
    func testEveryAdapterBeatsTheBaseAndTheManifestIsMeasured() throws {
        let path = ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: path) else {
            return XCTFail("SmolLM2 model missing at \(path): run scripts/setup.sh (or `make test`) to fetch it")
        }
        // The manifest's losses were measured on the Float32 path (`tasks experts --compute f32`).
        let model = try LlamaModel.load(path: path, compute: .f32)
        let names = try taskNames()
        var tasks = try names.map { try TaskData.read(path: "\(Self.tasks)/\($0).test.jsonl") }
        for i in tasks.indices { tasks[i].examples = Array(tasks[i].examples.prefix(4)) }
        let adapters = try names.map { try PEFTAdapter.read(directory: Self.adapters + "/" + $0) }
        let loss = EvalOptions(computeAccuracy: false)
        let table = try ExpertTable.measure(model: model, tasks: tasks, adapters: adapters, split: "test", options: loss)
        for row in table.rows {
            XCTAssertLessThanOrEqual(row.expert.loss, 0.75 * row.base.loss,
                                     "\(row.task): expert loss \(row.expert.loss) vs base \(row.base.loss)")
        }

        let weakest = "reverse_upper"
        let recorded = try XCTUnwrap(try manifest().adapters[weakest]).result
        let full = try TaskData.read(path: "\(Self.tasks)/\(weakest).test.jsonl")
        let ad = try XCTUnwrap(names.firstIndex(of: weakest).map { adapters[$0] })
        let again = try ExpertTable.measure(model: model, tasks: [full], adapters: [ad], split: "test", options: loss)
        XCTAssertEqual(again.rows[0].base.loss, recorded.base.loss, accuracy: 1e-3 * recorded.base.loss)
        XCTAssertEqual(again.rows[0].expert.loss, recorded.expert.loss, accuracy: 1e-3 * recorded.expert.loss)
    }
}
