/// ggml tensor element types and their dequantization to Float.
///
/// Every ggml type stores its elements in blocks of `blockSize` values taking `typeSize` bytes;
/// a row of `ne0` values is `ne0 / blockSize` consecutive blocks (ggml requires `ne0` to be a
/// multiple of the block size). The sizes of types lorafuse cannot dequantize are still known so
/// that files containing them open (metadata, tokenizer, the other tensors stay readable) and only
/// asking for such a tensor's values fails.
///
/// Block layouts (ggml `ggml-common.h`, `ggml-quants.c`; QK_K = 256):
/// - Q4_0 (18 B / 32): f16 d, 16 B nibbles; x[j] = (lo(q[j]) − 8)·d, x[j+16] = (hi(q[j]) − 8)·d.
/// - Q4_1 (20 B / 32): f16 d, f16 m, 16 B nibbles; x = nibble·d + m, same order as Q4_0.
/// - Q8_0 (34 B / 32): f16 d, 32 × i8; x = q·d.
/// - Q4_K (144 B / 256): f16 d, f16 dmin, 12 B of eight 6-bit (scale, min) pairs, 128 B nibbles.
///   Four 64-value chunks; chunk j uses qs[32j..<32j+32]: low nibbles with pair 2j, high nibbles
///   with pair 2j+1; x = (d·sc)·q − dmin·m.
/// - Q5_K (176 B / 256): as Q4_K plus 32 B qh between scales and qs; value k of 32-value group g
///   gets bit g of qh[k] as its fifth bit.
/// - Q6_K (210 B / 256): 128 B ql, 64 B qh, 16 × i8 scales, f16 d. Two 128-value halves; in half h,
///   for l in 0..<32: q0 = lo(ql[l]) | bits 0-1 of qh[l], q1 = lo(ql[l+32]) | bits 2-3,
///   q2 = hi(ql[l]) | bits 4-5, q3 = hi(ql[l+32]) | bits 6-7 (each minus 32), at positions
///   l, l+32, l+64, l+96 with scales[8h + l/16 + 2i]; x = (d·scale)·q.
/// The arithmetic is done in Float in the same order as ggml and gguf-python so results match
/// them exactly.
public struct GGMLType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let f32 = GGMLType(rawValue: 0)
    public static let f16 = GGMLType(rawValue: 1)
    public static let q4_0 = GGMLType(rawValue: 2)
    public static let q4_1 = GGMLType(rawValue: 3)
    public static let q8_0 = GGMLType(rawValue: 8)
    public static let q4_K = GGMLType(rawValue: 12)
    public static let q5_K = GGMLType(rawValue: 13)
    public static let q6_K = GGMLType(rawValue: 14)
    public static let bf16 = GGMLType(rawValue: 30)

    /// (name, values per block, bytes per block) for every type id ggml defines (gguf-py 0.19's
    /// GGML_QUANT_SIZES). Ids 4, 5 (removed Q4_2/Q4_3) and 31-33 (removed Q4_0_4_4 …) are absent.
    static let table: [UInt32: (name: String, block: Int, size: Int)] = [
        0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
        6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
        10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
        14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
        18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
        22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
        26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
        30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    ]

    /// Types `GGUFQuant.dequantize` handles.
    public static let dequantizable: [GGMLType] = [.f32, .f16, .bf16, .q4_0, .q4_1, .q8_0, .q4_K, .q5_K, .q6_K]

    /// Whether ggml defines this id (so its block and byte sizes are known).
    public var isKnown: Bool { GGMLType.table[rawValue] != nil }
    public var canDequantize: Bool { GGMLType.dequantizable.contains(self) }
    public var name: String { GGMLType.table[rawValue]?.name ?? "type\(rawValue)" }
    /// Values per block (1 for plain float/int types). 0 for unknown ids.
    public var blockSize: Int { GGMLType.table[rawValue]?.block ?? 0 }
    /// Bytes per block. 0 for unknown ids.
    public var typeSize: Int { GGMLType.table[rawValue]?.size ?? 0 }
    public var description: String { name }

    /// Bytes taken by `count` values; `count` must be a multiple of `blockSize`.
    public func byteCount(elements count: Int) -> Int { count / blockSize * typeSize }
}

/// Dequantization (and the one quantization the writer needs) of ggml blocks.
public enum GGUFQuant {
    public static let qkK = 256

    @inline(__always)
    static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        HalfConversion.floatFromHalf(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self).littleEndian)
    }

    /// Dequantizes `count` values of `type` starting at `src` into `dst[0..<count]`.
    /// `count` must be a multiple of the type's block size and `src` must hold
    /// `type.byteCount(elements: count)` bytes; the caller (GGUFFile) has checked both.
    public static func dequantize(_ type: GGMLType, src: UnsafeRawPointer, count: Int,
                                  into dst: UnsafeMutablePointer<Float>) {
        switch type {
        case .f32:
            for i in 0..<count {
                dst[i] = Float(bitPattern: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self).littleEndian)
            }
        case .f16:
            for i in 0..<count { dst[i] = half(src, 2 * i) }
        case .bf16:
            for i in 0..<count {
                dst[i] = HalfConversion.floatFromBFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian)
            }
        case .q4_0: q4_0(src, count, dst)
        case .q4_1: q4_1(src, count, dst)
        case .q8_0: q8_0(src, count, dst)
        case .q4_K: q4_K(src, count, dst)
        case .q5_K: q5_K(src, count, dst)
        case .q6_K: q6_K(src, count, dst)
        default:
            preconditionFailure("GGUFQuant.dequantize: \(type) is not supported; check canDequantize first")
        }
    }

    static func q4_0(_ src: UnsafeRawPointer, _ count: Int, _ y: UnsafeMutablePointer<Float>) {
        let bytes = src.assumingMemoryBound(to: UInt8.self)
        for b in 0..<(count / 32) {
            let blk = bytes + b * 18
            let d = half(blk, 0)
            let out = y + b * 32
            for j in 0..<16 {
                let q = blk[2 + j]
                out[j] = Float(Int(q & 0x0F) - 8) * d
                out[j + 16] = Float(Int(q >> 4) - 8) * d
            }
        }
    }

    static func q4_1(_ src: UnsafeRawPointer, _ count: Int, _ y: UnsafeMutablePointer<Float>) {
        let bytes = src.assumingMemoryBound(to: UInt8.self)
        for b in 0..<(count / 32) {
            let blk = bytes + b * 20
            let d = half(blk, 0), m = half(blk, 2)
            let out = y + b * 32
            for j in 0..<16 {
                let q = blk[4 + j]
                out[j] = Float(q & 0x0F) * d + m
                out[j + 16] = Float(q >> 4) * d + m
            }
        }
    }

    static func q8_0(_ src: UnsafeRawPointer, _ count: Int, _ y: UnsafeMutablePointer<Float>) {
        let bytes = src.assumingMemoryBound(to: UInt8.self)
        for b in 0..<(count / 32) {
            let blk = bytes + b * 34
            let d = half(blk, 0)
            let out = y + b * 32
            for j in 0..<32 { out[j] = Float(Int8(bitPattern: blk[2 + j])) * d }
        }
    }

    /// The j-th (scale, min) pair of the 12-byte K-quant scale field: pairs 0-3 are the low six
    /// bits of bytes j and j+4; pairs 4-7 take their low four bits from byte j+4 (low/high nibble)
    /// and their top two bits from the top bits of bytes j-4 (scale) and j (min).
    @inline(__always)
    static func scaleMinK4(_ j: Int, _ s: UnsafePointer<UInt8>) -> (Float, Float) {
        if j < 4 {
            return (Float(s[j] & 63), Float(s[j + 4] & 63))
        }
        let sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4)
        let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4)
        return (Float(sc), Float(m))
    }

    static func q4_K(_ src: UnsafeRawPointer, _ count: Int, _ y: UnsafeMutablePointer<Float>) {
        let bytes = src.assumingMemoryBound(to: UInt8.self)
        for b in 0..<(count / qkK) {
            let blk = bytes + b * 144
            let d = half(blk, 0), dmin = half(blk, 2)
            let scales = blk + 4
            let qs = blk + 16
            var out = y + b * qkK
            for chunk in 0..<4 {
                let (sc1, m1) = scaleMinK4(2 * chunk, scales)
                let (sc2, m2) = scaleMinK4(2 * chunk + 1, scales)
                let d1 = d * sc1, dm1 = dmin * m1
                let d2 = d * sc2, dm2 = dmin * m2
                let q = qs + 32 * chunk
                for l in 0..<32 {
                    out[l] = d1 * Float(q[l] & 0x0F) - dm1
                    out[l + 32] = d2 * Float(q[l] >> 4) - dm2
                }
                out += 64
            }
        }
    }

    static func q5_K(_ src: UnsafeRawPointer, _ count: Int, _ y: UnsafeMutablePointer<Float>) {
        let bytes = src.assumingMemoryBound(to: UInt8.self)
        for b in 0..<(count / qkK) {
            let blk = bytes + b * 176
            let d = half(blk, 0), dmin = half(blk, 2)
            let scales = blk + 4
            let qh = blk + 16
            let qs = blk + 48
            var out = y + b * qkK
            for chunk in 0..<4 {
                let (sc1, m1) = scaleMinK4(2 * chunk, scales)
                let (sc2, m2) = scaleMinK4(2 * chunk + 1, scales)
                let d1 = d * sc1, dm1 = dmin * m1
                let d2 = d * sc2, dm2 = dmin * m2
                let q = qs + 32 * chunk
                let bitLo = UInt8(2 * chunk), bitHi = UInt8(2 * chunk + 1)
                for l in 0..<32 {
                    let lo = (q[l] & 0x0F) | (((qh[l] >> bitLo) & 1) << 4)
                    let hi = (q[l] >> 4) | (((qh[l] >> bitHi) & 1) << 4)
                    out[l] = d1 * Float(lo) - dm1
                    out[l + 32] = d2 * Float(hi) - dm2
                }
                out += 64
            }
        }
    }

    static func q6_K(_ src: UnsafeRawPointer, _ count: Int, _ y: UnsafeMutablePointer<Float>) {
        let bytes = src.assumingMemoryBound(to: UInt8.self)
        for b in 0..<(count / qkK) {
            let blk = bytes + b * 210
            let d = half(blk, 208)
            var ql = blk
            var qh = blk + 128
            var sc = blk + 192
            var out = y + b * qkK
            for _ in 0..<2 {
                for l in 0..<32 {
                    let s = l / 16
                    let q0 = Int((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32
                    let q1 = Int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                    let q2 = Int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                    let q3 = Int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                    out[l] = d * Float(Int8(bitPattern: sc[s])) * Float(q0)
                    out[l + 32] = d * Float(Int8(bitPattern: sc[s + 2])) * Float(q1)
                    out[l + 64] = d * Float(Int8(bitPattern: sc[s + 4])) * Float(q2)
                    out[l + 96] = d * Float(Int8(bitPattern: sc[s + 6])) * Float(q3)
                }
                out += 128
                ql += 64
                qh += 32
                sc += 8
            }
        }
    }

    /// ggml's reference Q8_0 quantization (`quantize_row_q8_0_ref`): per 32 values
    /// d = max|x| / 127, q = round(x / d) (half away from zero, as C `roundf`), d stored as f16.
    /// `values.count` must be a multiple of 32.
    public static func quantizeQ8_0(_ values: [Float]) -> [UInt8] {
        precondition(values.count % 32 == 0, "Q8_0 needs a multiple of 32 values, got \(values.count)")
        var out = [UInt8]()
        out.reserveCapacity(values.count / 32 * 34)
        var b = 0
        while b < values.count {
            var amax: Float = 0
            for j in 0..<32 { amax = max(amax, abs(values[b + j])) }
            let d = amax / 127
            let id: Float = d != 0 ? 1 / d : 0
            let h = HalfConversion.halfFromFloat(d)
            out.append(UInt8(h & 0xFF))
            out.append(UInt8(h >> 8))
            for j in 0..<32 {
                let q = (values[b + j] * id).rounded(.toNearestOrAwayFromZero)
                out.append(UInt8(bitPattern: Int8(max(-128, min(127, q)))))
            }
            b += 32
        }
        return out
    }
}
