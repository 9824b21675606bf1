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

