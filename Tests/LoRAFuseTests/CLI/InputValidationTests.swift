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
