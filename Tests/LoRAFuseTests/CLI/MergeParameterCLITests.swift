import Foundation
import XCTest
@testable import LoRAFuse

/// `lorafuse merge` refuses a parameter the method would ignore, from a flag or a YAML plan,
/// with exit code 2 (bad input) and the list of what the method takes.
final class MergeParameterCLITests: XCTestCase {
    var tmp: String!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-mparam-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: tmp)
    }

    func testFlagTheMethodDoesNotTakeIsAnError() throws {
        let out = tmp + "/x"
        let r = try CLITests.run(["merge", CLITests.inputs + "/a", CLITests.inputs + "/b", "--method", "ties",
                                  "--gamma", "0.1", "-o", out, "--quiet"])
        XCTAssertEqual(r.code, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("method ties does not take parameter gamma (it takes: rank, density, lambda, sign_election, divisor, convention)"),
                      r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "nothing is written on a rejected plan")
        // LEGO's reweighting has its own flag now; the old spelling is told where it went.
        let lego = try CLITests.run(["merge", CLITests.inputs + "/a", CLITests.inputs + "/b", "--method", "lego",
                                     "--rescale", "unit", "-o", out, "--quiet"])
        XCTAssertEqual(lego.code, 2, lego.stderr)
        XCTAssertTrue(lego.stderr.contains("now called reweight"), lego.stderr)
        let ok = try CLITests.run(["merge", CLITests.inputs + "/a", CLITests.inputs + "/b", "--method", "lego",
                                   "--reweight", "unit", "--rank", "2", "-o", out, "--quiet", "--json"])
        XCTAssertEqual(ok.code, 0, ok.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(ok.stdout.utf8)) as? [String: Any])
        XCTAssertEqual((json["parameters"] as? [String: Any])?["reweight"] as? String, "unit")
    }

    func testYAMLParameterTheMethodDoesNotTakeIsAnError() throws {
        let yaml = """
        method: dare_linear
        adapters:
          - path: \(CLITests.inputs)/a
          - path: \(CLITests.inputs)/b
        parameters:
          density: 0.5
          sign_election: count
        output: fused
        """
        try yaml.write(toFile: tmp + "/plan.yaml", atomically: true, encoding: .utf8)
        let r = try CLITests.run(["merge", "--config", tmp + "/plan.yaml", "--quiet"])
        XCTAssertEqual(r.code, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("method dare_linear does not take parameter sign_election (it takes: rank, density, lambda, rescale)"),
                      r.stderr)
    }
}
