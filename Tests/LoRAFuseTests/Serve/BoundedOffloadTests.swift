import Foundation
import XCTest
@testable import LoRAFuse
@testable import LoRAFuseServer

/// The bound on a request's adapter loading and fusion (`offload(within:)`): slow work is given
/// up with the timeout error and its late result handed to `abandon`; fast work, its errors, and
/// an unbounded call pass through.
final class BoundedOffloadTests: XCTestCase {
    final class Box: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [Int] = []
        func add(_ v: Int) { lock.lock(); values.append(v); lock.unlock() }
        var all: [Int] { lock.lock(); defer { lock.unlock() }; return values }
    }

    func testSlowWorkIsGivenUpAndItsLateResultAbandoned() async throws {
        let box = Box()
        let start = Date()
        do {
            _ = try await offload(within: 0.05, abandon: { box.add($0) }, late: ServeError.server("late")) { () -> Int in
                Thread.sleep(forTimeInterval: 0.5)
                return 7
            }
            XCTFail("should have been given up")
        } catch let e as ServeError {
            XCTAssertEqual(e.message, "late")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.45, "the caller did not wait for the work")
        for _ in 0..<100 where box.all.isEmpty { try await Task.sleep(nanoseconds: 50_000_000) }
        XCTAssertEqual(box.all, [7], "the late result went to abandon, once")
    }

    func testFastWorkItsErrorsAndUnboundedCallsPassThrough() async throws {
        let box = Box()
        let v = try await offload(within: 5, abandon: { box.add($0) }, late: ServeError.server("late")) { 3 }
        XCTAssertEqual(v, 3)
        do {
            _ = try await offload(within: 5, abandon: { box.add($0) }, late: ServeError.server("late")) { () throws -> Int in
                throw ServeError.invalid("bad")
            }
            XCTFail("the work's error should come back")
        } catch let e as ServeError {
            XCTAssertEqual(e.status, 400)
        }
        let u = try await offload(within: nil, abandon: { box.add($0) }, late: ServeError.server("late")) { 4 }
        XCTAssertEqual(u, 4)
        try await Task.sleep(nanoseconds: 100_000_000)
        XCTAssertEqual(box.all, [], "nothing abandoned")
    }
}
