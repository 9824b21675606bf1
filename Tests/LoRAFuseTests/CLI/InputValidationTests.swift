import Foundation
import XCTest
@testable import LoRAFuse

/// Bad input gets a clear error (exit 1 or 2 with a message naming the problem), never a crash,
/// a hang or silent garbage. Malformed inputs are made at run time in a temporary directory.
final class InputValidationTests: XCTestCase {
    var tmp: String!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-bad-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: tmp)
    }

    func run(_ args: [String]) throws -> CLITests.Run { try CLITests.run(args) }

    func copyAdapter(_ name: String = "a", to dest: String) throws {
        try FileManager.default.createDirectory(atPath: (dest as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: CLITests.inputs + "/" + name, toPath: dest)
    }

    func testInspectSameFolderNamesAreDisambiguated() throws {
        try copyAdapter("a", to: tmp + "/run1/x")
        try copyAdapter("b", to: tmp + "/run2/x")
        let r = try run(["inspect", tmp + "/run1/x", tmp + "/run2/x", "--json"])
        XCTAssertEqual(r.code, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let dtypes = try XCTUnwrap(json["dtypes"] as? [String: String])
        XCTAssertEqual(Set(dtypes.keys), ["run1/x", "run2/x"])
        // The same directory twice still works (numbered).
        let twice = try run(["inspect", tmp + "/run1/x", tmp + "/run1/x", "--json"])
        XCTAssertEqual(twice.code, 0, twice.stderr)
    }

    func testAdapterNamesDisambiguation() {
        func adapter(_ path: String) -> LoRAAdapter {
            LoRAAdapter(name: (path as NSString).lastPathComponent, modules: [:], sourcePath: path)
        }
        let names = AdapterNames.disambiguated([adapter("/a/run1/x"), adapter("/a/run2/x"), adapter("/b/y"), adapter("/b/y")]).map(\.name)
        XCTAssertEqual(names, ["run1/x", "run2/x", "b/y#1", "b/y#2"])
        XCTAssertEqual(AdapterNames.duplicates(["p", "q", "p"]), ["p"])
    }
}

extension InputValidationTests {
    func testAdapterWeightThatIsNotANumber() throws {
        let a = CLITests.inputs + "/a"
        let r = try run(["merge", a + ":abc", "--method", "linear", "-o", tmp + "/out", "--quiet"])
        XCTAssertEqual(r.code, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("'abc'") && r.stderr.contains("not a number"), r.stderr)
        XCTAssertFalse(r.stderr.contains("no such file"), r.stderr)
        let missing = try run(["merge", tmp + "/nowhere:abc", "--method", "linear", "-o", tmp + "/out", "--quiet"])
        XCTAssertEqual(missing.code, 1, missing.stderr)
        XCTAssertTrue(missing.stderr.contains("not a number"), missing.stderr)
        // A file whose name has a colon is still a path.
        try copyAdapter("a", to: tmp + "/odd:name")
        let odd = try run(["inspect", tmp + "/odd:name"])
        XCTAssertEqual(odd.code, 0, odd.stderr)
        let merged = try run(["merge", tmp + "/odd:name", "--method", "linear", "-o", tmp + "/out1", "--quiet"])
        XCTAssertEqual(merged.code, 0, merged.stderr)
        // Weights that overflow weight × ΔW are refused up front.
        for w in ["1e38", "inf", "nan"] {
            let big = try run(["merge", a + ":" + w, "--method", "linear", "-o", tmp + "/out2", "--quiet"])
            XCTAssertEqual(big.code, 1, "\(w): \(big.stderr)")
            XCTAssertTrue(big.stderr.contains("weight"), big.stderr)
        }
    }

    func testNegativeOptionValuesGetTheirRangeCheck() throws {
        let a = CLITests.inputs + "/a"
        let r = try run(["merge", a, "--method", "svd", "--rank", "-1", "-o", tmp + "/out", "--quiet"])
        XCTAssertEqual(r.code, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("--rank must be at least 1, got -1"), r.stderr)
        XCTAssertFalse(r.stderr.contains("Missing value"), r.stderr)
        let t = try run(["inspect", a, "--samples", "-5"])
        XCTAssertEqual(t.code, 1, t.stderr)
        XCTAssertTrue(t.stderr.contains("--samples"), t.stderr)
        // A negative value where one is allowed now parses instead of being taken for a flag.
        let lam = try run(["merge", a, CLITests.inputs + "/b", "--method", "dare_linear", "--lambda", "-0.5", "-o", tmp + "/neg", "--quiet"])
        XCTAssertFalse(lam.stderr.contains("Missing value"), lam.stderr)
    }
}
