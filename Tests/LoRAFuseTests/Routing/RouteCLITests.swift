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

    /// These tests run the real SmolLM2; say how to get it when it is missing.
    private func requireModel() throws {
        let model = ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: model) else {
            struct MissingModel: Error, CustomStringConvertible { var description: String }
            throw MissingModel(description: "SmolLM2 model missing at \(model): run scripts/setup.sh (or `make test`)")
        }
    }

    func testRouteThenEvalAndInspectTheRoutedFolder() throws {
        try requireModel()
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

        // X-LoRA: a classifier instead of gates, dense over both adapters by default.
        let xl = try CLITests.run(["route", "--method", "xlora"] + ads + ["--shots"] + shots
                                  + ["--shots-per-task", "2", "--steps", "2", "-o", dir + "/xlora", "--quiet"])
        XCTAssertEqual(xl.code, 0, xl.stderr)
        XCTAssertTrue(xl.stdout.contains("xlora: 2 adapters, per-layer scalings on 210 routed projections, top-2"), xl.stdout)
        let xev = try CLITests.run(["inspect", dir + "/xlora"])
        XCTAssertEqual(xev.code, 0, xev.stderr)
        XCTAssertTrue(xev.stdout.contains("routed model, xlora (per-layer scalings from a classifier"), xev.stdout)

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
        XCTAssertTrue(ins.stdout.contains("routed model, arrow (arrow gates, top-2"), ins.stdout)

        // GenKnowSub: a third adapter's ΔW subtracted from both, recorded and redone on load.
        let general = Self.repo.appendingPathComponent("adapters/sentiment").path
        let g = try CLITests.run(["route", "--method", "arrow"] + ads + ["--general", general, "-o", dir + "/gks", "--quiet"])
        XCTAssertEqual(g.code, 0, g.stderr)
        XCTAssertTrue(g.stdout.contains("GenKnowSub (exact): the mean of 1 general adapter subtracted from each"), g.stdout)
        let gi = try CLITests.run(["inspect", dir + "/gks"])
        XCTAssertEqual(gi.code, 0, gi.stderr)
        XCTAssertTrue(gi.stdout.contains("GenKnowSub (exact): the mean of sentiment subtracted"), gi.stdout)
        let ge = try CLITests.run(["eval", "--adapter", dir + "/gks", "--data", data, "--no-accuracy", "--json", "--quiet"])
        XCTAssertEqual(ge.code, 0, ge.stderr)
        let self_ = try CLITests.run(["route", "--method", "arrow"] + ads + ["--general", ads[1] + "/", "-o", dir + "/g2"])
        XCTAssertNotEqual(self_.code, 0)
        XCTAssertTrue(self_.stderr.contains("both as an adapter"), self_.stderr)
        let comp = try CLITests.run(["route", "--method", "arrow"] + ads + ["--general", general, "--gks-composition", "sum", "-o", dir + "/g3"])
        XCTAssertNotEqual(comp.code, 0)
        XCTAssertTrue(comp.stderr.contains("unknown --gks-composition 'sum'"), comp.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/g2") || FileManager.default.fileExists(atPath: dir + "/g3"))

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
        let dup = try CLITests.run(["eval", "--adapter", ads[0], "--adapter", ads[0] + "/:0.5", "--data", data, "--no-accuracy"])
        XCTAssertNotEqual(dup.code, 0)
        XCTAssertTrue(dup.stderr.contains("is given twice"), dup.stderr)
        let both = try CLITests.run(["eval", "--adapter", out, "--adapter", ads[0], "--data", data, "--no-accuracy"])
        XCTAssertNotEqual(both.code, 0)
        XCTAssertTrue(both.stderr.contains("cannot be combined with other --adapter"), both.stderr)
    }

    /// The per-request router and MeteoRA's LM-loss training through the CLI on SmolLM2: the
    /// sequence router sends each task's prompts to its adapter, eval and generate --prompt run the
    /// chosen adapter, the chat loop is refused with the reason; meteora trains its gates through
    /// the routed forward.
    func testSequenceRouterAndMeteoraLMTraining() throws {
        try requireModel()
        let dir = try tmpDir()
        let names = ["add_2digit", "uppercase"]
        let ads = names.map { Self.repo.appendingPathComponent("adapters/\($0)").path }
        let shots = names.map { Self.repo.appendingPathComponent("tasks/\($0).train.jsonl").path }
        let out = dir + "/seq"
        let r = try CLITests.run(["route", "--method", "sequence"] + ads + ["--shots"] + shots + ["--shots-per-task", "4", "-o", out, "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("sequence: 2 adapters, one choice per request, top-1"), r.stdout)
        XCTAssertTrue(r.stdout.contains("add_2digit: own adapter top-1 on 100% of its shots' prompts"), r.stdout)
        XCTAssertTrue(r.stdout.contains("uppercase: own adapter top-1 on 100% of its shots' prompts"), r.stdout)
        // eval of one task through the router equals eval with that task's adapter.
        let data = dir + "/add.jsonl"
        try "{\"prompt\": \"What is 12 + 30? Reply with the number only.\", \"answer\": \"42\"}\n".write(toFile: data, atomically: true, encoding: .utf8)
        let viaRouter = try CLITests.run(["eval", "--adapter", out, "--data", data, "--json", "--quiet"])
        let direct = try CLITests.run(["eval", "--adapter", ads[0], "--data", data, "--json", "--quiet"])
        XCTAssertEqual(viaRouter.code, 0, viaRouter.stderr)
        XCTAssertEqual(viaRouter.stdout, direct.stdout)
        let gen = try CLITests.run(["generate", "--adapter", out, "--prompt", "What is 12 + 30? Reply with the number only.", "--max-tokens", "4"])
        let genDirect = try CLITests.run(["generate", "--adapter", ads[0], "--prompt", "What is 12 + 30? Reply with the number only.", "--max-tokens", "4"])
        XCTAssertEqual(gen.code, 0, gen.stderr)
        XCTAssertEqual(gen.stdout, genDirect.stdout)
        let chat = try CLITests.run(["generate", "--adapter", out, "--chat"], stdin: "hello\n")
        XCTAssertNotEqual(chat.code, 0)
        XCTAssertTrue(chat.stderr.contains("routes per request from the prompt"), chat.stderr)
        let ins = try CLITests.run(["inspect", out])
        XCTAssertTrue(ins.stdout.contains("routed model, sequence (one choice per request"), ins.stdout)

        let m = try CLITests.run(["route", "--method", "meteora"] + ads + ["--shots"] + shots
                                 + ["--shots-per-task", "2", "--steps", "2", "-o", dir + "/met", "--quiet"])
        XCTAssertEqual(m.code, 0, m.stderr)
        let cfg = try String(contentsOfFile: dir + "/met/router_config.json", encoding: .utf8)
        XCTAssertTrue(cfg.contains("\"lm_weight\" : \"1.0\""), cfg)
        let zero = try CLITests.run(["route", "--method", "meteora"] + ads + ["--shots"] + shots
                                    + ["--lm-weight", "0", "--gate-weight", "0", "-o", dir + "/z"])
        XCTAssertNotEqual(zero.code, 0)
        XCTAssertTrue(zero.stderr.contains("nothing to learn"), zero.stderr)
    }
}
