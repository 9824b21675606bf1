import Foundation
import XCTest
@testable import LoRAFuse

/// Nothing a user owns is overwritten: every writer goes through `OutputGuard`. The CLI cases are
/// the ones measured to destroy data before the guard existed; each must now exit 2 with the
/// input untouched, and `--force` must replace an output whole, never merge into it.
final class OutputGuardTests: XCTestCase {
    var tmp: String!
    let fixtures = CLITests.fixtures

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-guard-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        // Inputs are copies: a guard that failed would damage only these.
        for n in ["a", "b"] {
            try FileManager.default.copyItem(atPath: fixtures.appendingPathComponent("peft_fusion/inputs/\(n)").path, toPath: "\(tmp!)/\(n)")
        }
        try FileManager.default.copyItem(atPath: fixtures.appendingPathComponent("model/tiny-llama.gguf").path, toPath: tmp + "/m.gguf")
        try FileManager.default.copyItem(atPath: fixtures.appendingPathComponent("model/tiny-llama-lora").path, toPath: tmp + "/tl")
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: tmp) }

    private func run(_ args: [String]) throws -> CLITests.Run { try CLITests.run(args) }

    /// Every file under `dir` with its bytes, to show that a refused command changed nothing.
    private func snapshot(_ path: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return [:] }
        if !isDir.boolValue { return [path: try Data(contentsOf: URL(fileURLWithPath: path))] }
        for f in FileManager.default.enumerator(atPath: path)?.compactMap({ $0 as? String }) ?? [] {
            let p = path + "/" + f
            var d: ObjCBool = false
            if FileManager.default.fileExists(atPath: p, isDirectory: &d), !d.boolValue { out[f] = try Data(contentsOf: URL(fileURLWithPath: p)) }
        }
        return out
    }

    private func assertRefused(_ args: [String], protecting paths: [String], mentions: String,
                               file: StaticString = #filePath, line: UInt = #line) throws {
        let before = try paths.map(snapshot)
        let r = try run(args + (args.first == "convert" ? [] : ["--quiet"]))   // convert prints no progress
        XCTAssertEqual(r.code, 2, "\(args): \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains(mentions), "\(args): \(r.stderr)", file: file, line: line)
        XCTAssertEqual(try paths.map(snapshot), before, "\(args) changed a protected path", file: file, line: line)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: tmp).filter { $0.hasPrefix(".") }
        XCTAssertEqual(leftovers, [], "temporaries left by \(args)", file: file, line: line)
    }

    // MARK: The library guard

    func testCheckResolvesPathsAndRelations() throws {
        let a = tmp + "/a"
        XCTAssertThrowsError(try OutputGuard.check(tmp + "/./x/../a/", kind: .directory, inputs: [a], force: true)) {
            XCTAssertEqual($0 as? OutputGuardError, .isInput(output: self.tmp + "/./x/../a/", input: a))
        }
        try FileManager.default.createSymbolicLink(atPath: tmp + "/link", withDestinationPath: a)
        XCTAssertThrowsError(try OutputGuard.check(tmp + "/link", kind: .directory, inputs: [a], force: true)) {
            guard case .isInput? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try OutputGuard.check(tmp + "/link/sub/x.gguf", kind: .file, inputs: [a], force: true)) {
            guard case .insideInput? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try OutputGuard.check(tmp, kind: .directory, inputs: [a + "/adapter_config.json"], force: true)) {
            guard case .containsInput? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        for bad in ["", "  "] {
            XCTAssertThrowsError(try OutputGuard.check(bad, kind: .file, inputs: [], force: true)) {
                guard case .emptyPath? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
            }
        }
        // A file where a folder is wanted (and back) is refused even with force.
        XCTAssertThrowsError(try OutputGuard.check(tmp + "/m.gguf", kind: .directory, inputs: [], force: true)) {
            guard case .wrongKind? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try OutputGuard.check(a, kind: .file, inputs: [], force: true)) {
            guard case .wrongKind? = $0 as? OutputGuardError else { return XCTFail("\($0)") }
        }
        let fresh = try OutputGuard.check(tmp + "/new/deeper", kind: .directory, inputs: [a], force: false)
        XCTAssertFalse(fresh.replacesExisting)
        try FileManager.default.createDirectory(atPath: tmp + "/empty", withIntermediateDirectories: false)
        XCTAssertNoThrow(try OutputGuard.check(tmp + "/empty", kind: .directory, inputs: [], force: false))
    }

    func testInterruptedWritesLeaveTheOldOutputOrNothing() throws {
        struct Boom: Error {}
        let dir = tmp + "/out"
        let t = try OutputGuard.check(dir, kind: .directory, inputs: [], force: false)
        // Killed half-way (here: a throw after the first shard): no final folder, no temporary.
        XCTAssertThrowsError(try OutputGuard.writeDirectory(t) { tmp in
            try Data("shard 1".utf8).write(to: tmp.appendingPathComponent("model-00001-of-00002.safetensors"))
            throw Boom()
        })
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir))
        try OutputGuard.writeDirectory(t) { try Data("v1".utf8).write(to: $0.appendingPathComponent("f")) }
        let t2 = try OutputGuard.check(dir, kind: .directory, inputs: [], force: true)
        XCTAssertTrue(t2.replacesExisting)
        XCTAssertThrowsError(try OutputGuard.writeDirectory(t2) { _ in throw Boom() })
        XCTAssertEqual(try String(contentsOfFile: dir + "/f", encoding: .utf8), "v1", "a failed replacement keeps the old folder")
        try OutputGuard.writeDirectory(t2) { try Data("v2".utf8).write(to: $0.appendingPathComponent("g")) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["g"], "replaced whole, not merged")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp).filter { $0.hasPrefix(".") }, [])
    }

    // MARK: The commands

    func testMergeNeverWritesOverAnotherAdapterOrRun() throws {
        let run1 = tmp + "/run1"
        try FileManager.default.copyItem(atPath: tmp + "/b", toPath: run1)
        try "{\"steps\": 3}".write(toFile: run1 + "/training.json", atomically: true, encoding: .utf8)
        try assertRefused(["merge", tmp + "/a", tmp + "/b", "--method", "linear", "-o", run1], protecting: [run1], mentions: "--force")
        // With --force: replaced whole, so nothing of the old run describes the new adapter.
        let r = try run(["merge", tmp + "/a", tmp + "/b", "--method", "linear", "-o", run1, "--force", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: run1).sorted(), ["adapter_config.json", "adapter_model.safetensors"])
    }

    func testGGUFOutputsNeverReplaceInputsOrOtherFiles() throws {
        try assertRefused(["merge", tmp + "/a", tmp + "/b", "--method", "linear", "--format", "gguf",
                           "-o", tmp + "/a/adapter_model.safetensors"], protecting: [tmp + "/a"], mentions: "inside the input")
        try "my notes".write(toFile: tmp + "/notes.txt", atomically: true, encoding: .utf8)
        try assertRefused(["merge", tmp + "/a", tmp + "/b", "--method", "linear", "--format", "gguf", "-o", tmp + "/notes.txt"],
                          protecting: [tmp + "/notes.txt"], mentions: "already exists")
        let g = tmp + "/tl.gguf"
        XCTAssertEqual(try run(["convert", tmp + "/tl", "--format", "gguf", "--base", tmp + "/m.gguf", "-o", g]).code, 0)
        try assertRefused(["convert", tmp + "/tl", "--format", "gguf", "--base", tmp + "/m.gguf", "-o", g], protecting: [g], mentions: "already exists")
        XCTAssertEqual(try run(["convert", tmp + "/tl", "--format", "gguf", "--base", tmp + "/m.gguf", "-o", g, "--force"]).code, 0)
        // The base given for shape checks is an input too.
        try assertRefused(["convert", tmp + "/tl", "--format", "gguf", "--base", tmp + "/m.gguf", "-o", tmp + "/m.gguf", "--force"],
                          protecting: [tmp + "/m.gguf"], mentions: "is an input")
    }

    func testMergeIntoBaseNeverReplacesTheBase() throws {
        try assertRefused(["merge-into-base", "--model", tmp + "/m.gguf", "--adapter", tmp + "/tl", "-o", tmp + "/m.gguf", "--force"],
                          protecting: [tmp + "/m.gguf"], mentions: "is an input")
        try assertRefused(["merge-into-base", "--model", tmp + "/m.gguf", "--adapter", tmp + "/tl", "--format", "hf", "-o", tmp + "/tl/hf"],
                          protecting: [tmp + "/tl"], mentions: "inside the input")
        let out = tmp + "/hf"
        XCTAssertEqual(try run(["merge-into-base", "--model", tmp + "/m.gguf", "--adapter", tmp + "/tl", "--format", "hf", "-o", out, "--quiet"]).code, 0)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/config.json"))
        try assertRefused(["merge-into-base", "--model", tmp + "/m.gguf", "--adapter", tmp + "/tl", "--format", "hf", "-o", out],
                          protecting: [out], mentions: "already exists")
    }

    func testEmptyOutputPathIsRefused() throws {
        try assertRefused(["merge", tmp + "/a", tmp + "/b", "--method", "linear", "-o", ""], protecting: [tmp], mentions: "output path is empty")
        let yaml = tmp + "/plan.yaml"
        try "method: linear\nadapters:\n  - path: a\n  - path: b\noutput: ''\n".write(toFile: yaml, atomically: true, encoding: .utf8)
        try assertRefused(["merge", "--config", yaml], protecting: [tmp], mentions: "output")
        try assertRefused(["merge-into-base", "--model", tmp + "/m.gguf", "--adapter", tmp + "/tl", "-o", ""], protecting: [tmp], mentions: "empty")
    }

    func testTrainFuseAndGenerateNeverOverwriteInputs() throws {
        let data = tmp + "/d.jsonl"
        try #"{"prompt": "2 + 3?", "answer": "5"}"#.write(toFile: data, atomically: true, encoding: .utf8)
        let m = tmp + "/m.gguf"
        // An existing adapter as the output of a new run, and the warm start's own folder.
        try assertRefused(["train", "--model", m, "--data", data, "-o", tmp + "/a", "--steps", "1"], protecting: [tmp + "/a"], mentions: "already exists")
        try assertRefused(["train", "--model", m, "--data", data, "--init-from", tmp + "/a", "-o", tmp + "/a", "--steps", "1", "--force"],
                          protecting: [tmp + "/a"], mentions: "is an input")
        try assertRefused(["train", "--model", m, "--data", data, "-o", data, "--steps", "1", "--force"], protecting: [data], mentions: "is an input")
        try assertRefused(["fuse", "--method", "atlas", tmp + "/a", tmp + "/b", "--shots", data, data, "--model", m, "-o", tmp + "/b", "--force"],
                          protecting: [tmp + "/b"], mentions: "is an input")
        try assertRefused(["generate-adapter", "--method", "icm-lora", tmp + "/a", tmp + "/b", "--shots", data, data, "--task-shots", data,
                           "--model", m, "-o", tmp + "/a", "--force"], protecting: [tmp + "/a"], mentions: "is an input")
    }

    func testResumeSkipsIncompleteCheckpoints() throws {
        let run = tmp + "/run"
        // A complete checkpoint and one a killed run left with only a temporary file.
        for (step, complete) in [(2, true), (4, false)] {
            let ck = "\(run)/checkpoint-\(step)"
            try FileManager.default.createDirectory(atPath: ck, withIntermediateDirectories: true)
            if complete {
                for f in [LoRATrainer.stateFile, PEFTAdapter.configFile, PEFTAdapter.weightsFile] {
                    try Data().write(to: URL(fileURLWithPath: ck + "/" + f))
                }
            } else {
                try Data().write(to: URL(fileURLWithPath: ck + "/.adapter_model.safetensors.tmp-1-2"))
            }
        }
        XCTAssertEqual(LoRATrainer.checkpointSteps(in: run), [2])
        XCTAssertEqual(try LoRATrainer.checkpoint(resuming: run), run + "/checkpoint-2")
        XCTAssertThrowsError(try LoRATrainer.checkpoint(resuming: run + "/checkpoint-4"))
        // Resuming a run continues in its own folder; resuming elsewhere into a busy folder is refused.
        let out = try TrainingOutput.prepare(output: run, inputs: [], resume: run, force: false)
        XCTAssertFalse(out.staged)
        XCTAssertThrowsError(try TrainingOutput.prepare(output: tmp + "/a", inputs: [], resume: run, force: false))
        let staged = try TrainingOutput.prepare(output: tmp + "/a", inputs: [], resume: nil, force: true)
        XCTAssertTrue(staged.staged, "a forced run on a busy folder works beside it and replaces it at the end")
        XCTAssertTrue(FileManager.default.fileExists(atPath: tmp + "/a/adapter_config.json"), "the old folder stays until the run ends")
        try staged.writeFile("x.txt", "new")
        try staged.finish()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp + "/a"), ["x.txt"])

        // A run that fails removes the output folder it created while that is still empty (a
        // failure before the first checkpoint leaves nothing behind); a folder that existed stays,
        // and one holding checkpoints stays to resume from.
        let fresh = try TrainingOutput.prepare(output: tmp + "/new", inputs: [], resume: nil, force: false)
        XCTAssertTrue(fresh.created)
        fresh.abandon()
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp + "/new"))
        try FileManager.default.createDirectory(atPath: tmp + "/empty", withIntermediateDirectories: true)
        let existing = try TrainingOutput.prepare(output: tmp + "/empty", inputs: [], resume: nil, force: false)
        XCTAssertFalse(existing.created)
        existing.abandon()
        XCTAssertTrue(FileManager.default.fileExists(atPath: tmp + "/empty"))
        let busy = try TrainingOutput.prepare(output: tmp + "/busy", inputs: [], resume: nil, force: false)
        try busy.writeFile("checkpoint-note.txt", "x")
        busy.abandon()
        XCTAssertTrue(FileManager.default.fileExists(atPath: tmp + "/busy/checkpoint-note.txt"))
    }
}
