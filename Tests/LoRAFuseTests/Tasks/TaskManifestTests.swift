import Foundation
import XCTest
@testable import LoRAFuse

/// `TaskManifest.descriptions`: what `generate-adapter --manifest` reads (SG-LoRA's descriptions).
final class TaskManifestTests: XCTestCase {
    func testDescriptionsOfTheGeneratedSuite() throws {
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try TaskSuite.write(to: dir + "/suite", config: TaskSuiteConfig(train: 2, val: 1, test: 1, longTailTrain: 1))
        let suite = try TaskSuite.readManifest(directory: dir + "/suite")
        let byFile = try TaskManifest.descriptions(path: dir + "/suite/manifest.json")
        XCTAssertEqual(byFile, Dictionary(uniqueKeysWithValues: suite.map { ($0.name, $0.description) }))
        XCTAssertEqual(try TaskManifest.descriptions(path: dir + "/suite"), byFile, "a folder means its manifest.json")
    }

    func testLenientShapeAndClearErrors() throws {
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func write(_ text: String) throws -> String {
            let p = dir + "/m-\(UUID().uuidString).json"
            try text.write(toFile: p, atomically: true, encoding: .utf8)
            return p
        }
        // Only name and description matter; a task without a description is left out.
        let ok = try write(#"{"tasks": [{"name": "a", "description": "add"}, {"name": "b"}, {"name": "c", "description": "cut", "extra": 1}]}"#)
        XCTAssertEqual(try TaskManifest.descriptions(path: ok), ["a": "add", "c": "cut"])
        for (text, needle) in [("not json", "invalid JSON"), (#"{"task": []}"#, "field tasks"),
                               (#"{"tasks": [{"description": "x"}]}"#, "tasks[0].name"),
                               (#"{"tasks": [{"name": "a"}, {"name": "a", "description": "y"}]}"#, "listed twice")] {
            let p = try write(text)
            XCTAssertThrowsError(try TaskManifest.descriptions(path: p), text) { e in
                XCTAssertTrue("\(e)".contains(p) && "\(e)".contains(needle), "\(e)")
            }
        }
        XCTAssertThrowsError(try TaskManifest.descriptions(path: dir + "/missing.json")) { e in
            XCTAssertTrue("\(e)".contains("missing.json"), "\(e)")
        }
    }
}
