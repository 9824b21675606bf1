import CQuant
import Dispatch
import Foundation
import Synchronization

/// Persistent worker threads for the compute kernels (`Parallel.forEach`).
///
/// Why not `DispatchQueue.concurrentPerform`: one decode step of SmolLM2 runs ~150 parallel jobs
/// of 10–100 µs each, and waking a sleeping dispatch worker for every one of them cost more than
/// the kernels (measured 2026-12-06: 57 tokens/s with dispatch, where the kernels alone allow
/// ~200; 5 tokens/s when another process kept the cores busy). ggml's CPU backend avoids the
/// same cost the same way: its workers spin between the operations of a graph.
///
/// Protocol. One job at a time (`busy`); a second caller, or a job started from inside a job,
/// gets `false` and runs its work another way. The caller publishes the job, bumps `generation`
/// and works on items itself as slot 0; each worker sees the new generation, takes a slot
/// (slots ≥ the job's worker count just acknowledge), claims items one at a time and then
/// acknowledges. The caller returns when every worker has acknowledged, so nothing of the job is
/// touched after `run` returns. Idle workers spin for `spinNanoseconds`, then sleep on a
/// condition; a large multi-threaded BLAS call asks them to sleep at once (`park`), so they do not
/// take cores from OpenBLAS's own threads.
final class ComputePool: @unchecked Sendable {
    static let shared = ComputePool()

    /// How long an idle worker spins before it sleeps: longer than the gaps between the jobs of
    /// one decode step (attention, norms, sampling), far shorter than a human-visible pause.
    static let spinNanoseconds: UInt64 = 300_000

    /// Helpers beyond the cores would only take turns with each other.
    static let maxHelpers = max(ProcessInfo.processInfo.activeProcessorCount - 1, 0)

    private struct Job {
        let body: (Int, Int) -> Void
        let count: Int
        let workers: Int
    }

    private let generation = Atomic<Int>(0)
    private let nextItem = Atomic<Int>(0)
    private let nextSlot = Atomic<Int>(0)
    private let acknowledged = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let parkRequested = Atomic<Bool>(false)
    private let condition = NSCondition()
    /// Written by the caller before `generation` is bumped and cleared after every worker has
    /// acknowledged; workers read it only in between.
    private var job: Job?
    /// Started helper threads; changed only by the caller holding `busy`.
    private var helpers = 0

    /// Runs `body(item, slot)` for every item in 0..<count on up to `workers` threads (the caller
    /// included), items handed out one at a time, `slot` in 0..<workers. False (nothing run) when
    /// the pool is busy with another job or has no helpers to offer.
    func run(count: Int, workers: Int, _ body: (Int, Int) -> Void) -> Bool {
        let want = min(workers, count) - 1
        guard want >= 1, Self.maxHelpers >= 1 else { return false }
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return false }
        defer { busy.store(false, ordering: .releasing) }
        while helpers < min(want, Self.maxHelpers) { startHelper() }
        withoutActuallyEscaping(body) { body in
            job = Job(body: body, count: count, workers: min(want, helpers) + 1)
            nextItem.store(0, ordering: .relaxed)
            nextSlot.store(1, ordering: .relaxed)
            acknowledged.store(0, ordering: .relaxed)
            parkRequested.store(false, ordering: .relaxed)
            generation.add(1, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                condition.lock()
                condition.broadcast()
                condition.unlock()
            }
            work(job!, slot: 0)
            while acknowledged.load(ordering: .acquiring) < helpers { cq_cpu_relax() }
            job = nil
        }
        return true
    }

    /// Asks spinning helpers to sleep now (before a multi-threaded BLAS call takes the cores).
    func park() {
        if !parkRequested.load(ordering: .relaxed) { parkRequested.store(true, ordering: .relaxed) }
    }

    private func work(_ j: Job, slot: Int) {
        while true {
            let i = nextItem.add(1, ordering: .relaxed).oldValue
            if i >= j.count { return }
            j.body(i, slot)
        }
    }

    private func startHelper() {
        let start = generation.load(ordering: .acquiring)
        helpers += 1
        let t = Thread { [unowned self] in self.helperLoop(seen: start) }
        t.name = "lorafuse-compute-\(helpers)"
        t.stackSize = 1 << 20
        t.start()
    }

    private func helperLoop(seen initial: Int) {
        var seen = initial
        while true {
            var g = generation.load(ordering: .acquiring)
            if g == seen {
                var deadline = DispatchTime.now().uptimeNanoseconds + Self.spinNanoseconds
                var spins = 0
                while g == seen {
                    cq_cpu_relax()
                    spins &+= 1
                    if spins & 127 == 0 && (parkRequested.load(ordering: .relaxed) || DispatchTime.now().uptimeNanoseconds > deadline) {
                        condition.lock()
                        sleepers.add(1, ordering: .sequentiallyConsistent)
                        while generation.load(ordering: .sequentiallyConsistent) == seen { condition.wait() }
                        sleepers.subtract(1, ordering: .sequentiallyConsistent)
                        condition.unlock()
                        deadline = DispatchTime.now().uptimeNanoseconds + Self.spinNanoseconds
                    }
                    g = generation.load(ordering: .acquiring)
                }
            }
            seen = g
            participate()
            acknowledged.add(1, ordering: .releasing)
        }
    }

    /// A helper's share of the current job. Its own function so that the helper's reference to
    /// the job's closure is gone before it acknowledges (the caller's `withoutActuallyEscaping`
    /// checks that nothing kept it).
    @inline(never)
    private func participate() {
        let slot = nextSlot.add(1, ordering: .relaxed).oldValue
        if let j = job, slot < j.workers { work(j, slot: slot) }
    }
}
