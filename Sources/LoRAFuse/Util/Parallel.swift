import Dispatch
import Foundation

/// Shares a buffer with `concurrentPerform` workers that each write their own disjoint slots.
struct UnsafeSendableBuffer<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T>
}

public enum Parallel {
    /// `items.map(transform)` spread over the cores; results land at their own index, so the
    /// output does not depend on scheduling.
    public static func map<T: Sendable, U>(_ items: [T], _ transform: @Sendable (T) -> U) -> [U] {
        if items.count < 2 { return items.map(transform) }
        var out = [U?](repeating: nil, count: items.count)
        out.withUnsafeMutableBufferPointer { slots in
            let buf = UnsafeSendableBuffer(base: slots.baseAddress!)
            DispatchQueue.concurrentPerform(iterations: items.count) { i in
                (buf.base + i).pointee = transform(items[i])
            }
        }
        return out.map { $0! }
    }
}

extension Parallel {
    /// Threads the compute kernels may use: the BLAS thread count (what `--threads` sets), or the
    /// active cores where the BLAS manages its own threads.
    public static var computeThreads: Int {
        let n = BLAS.threadCount
        return n > 0 ? n : ProcessInfo.processInfo.activeProcessorCount
    }

    /// Calls `body(item, worker)` for every item in 0..<count on up to `workers` threads; items are
    /// handed out one at a time (so uneven items balance, and a worker slowed by another process
    /// does not hold the rest back), `worker` in 0..<workers names the caller's scratch slot.
    /// BLAS runs single-threaded meanwhile: each worker's GEMMs are small, and two OpenBLAS
    /// thread pools fighting over two cores cost more than they gain.
    /// The threads are `ComputePool`'s persistent helpers (dispatch's workers when the pool is
    /// already running a job).
    /// `body` must be safe to run concurrently for distinct items (it writes disjoint memory).
    static func forEach(count: Int, workers: Int, _ body: (_ item: Int, _ worker: Int) -> Void) {
        let w = min(workers, count)
        if w <= 1 {
            for i in 0..<count { body(i, 0) }
            return
        }
        BLAS.withThreadCount(1) {
            if ComputePool.shared.run(count: count, workers: w, body) { return }
            // The pool is busy (another thread's job, or a job inside a job): dispatch's workers.
            withoutActuallyEscaping(body) { body in
                let shared = SharedWork(body: body, count: count)
                DispatchQueue.concurrentPerform(iterations: w) { worker in
                    while let i = shared.next() { shared.body(i, worker) }
                }
            }
        }
    }

    /// Splits 0..<count into `workers` contiguous ranges of whole `granule`s and runs
    /// `body(range)` on each (elementwise loops over large buffers).
    static func forRanges(count: Int, workers: Int, granule: Int = 1, _ body: (Range<Int>) -> Void) {
        let units = (count + granule - 1) / granule
        let w = min(workers, units)
        if w <= 1 { body(0..<count); return }
        let per = (units + w - 1) / w * granule
        forEach(count: w, workers: w) { i, _ in
            let lo = i * per, hi = min(count, lo + per)
            if lo < hi { body(lo..<hi) }
        }
    }
}

/// The item counter and body shared by `forEach`'s workers; the caller vouches that the body may
/// run concurrently.
private final class SharedWork: @unchecked Sendable {
    let body: (Int, Int) -> Void
    private let count: Int
    private var nextItem = 0
    private let lock = NSLock()
    init(body: @escaping (Int, Int) -> Void, count: Int) {
        self.body = body
        self.count = count
    }
    func next() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard nextItem < count else { return nil }
        nextItem += 1
        return nextItem - 1
    }
}
