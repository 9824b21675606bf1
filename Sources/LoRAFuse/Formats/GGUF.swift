import Foundation

// GGUF (ggml's model file format), versions 2 and 3, little-endian:
//
//   magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count × (string key | u32 value type | value)
//   tensor_count × (string name | u32 n_dims | n_dims × u64 ne | u32 ggml type | u64 offset)
//   padding to `general.alignment` (default 32) | tensor data
//
// string = u64 byte length + UTF-8 bytes (no terminator); array = u32 element type + u64 count +
// elements. Tensor offsets are relative to the data section and, as ggml's own reader demands,
// offset_0 = 0 and offset_i = align(offset_{i-1} + size_{i-1}). Version 1 used u32 counts and
// lengths and is not read.

// MARK: - Metadata values

/// The type tag of a GGUF metadata value (u32 on disk).
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Bytes of a value of this type on disk, for fixed-size types; nil for string and array.
    public var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }

    /// The fewest bytes one value of this type can take: what count sanity checks multiply by.
    var minimumSize: Int { fixedSize ?? (self == .string ? 8 : 12) }
}

/// One GGUF metadata value. Arrays keep their element type so empty arrays round-trip and nested
/// arrays (`.array(.array, …)`) are representable.
public indirect enum GGUFValue: Sendable, Equatable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case float32(Float), bool(Bool), string(String)
    case array(GGUFValueType, [GGUFValue])
    case uint64(UInt64), int64(Int64), float64(Double)

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .float32: return .float32
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        case .uint64: return .uint64
        case .int64: return .int64
        case .float64: return .float64
        }
    }

    /// Any integer value that fits in `Int`; nil for other types.
    public var asInt: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return Int(exactly: v)
        case .int64(let v): return Int(v)
        default: return nil
        }
    }

    /// Any numeric value (integers converted) as Double.
    public var asDouble: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        case .uint64(let v): return Double(v)
        default: return asInt.map(Double.init)
        }
    }

    /// Any numeric value as Float (f32 values unchanged).
    public var asFloat: Float? {
        if case .float32(let v) = self { return v }
        return asDouble.map(Float.init)
    }

    public var asBool: Bool? {
        if case .bool(let v) = self { return v }
        return nil
    }

    public var asString: String? {
        if case .string(let v) = self { return v }
        return nil
    }

    public var asArray: [GGUFValue]? {
        if case .array(_, let v) = self { return v }
        return nil
    }

    /// An array of strings; nil if this is not an array or any element is not a string.
    public var asStringArray: [String]? {
        guard let items = asArray else { return nil }
        var out = [String]()
        out.reserveCapacity(items.count)
        for item in items {
            guard let s = item.asString else { return nil }
            out.append(s)
        }
        return out
    }

    /// An array of integers (any integer element type).
    public var asIntArray: [Int]? {
        guard let items = asArray else { return nil }
        var out = [Int]()
        out.reserveCapacity(items.count)
        for item in items {
            guard let v = item.asInt else { return nil }
            out.append(v)
        }
        return out
    }

    /// An array of numbers (any numeric element type) as Float.
    public var asFloatArray: [Float]? {
        guard let items = asArray else { return nil }
        var out = [Float]()
        out.reserveCapacity(items.count)
        for item in items {
            guard let v = item.asFloat else { return nil }
            out.append(v)
        }
        return out
    }

    public var description: String {
        switch self {
        case .uint8(let v): return "\(v)"
        case .int8(let v): return "\(v)"
        case .uint16(let v): return "\(v)"
        case .int16(let v): return "\(v)"
        case .uint32(let v): return "\(v)"
        case .int32(let v): return "\(v)"
        case .float32(let v): return "\(v)"
        case .bool(let v): return "\(v)"
        case .string(let v): return "\"\(v)\""
        case .uint64(let v): return "\(v)"
        case .int64(let v): return "\(v)"
        case .float64(let v): return "\(v)"
        case .array(let t, let items):
            let head = items.prefix(8).map(\.description).joined(separator: ", ")
            return "[\(t) × \(items.count): \(head)\(items.count > 8 ? ", …" : "")]"
        }
    }
}

// MARK: - Errors

/// What went wrong reading or writing a GGUF file. Reading stops at the first bad field; the error
/// names the file, the field / key / tensor, and what was expected versus found.
public enum GGUFError: Error, CustomStringConvertible, Equatable {
    case io(path: String, message: String)
    case badMagic(path: String, actual: [UInt8])
    case unsupportedVersion(path: String, version: UInt32, reason: String)
    /// Fewer bytes left than a field needs.
    case truncated(path: String, field: String, offset: Int, needed: UInt64, available: Int)
    /// A count that cannot fit in the bytes left (checked before anything is allocated).
    case countTooLarge(path: String, field: String, count: UInt64, maximum: Int)
    case invalidValueType(path: String, key: String, typeID: UInt32)
    case invalidString(path: String, field: String)
    case invalidValue(path: String, key: String, expected: String, actual: String)
    case duplicateKey(path: String, key: String)
    case invalidAlignment(path: String, value: String)
    case duplicateTensor(path: String, name: String)
    /// A tensor-info field out of range: n_dims, a dim, the element count, or dims[0] vs block size.
    case invalidTensor(path: String, tensor: String, field: String, expected: String, actual: String)
    case unknownTensorType(path: String, tensor: String, typeID: UInt32)
    case badTensorOffset(path: String, tensor: String, expected: UInt64, actual: UInt64)
    case dataOutOfBounds(path: String, tensor: String, end: Int, fileSize: Int)
    case tensorNotFound(path: String, name: String)
    case unsupportedTensorType(path: String, tensor: String, type: GGMLType)
    case notAMatrix(path: String, tensor: String, dims: [Int])
    /// Something the writer was asked to do that would make an invalid file.
    case invalidWrite(message: String)

    public var description: String {
        switch self {
        case let .io(path, message):
            return "\(path): \(message)"
        case let .badMagic(path, actual):
            let shown = actual.map { String(format: "%02x", $0) }.joined(separator: " ")
            return "\(path): not a GGUF file: magic expected 47 47 55 46 (\"GGUF\"), found \(shown)"
        case let .unsupportedVersion(path, version, reason):
            return "\(path): GGUF version expected 2 or 3, found \(version): \(reason)"
        case let .truncated(path, field, offset, needed, available):
            return "\(path): truncated at \(field) (byte \(offset)): needs \(needed) bytes, \(available) left"
        case let .countTooLarge(path, field, count, maximum):
            return "\(path): \(field) = \(count) cannot fit in the rest of the file (at most \(maximum))"
        case let .invalidValueType(path, key, typeID):
            return "\(path): metadata \"\(key)\": value type expected 0...12, found \(typeID)"
        case let .invalidString(path, field):
            return "\(path): \(field) is not valid UTF-8"
        case let .invalidValue(path, key, expected, actual):
            return "\(path): metadata \"\(key)\": expected \(expected), found \(actual)"
        case let .duplicateKey(path, key):
            return "\(path): duplicate metadata key \"\(key)\""
        case let .invalidAlignment(path, value):
            return "\(path): general.alignment expected a nonzero power of two (u32), found \(value)"
        case let .duplicateTensor(path, name):
            return "\(path): duplicate tensor name \"\(name)\""
        case let .invalidTensor(path, tensor, field, expected, actual):
            return "\(path): tensor \"\(tensor)\": \(field) expected \(expected), found \(actual)"
        case let .unknownTensorType(path, tensor, typeID):
            return "\(path): tensor \"\(tensor)\": unknown ggml type id \(typeID)"
        case let .badTensorOffset(path, tensor, expected, actual):
            return "\(path): tensor \"\(tensor)\": data offset expected \(expected) (tensors in order, each aligned), found \(actual)"
        case let .dataOutOfBounds(path, tensor, end, fileSize):
            return "\(path): tensor \"\(tensor)\": data ends at byte \(end), past the end of the file (\(fileSize) bytes)"
        case let .tensorNotFound(path, name):
            return "\(path): no tensor named \"\(name)\""
        case let .unsupportedTensorType(path, tensor, type):
            let supported = GGMLType.dequantizable.map(\.name).joined(separator: ", ")
            return "\(path): tensor \"\(tensor)\": type \(type.name) (id \(type.rawValue)) cannot be dequantized; supported: \(supported)"
        case let .notAMatrix(path, tensor, dims):
            return "\(path): tensor \"\(tensor)\": dims \(dims) expected at most two dims larger than 1 after dims[0], dims[1]"
        case let .invalidWrite(message):
            return "GGUF writer: \(message)"
        }
    }
}

// MARK: - Tensor info

/// One tensor's header entry. `dims` are in ggml order: dims[0] is the contiguous axis, so a
/// PyTorch weight W of shape [out, in] is stored with dims [in, out].
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    public let dims: [Int]
    public let type: GGMLType
    /// Offset of the data relative to the start of the data section.
    public let offset: Int
    public let byteSize: Int
    public var elementCount: Int { dims.reduce(1, *) }
    /// Number of rows in ggml's sense: everything but dims[0].
    public var rowCount: Int { elementCount / max(dims.first ?? 1, 1) }
}

// MARK: - Reader

/// A GGUF file opened read-only and memory-mapped. The header (metadata and tensor infos) is parsed
/// and fully validated on open; tensor data is only touched when asked for.
public final class GGUFFile: Sendable {
    public let path: String
    public let version: UInt32
    /// Keys in file order.
    public let metadataKeys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Absolute byte offset of the data section.
    public let dataOffset: Int
    public let fileSize: Int
    private let tensorIndex: [String: Int]
    private let data: Data

    public convenience init(path: String) throws {
        let data: Data
        try InputFile.refuseSpecialFile(path)
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            throw GGUFError.io(path: path, message: "cannot open: \(error.localizedDescription)")
        }
        try self.init(data: data, path: path)
    }

    /// Parses an in-memory (or already mapped) file; `path` is only used in error messages.
    public init(data: Data, path: String = "<memory>") throws {
        self.path = path
        self.data = data
        self.fileSize = data.count
        let header = try data.withUnsafeBytes { raw in
            try GGUFFile.parseHeader(raw, path: path)
        }
        version = header.version
        metadataKeys = header.keys
        metadata = header.metadata
        tensors = header.tensors
        alignment = header.alignment
        dataOffset = header.dataOffset
        var index = [String: Int]()
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        tensorIndex = index
    }

    public func tensorInfo(_ name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    // MARK: Data access

    private func info(_ name: String, dequantizable: Bool) throws -> GGUFTensorInfo {
        guard let t = tensorInfo(name) else { throw GGUFError.tensorNotFound(path: path, name: name) }
        if dequantizable && !t.type.canDequantize {
            throw GGUFError.unsupportedTensorType(path: path, tensor: name, type: t.type)
        }
        return t
    }

    /// The tensor's stored bytes (copied out of the mapping).
    public func rawBytes(_ name: String) throws -> [UInt8] {
        let t = try info(name, dequantizable: false)
        let start = dataOffset + t.offset
        return [UInt8](data[data.startIndex + start ..< data.startIndex + start + t.byteSize])
    }

    /// All values of a tensor as Float, in storage order (dims[0] fastest).
    public func floats(_ name: String) throws -> [Float] {
        let t = try info(name, dequantizable: true)
        return try floats(name, rows: 0..<t.rowCount)
    }

    /// The values of ggml rows `rows` (a row is dims[0] contiguous values), dequantized row by row
    /// so only the requested part of the mapping is read.
    public func floats(_ name: String, rows: Range<Int>) throws -> [Float] {
        let t = try info(name, dequantizable: true)
        guard rows.lowerBound >= 0, rows.upperBound <= t.rowCount else {
            throw GGUFError.invalidTensor(path: path, tensor: name, field: "row range",
                                          expected: "within 0..<\(t.rowCount)", actual: "\(rows)")
        }
        let rowLen = t.dims.first ?? 1
        let rowBytes = t.type.byteCount(elements: rowLen)
        var out = [Float](repeating: 0, count: rows.count * rowLen)
        data.withUnsafeBytes { raw in
            let base = raw.baseAddress! + dataOffset + t.offset
            out.withUnsafeMutableBufferPointer { dst in
                for (k, r) in rows.enumerated() {
                    GGUFQuant.dequantize(t.type, src: base + r * rowBytes, count: rowLen,
                                         into: dst.baseAddress! + k * rowLen)
                }
            }
        }
        return out
    }

    /// The tensor as a PyTorch-layout matrix: ggml dims [ne0, ne1] become a row-major (ne1, ne0)
    /// matrix, so a weight W[out, in] (stored as dims [in, out]) comes back as (out, in).
    /// A 1-D tensor is a (1, ne0) matrix; trailing dims of size 1 are allowed.
    public func matrix(_ name: String) throws -> Matrix {
        let t = try info(name, dequantizable: true)
        guard t.dims.count <= 2 || t.dims[2...].allSatisfy({ $0 == 1 }) else {
            throw GGUFError.notAMatrix(path: path, tensor: name, dims: t.dims)
        }
        let cols = t.dims[0]
        let rows = t.dims.count > 1 ? t.dims[1] : 1
        return Matrix(rows: rows, cols: cols, data: try floats(name))
    }

    // MARK: Header parsing

    private struct Header {
        var version: UInt32 = 0
        var keys: [String] = []
        var metadata: [String: GGUFValue] = [:]
        var tensors: [GGUFTensorInfo] = []
        var alignment = 32
        var dataOffset = 0
    }

    /// Bounds-checked little-endian cursor over the file bytes.
    private struct Cursor {
        let raw: UnsafeRawBufferPointer
        let path: String
        var pos = 0
        var remaining: Int { raw.count - pos }

        init(_ raw: UnsafeRawBufferPointer, path: String) {
            self.raw = raw
            self.path = path
        }

        mutating func need(_ n: UInt64, _ field: @autoclosure () -> String) throws {
            if n > UInt64(remaining) {
                throw GGUFError.truncated(path: path, field: field(), offset: pos, needed: n, available: remaining)
            }
        }

        mutating func read<T: FixedWidthInteger>(_: T.Type, _ field: @autoclosure () -> String) throws -> T {
            try need(UInt64(MemoryLayout<T>.size), field())
            let v = raw.loadUnaligned(fromByteOffset: pos, as: T.self)
            pos += MemoryLayout<T>.size
            return T(littleEndian: v)
        }

        mutating func string(_ field: @autoclosure () -> String) throws -> String {
            let len = try read(UInt64.self, "\(field()) length")
            try need(len, "\(field()) bytes")
            let bytes = UnsafeRawBufferPointer(rebasing: raw[pos ..< pos + Int(len)])
            pos += Int(len)
            guard let s = String(bytes: bytes, encoding: .utf8) else {
                throw GGUFError.invalidString(path: path, field: field())
            }
            return s
        }

        /// Reads a count and checks that `count` items of at least `minSize` bytes fit in the rest.
        mutating func count(_ field: @autoclosure () -> String, minSize: Int) throws -> Int {
            let n = try read(UInt64.self, field())
            let maximum = remaining / max(minSize, 1)
            if n > UInt64(maximum) {
                throw GGUFError.countTooLarge(path: path, field: field(), count: n, maximum: maximum)
            }
            return Int(n)
        }

        mutating func valueType(_ key: String) throws -> GGUFValueType {
            let id = try read(UInt32.self, "type of \"\(key)\"")
            guard let t = GGUFValueType(rawValue: id) else {
                throw GGUFError.invalidValueType(path: path, key: key, typeID: id)
            }
            return t
        }

        mutating func value(_ type: GGUFValueType, key: String, depth: Int = 0) throws -> GGUFValue {
            let f = "value of \"\(key)\""
            switch type {
            case .uint8: return .uint8(try read(UInt8.self, f))
            case .int8: return .int8(try read(Int8.self, f))
            case .uint16: return .uint16(try read(UInt16.self, f))
            case .int16: return .int16(try read(Int16.self, f))
            case .uint32: return .uint32(try read(UInt32.self, f))
            case .int32: return .int32(try read(Int32.self, f))
            case .float32: return .float32(Float(bitPattern: try read(UInt32.self, f)))
            case .uint64: return .uint64(try read(UInt64.self, f))
            case .int64: return .int64(try read(Int64.self, f))
            case .float64: return .float64(Double(bitPattern: try read(UInt64.self, f)))
            case .bool:
                let b = try read(UInt8.self, f)
                guard b <= 1 else {
                    throw GGUFError.invalidValue(path: path, key: key, expected: "bool 0 or 1", actual: "\(b)")
                }
                return .bool(b == 1)
            case .string: return .string(try string(f))
            case .array:
                // Nesting is bounded by the bytes left (each level takes ≥ 12), but keep the
                // recursion shallow so a hostile file cannot exhaust the stack.
                guard depth < 64 else {
                    throw GGUFError.countTooLarge(path: path, field: "array nesting of \"\(key)\"", count: UInt64(depth), maximum: 64)
                }
                let elem = try valueType(key)
                let n = try count("element count of \"\(key)\"", minSize: elem.minimumSize)
                var items = [GGUFValue]()
                items.reserveCapacity(n)
                for _ in 0..<n { items.append(try value(elem, key: key, depth: depth + 1)) }
                return .array(elem, items)
            }
        }
    }

    private static func parseHeader(_ raw: UnsafeRawBufferPointer, path: String) throws -> Header {
        var c = Cursor(raw, path: path)
        var h = Header()
        if raw.count < 4 || !raw.prefix(4).elementsEqual(Array("GGUF".utf8)) {
            throw GGUFError.badMagic(path: path, actual: Array(raw.prefix(4)))
        }
        c.pos = 4
        h.version = try c.read(UInt32.self, "version")
        switch h.version {
        case 2, 3: break
        case 1:
            throw GGUFError.unsupportedVersion(path: path, version: 1,
                reason: "version 1 (32-bit counts and lengths) is obsolete; re-convert with a current llama.cpp")
        default:
            let reason = h.version.byteSwapped <= 3
                ? "this looks like a big-endian GGUF, which is not supported"
                : "unknown version"
            throw GGUFError.unsupportedVersion(path: path, version: h.version, reason: reason)
        }
        // Each tensor info takes at least 8 (name length) + 4 + 8 + 4 + 8 bytes; each kv 8 + 4 + 1.
        let nTensors = try c.read(UInt64.self, "tensor_count")
        let nKV = try c.count("kv_count", minSize: 13)
        if nTensors > UInt64(c.remaining / 32) {
            throw GGUFError.countTooLarge(path: path, field: "tensor_count", count: nTensors, maximum: c.remaining / 32)
        }

        h.keys.reserveCapacity(nKV)
        for i in 0..<nKV {
            let key = try c.string("key of metadata entry \(i)")
            let type = try c.valueType(key)
            let value = try c.value(type, key: key)
            if h.metadata[key] != nil { throw GGUFError.duplicateKey(path: path, key: key) }
            h.metadata[key] = value
            h.keys.append(key)
        }

        if let a = h.metadata["general.alignment"] {
            guard case .uint32(let v) = a, v != 0, v & (v - 1) == 0 else {
                throw GGUFError.invalidAlignment(path: path, value: "\(a) (\(a.type))")
            }
            h.alignment = Int(v)
        }

        var seen = Set<String>()
        var expectedOffset: UInt64 = 0
        h.tensors.reserveCapacity(Int(nTensors))
        for i in 0..<Int(nTensors) {
            let name = try c.string("name of tensor \(i)")
            if !seen.insert(name).inserted { throw GGUFError.duplicateTensor(path: path, name: name) }
            let nDims = try c.read(UInt32.self, "n_dims of tensor \"\(name)\"")
            guard (1...4).contains(nDims) else {
                throw GGUFError.invalidTensor(path: path, tensor: name, field: "n_dims", expected: "1...4", actual: "\(nDims)")
            }
            var dims = [Int]()
            var elements: UInt64 = 1
            for d in 0..<Int(nDims) {
                let ne = try c.read(UInt64.self, "dims[\(d)] of tensor \"\(name)\"")
                guard ne > 0, ne <= UInt64(Int64.max) else {
                    throw GGUFError.invalidTensor(path: path, tensor: name, field: "dims[\(d)]",
                                                  expected: "1...\(Int64.max)", actual: "\(Int64(bitPattern: ne))")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: ne)
                guard !overflow, product <= UInt64(Int64.max) else {
                    throw GGUFError.invalidTensor(path: path, tensor: name, field: "element count",
                                                  expected: "at most \(Int64.max)", actual: "overflow at dims[\(d)] = \(ne)")
                }
                elements = product
                dims.append(Int(ne))
            }
            let typeID = try c.read(UInt32.self, "type of tensor \"\(name)\"")
            let type = GGMLType(rawValue: typeID)
            guard type.isKnown else { throw GGUFError.unknownTensorType(path: path, tensor: name, typeID: typeID) }
            guard dims[0] % type.blockSize == 0 else {
                throw GGUFError.invalidTensor(path: path, tensor: name, field: "dims[0]",
                                              expected: "a multiple of \(type.name)'s block size \(type.blockSize)",
                                              actual: "\(dims[0])")
            }
            let (bytes, bytesOverflow) = (elements / UInt64(type.blockSize)).multipliedReportingOverflow(by: UInt64(type.typeSize))
            guard !bytesOverflow, bytes <= UInt64(Int.max / 2) else {
                throw GGUFError.invalidTensor(path: path, tensor: name, field: "byte size",
                                              expected: "at most \(Int.max / 2)", actual: "overflow")
            }
            let offset = try c.read(UInt64.self, "offset of tensor \"\(name)\"")
            guard offset == expectedOffset else {
                throw GGUFError.badTensorOffset(path: path, tensor: name, expected: expectedOffset, actual: offset)
            }
            h.tensors.append(GGUFTensorInfo(name: name, dims: dims, type: type, offset: Int(offset), byteSize: Int(bytes)))
            expectedOffset = align(offset + bytes, h.alignment)
        }

        h.dataOffset = Int(align(UInt64(c.pos), h.alignment))
        // The last tensor's trailing padding is not required: files cut right after it still read.
        for t in h.tensors {
            let end = h.dataOffset + t.offset + t.byteSize
            if end > raw.count {
                throw GGUFError.dataOutOfBounds(path: path, tensor: t.name, end: end, fileSize: raw.count)
            }
        }
        return h
    }

    static func align(_ x: UInt64, _ a: Int) -> UInt64 {
        let a = UInt64(a)
        return (x + a - 1) / a * a
    }
}

// MARK: - Writer

/// Builds a GGUF v3 file: metadata of any type and F32 / F16 / BF16 / Q8_0 tensors (or raw blocks
/// of any known type), each tensor's data aligned to `alignment`.
public struct GGUFWriter {
    public let alignment: Int
    public private(set) var metadataKeys: [String] = []
    public private(set) var metadata: [String: GGUFValue] = [:]
    private var tensors: [(name: String, dims: [Int], type: GGMLType, bytes: [UInt8])] = []

    /// `alignment` other than 32 is written as `general.alignment` (u32), as ggml expects.
    public init(alignment: Int = 32) throws {
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= Int(UInt32.max) else {
            throw GGUFError.invalidWrite(message: "alignment expected a nonzero power of two, got \(alignment)")
        }
        self.alignment = alignment
        if alignment != 32 { try set("general.alignment", .uint32(UInt32(alignment))) }
    }

    /// Adds or replaces a metadata entry (replacing keeps its position).
    public mutating func set(_ key: String, _ value: GGUFValue) throws {
        if key == "general.alignment", value != .uint32(UInt32(alignment)) {
            throw GGUFError.invalidWrite(message: "general.alignment is set by init(alignment:) (\(alignment)); got \(value)")
        }
        try GGUFWriter.checkArray(value, key: key)
        if metadata[key] == nil { metadataKeys.append(key) }
        metadata[key] = value
    }

    private static func checkArray(_ value: GGUFValue, key: String) throws {
        guard case .array(let t, let items) = value else { return }
        for item in items {
            guard item.type == t else {
                throw GGUFError.invalidWrite(message: "array \"\(key)\" of \(t) holds a \(item.type)")
            }
            try checkArray(item, key: key)
        }
    }

    /// Adds a tensor from values in storage order (dims in ggml order, dims[0] contiguous),
    /// encoded as `type` (F32, F16, BF16 or Q8_0).
    public mutating func addTensor(_ name: String, dims: [Int], values: [Float], type: GGMLType = .f32) throws {
        guard dims.reduce(1, *) == values.count else {
            throw GGUFError.invalidWrite(message: "tensor \"\(name)\": dims \(dims) need \(dims.reduce(1, *)) values, got \(values.count)")
        }
        var bytes = [UInt8]()
        switch type {
        case .f32:
            bytes.reserveCapacity(values.count * 4)
            for v in values { appendLE(&bytes, v.bitPattern) }
        case .f16:
            bytes.reserveCapacity(values.count * 2)
            for v in values { appendLE(&bytes, HalfConversion.halfFromFloat(v)) }
        case .bf16:
            bytes.reserveCapacity(values.count * 2)
            for v in values { appendLE(&bytes, HalfConversion.bfloatFromFloat(v)) }
        case .q8_0:
            guard let ne0 = dims.first, ne0 % 32 == 0 else {
                throw GGUFError.invalidWrite(message: "tensor \"\(name)\": Q8_0 needs dims[0] a multiple of 32, got \(dims)")
            }
            bytes = GGUFQuant.quantizeQ8_0(values)
        default:
            throw GGUFError.invalidWrite(message: "tensor \"\(name)\": the writer encodes F32, F16, BF16 and Q8_0, not \(type.name)")
        }
        try addRawTensor(name, dims: dims, type: type, bytes: bytes)
    }

    /// Adds a PyTorch-layout matrix (rows, cols) as a ggml tensor with dims [cols, rows].
    public mutating func addTensor(_ name: String, matrix: Matrix, type: GGMLType = .f32) throws {
        try addTensor(name, dims: [matrix.cols, matrix.rows], values: matrix.data, type: type)
    }

    /// Adds already-encoded blocks of any known type.
    public mutating func addRawTensor(_ name: String, dims: [Int], type: GGMLType, bytes: [UInt8]) throws {
        guard !tensors.contains(where: { $0.name == name }) else {
            throw GGUFError.invalidWrite(message: "duplicate tensor name \"\(name)\"")
        }
        guard type.isKnown, (1...4).contains(dims.count), dims.allSatisfy({ $0 > 0 }), dims[0] % type.blockSize == 0 else {
            throw GGUFError.invalidWrite(message: "tensor \"\(name)\": dims \(dims) invalid for \(type.name)")
        }
        let expected = type.byteCount(elements: dims.reduce(1, *))
        guard bytes.count == expected else {
            throw GGUFError.invalidWrite(message: "tensor \"\(name)\": \(type.name) \(dims) takes \(expected) bytes, got \(bytes.count)")
        }
        tensors.append((name, dims, type, bytes))
    }

    /// The whole file.
    public func serialized() -> [UInt8] {
        var out = [UInt8]()
        out.append(contentsOf: Array("GGUF".utf8))
        appendLE(&out, UInt32(3))
        appendLE(&out, UInt64(tensors.count))
        appendLE(&out, UInt64(metadataKeys.count))
        for key in metadataKeys {
            let v = metadata[key]!
            writeString(&out, key)
            appendLE(&out, v.type.rawValue)
            writeValue(&out, v)
        }
        var offset = 0
        for t in tensors {
            writeString(&out, t.name)
            appendLE(&out, UInt32(t.dims.count))
            for d in t.dims { appendLE(&out, UInt64(d)) }
            appendLE(&out, t.type.rawValue)
            appendLE(&out, UInt64(offset))
            offset = Int(GGUFFile.align(UInt64(offset + t.bytes.count), alignment))
        }
        pad(&out)
        for t in tensors {
            out.append(contentsOf: t.bytes)
            pad(&out)
        }
        return out
    }

    public func write(to path: String) throws {
        do {
            try Data(serialized()).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw GGUFError.io(path: path, message: "cannot write: \(error.localizedDescription)")
        }
    }

    private func pad(_ out: inout [UInt8]) {
        let target = Int(GGUFFile.align(UInt64(out.count), alignment))
        out.append(contentsOf: [UInt8](repeating: 0, count: target - out.count))
    }

    private func writeString(_ out: inout [UInt8], _ s: String) {
        let utf8 = Array(s.utf8)
        appendLE(&out, UInt64(utf8.count))
        out.append(contentsOf: utf8)
    }

    private func writeValue(_ out: inout [UInt8], _ v: GGUFValue) {
        switch v {
        case .uint8(let x): appendLE(&out, x)
        case .int8(let x): appendLE(&out, x)
        case .uint16(let x): appendLE(&out, x)
        case .int16(let x): appendLE(&out, x)
        case .uint32(let x): appendLE(&out, x)
        case .int32(let x): appendLE(&out, x)
        case .float32(let x): appendLE(&out, x.bitPattern)
        case .bool(let x): appendLE(&out, UInt8(x ? 1 : 0))
        case .string(let x): writeString(&out, x)
        case .uint64(let x): appendLE(&out, x)
        case .int64(let x): appendLE(&out, x)
        case .float64(let x): appendLE(&out, x.bitPattern)
        case .array(let t, let items):
            appendLE(&out, t.rawValue)
            appendLE(&out, UInt64(items.count))
            for item in items { writeValue(&out, item) }
        }
    }
}

@inline(__always)
func appendLE<T: FixedWidthInteger>(_ out: inout [UInt8], _ v: T) {
    withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
}
