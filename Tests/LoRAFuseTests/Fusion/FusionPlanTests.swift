import XCTest
@testable import LoRAFuse

final class FusionPlanTests: XCTestCase {
    func parse(_ yaml: String) throws -> FusionPlan {
        try FusionPlan.parse(yaml: yaml, file: "fuse.yaml", baseDirectory: "/base")
    }

    func testFullPlanResolvesPathsAndSnakeCaseParameters() throws {
        let p = try parse("""
        method: dare_ties
        adapters:
          - path: math
            weight: 0.7
          - path: /abs/code
            weight: -1
          - style
        parameters:
          density: 0.4
          sign_election: count
          merge_rule: linear
          seed: 9
        dtype: f16
        output: out/x
        """)
        XCTAssertEqual(p.method, "dare_ties")
        XCTAssertEqual(p.adapters, [.init(path: "/base/math", weight: 0.7), .init(path: "/abs/code", weight: -1),
                                    .init(path: "/base/style", weight: 1)])
        XCTAssertEqual(p.parameters.density, 0.4)
        XCTAssertEqual(p.parameters.signElection, "count")
        XCTAssertEqual(p.parameters.mergeRule, "linear")
        XCTAssertEqual(p.parameters.seed, 9)
        XCTAssertEqual(p.dtype, .f16)
        XCTAssertEqual(p.output, "/base/out/x")
    }

    func testErrorsNameTheKey() {
        let cases: [(String, String)] = [
            ("method: ties\nadapters: [a]\nfoo: 1\n", "foo"),
            ("adapters: [a]\n", "method"),
            ("method: ties\n", "adapters"),
            ("method: ties\nadapters:\n  - path: a\n    weight: heavy\n", "adapters[0].weight"),
            ("method: ties\nadapters:\n  - weight: 1\n", "adapters[0].path"),
            ("method: ties\nadapters: [a]\nparameters:\n  densty: 0.5\n", "parameters.densty"),
            ("method: ties\nadapters: [a]\nparameters:\n  rank: many\n", "parameters"),
            ("method: ties\nadapters: [a]\ndtype: f8\n", "dtype"),
            ("method: [ties\n", "YAML"),
        ]
        for (yaml, key) in cases {
            XCTAssertThrowsError(try parse(yaml), yaml) { e in
                XCTAssertTrue("\(e)".contains(key), "\(e) should name \(key)")
                XCTAssertTrue("\(e)".contains("fuse.yaml"), "\(e) should name the file")
            }
        }
    }
}
