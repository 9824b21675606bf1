import Foundation
import XCTest
@testable import LoRAFuse

/// Runs the real `lorafuse` binary: exit codes, JSON summaries, YAML plans, written adapters.
final class CLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static var inputs: String { fixtures.appendingPathComponent("peft_fusion/inputs").path }

    /// The binary sits next to the test bundle in the build products directory.
    /// On Linux the test bundle's URL is the products directory itself; on macOS it is the
    /// .xctest bundle inside it.
    static var binary: URL {
        let b = Bundle(for: CLITests.self).bundleURL
        for dir in [b, b.deletingLastPathComponent()] {
            let candidate = dir.appendingPathComponent("lorafuse")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return b.appendingPathComponent("lorafuse")
    }

    struct Run { var code: Int32; var stdout: String; var stderr: String }

    func run(_ args: [String]) throws -> Run { try Self.run(args) }

    /// Runs the binary with `args` (and `stdin` as its standard input) and collects its exit code
    /// and output (shared with other CLI tests).
    static func run(_ args: [String], stdin: String? = nil) throws -> Run {
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let input = Pipe()
        if stdin != nil { p.standardInput = input }
        try p.run()
        if let stdin {
            input.fileHandleForWriting.write(Data(stdin.utf8))
            try input.fileHandleForWriting.close()
        }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Run(code: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    var tmp: String!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: tmp)
    }

    func testMergeWritesAdapterAndJSONSummary() throws {
        let out = tmp + "/svd"
        let r = try run(["merge", Self.inputs + "/a:1", Self.inputs + "/b:-0.5", Self.inputs + "/c:0.7",
                         "--method", "svd", "--rank", "3", "-o", out, "--json", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(json["method"] as? String, "svd")
        XCTAssertEqual((json["modules"] as? [Any])?.count, 6)
        XCTAssertNotNil(json["meanRetainedEnergy"] as? Double)
        let fused = try PEFTAdapter.read(directory: out)
        XCTAssertEqual(Set(fused.modules.values.map(\.rank)), [3])
        // Same fusion through the library gives the same update.
        let ins = try ["a", "b", "c"].map { try PEFTAdapter.read(directory: Self.inputs + "/" + $0) }
        let (lib, _) = try Fuser.fuse(ins, weights: [1, -0.5, 0.7], method: SVDFusion(rank: 3))
        for (n, m) in lib.modules {
            XCTAssertLessThan(m.delta().maxAbsDifference(fused.modules[n]!.delta()), 1e-5)
        }
        XCTAssertTrue(r.stderr.contains("warning") == false, r.stderr)
    }

    func testYAMLPlanWithFlagOverride() throws {
        let yaml = """
        method: ties
        adapters:
          - path: \(Self.inputs)/a
            weight: 1
          - path: \(Self.inputs)/b
            weight: -0.5
        parameters:
          density: 0.5
          rank: 2
          convention: peft
        dtype: bf16
        output: fused
        """
        try yaml.write(toFile: tmp + "/plan.yaml", atomically: true, encoding: .utf8)
        let r = try run(["merge", "--config", tmp + "/plan.yaml", "--rank", "3", "--json", "--quiet"])
        XCTAssertEqual(r.code, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(json["dtype"] as? String, "BF16")
        let params = try XCTUnwrap(json["parameters"] as? [String: Any])
        XCTAssertEqual(params["rank"] as? Int, 3)          // the flag wins
        XCTAssertEqual(params["convention"] as? String, "peft")
        let fused = try PEFTAdapter.read(directory: tmp + "/fused")  // relative to the YAML file
        XCTAssertEqual(fused.sourceDType, .bf16)
        XCTAssertEqual(Set(fused.modules.values.map(\.rank)), [3])
    }

    func testExitCodes() throws {
        // 1: usage errors, caught before any work.
        XCTAssertEqual(try run(["merge", Self.inputs + "/a", "-o", tmp + "/x"]).code, 1)           // no --method
        XCTAssertEqual(try run(["merge", Self.inputs + "/a", "--method", "nope", "-o", tmp + "/x"]).code, 1)
        XCTAssertEqual(try run(["merge", Self.inputs + "/a", "--method", "ties", "--density", "2", "-o", tmp + "/x"]).code, 1)
        XCTAssertEqual(try run(["frobnicate"]).code, 1)
        // 2: bad input.
        let missing = try run(["merge", tmp + "/nowhere", "--method", "cat", "-o", tmp + "/x"])
        XCTAssertEqual(missing.code, 2)
        XCTAssertTrue(missing.stderr.contains("nowhere"), missing.stderr)
        let badYAML = tmp + "/bad.yaml"
        try "method: ties\nadapters: []\n".write(toFile: badYAML, atomically: true, encoding: .utf8)
        let y = try run(["merge", "--config", badYAML])
        XCTAssertEqual(y.code, 2)
        XCTAssertTrue(y.stderr.contains("adapters"), y.stderr)
        let badParam = try run(["merge", Self.inputs + "/a", "--method", "cat", "--rank", "3", "-o", tmp + "/x"])
        XCTAssertEqual(badParam.code, 2)
        XCTAssertTrue(badParam.stderr.contains("rank"), badParam.stderr)
        // Writing over an input is refused.
        let over = try run(["merge", Self.inputs + "/a", Self.inputs + "/b", "--method", "cat", "-o", Self.inputs + "/a", "--quiet"])
        XCTAssertEqual(over.code, 2, over.stderr)
        // 0: help.
        XCTAssertEqual(try run(["merge", "--help"]).code, 0)
    }

    /// cos(τ_a, τ_b) of two adapters' task vectors, from their factors with plain Double loops:
    /// Σ over shared modules of ⟨s_a B_a A_a, s_b B_b A_b⟩ / (‖τ_a‖ ‖τ_b‖), every module in the norms.
    static func referenceCosine(_ pa: String, _ pb: String) throws -> Double {
        func dense(_ m: LoRAModule) -> [Double] {
            let out = m.B.rows, inF = m.A.cols, r = m.A.rows
            var d = [Double](repeating: 0, count: out * inF)
            for i in 0..<out {
                for j in 0..<inF {
                    var acc = 0.0
                    for k in 0..<r { acc += Double(m.B.data[i * r + k]) * Double(m.A.data[k * inF + j]) }
                    d[i * inF + j] = Double(m.scale) * acc
                }
            }
            return d
        }
        let a = try PEFTAdapter.read(directory: pa), b = try PEFTAdapter.read(directory: pb)
        var ip = 0.0, na = 0.0, nb = 0.0
        for (name, ma) in a.modules {
            let da = dense(ma)
            na += da.reduce(0) { $0 + $1 * $1 }
            if let mb = b.modules[name] { ip += zip(da, dense(mb)).reduce(0) { $0 + $1.0 * $1.1 } }
        }
        for mb in b.modules.values { nb += dense(mb).reduce(0) { $0 + $1 * $1 } }
        return ip / (na * nb).squareRoot()
    }

    func testInspectJSONHasPairsAndDtypes() throws {
        let r = try run(["inspect", Self.inputs + "/a", Self.inputs + "/b", "--json"])
        XCTAssertEqual(r.code, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let analysis = try XCTUnwrap(json["analysis"] as? [String: Any])
        XCTAssertEqual((analysis["adapters"] as? [Any])?.count, 2)
        let pairs = try XCTUnwrap(analysis["pairs"] as? [[String: Any]])
        XCTAssertEqual(pairs.count, 1)
        let cos = try XCTUnwrap(pairs[0]["cosine"] as? Double)
        XCTAssertEqual(cos, try Self.referenceCosine(Self.inputs + "/a", Self.inputs + "/b"), accuracy: 1e-5)
        XCTAssertNotNil(json["dtypes"] as? [String: String])
        let table = try run(["inspect", Self.inputs + "/a", Self.inputs + "/c", "--modules"])
        XCTAssertEqual(table.code, 0)
        XCTAssertTrue(table.stdout.contains("rsLoRA"), table.stdout)
        XCTAssertTrue(table.stdout.contains("q_proj"))
    }
}
