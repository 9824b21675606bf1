import Foundation
import XCTest
@testable import LoRAFuse

/// The persistent compute pool behind `Parallel.forEach`: every item exactly once, slots in range,
/// and a caller that finds the pool busy (another thread's job, or a job inside a job) still gets
/// all its items run.
final class ComputePoolTests: XCTestCase {
    func testEveryItemRunsOnceWithSlotsInRange() {
        for (count, workers) in [(1, 2), (2, 2), (7, 2), (1000, 2), (1000, 8), (5, 1)] {
            let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
            hits.initialize(repeating: 0, count: count)
            defer { hits.deallocate() }
            let slots = UnsafeMutablePointer<Int>.allocate(capacity: count)
            defer { slots.deallocate() }
            let h = UnsafeSendableBuffer(base: hits), s = UnsafeSendableBuffer(base: slots)
            let w = min(workers, count)
            Parallel.forEach(count: count, workers: workers) { i, slot in
                h.base[i] += 1
                s.base[i] = slot
            }
            for i in 0..<count {
                XCTAssertEqual(hits[i], 1, "item \(i) of \(count), workers \(workers)")
                XCTAssertTrue((0..<max(w, 1)).contains(slots[i]), "slot \(slots[i]) of item \(i), workers \(workers)")
            }
        }
    }

    func testManyShortJobsInARow() {
        // A decode step's pattern: many small jobs back to back, with the helpers spinning between.
        var total = 0
        let sums = UnsafeMutablePointer<Int>.allocate(capacity: 64)
        defer { sums.deallocate() }
        let b = UnsafeSendableBuffer(base: sums)
        for job in 0..<2000 {
            sums.initialize(repeating: 0, count: 64)
            Parallel.forEach(count: 64, workers: 2) { i, _ in b.base[i] = i + job }
            total += (0..<64).reduce(0) { $0 + sums[$1] }
        }
        XCTAssertEqual(total, (0..<2000).reduce(0) { $0 + 64 * $1 + 2016 })
    }

    func testNestedAndConcurrentCallersFallBack() {
        let count = 16
        let outer = UnsafeMutablePointer<Int>.allocate(capacity: count * count)
        outer.initialize(repeating: 0, count: count * count)
        defer { outer.deallocate() }
        let o = UnsafeSendableBuffer(base: outer)
        // A job inside a job: the inner call finds the pool busy and runs on dispatch's workers.
        Parallel.forEach(count: count, workers: 2) { i, _ in
            Parallel.forEach(count: count, workers: 2) { j, _ in o.base[i * count + j] += 1 }
        }
        XCTAssertEqual((0..<(count * count)).filter { outer[$0] != 1 }, [])
        // Several threads submitting at once: one gets the pool, the others fall back.
        let results = UnsafeMutablePointer<Int>.allocate(capacity: 4 * 100)
        results.initialize(repeating: 0, count: 400)
        defer { results.deallocate() }
        let r = UnsafeSendableBuffer(base: results)
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            for _ in 0..<20 {
                Parallel.forEach(count: 100, workers: 2) { i, _ in r.base[t * 100 + i] += 1 }
            }
        }
        XCTAssertEqual((0..<400).filter { results[$0] != 20 }, [])
    }
}
