import Foundation
import XCTest
@testable import LoRAFuse

/// `lorafuse report`'s argument checks, which fail before any model is loaded.
final class ReportCLITests: XCTestCase {
    private func run(_ args: [String]) throws -> CLITests.Run { try CLITests.run(args) }

    func testUsageErrorsExitOne() throws {
        let unknown = try run(["report", "--adapters", "a", "--test", "t", "-o", "out", "--methods", "base,nope"])
        XCTAssertEqual(unknown.code, 1)
        XCTAssertTrue(unknown.stderr.contains("unknown method 'nope'") && unknown.stderr.contains("atlas"), unknown.stderr)

        let noShots = try run(["report", "--adapters", "a", "--test", "t", "-o", "out", "--methods", "atlas"])
        XCTAssertEqual(noShots.code, 1)
        XCTAssertTrue(noShots.stderr.contains("learned method 'atlas' needs --shots"), noShots.stderr)

        let curve = try run(["report", "--adapters", "a", "--test", "t", "-o", "out", "--shots-curve", "1,x"])
        XCTAssertEqual(curve.code, 1)
        XCTAssertTrue(curve.stderr.contains("--shots-curve"), curve.stderr)

        let twice = try run(["report", "--adapters", "a", "--test", "t", "-o", "out", "--methods", "ties,ties"])
        XCTAssertEqual(twice.code, 1)
        XCTAssertTrue(twice.stderr.contains("twice"), twice.stderr)

        let trainedTwice = try run(["report", "--adapters", "a", "--test", "t", "-o", "out", "--trained", "x/union", "x/union"])
        XCTAssertEqual(trainedTwice.code, 1)
        XCTAssertTrue(trainedTwice.stderr.contains("--trained names") && trainedTwice.stderr.contains("x/union' twice"), trainedTwice.stderr)

        let missing = try run(["report", "--test", "t", "-o", "out"])
        XCTAssertEqual(missing.code, 1)
        XCTAssertTrue(missing.stderr.contains("--adapters"), missing.stderr)

        let help = try run(["report", "--help"])
        XCTAssertEqual(help.code, 0)
        for option in ["--test-per-task", "--shots-curve", "--no-shots-curve", "--expert-matrix", "--force", "--methods", "--tasks", "--steps", "--trained"] {
            XCTAssertTrue(help.stdout.contains(option), option)
        }
    }
}
