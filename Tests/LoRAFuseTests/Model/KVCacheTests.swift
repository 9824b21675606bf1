import Foundation
import XCTest
@testable import LoRAFuse

/// A budget of `limit` bytes that counts what it lends.
final class CountingKVMemory: KVMemory, @unchecked Sendable {
    private let lock = NSLock()
    let limit: Int
    private(set) var held = 0
    init(limit: Int) { self.limit = limit }
    func reserveKV(bytes: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard held + bytes <= limit else { return false }
        held += bytes
        return true
    }
    func releaseKV(bytes: Int) { lock.lock(); held -= bytes; lock.unlock() }
}

final class KVCacheTests: XCTestCase {
    let prompt = [5, 17, 99, 3, 250, 42, 8]
    let next = [11, 200, 7, 64, 1]

    /// Logits of the prompt (all rows) and then of each next token fed alone.
    private func run(_ s: LlamaSession) throws -> [[Float]] {
        var out = [try s.feed(prompt).data]
        for t in next { out.append(try s.feed([t]).data) }
        return out
    }

    /// Keys and values in 3-position blocks (prompt chunks and writes crossing block edges)
    /// give the same logits, to the bit, as one contiguous cache: fed alone and in batched steps.
    func testPagedSessionEqualsContiguousToTheBit() throws {
        let model = ServeFixtures.model()
        let set = try model.prepare([(ServeFixtures.adapter(model, name: "a", seed: 3), 1)], mode: .unmerged)
        for adapters in [AdapterSet.none, set] {
            let pool = KVBlockPool(config: model.config, blockTokens: 3)
            let contiguous = try run(try model.makeLlamaSession(maxTokens: 16, adapters: adapters))
            let paged = try model.makeLlamaSession(maxTokens: 16, adapters: adapters, pool: pool)
            XCTAssertTrue(paged.isPaged)
            XCTAssertEqual(try run(paged), contiguous)
            XCTAssertEqual(paged.kvBlocks, 4, "12 positions in blocks of 3")

            // Batched (rows of one GEMM may round apart by their place in it, so each run is
            // compared with a run of the same shape): paged + contiguous against two contiguous,
            // prompt in two chunks (3 + 4), then one token at a time.
            func batched(_ sessions: [LlamaSession]) throws -> [[Float]] {
                var out: [[Float]] = []
                _ = try model.step(sessions.map { StepInput(session: $0, tokens: Array(prompt[..<3]), wantsLogits: false) })
                out.append(try model.step(sessions.map { StepInput(session: $0, tokens: Array(prompt[3...])) }).data)
                for t in next { out.append(try model.step(sessions.map { StepInput(session: $0, tokens: [t]) }).data) }
                return out
            }
            let mixed = try batched([try model.makeLlamaSession(maxTokens: 16, adapters: adapters, pool: pool),
                                     try model.makeLlamaSession(maxTokens: 16, adapters: adapters)])
            let plain = try batched([try model.makeLlamaSession(maxTokens: 16, adapters: adapters),
                                     try model.makeLlamaSession(maxTokens: 16, adapters: adapters)])
            XCTAssertEqual(mixed, plain)
            XCTAssertEqual(pool.counters.inUse, 4, "the batched sessions gave their blocks back; `paged` holds its 4")
        }
    }

    /// The pool takes a block per `blockTokens` positions from its memory, refuses past it with
    /// an error naming the sizes (the session unchanged), and gives every block back.
    func testPoolCountsBlocksAgainstItsMemoryAndGivesThemBack() throws {
        let model = ServeFixtures.model()
        let probe = KVBlockPool(config: model.config, blockTokens: 4)
        let memory = CountingKVMemory(limit: 3 * probe.blockBytes)
        let pool = KVBlockPool(config: model.config, blockTokens: 4, memory: memory)
        XCTAssertEqual(pool.blockBytes, 4 * 2 * 2 * 16 * 4, "4 positions × 2 layers × (k, v) × Hkv·d 16 × 4 bytes")
        var s: LlamaSession? = try model.makeLlamaSession(maxTokens: 32, adapters: .none, pool: pool)
        XCTAssertEqual(s!.kvBlocks, 0, "nothing taken before the first feed")
        _ = try s!.feed(prompt)                                  // 7 positions: 2 blocks
        XCTAssertEqual(memory.held, 2 * pool.blockBytes)
        XCTAssertEqual(pool.counters.inUse, 2)
        let other = try model.makeLlamaSession(maxTokens: 32, adapters: .none, pool: pool)
        _ = try other.feed([1, 2, 3])                            // the third block
        XCTAssertThrowsError(try s!.feed(next)) { error in       // 12 positions would need a third block of its own
            guard case .outOfMemory(let positions, let held, let bytes)? = error as? KVCacheError else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual([positions, held, bytes], [12, 2, pool.blockBytes])
            XCTAssertTrue("\(error)".contains("12 positions"))
        }
        XCTAssertEqual(s!.position, 7, "a refused feed changes nothing")
        XCTAssertEqual(pool.counters.refused, 1)
        s = nil
        XCTAssertEqual(memory.held, pool.blockBytes, "the dropped session's blocks are back")
        _ = try other.feed([4, 5, 6, 7, 8, 9])                    // 9 positions: 3 blocks, fits now
        XCTAssertEqual(pool.counters.inUse, 3)
        XCTAssertEqual(pool.counters.peak, 3)
        other.truncate(to: 2)
        other.releaseUnusedBlocks()
        XCTAssertEqual(other.kvBlocks, 1)
        XCTAssertEqual(memory.held, pool.blockBytes)
    }

    /// The registry as the pool's memory: blocks evict adapters nobody holds, never ones in use.
    func testRegistryBudgetIsSharedByAdaptersAndBlocks() throws {
        let model = ServeFixtures.model()
        let one = ServeFixtures.adapterBytes(model)
        let dir = try ServeFixtures.adapterDirectory(model, names: ["a", "b"])
        let reg = AdapterRegistry(model: model, baseName: "tiny", budgetBytes: 2 * one)
        try reg.registerDirectory(dir)
        reg.release(try reg.acquire(.named("a")))
        let held = try reg.acquire(.named("b"))
        XCTAssertTrue(reg.reserveKV(bytes: one / 2), "a, unused, is evicted for the blocks")
        XCTAssertEqual(reg.info("a")?.resident, false)
        XCTAssertFalse(reg.reserveKV(bytes: one), "b is in use: no room")
        XCTAssertEqual(reg.kvReservedBytes, one / 2)
        XCTAssertThrowsError(try reg.acquire(.named("a")), "blocks count against adapters too") {
            XCTAssertEqual(($0 as? ServeError)?.status, 429)
        }
        reg.releaseKV(bytes: one / 2)
        XCTAssertEqual(reg.kvReservedBytes, 0)
        reg.release(try reg.acquire(.named("a")))
        reg.release(held)
    }
}
