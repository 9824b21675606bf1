import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A checkpoint split over several safetensors files with a `model.safetensors.index.json`
/// (`{"metadata": {"total_size": …}, "weight_map": {tensor: file}}`, the Hugging Face layout).
/// Opening validates that every shard named in the map exists and holds the tensors the map
/// puts there; tensors a shard holds but the map does not name are ignored, as transformers does.
public final class ShardedSafetensors: @unchecked Sendable {
    public let indexPath: String
    /// Tensor names in shard order, then file order within a shard.
    public let names: [String]
    public let metadata: [String: String]
    public let weightMap: [String: String]
    public let shards: [String: SafetensorsFile]

    public init(indexPath: String) throws {
        self.indexPath = indexPath
        try InputFile.refuseSpecialFile(indexPath)
        guard let data = FileManager.default.contents(atPath: indexPath) else {
            throw SafetensorsError.cannotOpen(path: indexPath, reason: "file not found or unreadable")
        }
        let json: JSONValue
        do { json = try JSONValue.parse(Array(data)) } catch {
            throw SafetensorsError.invalidIndex(path: indexPath, reason: "\(error)")
        }
        guard let wm = json["weight_map"]?.objectMembers else {
            throw SafetensorsError.invalidIndex(path: indexPath, reason: "missing 'weight_map' object")
        }
        var map: [String: String] = [:]
        for (k, v) in wm {
            guard let f = v.stringValue else { throw SafetensorsError.invalidIndex(path: indexPath, reason: "weight_map['\(k)'] is not a string") }
            guard !f.contains("/") && f != ".." else {
                throw SafetensorsError.invalidIndex(path: indexPath, reason: "weight_map['\(k)'] = '\(f)' is not a file name in the index's directory")
            }
            if let prev = map[k], prev != f { throw SafetensorsError.invalidIndex(path: indexPath, reason: "tensor '\(k)' mapped twice") }
            map[k] = f
        }
        var meta: [String: String] = [:]
        for (k, v) in json["metadata"]?.objectMembers ?? [] {
            if let s = v.stringValue { meta[k] = s } else { meta[k] = v.serialized() }
        }
        let dir = URL(fileURLWithPath: indexPath).deletingLastPathComponent()
        var shards: [String: SafetensorsFile] = [:]
        for f in Set(map.values).sorted(by: naturalLess) {
            let p = dir.appendingPathComponent(f).path
            guard FileManager.default.fileExists(atPath: p) else { throw SafetensorsError.shardMissing(index: indexPath, shard: f) }
            shards[f] = try SafetensorsFile(path: p)
        }
        for (t, f) in map where !shards[f]!.contains(t) {
            throw SafetensorsError.tensorNotInShard(index: indexPath, tensor: t, shard: f)
        }
        var names: [String] = []
        for f in shards.keys.sorted(by: naturalLess) {
            names += shards[f]!.names.filter { map[$0] == f }
        }
        self.names = names
        self.metadata = meta
        self.weightMap = map
        self.shards = shards
    }

    public func file(for name: String) throws -> SafetensorsFile {
        guard let f = weightMap[name], let s = shards[f] else { throw SafetensorsError.noSuchTensor(path: indexPath, tensor: name) }
        return s
    }

    public func info(_ name: String) throws -> TensorInfo { try file(for: name).info(name) }
    public func floats(_ name: String) throws -> [Float] { try file(for: name).floats(name) }
    public func matrix(_ name: String) throws -> Matrix { try file(for: name).matrix(name) }
}

/// One tensor a `StreamingShardedWriter` will receive: name, shape and safetensors dtype.
public struct PlannedTensor: Sendable, Equatable {
    public var name: String
    public var shape: [Int]
    public var dtype: String
    public init(name: String, shape: [Int], dtype: String) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
    }

    public var byteCount: Int {
        let bits = SafetensorsDTypes.bits[dtype] ?? 0
        return (shape.reduce(1, *) * bits + 7) / 8
    }
}

/// The one writer of sharded (Hugging Face layout) safetensors checkpoints; everything that writes
/// a multi-file checkpoint goes through it (`ShardedSafetensorsWriter` is its in-memory front).
/// It writes into `directory` as it is: callers that write a user's output give it the temporary
/// folder of `OutputGuard.writeDirectory`/`buildDirectory`, which puts the whole checkpoint in
/// place at the end.
///
/// Writes a checkpoint tensor by tensor without holding it: the whole plan (names, shapes,
/// dtypes) is known up front, so shard boundaries and every shard header are fixed before any
/// data arrives. Each shard file is opened with its final header, tensor bytes are appended as
/// they are handed over and the shard is renamed into place as soon as its last tensor is
/// written; memory use is the caller's one tensor, whatever the model size.
///
/// Layout: one shard → `<baseName>.safetensors` (no index, as transformers saves small models);
/// several → `<baseName>-0000i-of-0000K.safetensors` plus `<baseName>.safetensors.index.json`
/// (`metadata.total_size`, `weight_map`), written last so an index always points at complete shards.
/// A tensor larger than `maxShardBytes` gets a shard of its own. Within a shard, data is in plan
/// order and the header lists tensors in the same order.
public final class StreamingShardedWriter {
    public let directory: URL
    public let baseName: String
    public let shardFiles: [String]
    private let groups: [[PlannedTensor]]
    private let metadata: [String: String]
    private var shardIndex = 0
    private var posInShard = 0
    private var pendingBytes = 0
    private var fd: Int32 = -1
    private var tmpPath: String?
    private var finished = false
    public private(set) var bytesWritten = 0

    public init(directory: URL, plan: [PlannedTensor], maxShardBytes: Int, baseName: String = "model",
                metadata: [String: String] = ["format": "pt"]) throws {
        guard maxShardBytes > 0 else {
            throw CheckpointError.unsupported(what: "--max-shard-size", reason: "must be positive, got \(maxShardBytes)")
        }
        var seen = Set<String>()
        for t in plan {
            guard t.name != "__metadata__" else {
                throw SafetensorsError.invalidTensor(path: directory.path, tensor: t.name, reason: "reserved name")
            }
            guard seen.insert(t.name).inserted else { throw SafetensorsError.duplicateName(path: directory.path, name: t.name) }
            guard SafetensorsDTypes.bits[t.dtype] != nil else {
                throw SafetensorsError.unknownDType(path: directory.path, tensor: t.name, dtype: t.dtype)
            }
            guard t.shape.allSatisfy({ $0 >= 0 }) else {
                throw SafetensorsError.invalidTensor(path: directory.path, tensor: t.name, reason: "negative dimension in shape \(t.shape)")
            }
        }
        var groups: [[PlannedTensor]] = []
        var cur: [PlannedTensor] = []
        var bytes = 0
        for t in plan {
            if !cur.isEmpty && bytes + t.byteCount > maxShardBytes {
                groups.append(cur)
                cur = []
                bytes = 0
            }
            cur.append(t)
            bytes += t.byteCount
        }
        if !cur.isEmpty || groups.isEmpty { groups.append(cur) }
        self.groups = groups
        self.directory = directory
        self.baseName = baseName
        self.metadata = metadata
        func pad(_ i: Int) -> String { let s = String(i); return String(repeating: "0", count: max(0, 5 - s.count)) + s }
        if groups.count == 1 {
            shardFiles = ["\(baseName).safetensors"]
        } else {
            shardFiles = (0..<groups.count).map { "\(baseName)-\(pad($0 + 1))-of-\(pad(groups.count)).safetensors" }
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try openShard()
        try closeShardIfComplete()
    }

    deinit {
        if fd >= 0 { close(fd) }
        if let t = tmpPath { unlink(t) }
    }

    private func header(for group: [PlannedTensor]) -> [UInt8] {
        SafetensorsWriter.encodedHeader(group.map { ($0.name, $0.dtype, $0.shape, $0.byteCount) }, metadata: metadata)
    }

    private func openShard() throws {
        let final = directory.appendingPathComponent(shardFiles[shardIndex]).path
        let tmp: String
        do { tmp = try OutputGuard.makeSibling(beside: final, given: final, suffix: "tmp", directory: false) } catch let OutputGuardError.writeFailed(_, reason) {
            throw CheckpointError.io(path: final, reason: "cannot create: \(reason)")
        }
        let fd = open(tmp, O_WRONLY | O_TRUNC)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            unlink(tmp)
            throw CheckpointError.io(path: final, reason: "cannot create: \(reason)")
        }
        self.fd = fd
        tmpPath = tmp
        posInShard = 0
        let h = header(for: groups[shardIndex])
        try h.withUnsafeBytes { try writeAll($0) }
    }

    private func writeAll(_ raw: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < raw.count {
            let r = posixWrite(fd, raw.baseAddress! + done, raw.count - done)
            if r < 0 {
                if errno == EINTR { continue }
                throw CheckpointError.io(path: shardFiles[shardIndex], reason: "write failed: \(String(cString: strerror(errno)))")
            }
            done += r
        }
    }

    /// Closes, renames and moves to the next shard while the current one is complete.
    private func closeShardIfComplete() throws {
        while shardIndex < groups.count && posInShard == groups[shardIndex].count {
            guard close(fd) == 0 else { throw CheckpointError.io(path: shardFiles[shardIndex], reason: "close failed") }
            fd = -1
            let final = directory.appendingPathComponent(shardFiles[shardIndex]).path
            guard rename(tmpPath!, final) == 0 else {
                throw CheckpointError.io(path: final, reason: "rename failed: \(String(cString: strerror(errno)))")
            }
            tmpPath = nil
            shardIndex += 1
            if shardIndex < groups.count { try openShard() }
        }
    }

    /// The next tensor in plan order.
    public var nextTensor: PlannedTensor? {
        shardIndex < groups.count ? groups[shardIndex][posInShard] : nil
    }

    /// Appends the next tensor's bytes whole; `name` must be the next planned tensor.
    public func write(name: String, bytes: UnsafeRawBufferPointer) throws {
        if let t = nextTensor, t.name == name, pendingBytes != 0 || bytes.count != t.byteCount {
            throw CheckpointError.writerSize(path: directory.path, tensor: name, expected: t.byteCount, actual: pendingBytes + bytes.count)
        }
        try append(name: name, bytes: bytes)
    }

    /// Appends part of the next tensor's bytes; the tensor is complete (and the writer moves on)
    /// once its planned byte count has arrived. Lets elementwise work stream a tensor in chunks.
    public func append(name: String, bytes: UnsafeRawBufferPointer) throws {
        guard let t = nextTensor else {
            throw CheckpointError.writerOrder(path: directory.path, expected: "(none: all tensors written)", actual: name)
        }
        guard t.name == name else { throw CheckpointError.writerOrder(path: directory.path, expected: t.name, actual: name) }
        guard pendingBytes + bytes.count <= t.byteCount else {
            throw CheckpointError.writerSize(path: directory.path, tensor: name, expected: t.byteCount, actual: pendingBytes + bytes.count)
        }
        if bytes.count > 0 { try writeAll(bytes) }
        bytesWritten += bytes.count
        pendingBytes += bytes.count
        if pendingBytes == t.byteCount {
            pendingBytes = 0
            posInShard += 1
            try closeShardIfComplete()
        }
    }

    public func append(name: String, bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try append(name: name, bytes: $0) }
    }

    public func write(name: String, bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write(name: name, bytes: $0) }
    }

    /// Checks that every planned tensor was written and writes the index (several shards).
    /// - Returns: the shard file names (plus the index name when there is one).
    @discardableResult
    public func finish() throws -> [String] {
        guard !finished else { return outputFiles }
        if let t = nextTensor { throw CheckpointError.writerOrder(path: directory.path, expected: t.name, actual: "(finish)") }
        finished = true
        if groups.count > 1 {
            let wm = groups.enumerated().flatMap { i, g in g.map { ($0.name, shardFiles[i]) } }
            try StreamingShardedWriter.writeIndex(weightMap: wm, totalSize: groups.joined().reduce(0) { $0 + $1.byteCount },
                                                  to: directory.appendingPathComponent(indexFileName))
        }
        return outputFiles
    }

    public var outputFiles: [String] {
        groups.count > 1 ? shardFiles + [indexFileName] : shardFiles
    }

    /// `<baseName>.safetensors.index.json`, written only when there are several shards.
    public var indexFileName: String { "\(baseName).safetensors.index.json" }

    /// The index file: `{"metadata": {"total_size": N}, "weight_map": {tensor: shard}}`, keys
    /// sorted, two-space indent, trailing newline (as transformers writes it), atomically.
    static func writeIndex(weightMap: [(String, String)], totalSize: Int, to url: URL) throws {
        let index = JSONValue.object([
            ("metadata", .object([("total_size", .int(totalSize))])),
            ("weight_map", .object(weightMap.map { ($0.0, JSONValue.string($0.1)) })),
        ])
        let text = Array((index.serialized(sortKeys: true, indent: 2) + "\n").utf8)
        try SafetensorsWriter.atomicWrite(to: url) { h in try h.write(contentsOf: Data(text)) }
    }
}


/// The in-memory front of `StreamingShardedWriter`, for tensors already held as values.
public enum ShardedSafetensorsWriter {
    /// Checks `tensors` as `SafetensorsWriter.write` does, then writes them in the given order
    /// through `StreamingShardedWriter`: shards of at most `maxShardBytes` of tensor data (a
    /// larger tensor gets a shard of its own), named `<baseName>-00001-of-0000K.safetensors` plus
    /// `<baseName>.safetensors.index.json` when there are several, or `<baseName>.safetensors`
    /// alone when everything fits in one (as transformers' `save_pretrained` does).
    ///
    /// - Returns: the shard file names in order (the index is not listed).
    @discardableResult
    public static func write(tensors: [SafetensorsTensor], metadata: [String: String] = [:], dtype: DType,
                             maxShardBytes: Int, to directory: URL, baseName: String = "model") throws -> [String] {
        try SafetensorsWriter.validate(tensors, path: directory.path)
        let plan = tensors.map { PlannedTensor(name: $0.name, shape: $0.shape, dtype: $0.dtypeString(default: dtype)) }
        let writer = try StreamingShardedWriter(directory: directory, plan: plan, maxShardBytes: maxShardBytes,
                                                baseName: baseName, metadata: metadata)
        for t in tensors { try writer.write(name: t.name, bytes: t.encoded(default: dtype)) }
        try writer.finish()
        return writer.shardFiles
    }
}

@inline(__always)
private func posixWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, p, n)
    #else
    return Darwin.write(fd, p, n)
    #endif
}
