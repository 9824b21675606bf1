import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors of the full-model tools (task vectors, LoRA extraction, merging into a base).
/// Each names the file or tensor involved and the expected vs actual value.
public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    case notACheckpoint(path: String, reason: String)
    case io(path: String, reason: String)
    case nothingMatched(first: String, second: String, firstCount: Int, secondCount: Int)
    case shapeMismatch(tensor: String, expected: [Int], actual: [Int], context: String)
    case unmappedModule(adapter: String, module: String, tried: String)
    case unsupported(what: String, reason: String)
    case writerOrder(path: String, expected: String, actual: String)
    case writerSize(path: String, tensor: String, expected: Int, actual: Int)

    public var description: String {
        switch self {
        case let .notACheckpoint(p, r): return "\(p): not a Hugging Face safetensors checkpoint: \(r)"
        case let .io(p, r): return "\(p): \(r)"
        case let .nothingMatched(a, b, na, nb):
            return "no tensor of \(a) (\(na) tensors) matches one of \(b) (\(nb) tensors) by name, shape and float dtype"
        case let .shapeMismatch(t, e, a, c): return "\(c): tensor '\(t)' expected shape \(e), got \(a)"
        case let .unmappedModule(ad, m, tried):
            return "\(ad): adapter module '\(m)' matches no tensor of the base (tried \(tried))"
        case let .unsupported(w, r): return "\(w): \(r)"
        case let .writerOrder(p, e, a): return "\(p): streaming writer expected tensor '\(e)' next, got '\(a)'"
        case let .writerSize(p, t, e, a): return "\(p): tensor '\(t)' needs \(e) bytes, got \(a)"
        }
    }
}

/// A Hugging Face checkpoint directory (`config.json` + `model.safetensors`, or shards listed in
/// `model.safetensors.index.json`), or a single `.safetensors` file / index file given directly.
///
/// Headers are parsed and validated by `SafetensorsFile`; tensor data is then read with `pread`
/// into a caller-owned buffer rather than through the mapping, so streaming a whole model keeps
/// the resident set at a few tensors (pages touched through an mmap stay resident and would count
/// toward the peak RSS until unmapped).
public final class HFCheckpoint: @unchecked Sendable {
    /// The directory holding the weights (config and tokenizer files are looked up here).
    public let directory: String
    /// Tensor names in storage order (shard by shard).
    public let names: [String]
    public let infos: [String: TensorInfo]
    /// Shard path of each tensor.
    public let filePaths: [String: String]
    private var fds: [String: Int32] = [:]
    private let lock = NSLock()

    public init(path: String) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
            throw CheckpointError.notACheckpoint(path: path, reason: "does not exist")
        }
        var files: [(String, SafetensorsFile)] = []
        var weightMap: [String: String]? = nil
        if isDir.boolValue {
            directory = path
            let index = (path as NSString).appendingPathComponent("model.safetensors.index.json")
            let single = (path as NSString).appendingPathComponent("model.safetensors")
            if fm.fileExists(atPath: index) {
                let sh = try ShardedSafetensors(indexPath: index)
                weightMap = sh.weightMap
                for f in sh.shards.keys.sorted(by: naturalLess) {
                    files.append(((path as NSString).appendingPathComponent(f), sh.shards[f]!))
                }
            } else if fm.fileExists(atPath: single) {
                files.append((single, try SafetensorsFile(path: single)))
            } else {
                let st = ((try? fm.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasSuffix(".safetensors") }.sorted(by: naturalLess)
                guard !st.isEmpty else {
                    throw CheckpointError.notACheckpoint(path: path, reason: "no model.safetensors, model.safetensors.index.json or *.safetensors")
                }
                for f in st {
                    let p = (path as NSString).appendingPathComponent(f)
                    files.append((p, try SafetensorsFile(path: p)))
                }
            }
        } else {
            directory = (path as NSString).deletingLastPathComponent
            if path.hasSuffix(".json") {
                let sh = try ShardedSafetensors(indexPath: path)
                weightMap = sh.weightMap
                for f in sh.shards.keys.sorted(by: naturalLess) {
                    files.append(((directory as NSString).appendingPathComponent(f), sh.shards[f]!))
                }
            } else {
                files.append((path, try SafetensorsFile(path: path)))
            }
        }
        var names: [String] = []
        var infos: [String: TensorInfo] = [:]
        var paths: [String: String] = [:]
        for (p, f) in files {
            let fname = (p as NSString).lastPathComponent
            for t in f.tensors {
                if let wm = weightMap, wm[t.name] != fname { continue }
                if infos[t.name] != nil {
                    throw CheckpointError.notACheckpoint(path: path, reason: "tensor '\(t.name)' appears in more than one file")
                }
                names.append(t.name)
                infos[t.name] = t
                paths[t.name] = p
            }
        }
        self.names = names
        self.infos = infos
        self.filePaths = paths
    }

    deinit {
        for fd in fds.values { close(fd) }
    }

    public func contains(_ name: String) -> Bool { infos[name] != nil }

    public func info(_ name: String) throws -> TensorInfo {
        guard let i = infos[name] else { throw SafetensorsError.noSuchTensor(path: directory, tensor: name) }
        return i
    }

    /// Total bytes of tensor data.
    public var totalBytes: Int { infos.values.reduce(0) { $0 + $1.byteRange.count } }

    private func fd(for path: String) throws -> Int32 {
        lock.lock(); defer { lock.unlock() }
        if let fd = fds[path] { return fd }
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw CheckpointError.io(path: path, reason: "cannot open: \(String(cString: strerror(errno)))") }
        fds[path] = fd
        return fd
    }

    /// Reads the tensor's raw bytes into `buffer` (resized to fit).
    public func readRaw(_ name: String, into buffer: inout [UInt8]) throws {
        let i = try info(name)
        let path = filePaths[name]!
        let fd = try fd(for: path)
        let n = i.byteRange.count
        resizeKeepingCapacity(&buffer, n, 0)
        try buffer.withUnsafeMutableBytes { raw in
            try HFCheckpoint.preadFully(fd, raw.baseAddress, n, offset: i.byteRange.lowerBound, path: path)
        }
    }

    /// Reads a F32/F16/BF16 tensor as Float32 into `values` (resized to fit); `scratch` holds the
    /// raw bytes of 16-bit tensors and is reused across calls.
    public func readFloats(_ name: String, into values: inout [Float], scratch: inout [UInt8]) throws {
        let i = try info(name)
        guard let dt = i.floatType else {
            throw SafetensorsError.unsupportedDType(path: filePaths[name]!, tensor: name, dtype: i.dtype)
        }
        let n = i.elementCount
        resizeKeepingCapacity(&values, n, 0)
        if n == 0 { return }
        let path = filePaths[name]!
        let fd = try fd(for: path)
        switch dt {
        case .f32:
            try values.withUnsafeMutableBytes { raw in
                try HFCheckpoint.preadFully(fd, raw.baseAddress, 4 * n, offset: i.byteRange.lowerBound, path: path)
            }
            #if _endian(big)
            for k in 0..<n { values[k] = Float(bitPattern: UInt32(littleEndian: values[k].bitPattern)) }
            #endif
        case .f16, .bf16:
            try readRaw(name, into: &scratch)
            TensorCodec.decode(scratch, dtype: dt, into: &values)
        }
    }

    /// Reads elements `range` (flat, row-major) of a F32/F16/BF16 tensor as Float32 into `values`
    /// (resized to `range.count`), so elementwise work can stream a large tensor in chunks.
    public func readFloats(_ name: String, elements range: Range<Int>, into values: inout [Float], scratch: inout [UInt8]) throws {
        let i = try info(name)
        guard let dt = i.floatType else {
            throw SafetensorsError.unsupportedDType(path: filePaths[name]!, tensor: name, dtype: i.dtype)
        }
        precondition(range.lowerBound >= 0 && range.upperBound <= i.elementCount, "element range \(range) outside \(name)")
        let n = range.count
        resizeKeepingCapacity(&values, n, 0)
        if n == 0 { return }
        let path = filePaths[name]!
        let fd = try fd(for: path)
        let offset = i.byteRange.lowerBound + range.lowerBound * dt.byteSize
        if dt == .f32 {
            try values.withUnsafeMutableBytes { raw in
                try HFCheckpoint.preadFully(fd, raw.baseAddress, 4 * n, offset: offset, path: path)
            }
            #if _endian(big)
            for k in 0..<n { values[k] = Float(bitPattern: UInt32(littleEndian: values[k].bitPattern)) }
            #endif
        } else {
            resizeKeepingCapacity(&scratch, n * dt.byteSize, 0)
            try scratch.withUnsafeMutableBytes { raw in
                try HFCheckpoint.preadFully(fd, raw.baseAddress, n * dt.byteSize, offset: offset, path: path)
            }
            TensorCodec.decode(scratch, dtype: dt, into: &values)
        }
    }

    /// Reads bytes `range` (relative to the tensor's data) into `buffer` (resized to fit).
    public func readRaw(_ name: String, bytes range: Range<Int>, into buffer: inout [UInt8]) throws {
        let i = try info(name)
        precondition(range.lowerBound >= 0 && range.upperBound <= i.byteRange.count, "byte range \(range) outside \(name)")
        let path = filePaths[name]!
        let fd = try fd(for: path)
        resizeKeepingCapacity(&buffer, range.count, 0)
        try buffer.withUnsafeMutableBytes { raw in
            try HFCheckpoint.preadFully(fd, raw.baseAddress, range.count, offset: i.byteRange.lowerBound + range.lowerBound, path: path)
        }
    }

    /// Convenience: the tensor as Float32 values (allocates).
    public func floats(_ name: String) throws -> [Float] {
        var v: [Float] = []
        var s: [UInt8] = []
        try readFloats(name, into: &v, scratch: &s)
        return v
    }

    static func preadFully(_ fd: Int32, _ dst: UnsafeMutableRawPointer?, _ count: Int, offset: Int, path: String) throws {
        guard let dst, count > 0 else { return }
        var done = 0
        while done < count {
            let r = pread(fd, dst + done, min(count - done, 1 << 30), off_t(offset + done))
            if r < 0 {
                if errno == EINTR { continue }
                throw CheckpointError.io(path: path, reason: "read failed: \(String(cString: strerror(errno)))")
            }
            if r == 0 { throw CheckpointError.io(path: path, reason: "unexpected end of file at \(offset + done)") }
            done += r
        }
    }

    /// The `_name_or_path` / `name_or_path` in config.json, else the directory name.
    public var displayName: String {
        let cfg = (directory as NSString).appendingPathComponent("config.json")
        if let d = FileManager.default.contents(atPath: cfg), let j = try? JSONValue.parse(Array(d)),
           let n = j["_name_or_path"]?.stringValue ?? j["name_or_path"]?.stringValue, !n.isEmpty {
            return n
        }
        return (directory as NSString).lastPathComponent
    }

    /// Files that travel with a checkpoint and are copied to a derived one.
    public static let companionFiles = [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
        "chat_template.jinja", "chat_template.json",
    ]

    /// Copies the companion files present in this checkpoint's directory to `output`.
    @discardableResult
    public func copyCompanionFiles(to output: String, only: [String]? = nil) throws -> [String] {
        let fm = FileManager.default
        var copied: [String] = []
        for f in only ?? HFCheckpoint.companionFiles {
            let src = (directory as NSString).appendingPathComponent(f)
            guard fm.fileExists(atPath: src) else { continue }
            let dst = (output as NSString).appendingPathComponent(f)
            try? fm.removeItem(atPath: dst)
            do { try fm.copyItem(atPath: src, toPath: dst) } catch {
                throw CheckpointError.io(path: dst, reason: "cannot copy \(src): \(error)")
            }
            copied.append(f)
        }
        return copied
    }
}

/// Float32 ↔ F32/F16/BF16 little-endian bytes, into reusable buffers.
public enum TensorCodec {
    public static func decode(_ bytes: [UInt8], dtype: DType, into values: inout [Float]) {
        let n = bytes.count / dtype.byteSize
        resizeKeepingCapacity(&values, n, 0)
        bytes.withUnsafeBytes { src in
            values.withUnsafeMutableBufferPointer { out in
                switch dtype {
                case .f32:
                    for k in 0..<n { out[k] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self))) }
                case .f16:
                    for k in 0..<n { out[k] = HalfConversion.floatFromHalf(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))) }
                case .bf16:
                    #if _endian(little)
                    // A plain shift over aligned UInt16s, which the compiler vectorizes (Swift
                    // arrays are at least 16-byte aligned).
                    let h = src.bindMemory(to: UInt16.self)
                    let o = UnsafeMutableRawPointer(out.baseAddress!).assumingMemoryBound(to: UInt32.self)
                    for k in 0..<n { o[k] = UInt32(h[k]) << 16 }
                    #else
                    for k in 0..<n { out[k] = HalfConversion.floatFromBFloat(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))) }
                    #endif
                }
            }
        }
    }

    public static func encode(_ values: [Float], dtype: DType, into bytes: inout [UInt8]) {
        let n = values.count
        resizeKeepingCapacity(&bytes, n * dtype.byteSize, 0)
        values.withUnsafeBufferPointer { v in
            bytes.withUnsafeMutableBytes { raw in
                switch dtype {
                case .f32: for k in 0..<n { raw.storeBytes(of: v[k].bitPattern.littleEndian, toByteOffset: 4 * k, as: UInt32.self) }
                case .f16: for k in 0..<n { raw.storeBytes(of: HalfConversion.halfFromFloat(v[k]).littleEndian, toByteOffset: 2 * k, as: UInt16.self) }
                case .bf16:
                    #if _endian(little)
                    // Branch-free form of HalfConversion.bfloatFromFloat (round to nearest even,
                    // NaN kept quiet), so the loop vectorizes; bit-identical to it.
                    let o = raw.bindMemory(to: UInt16.self)
                    let bits = UnsafeRawPointer(v.baseAddress!).assumingMemoryBound(to: UInt32.self)
                    for k in 0..<n {
                        let b = bits[k]
                        let rounded = UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
                        let quiet = UInt16(truncatingIfNeeded: b >> 16) | 0x40
                        o[k] = (b & 0x7FFF_FFFF) > 0x7F80_0000 ? quiet : rounded
                    }
                    #else
                    for k in 0..<n { raw.storeBytes(of: HalfConversion.bfloatFromFloat(v[k]).littleEndian, toByteOffset: 2 * k, as: UInt16.self) }
                    #endif
                }
            }
        }
    }
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
        for t in plan where !seen.insert(t.name).inserted {
            throw SafetensorsError.duplicateName(path: directory.path, name: t.name)
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
        var members: [(String, JSONValue)] = []
        if !metadata.isEmpty {
            let m = metadata.sorted { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }
            members.append(("__metadata__", .object(m.map { ($0.key, JSONValue.string($0.value)) })))
        }
        var off = 0
        for t in group {
            let n = t.byteCount
            members.append((t.name, .object([
                ("dtype", .string(t.dtype)),
                ("shape", .array(t.shape.map { JSONValue.int($0) })),
                ("data_offsets", .array([.int(off), .int(off + n)])),
            ])))
            off += n
        }
        var h = Array(JSONValue.object(members).serialized().utf8)
        while (8 + h.count) % 8 != 0 { h.append(0x20) }
        var out = [UInt8]()
        appendLE(&out, UInt64(h.count))
        return out + h
    }

    private func openShard() throws {
        let final = directory.appendingPathComponent(shardFiles[shardIndex]).path
        let tmp = directory.appendingPathComponent(".\(shardFiles[shardIndex]).tmp-\(getpid())").path
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw CheckpointError.io(path: final, reason: "cannot create: \(String(cString: strerror(errno)))") }
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
            var wm: [(String, JSONValue)] = []
            var total = 0
            for (i, g) in groups.enumerated() {
                for t in g { wm.append((t.name, .string(shardFiles[i]))); total += t.byteCount }
            }
            let index = JSONValue.object([
                ("metadata", .object([("total_size", .int(total))])),
                ("weight_map", .object(wm)),
            ])
            let text = Array((index.serialized(sortKeys: true, indent: 2) + "\n").utf8)
            try SafetensorsWriter.atomicWrite(to: directory.appendingPathComponent("\(baseName).safetensors.index.json")) { h in
                try h.write(contentsOf: Data(text))
            }
        }
        return outputFiles
    }

    public var outputFiles: [String] {
        groups.count > 1 ? shardFiles + ["\(baseName).safetensors.index.json"] : shardFiles
    }
}

/// Sets `a.count` to `n` without giving back capacity, so chunk buffers of varying length are
/// allocated once instead of once per tensor (large frees and allocations cost page faults).
@inline(__always)
func resizeKeepingCapacity<T>(_ a: inout [T], _ n: Int, _ zero: T) {
    if a.count > n { a.removeLast(a.count - n) } else if a.count < n { a.append(contentsOf: repeatElement(zero, count: n - a.count)) }
}

@inline(__always)
private func posixWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, p, n)
    #else
    return Darwin.write(fd, p, n)
    #endif
}

/// Parses sizes like `2GB`, `500MB`, `4GiB`, `1000000` (bytes).
public func parseByteSize(_ s: String) -> Int? {
    let t = s.trimmingCharacters(in: .whitespaces).uppercased()
    let units: [(String, Double)] = [("GIB", 1_073_741_824), ("MIB", 1_048_576), ("KIB", 1024), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("G", 1e9), ("M", 1e6), ("K", 1e3), ("B", 1)]
    for (u, f) in units where t.hasSuffix(u) {
        guard let v = Double(t.dropLast(u.count).trimmingCharacters(in: .whitespaces)), v > 0 else { return nil }
        return Int(v * f)
    }
    if let v = Int(t), v > 0 { return v }
    return nil
}

