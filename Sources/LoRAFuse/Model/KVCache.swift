import Foundation

// A session's keys and values, in blocks.
//
// A block holds `blockTokens` positions of every layer: for layer l, the keys (blockTokens, Hkv·d)
// then the values (blockTokens, Hkv·d), so within a block a layer's rows are `Hkv·d` apart exactly
// as in one long cache, and attention walks the blocks in order.
//
// - A session on its own (generate, eval, training) has one private block of `maxTokens`
//   positions: the cache is contiguous, as it always was, and nothing is paged.
// - Sessions of a server take fixed-size blocks from one `KVBlockPool` as they grow (vLLM's
//   PagedAttention block table, S-LoRA's unified paging on a CPU): a sequence holds memory for
//   the positions it has used, rounded up to a block, not for prompt + max_tokens from the start,
//   and the pool asks a `KVMemory` (the server's adapter registry) for every block, so the key
//   and value blocks and the resident adapters share one memory budget.

/// Where a `KVBlockPool` gets permission for its blocks: a budget shared with other memory.
public protocol KVMemory: AnyObject, Sendable {
    /// Takes `bytes` of the budget for key/value blocks, making room if it can (evicting what
    /// nothing uses); false when it cannot.
    func reserveKV(bytes: Int) -> Bool
    /// Gives back what `reserveKV` took.
    func releaseKV(bytes: Int)
}

public enum KVCacheError: Error, CustomStringConvertible, Equatable {
    /// The pool's memory refused a block.
    case outOfMemory(positions: Int, held: Int, blockBytes: Int)

    public var description: String {
        switch self {
        case let .outOfMemory(positions, held, blockBytes):
            return "no memory for the key/value cache of \(positions) positions: the sequence holds \(held) blocks "
                + "and the memory budget has no room for another \(blockBytes)-byte block"
        }
    }
}

/// Fixed-size key/value blocks for sessions of one model, allocated on demand, each counted
/// against `memory` (when set) while a session holds it and freed when the session lets it go.
public final class KVBlockPool: @unchecked Sendable {
    /// Positions per block.
    public let blockTokens: Int
    public let layers: Int
    /// Hkv·d: one position's keys (or values) in one layer.
    public let kvWidth: Int
    public let memory: (any KVMemory)?

    private let lock = NSLock()
    private var inUse = 0
    private var peak = 0
    private var refused = 0

    /// Default positions per block: small enough that a sequence wastes little (under one block),
    /// large enough that a decode step walks few blocks per head.
    public static let defaultBlockTokens = 32

    public init(config: LlamaConfig, blockTokens: Int = KVBlockPool.defaultBlockTokens, memory: (any KVMemory)? = nil) {
        precondition(blockTokens > 0, "a key/value block holds at least one position")
        self.blockTokens = blockTokens
        self.layers = config.numHiddenLayers
        self.kvWidth = config.numKeyValueHeads * config.headDim
        self.memory = memory
    }

    public var blockFloats: Int { blockTokens * layers * 2 * kvWidth }
    public var blockBytes: Int { blockFloats * MemoryLayout<Float>.stride }

    /// Blocks held by sessions now, the most ever held at once, and blocks refused by `memory`.
    public var counters: (inUse: Int, peak: Int, refused: Int) {
        lock.lock(); defer { lock.unlock() }
        return (inUse, peak, refused)
    }

    /// Blocks that `positions` positions need.
    public func blocks(for positions: Int) -> Int { (positions + blockTokens - 1) / blockTokens }

    /// A new block, or nil when `memory` has no room for it. Not zeroed: attention only reads
    /// positions that have been written.
    func take() -> UnsafeMutablePointer<Float>? {
        if let memory, !memory.reserveKV(bytes: blockBytes) {
            lock.lock(); refused += 1; lock.unlock()
            return nil
        }
        lock.lock()
        inUse += 1
        peak = max(peak, inUse)
        lock.unlock()
        return .allocate(capacity: blockFloats)
    }

    func give(_ block: UnsafeMutablePointer<Float>) {
        block.deallocate()
        lock.lock()
        inUse -= 1
        lock.unlock()
        memory?.releaseKV(bytes: blockBytes)
    }
}

/// One session's cache: its blocks in position order (`blockTokens` positions each).
final class KVCache {
    let blockTokens: Int
    let kvWidth: Int
    let layers: Int
    let pool: KVBlockPool?
    private(set) var blocks: [UnsafeMutablePointer<Float>] = []

    /// One private block of `maxTokens` positions (a session on its own).
    init(config: LlamaConfig, maxTokens: Int) {
        blockTokens = maxTokens
        layers = config.numHiddenLayers
        kvWidth = config.numKeyValueHeads * config.headDim
        pool = nil
        blocks = [.allocate(capacity: maxTokens * layers * 2 * kvWidth)]
    }

    /// Blocks from `pool`, taken as positions are reserved.
    init(pool: KVBlockPool) {
        blockTokens = pool.blockTokens
        layers = pool.layers
        kvWidth = pool.kvWidth
        self.pool = pool
    }

    deinit {
        if let pool { for b in blocks { pool.give(b) } } else { for b in blocks { b.deallocate() } }
    }

    /// Positions the held blocks cover.
    var capacity: Int { blocks.count * blockTokens }
    var isPaged: Bool { pool != nil }

    /// Takes blocks until `positions` positions fit; on a refusal keeps what it took and throws.
    func reserve(_ positions: Int) throws {
        guard let pool else { return }
        while capacity < positions {
            guard let b = pool.take() else {
                throw KVCacheError.outOfMemory(positions: positions, held: blocks.count, blockBytes: pool.blockBytes)
            }
            blocks.append(b)
        }
    }

    /// Gives back the blocks past those `positions` positions need.
    func shrink(to positions: Int) {
        guard let pool else { return }
        let keep = pool.blocks(for: positions)
        while blocks.count > keep { pool.give(blocks.removeLast()) }
    }

    /// Layer `layer`'s keys in block `b`: (blockTokens, Hkv·d); its values follow them.
    @inline(__always) func keys(_ layer: Int, block b: Int) -> UnsafeMutablePointer<Float> {
        blocks[b] + layer * 2 * blockTokens * kvWidth
    }
    @inline(__always) func values(_ layer: Int, block b: Int) -> UnsafeMutablePointer<Float> {
        blocks[b] + (layer * 2 + 1) * blockTokens * kvWidth
    }

    /// The key and value rows of positions p..<p+rows when they lie in one block (always for a
    /// private cache), for writing the projections straight into the cache.
    func rowsIfContiguous(_ layer: Int, from p: Int, rows: Int) -> (k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>)? {
        let b = p / blockTokens
        guard rows == 0 || (p + rows - 1) / blockTokens == b else { return nil }
        let off = (p - b * blockTokens) * kvWidth
        return (keys(layer, block: b) + off, values(layer, block: b) + off)
    }

    /// Writes `rows` key and value rows (`kvWidth` apart) at positions p..<p+rows, across blocks.
    func write(_ layer: Int, from p: Int, rows: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>) {
        var done = 0
        while done < rows {
            let pos = p + done, b = pos / blockTokens, i = pos - b * blockTokens
            let n = min(rows - done, blockTokens - i)
            (keys(layer, block: b) + i * kvWidth).update(from: k + done * kvWidth, count: n * kvWidth)
            (values(layer, block: b) + i * kvWidth).update(from: v + done * kvWidth, count: n * kvWidth)
            done += n
        }
    }

    /// Copies layer `layer`'s first `count` key and value rows into contiguous (count, Hkv·d) buffers.
    func gather(_ layer: Int, count: Int, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>) {
        var done = 0, b = 0
        while done < count {
            let n = min(count - done, blockTokens)
            (k + done * kvWidth).update(from: keys(layer, block: b), count: n * kvWidth)
            (v + done * kvWidth).update(from: values(layer, block: b), count: n * kvWidth)
            done += n
            b += 1
        }
    }

    /// Copies the keys and values of positions 0..<count, every layer, from `other` (which holds
    /// at least that many), through `scratch` (2·count·Hkv·d floats).
    func copyPrefix(from other: KVCache, count: Int, scratch: UnsafeMutablePointer<Float>) {
        precondition(other.kvWidth == kvWidth && other.layers == layers && other.capacity >= count && capacity >= count)
        for l in 0..<layers {
            other.gather(l, count: count, k: scratch, v: scratch + count * kvWidth)
            write(l, from: 0, rows: count, k: scratch, v: scratch + count * kvWidth)
        }
    }

    /// Appends layer `layer`'s key and value block pointers covering `count` positions to a block
    /// table (one-query attention over many sequences reads them through one flat table: no
    /// per-sequence arrays, so no reference counting on the compute threads).
    func appendBlocks(_ layer: Int, count: Int, keys k: inout [UnsafeMutablePointer<Float>], values v: inout [UnsafeMutablePointer<Float>]) {
        let n = (count + blockTokens - 1) / blockTokens
        for b in 0..<n { k.append(keys(layer, block: b)); v.append(values(layer, block: b)) }
    }
}

