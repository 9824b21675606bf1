import Foundation
import XCTest
@testable import LoRAFuse

/// `lorafuse route` on the real SmolLM2 and two of the suite's adapters, then the routed folder
/// through eval and inspect; careless uses get errors that name the problem.
final class RouteCLITests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    private func tmpDir() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("lf-route-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func testRouteThenEvalAndInspectTheRoutedFolder() throws {
        let model = ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: model) else {
            struct MissingModel: Error, CustomStringConvertible { var description: String }
            throw MissingModel(description: "SmolLM2 model missing at \(model): run scripts/setup.sh (or `make test`)")
        }
        let dir = try tmpDir()
        let ads = ["add_2digit", "uppercase"].map { Self.repo.appendingPathComponent("adapters/\($0)").path }
        let shots = ["add_2digit", "uppercase"].map { Self.repo.appendingPathComponent("tasks/\($0).train.jsonl").path }
        let out = dir + "/routed"
        let r = try CLITests.run(["route", "--method", "hidden"] + ads + ["--shots"] + shots
                                 + ["--shots-per-task", "2", "-o", out, "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("hidden: 2 adapters, 210 routed projections, top-2"), r.stdout)
        XCTAssertTrue(r.stdout.contains("add_2digit: own adapter top-1 on"), r.stdout)
        XCTAssertTrue(RoutedModel.isRoutedDirectory(out))

        // The same output again is refused; --force replaces it.
        let again = try CLITests.run(["route", "--method", "arrow"] + ads + ["-o", out, "--quiet"])
        XCTAssertNotEqual(again.code, 0)
        XCTAssertTrue(again.stderr.contains("already exists"), again.stderr)
        XCTAssertEqual(try CLITests.run(["route", "--method", "arrow"] + ads + ["-o", out, "--quiet", "--force"]).code, 0)

        let data = dir + "/t.jsonl"
        try "{\"prompt\": \"What is 12 + 30? Reply with the number only.\", \"answer\": \"42\"}\n".write(toFile: data, atomically: true, encoding: .utf8)
        let ev = try CLITests.run(["eval", "--adapter", out, "--data", data, "--no-accuracy", "--json", "--quiet"])
        XCTAssertEqual(ev.code, 0, ev.stderr)
        XCTAssertTrue(ev.stdout.contains("\"mean_loss\""), ev.stdout)
        let ins = try CLITests.run(["inspect", out])
        XCTAssertEqual(ins.code, 0, ins.stderr)
        XCTAssertTrue(ins.stdout.contains("routed model, arrow (arrow gates), top-2"), ins.stdout)

        // Careless uses.
        let k = try CLITests.run(["route", "--method", "arrow"] + ads + ["--top-k", "3", "-o", dir + "/k"])
        XCTAssertNotEqual(k.code, 0)
        XCTAssertTrue(k.stderr.contains("--top-k 3 is more than the 2 adapters"), k.stderr)
        let n = try CLITests.run(["route", "--method", "meteora"] + ads + ["--shots", shots[0], "-o", dir + "/n"])
        XCTAssertNotEqual(n.code, 0)
        XCTAssertTrue(n.stderr.contains("2 adapters but 1 shots files"), n.stderr)
        let twice = try CLITests.run(["route", "--method", "arrow", ads[0], ads[0] + "/", "-o", dir + "/t"])
        XCTAssertNotEqual(twice.code, 0)
        XCTAssertTrue(twice.stderr.contains("is given twice"), twice.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/t"))
        let merged = try CLITests.run(["merge", out, ads[0], "--method", "linear", "-o", dir + "/m"])
        XCTAssertNotEqual(merged.code, 0)
        XCTAssertTrue(merged.stderr.contains("is a routed model"), merged.stderr)
        let both = try CLITests.run(["eval", "--adapter", out, "--adapter", ads[0], "--data", data, "--no-accuracy"])
        XCTAssertNotEqual(both.code, 0)
        XCTAssertTrue(both.stderr.contains("cannot be combined with other --adapter"), both.stderr)
    }
}
