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

/// A Hugging Face checkpoint directory (its weights found by `HFCheckpointLayout`'s one rule:
/// `model.safetensors`, else the shards `model.safetensors.index.json` lists), or a single
/// `.safetensors` file / index file given directly.
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
            switch try HFCheckpointLayout.discover(directory: path).weights {
            case let .single(p):
                files.append((p, try SafetensorsFile(path: p)))
            case let .sharded(index):
                let sh = try ShardedSafetensors(indexPath: index)
                weightMap = sh.weightMap
                for f in sh.shards.keys.sorted(by: naturalLess) {
                    files.append(((path as NSString).appendingPathComponent(f), sh.shards[f]!))
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
        let cfg = (directory as NSString).appendingPathComponent(HFCheckpointLayout.configFile)
        if let d = FileManager.default.contents(atPath: cfg), let j = try? JSONValue.parse(Array(d)),
           let n = j["_name_or_path"]?.stringValue ?? j["name_or_path"]?.stringValue, !n.isEmpty {
            return n
        }
        return (directory as NSString).lastPathComponent
    }

    /// Files that travel with a checkpoint and are copied to a derived one.
    public static let companionFiles = HFCheckpointLayout.companionFiles

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

/// Sets `a.count` to `n` without giving back capacity, so chunk buffers of varying length are
/// allocated once instead of once per tensor (large frees and allocations cost page faults).
@inline(__always)
func resizeKeepingCapacity<T>(_ a: inout [T], _ n: Int, _ zero: T) {
    if a.count > n { a.removeLast(a.count - n) } else if a.count < n { a.append(contentsOf: repeatElement(zero, count: n - a.count)) }
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

