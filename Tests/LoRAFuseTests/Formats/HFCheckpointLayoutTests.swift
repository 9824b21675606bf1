import XCTest
@testable import LoRAFuse

/// One rule finds an HF checkpoint's weights (model.safetensors, else the index, else an error
/// naming the folder), and both readers of such folders, `HFCheckpoint` and `LlamaModel.load`, use it.
final class HFCheckpointLayoutTests: TempDirTestCase {
    let fm = FileManager.default

    func folder(_ name: String) throws -> String {
        let d = tmp.appendingPathComponent(name).path
        try fm.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    func writeSingle(_ dir: String, _ tensors: [SafetensorsTensor]) throws {
        try SafetensorsWriter.write(tensors: tensors, dtype: .f32, to: URL(fileURLWithPath: dir + "/model.safetensors"))
    }

    /// Writes `tensors` as two or more shards plus model.safetensors.index.json.
    func writeSharded(_ dir: String, _ tensors: [SafetensorsTensor]) throws {
        let files = try ShardedSafetensorsWriter.write(tensors: tensors, dtype: .f32, maxShardBytes: 4, to: URL(fileURLWithPath: dir))
        XCTAssertGreaterThan(files.count, 1)
    }

    func assertNotACheckpoint(_ body: @autoclosure () throws -> Any, folder: String, mentioning: [String] = [],
                              file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { e in
            guard case let .notACheckpoint(path, _)? = e as? CheckpointError else { return XCTFail("\(e)", file: file, line: line) }
            XCTAssertEqual(path, folder, file: file, line: line)
            let text = "\(e)"
            for m in [folder, "model.safetensors", "model.safetensors.index.json"] + mentioning {
                XCTAssertTrue(text.contains(m), "'\(m)' missing from: \(text)", file: file, line: line)
            }
        }
    }

    func testSingleFile() throws {
        let d = try folder("single")
        try writeSingle(d, [SafetensorsTensor(name: "w", shape: [1], values: [1])])
        try Data("{}".utf8).write(to: URL(fileURLWithPath: d + "/config.json"))
        try Data("{}".utf8).write(to: URL(fileURLWithPath: d + "/tokenizer.json"))
        let l = try HFCheckpointLayout.discover(directory: d)
        XCTAssertEqual(l.weights, .single(path: d + "/model.safetensors"))
        XCTAssertEqual(l.config, d + "/config.json")
        XCTAssertEqual(l.tokenizer, d + "/tokenizer.json")
        XCTAssertNil(l.tokenizerConfig)
        XCTAssertEqual(l.companions, ["config.json", "tokenizer.json"])
        XCTAssertEqual(try HFCheckpoint(path: d).floats("w"), [1])
    }

    func testIndexOnly() throws {
        let d = try folder("sharded")
        try writeSharded(d, [SafetensorsTensor(name: "a", shape: [1], values: [1]), SafetensorsTensor(name: "b", shape: [1], values: [2])])
        let l = try HFCheckpointLayout.discover(directory: d)
        XCTAssertEqual(l.weights, .sharded(indexPath: d + "/model.safetensors.index.json"))
        XCTAssertNil(l.config)
        XCTAssertEqual(l.companions, [])
        let ck = try HFCheckpoint(path: d)
        XCTAssertEqual(ck.names, ["a", "b"])
        XCTAssertEqual(try ck.floats("b"), [2])
        // A folder named model.safetensors is not the single file: the index is used.
        try fm.createDirectory(atPath: d + "/model.safetensors", withIntermediateDirectories: false)
        XCTAssertEqual(try HFCheckpointLayout.discover(directory: d).weights, .sharded(indexPath: d + "/model.safetensors.index.json"))
    }

    /// Both present: the single file wins, as in transformers; the index and its shards are not read.
    func testBothPresentTheSingleFileWins() throws {
        let d = try folder("both")
        try writeSharded(d, [SafetensorsTensor(name: "a", shape: [1], values: [2]), SafetensorsTensor(name: "b", shape: [1], values: [3])])
        try writeSingle(d, [SafetensorsTensor(name: "a", shape: [1], values: [1])])
        XCTAssertEqual(try HFCheckpointLayout.discover(directory: d).weights, .single(path: d + "/model.safetensors"))
        let ck = try HFCheckpoint(path: d)
        XCTAssertEqual(ck.names, ["a"])
        XCTAssertEqual(try ck.floats("a"), [1])

        // The model loader follows the same rule: a broken index beside a good model.safetensors
        // is never opened.
        let src = ModelFixtures.path("tiny-llama")
        let m = try folder("model-both")
        for f in ["config.json", "tokenizer.json", "model.safetensors"] { try fm.copyItem(atPath: src + "/" + f, toPath: m + "/" + f) }
        try Data(#"{"weight_map": {"x": "model-00001-of-00002.safetensors"}}"#.utf8)
            .write(to: URL(fileURLWithPath: m + "/model.safetensors.index.json"))
        XCTAssertNoThrow(try LlamaModel.load(path: m))
        // Without the single file the same index is read, and its missing shard is reported.
        try fm.removeItem(atPath: m + "/model.safetensors")
        XCTAssertThrowsError(try LlamaModel.load(path: m)) { e in
            guard case .shardMissing(_, "model-00001-of-00002.safetensors")? = e as? SafetensorsError else { return XCTFail("\(e)") }
        }
    }

    func testNeitherIsAnErrorNamingTheFolder() throws {
        let d = try folder("neither")
        try Data("{}".utf8).write(to: URL(fileURLWithPath: d + "/config.json"))
        assertNotACheckpoint(try HFCheckpointLayout.discover(directory: d), folder: d)
        // Other safetensors files are listed but not taken as the model by guess.
        try writeSingle(d, [])
        try fm.moveItem(atPath: d + "/model.safetensors", toPath: d + "/weights.safetensors")
        assertNotACheckpoint(try HFCheckpointLayout.discover(directory: d), folder: d, mentioning: ["weights.safetensors"])
        assertNotACheckpoint(try HFCheckpoint(path: d), folder: d, mentioning: ["weights.safetensors"])
        assertNotACheckpoint(try LlamaModel.load(path: d), folder: d)
        // The file itself can still be given where a file is accepted.
        XCTAssertEqual(try HFCheckpoint(path: d + "/weights.safetensors").names, [])

        XCTAssertThrowsError(try HFCheckpointLayout.discover(directory: d + "/nope")) { e in
            XCTAssertEqual(e as? CheckpointError, .notACheckpoint(path: d + "/nope", reason: "does not exist"))
        }
        XCTAssertThrowsError(try HFCheckpointLayout.discover(directory: d + "/config.json")) { e in
            XCTAssertEqual(e as? CheckpointError, .notACheckpoint(path: d + "/config.json", reason: "not a folder"))
        }
    }
}
