import Foundation
import XCTest
@testable import LoRAFuse

/// `ExpertInputs.find`: which tasks `lorafuse tasks experts` scores and with which adapter.
final class ExpertInputsTests: XCTestCase {
    func testPairsTasksWithTheirAdapterFolders() throws {
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/tasks", withIntermediateDirectories: true)
        for n in ["b_task", "a_task", "no_adapter"] {
            for split in ["test", "val"] {
                try (0..<3).map { "{\"prompt\": \"\(n) \(split) \($0)\", \"answer\": \"x\"}\n" }.joined()
                    .write(toFile: dir + "/tasks/\(n).\(split).jsonl", atomically: true, encoding: .utf8)
            }
        }
        try "{\"prompt\": \"p\", \"answer\": \"a\"}\n".write(toFile: dir + "/tasks/c_task.train.jsonl", atomically: true, encoding: .utf8)
        let model = TrainFixtures.model()
        let lora = TrainFixtures.randomLoRA(model.config, targets: [.q], rank: 2).adapter()
        for n in ["a_task", "b_task", "c_task"] { try PEFTAdapter.write(lora, to: dir + "/adapters/\(n)", dtype: .f32) }
        try fm.createDirectory(atPath: dir + "/adapters/no_adapter", withIntermediateDirectories: true)   // no adapter_config.json

        let found = try ExpertInputs.find(tasks: dir + "/tasks", adapters: dir + "/adapters", split: "test", limit: 2)
        XCTAssertEqual(found.tasks.map(\.name), ["a_task", "b_task"], "sorted; a task needs both a split file and an adapter")
        XCTAssertEqual(found.adapterPaths, [dir + "/adapters/a_task", dir + "/adapters/b_task"])
        XCTAssertEqual(found.tasks.map { $0.examples.map(\.prompt) }, [["a_task test 0", "a_task test 1"], ["b_task test 0", "b_task test 1"]])
        XCTAssertEqual(try ExpertInputs.find(tasks: dir + "/tasks", adapters: dir + "/adapters", split: "val").tasks.map { $0.examples.count }, [3, 3])

        XCTAssertThrowsError(try ExpertInputs.find(tasks: dir + "/tasks", adapters: dir + "/nowhere", split: "test")) { e in
            XCTAssertEqual(e as? ExpertInputsError, .nothingPaired(tasks: dir + "/tasks", adapters: dir + "/nowhere", split: "test"))
        }
        XCTAssertThrowsError(try ExpertInputs.find(tasks: dir + "/tasks", adapters: dir + "/adapters", split: "test", limit: 0))
        XCTAssertThrowsError(try ExpertInputs.find(tasks: dir + "/missing", adapters: dir + "/adapters", split: "test")) { e in
            XCTAssertTrue("\(e)".contains("missing"), "\(e)")
        }
    }

    /// `tasks experts` goes through the output guard before it measures anything: an output
    /// inside an adapter or equal to a task file is refused, an existing manifest needs --force.
    func testExpertsOutputsGoThroughTheOutputGuard() throws {
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/tasks", withIntermediateDirectories: true)
        try "{\"prompt\": \"p\", \"answer\": \"a\"}\n".write(toFile: dir + "/tasks/t.test.jsonl", atomically: true, encoding: .utf8)
        let model = TrainFixtures.model()
        try PEFTAdapter.write(TrainFixtures.randomLoRA(model.config, targets: [.q], rank: 2).adapter(), to: dir + "/adapters/t", dtype: .f32)
        let base = ["tasks", "experts", "--tasks", dir + "/tasks", "--adapters", dir + "/adapters", "--model", dir + "/no-model.gguf"]
        let inside = try CLITests.run(base + ["-o", dir + "/adapters/t/table.md"])
        XCTAssertNotEqual(inside.code, 0)
        XCTAssertTrue(inside.stderr.contains("adapters/t"), inside.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/adapters/t/table.md"))
        let onInput = try CLITests.run(base + ["-o", dir + "/tasks/t.test.jsonl"])
        XCTAssertNotEqual(onInput.code, 0)
        XCTAssertEqual(try String(contentsOfFile: dir + "/tasks/t.test.jsonl", encoding: .utf8), "{\"prompt\": \"p\", \"answer\": \"a\"}\n")
        try "{}".write(toFile: dir + "/adapters/manifest.json", atomically: true, encoding: .utf8)
        let existing = try CLITests.run(base + ["--manifest", dir + "/adapters/manifest.json"])
        XCTAssertNotEqual(existing.code, 0)
        XCTAssertTrue(existing.stderr.contains("--force"), existing.stderr)
        XCTAssertEqual(try String(contentsOfFile: dir + "/adapters/manifest.json", encoding: .utf8), "{}")
    }
}
