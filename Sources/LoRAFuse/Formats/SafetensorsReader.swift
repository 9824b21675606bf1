import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors from reading or writing safetensors files. Each names the file and, where one is
/// involved, the tensor, with the expected and the actual value.
public enum SafetensorsError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, reason: String)
    case fileTooSmall(path: String, size: Int)
    case headerTooLarge(path: String, declared: UInt64, limit: Int)
    case headerBeyondFile(path: String, declared: UInt64, fileSize: Int)
    case headerNotJSON(path: String, reason: String)
    case headerNotObject(path: String)
    case duplicateName(path: String, name: String)
    case invalidEntry(path: String, tensor: String, reason: String)
    case invalidMetadata(path: String, key: String, reason: String)
    case unknownDType(path: String, tensor: String, dtype: String)
    case sizeOverflow(path: String, tensor: String)
    case byteSizeMismatch(path: String, tensor: String, expected: Int, actual: Int)
    case offsetsReversed(path: String, tensor: String, begin: Int, end: Int)
    case hole(path: String, tensor: String, expectedBegin: Int, actualBegin: Int)
    case overlap(path: String, tensor: String, expectedBegin: Int, actualBegin: Int)
    case bufferNotAtEOF(path: String, dataEnd: Int, bufferSize: Int)
    case unsupportedDType(path: String, tensor: String, dtype: String)
    case nonFinite(path: String, tensor: String, index: Int, value: Float)
    case noSuchTensor(path: String, tensor: String)
    case invalidTensor(path: String, tensor: String, reason: String)
    case writeFailed(path: String, reason: String)
    case invalidIndex(path: String, reason: String)
    case shardMissing(index: String, shard: String)
    case tensorNotInShard(index: String, tensor: String, shard: String)

    public var description: String {
        switch self {
        case let .cannotOpen(p, r): return "\(p): cannot open: \(r)"
        case let .fileTooSmall(p, s): return "\(p): not a safetensors file: \(s) bytes, need at least 8 for the header length"
        case let .headerTooLarge(p, d, l): return "\(p): header length \(d) exceeds the limit of \(l) bytes"
        case let .headerBeyondFile(p, d, s): return "\(p): header length \(d) plus 8 exceeds the file size \(s)"
        case let .headerNotJSON(p, r): return "\(p): header is not valid JSON: \(r)"
        case let .headerNotObject(p): return "\(p): header is not a JSON object"
        case let .duplicateName(p, n): return "\(p): tensor name '\(n)' appears more than once in the header"
        case let .invalidEntry(p, t, r): return "\(p): tensor '\(t)': \(r)"
        case let .invalidMetadata(p, k, r): return "\(p): __metadata__ key '\(k)': \(r)"
        case let .unknownDType(p, t, d): return "\(p): tensor '\(t)': unknown dtype '\(d)'"
        case let .sizeOverflow(p, t): return "\(p): tensor '\(t)': element count times dtype size overflows"
        case let .byteSizeMismatch(p, t, e, a):
            return "\(p): tensor '\(t)': shape and dtype need \(e) bytes but data_offsets span \(a)"
        case let .offsetsReversed(p, t, b, e): return "\(p): tensor '\(t)': data_offsets begin \(b) > end \(e)"
        case let .hole(p, t, e, a): return "\(p): tensor '\(t)': data starts at \(a) but the previous tensor ends at \(e) (hole in the buffer)"
        case let .overlap(p, t, e, a): return "\(p): tensor '\(t)': data starts at \(a) but the previous tensor ends at \(e) (overlapping tensors)"
        case let .bufferNotAtEOF(p, d, b): return "\(p): tensors end at buffer offset \(d) but the buffer after the header is \(b) bytes"
        case let .unsupportedDType(p, t, d): return "\(p): tensor '\(t)' has dtype \(d); only F32, F16 and BF16 can be read as floats"
        case let .nonFinite(p, t, i, v): return "\(p): tensor '\(t)' holds a non-finite value (\(v)) at flat index \(i)"
        case let .noSuchTensor(p, t): return "\(p): no tensor named '\(t)'"
        case let .invalidTensor(p, t, r): return "\(p): tensor '\(t)': \(r)"
        case let .writeFailed(p, r): return "\(p): write failed: \(r)"
        case let .invalidIndex(p, r): return "\(p): invalid sharded index: \(r)"
        case let .shardMissing(i, s): return "\(i): shard file '\(s)' named in weight_map does not exist"
        case let .tensorNotInShard(i, t, s): return "\(i): weight_map puts tensor '\(t)' in '\(s)', but that file has no such tensor"
        }
    }
}

/// Element sizes of the dtypes the safetensors format defines (bits, because F4/F6 are sub-byte).
enum SafetensorsDTypes {
    static let bits: [String: Int] = [
        "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
        "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
        "I32": 32, "U32": 32, "F32": 32,
        "I64": 64, "U64": 64, "F64": 64, "C64": 64,
        "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    ]
}

/// One tensor's header entry.
public struct TensorInfo: Sendable, Equatable {
    public var name: String
    /// The safetensors dtype string (`F32`, `BF16`, `I64`, …).
    public var dtype: String
    public var shape: [Int]
    /// Absolute byte range in the file (header length and header included in the offset).
    public var byteRange: Range<Int>
    /// `data_offsets` as written: relative to the start of the buffer after the header.
    public var dataOffsets: Range<Int>

    /// The float type lorafuse converts from, or nil for dtypes it only lists.
    public var floatType: DType? { DType(rawValue: dtype) }
    public var elementCount: Int { shape.reduce(1, *) }
}

/// Owns a read-only private mapping of a whole file; unmapped when the last reader goes away.
final class MappedFile: @unchecked Sendable {
    let base: UnsafeRawPointer?
    let size: Int

    init(path: String) throws {
        try InputFile.refuseSpecialFile(path)   // before open(): a FIFO would block it
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw SafetensorsError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SafetensorsError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw SafetensorsError.cannotOpen(path: path, reason: "not a regular file") }
        size = Int(st.st_size)
        if size == 0 {
            base = nil
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else {
            throw SafetensorsError.cannotOpen(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }
}

/// A safetensors file opened by memory mapping: the header is parsed and validated up front,
/// tensor data is only touched when a tensor is read.
///
/// Validation follows the reference reader (huggingface/safetensors) before anything is trusted:
/// file ≥ 8 bytes; little-endian u64 header length N with N ≤ 100 000 000 and 8 + N ≤ file size;
/// header a JSON object (trailing spaces allowed) with no repeated names; each entry has a known
/// dtype, non-negative integer shape and `data_offsets` [begin, end] with begin ≤ end and
/// end − begin = numel · dtype size (overflow checked); the entries, sorted by offset, tile the
/// buffer from 0 without holes or overlaps and the buffer ends exactly at the end of the file.
/// Data need not be aligned; it is read with unaligned loads.
public final class SafetensorsFile: @unchecked Sendable {
    public static let maxHeaderLength = 100_000_000

    public let path: String
    /// Tensor names in the order their data appears in the file.
    public let names: [String]
    public let metadata: [String: String]
    /// Header length N (the JSON text, padding included).
    public let headerLength: Int
    private let infos: [String: TensorInfo]
    private let file: MappedFile

    public convenience init(url: URL) throws { try self.init(path: url.path) }

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        let size = file.size
        guard size >= 8, let base = file.base else { throw SafetensorsError.fileTooSmall(path: path, size: size) }
        let n = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
        guard n <= UInt64(SafetensorsFile.maxHeaderLength) else {
            throw SafetensorsError.headerTooLarge(path: path, declared: n, limit: SafetensorsFile.maxHeaderLength)
        }
        guard 8 + Int(n) <= size else { throw SafetensorsError.headerBeyondFile(path: path, declared: n, fileSize: size) }
        headerLength = Int(n)
        let headerBytes = Array(UnsafeRawBufferPointer(start: base + 8, count: headerLength))
        let json: JSONValue
        do {
            json = try JSONValue.parse(headerBytes)
        } catch let e as JSONParseError {
            throw SafetensorsError.headerNotJSON(path: path, reason: e.description)
        }
        guard let members = json.objectMembers else { throw SafetensorsError.headerNotObject(path: path) }

        var seen = Set<String>()
        var meta: [String: String] = [:]
        var infos: [String: TensorInfo] = [:]
        let bufferStart = 8 + headerLength
        let bufferSize = size - bufferStart
        for (key, value) in members {
            guard seen.insert(key).inserted else { throw SafetensorsError.duplicateName(path: path, name: key) }
            if key == "__metadata__" {
                guard let m = value.objectMembers else {
                    throw SafetensorsError.invalidMetadata(path: path, key: key, reason: "must be an object of strings")
                }
                for (mk, mv) in m {
                    guard let s = mv.stringValue else {
                        throw SafetensorsError.invalidMetadata(path: path, key: mk, reason: "value is not a string")
                    }
                    meta[mk] = s
                }
                continue
            }
            infos[key] = try SafetensorsFile.parseEntry(key, value, path: path, bufferStart: bufferStart)
        }

        // Contiguity: sorted by (begin, end), each tensor starts where the previous ended.
        let sorted = infos.values.sorted {
            ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name)
        }
        var end = 0
        for t in sorted {
            let b = t.dataOffsets.lowerBound
            if b > end { throw SafetensorsError.hole(path: path, tensor: t.name, expectedBegin: end, actualBegin: b) }
            if b < end { throw SafetensorsError.overlap(path: path, tensor: t.name, expectedBegin: end, actualBegin: b) }
            end = t.dataOffsets.upperBound
        }
        guard end == bufferSize else { throw SafetensorsError.bufferNotAtEOF(path: path, dataEnd: end, bufferSize: bufferSize) }

        self.names = sorted.map(\.name)
        self.metadata = meta
        self.infos = infos
    }

    private static func parseEntry(_ name: String, _ value: JSONValue, path: String, bufferStart: Int) throws -> TensorInfo {
        func bad(_ r: String) -> SafetensorsError { .invalidEntry(path: path, tensor: name, reason: r) }
        guard value.objectMembers != nil else { throw bad("entry is not an object") }
        guard let dtype = value["dtype"]?.stringValue else { throw bad("missing or non-string 'dtype'") }
        guard let shapeJSON = value["shape"]?.arrayValue else { throw bad("missing or non-array 'shape'") }
        guard let offsJSON = value["data_offsets"]?.arrayValue, offsJSON.count == 2 else {
            throw bad("'data_offsets' must be an array [begin, end]")
        }
        var shape: [Int] = []
        for d in shapeJSON {
            guard let u = d.strictUInt, u <= UInt64(Int.max) else { throw bad("shape entries must be non-negative integers, got \(d.serialized())") }
            shape.append(Int(u))
        }
        guard let b64 = offsJSON[0].strictUInt, let e64 = offsJSON[1].strictUInt,
              b64 <= UInt64(Int.max / 2), e64 <= UInt64(Int.max / 2) else {
            throw bad("data_offsets must be non-negative integers")
        }
        let begin = Int(b64), end = Int(e64)
        guard let bits = SafetensorsDTypes.bits[dtype] else { throw SafetensorsError.unknownDType(path: path, tensor: name, dtype: dtype) }
        guard begin <= end else { throw SafetensorsError.offsetsReversed(path: path, tensor: name, begin: begin, end: end) }
        var numel = 1
        for d in shape {
            let (p, o) = numel.multipliedReportingOverflow(by: d)
            if o { throw SafetensorsError.sizeOverflow(path: path, tensor: name) }
            numel = p
        }
        let (totalBits, o) = numel.multipliedReportingOverflow(by: bits)
        if o { throw SafetensorsError.sizeOverflow(path: path, tensor: name) }
        guard totalBits % 8 == 0 else { throw bad("\(numel) elements of \(dtype) do not fill whole bytes") }
        let nbytes = totalBits / 8
        guard nbytes == end - begin else {
            throw SafetensorsError.byteSizeMismatch(path: path, tensor: name, expected: nbytes, actual: end - begin)
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape,
                          byteRange: (bufferStart + begin)..<(bufferStart + end), dataOffsets: begin..<end)
    }

    public var tensors: [TensorInfo] { names.map { infos[$0]! } }

    public func contains(_ name: String) -> Bool { infos[name] != nil }

    public func info(_ name: String) throws -> TensorInfo {
        guard let i = infos[name] else { throw SafetensorsError.noSuchTensor(path: path, tensor: name) }
        return i
    }

    /// The tensor's raw little-endian bytes, whatever its dtype.
    public func rawBytes(_ name: String) throws -> [UInt8] {
        let i = try info(name)
        guard let base = file.base, !i.byteRange.isEmpty else { return [] }
        return Array(UnsafeRawBufferPointer(start: base + i.byteRange.lowerBound, count: i.byteRange.count))
    }

    /// The tensor's values converted to Float32 in row-major order. Only F32, F16 and BF16
    /// convert; any other dtype throws `unsupportedDType` naming the tensor.
    public func floats(_ name: String) throws -> [Float] {
        let i = try info(name)
        guard let dt = i.floatType else { throw SafetensorsError.unsupportedDType(path: path, tensor: name, dtype: i.dtype) }
        let n = i.elementCount
        guard n > 0, let base = file.base else { return [] }
        let src = base + i.byteRange.lowerBound
        return [Float](unsafeUninitializedCapacity: n) { out, count in
            switch dt {
            case .f32:
                #if _endian(little)
                // memcpy has no alignment requirement, so this is the unaligned-safe fast path.
                memcpy(out.baseAddress!, src, 4 * n)
                #else
                for k in 0..<n {
                    out[k] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self)))
                }
                #endif
            case .f16:
                for k in 0..<n {
                    out[k] = HalfConversion.floatFromHalf(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self)))
                }
            case .bf16:
                for k in 0..<n {
                    out[k] = HalfConversion.floatFromBFloat(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self)))
                }
            }
            count = n
        }
    }

    /// The tensor as a matrix: a scalar is 1×1, a 1-D tensor [n] is 1×n, a 2-D tensor is
    /// itself, and a tensor with more dimensions [d0, …, dk] is flattened to
    /// (d0·…·d(k−1)) × dk, the row-major reading of the same bytes (as `reshape(-1, dk)`).
    public func matrix(_ name: String) throws -> Matrix {
        let i = try info(name)
        let values = try floats(name)
        let (r, c) = SafetensorsFile.matrixShape(i.shape)
        return Matrix(rows: r, cols: c, data: values)
    }

    /// Like `matrix`, but throws `nonFinite` naming the tensor if any value is NaN or ±Inf.
    public func finiteMatrix(_ name: String) throws -> Matrix {
        let m = try matrix(name)
        try SafetensorsFile.checkFinite(m.data, tensor: name, path: path)
        return m
    }

    static func matrixShape(_ shape: [Int]) -> (Int, Int) {
        switch shape.count {
        case 0: return (1, 1)
        case 1: return (1, shape[0])
        default: return (shape.dropLast().reduce(1, *), shape.last!)
        }
    }

    /// Throws `nonFinite` at the first NaN or infinity, naming the tensor and the flat index.
    public static func checkFinite(_ values: [Float], tensor: String, path: String) throws {
        for (k, v) in values.enumerated() where !v.isFinite {
            throw SafetensorsError.nonFinite(path: path, tensor: tensor, index: k, value: v)
        }
    }
}
