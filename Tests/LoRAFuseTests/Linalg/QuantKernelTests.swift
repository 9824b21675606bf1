import CQuant
import Foundation
import XCTest
@testable import LoRAFuse

private let q5_0 = GGMLType(rawValue: 6)
private let q5_1 = GGMLType(rawValue: 7)
private let blockTypes: [GGMLType] = [.q4_0, .q4_1, q5_0, q5_1, .q8_0, .q4_K, .q5_K, .q6_K]
private let floatTypes: [GGMLType] = [.f32, .f16, .bf16]
private let kQuants: Set<GGMLType> = [.q4_K, .q5_K, .q6_K]

// MARK: - Test-side blocks: a simple quantizer per type, random bytes with sane scales, decoding

/// Builds weight rows the way a GGUF file holds them, independently of the kernels.
private enum Blocks {
    static func f16(_ x: Float) -> (UInt8, UInt8) {
        let h = HalfConversion.halfFromFloat(x)
        return (UInt8(h & 0xFF), UInt8(h >> 8))
    }
    static func put16(_ b: inout [UInt8], _ at: Int, _ x: Float) {
        (b[at], b[at + 1]) = f16(x)
    }
    static func half(_ b: [UInt8], _ at: Int) -> Float {
        HalfConversion.floatFromHalf(UInt16(b[at]) | UInt16(b[at + 1]) << 8)
    }
    static func roundClamp(_ v: Float, _ lo: Int, _ hi: Int) -> Int {
        guard v.isFinite else { return lo }
        return max(lo, min(hi, Int(v.rounded(.toNearestOrAwayFromZero))))
    }

    /// A row of `x.count` values quantized with a plain min/max (or absmax) quantizer per block.
    static func quantize(_ type: GGMLType, _ x: [Float]) -> [UInt8] {
        var out = [UInt8]()
        switch type {
        case .f32:
            for v in x { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
        case .f16:
            for v in x { let (a, b) = f16(v); out += [a, b] }
        case .bf16:
            for v in x { let h = UInt16(v.bitPattern >> 16); out += [UInt8(h & 0xFF), UInt8(h >> 8)] }
        case .q8_0:
            out = GGUFQuant.quantizeQ8_0(x)
        case .q4_0, .q4_1, q5_0, q5_1:
            let bits = (type == .q4_0 || type == .q4_1) ? 4 : 5
            let levels = (1 << bits) - 1, offset = 1 << (bits - 1)
            let hasMin = type == .q4_1 || type == q5_1
            for b in stride(from: 0, to: x.count, by: 32) {
                let v = Array(x[b..<b + 32])
                var q = [Int](repeating: 0, count: 32)
                var blk = [UInt8](repeating: 0, count: type.typeSize)
                if hasMin {
                    let mn = v.min()!, mx = v.max()!
                    let d = (mx - mn) / Float(levels)
                    put16(&blk, 0, d); put16(&blk, 2, mn)
                    let df = half(blk, 0), mf = half(blk, 2)
                    for j in 0..<32 { q[j] = df == 0 ? 0 : roundClamp((v[j] - mf) / df, 0, levels) }
                } else {
                    let big = v.max(by: { abs($0) < abs($1) })!
                    put16(&blk, 0, big / -Float(offset))
                    let df = half(blk, 0)
                    for j in 0..<32 { q[j] = df == 0 ? offset : roundClamp(v[j] / df, -offset, offset - 1) + offset }
                }
                let qsAt = type == .q4_0 ? 2 : type == .q4_1 ? 4 : type == q5_0 ? 6 : 8
                for j in 0..<16 { blk[qsAt + j] = UInt8(q[j] & 15) | UInt8(q[j + 16] & 15) << 4 }
                if bits == 5 {
                    var qh: UInt32 = 0
                    for j in 0..<32 { qh |= UInt32((q[j] >> 4) & 1) << UInt32(j) }
                    let at = type == q5_0 ? 2 : 4
                    for k in 0..<4 { blk[at + k] = UInt8((qh >> UInt32(8 * k)) & 0xFF) }
                }
                out += blk
            }
        case .q4_K, .q5_K:
            let five = type == .q5_K
            let levels = five ? 31 : 15
            for b in stride(from: 0, to: x.count, by: 256) {
                let v = Array(x[b..<b + 256])
                var scale = [Float](repeating: 0, count: 8), mins = [Float](repeating: 0, count: 8)
                for j in 0..<8 {
                    let s = v[32 * j..<32 * j + 32]
                    let mn = min(0, s.min()!), mx = s.max()!
                    scale[j] = (mx - mn) / Float(levels); mins[j] = -mn
                }
                var blk = [UInt8](repeating: 0, count: type.typeSize)
                put16(&blk, 0, scale.max()! / 63); put16(&blk, 2, mins.max()! / 63)
                let df = half(blk, 0), dmf = half(blk, 2)
                var sc = [Int](repeating: 0, count: 8), m = [Int](repeating: 0, count: 8)
                for j in 0..<8 {
                    sc[j] = df == 0 ? 0 : roundClamp(scale[j] / df, 0, 63)
                    m[j] = dmf == 0 ? 0 : roundClamp(mins[j] / dmf, 0, 63)
                }
                for j in 0..<4 {
                    blk[4 + j] = UInt8(sc[j] & 63) | UInt8((sc[j + 4] >> 4) << 6)
                    blk[8 + j] = UInt8(m[j] & 63) | UInt8((m[j + 4] >> 4) << 6)
                    blk[12 + j] = UInt8(sc[j + 4] & 15) | UInt8(m[j + 4] & 15) << 4
                }
                var q = [Int](repeating: 0, count: 256)
                for j in 0..<8 {
                    let step = df * Float(sc[j])
                    for l in 0..<32 {
                        q[32 * j + l] = step == 0 ? 0 : roundClamp((v[32 * j + l] + dmf * Float(m[j])) / step, 0, levels)
                    }
                }
                let qsAt = five ? 48 : 16
                for c in 0..<4 {
                    for l in 0..<32 {
                        blk[qsAt + 32 * c + l] = UInt8(q[64 * c + l] & 15) | UInt8(q[64 * c + 32 + l] & 15) << 4
                    }
                }
                if five {
                    for j in 0..<8 { for l in 0..<32 { blk[16 + l] |= UInt8((q[32 * j + l] >> 4) & 1) << UInt8(j) } }
                }
                out += blk
            }
        case .q6_K:
            for b in stride(from: 0, to: x.count, by: 256) {
                let v = Array(x[b..<b + 256])
                var scale = [Float](repeating: 0, count: 16)
                for j in 0..<16 { scale[j] = v[16 * j..<16 * j + 16].max(by: { abs($0) < abs($1) })! / -32 }
                var blk = [UInt8](repeating: 0, count: 210)
                put16(&blk, 208, scale.map { abs($0) }.max()! / 127)
                let df = half(blk, 208)
                var sc = [Int](repeating: 0, count: 16)
                for j in 0..<16 {
                    sc[j] = df == 0 ? 0 : roundClamp(scale[j] / df, -128, 127)
                    blk[192 + j] = UInt8(bitPattern: Int8(sc[j]))
                }
                for p in 0..<256 {
                    let step = df * Float(sc[p / 16])
                    let q = step == 0 ? 32 : roundClamp(v[p] / step, -32, 31) + 32
                    let h = p / 128, c = (p % 128) / 32, l = p % 32
                    blk[64 * h + 32 * (c & 1) + l] |= UInt8(q & 15) << (c < 2 ? 0 : 4)
                    blk[128 + 32 * h + l] |= UInt8(q >> 4) << UInt8(2 * c)
                }
                out += blk
            }
        default:
            fatalError("no test quantizer for \(type)")
        }
        return out
    }

    /// A row of random bytes whose f16 scale fields are replaced by sane values (either sign for
    /// d, minima either sign), so every nibble, high bit and 6-bit scale pattern occurs.
    static func random(_ type: GGMLType, _ n: Int, _ rng: inout SeededRNG) -> [UInt8] {
        if floatTypes.contains(type) { return quantize(type, (0..<n).map { _ in rng.nextNormal() * 0.1 }) }
        var out = (0..<type.byteCount(elements: n)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let bb = type.typeSize
        func scale() -> Float { (0.001 + 0.03 * rng.nextUniform()) * (rng.next() & 1 == 0 ? 1 : -1) }
        for b in 0..<(n / type.blockSize) {
            let at = b * bb
            switch type {
            case .q6_K: put16(&out, at + 208, scale())
            case .q4_1, q5_1: put16(&out, at, scale()); put16(&out, at + 2, (rng.nextUniform() - 0.5) * 0.6)
            case .q4_K, .q5_K: put16(&out, at, abs(scale())); put16(&out, at + 2, abs(scale()))
            default: put16(&out, at, scale())
            }
        }
        return out
    }

    /// The row's values: GGUFQuant's dequantizers where it has one, else (Q5_0, Q5_1) ggml's
    /// formula written here.
    static func dequantize(_ type: GGMLType, _ bytes: [UInt8], _ n: Int) -> [Float] {
        if type == q5_0 || type == q5_1 {
            var out = [Float]()
            let bb = type.typeSize
            for b in 0..<(n / 32) {
                let at = b * bb
                let d = half(bytes, at)
                let m: Float = type == q5_1 ? half(bytes, at + 2) : 0
                let hAt = at + (type == q5_0 ? 2 : 4), qsAt = hAt + 4
                var qh: UInt32 = 0
                for k in 0..<4 { qh |= UInt32(bytes[hAt + k]) << UInt32(8 * k) }
                var v = [Float](repeating: 0, count: 32)
                for j in 0..<16 {
                    let lo = Int(bytes[qsAt + j] & 15) | Int((qh >> UInt32(j)) & 1) << 4
                    let hi = Int(bytes[qsAt + j] >> 4) | Int((qh >> UInt32(j + 16)) & 1) << 4
                    if type == q5_0 {
                        v[j] = Float(lo - 16) * d; v[j + 16] = Float(hi - 16) * d
                    } else {
                        v[j] = Float(lo) * d + m; v[j + 16] = Float(hi) * d + m
                    }
                }
                out += v
            }
            return out
        }
        var out = [Float](repeating: 0, count: n)
        bytes.withUnsafeBytes { raw in
            out.withUnsafeMutableBufferPointer { GGUFQuant.dequantize(type, src: raw.baseAddress!, count: n, into: $0.baseAddress!) }
        }
        return out
    }

    /// Per value, the magnitude of the constant part a kernel handles apart from the scaled
    /// integer (Q4_0's 8 d, a block minimum, a K-quant's dmin m, Q6_K's 32 d sc); 0 for Q8_0 and
    /// float types. It enters the error bounds, since kernels may add the two parts separately.
    static func offsets(_ type: GGMLType, _ bytes: [UInt8], _ n: Int) -> [Float] {
        var o = [Float](repeating: 0, count: n)
        let bb = type.typeSize
        for b in 0..<(floatTypes.contains(type) ? 0 : n / type.blockSize) {
            let at = b * bb, base = b * type.blockSize
            switch type {
            case .q4_0: for i in 0..<32 { o[base + i] = 8 * abs(half(bytes, at)) }
            case q5_0: for i in 0..<32 { o[base + i] = 16 * abs(half(bytes, at)) }
            case .q4_1, q5_1: for i in 0..<32 { o[base + i] = abs(half(bytes, at + 2)) }
            case .q4_K, .q5_K:
                let dmin = abs(half(bytes, at + 2))
                bytes.withUnsafeBufferPointer { p in
                    for j in 0..<8 {
                        let (_, m) = GGUFQuant.scaleMinK4(j, p.baseAddress! + at + 4)
                        for l in 0..<32 { o[base + 32 * j + l] = dmin * m }
                    }
                }
            case .q6_K:
                let d = abs(half(bytes, at + 208))
                for p in 0..<256 { o[base + p] = 32 * d * abs(Float(Int8(bitPattern: bytes[at + 192 + p / 16]))) }
            default: break
            }
        }
        return o
    }
}

// MARK: - Activations as the header documents them

private func a64(_ x: Int) -> Int { (x + 63) / 64 * 64 }

/// The values q[i]·d[block] of one quantized activation row (the layout of cquant.h).
private func dequantizeActivation(_ type: GGMLType, _ row: [UInt8], _ n: Int) -> [Float] {
    func f32(_ at: Int) -> Float {
        Float(bitPattern: UInt32(row[at]) | UInt32(row[at + 1]) << 8 | UInt32(row[at + 2]) << 16 | UInt32(row[at + 3]) << 24)
    }
    if floatTypes.contains(type) { return (0..<n).map { f32(4 * $0) } }
    let blk = kQuants.contains(type) ? 256 : 32
    return (0..<n).map { Float(Int8(bitPattern: row[$0])) * f32(a64(n) + 4 * ($0 / blk)) }
}

private func quantizeActivations(_ type: GGMLType, _ x: [Float], rows: Int, _ kernel: QuantKernels.Kernel?) -> [UInt8] {
    let n = x.count / rows
    var a = [UInt8](repeating: 0xAB, count: QuantKernels.activationBytes(type: type, cols: n, rows: rows))
    x.withUnsafeBufferPointer { xp in
        a.withUnsafeMutableBytes { QuantKernels.quantizeActivations(type: type, xp.baseAddress!, rows: rows, cols: n, into: $0.baseAddress!, kernel: kernel) }
    }
    return a
}

private func matmul(_ type: GGMLType, _ w: [UInt8], outRows: Int, cols: Int, _ a: [UInt8], batch: Int,
                    _ kernel: QuantKernels.Kernel?, rows: Range<Int>? = nil, ldOut: Int? = nil,
                    into out: inout [Float]) {
    let ld = ldOut ?? outRows
    w.withUnsafeBytes { wp in
        a.withUnsafeBytes { ap in
            out.withUnsafeMutableBufferPointer { op in
                QuantKernels.matmul(type: type, weights: wp.baseAddress!, rowBytes: type.byteCount(elements: cols), outRows: outRows,
                                    cols: cols, activations: ap.baseAddress!, batch: batch, out: op.baseAddress!, ldOut: ld,
                                    rows: rows, kernel: kernel)
            }
        }
    }
}

private func matmul(_ type: GGMLType, _ w: [UInt8], outRows: Int, cols: Int, _ a: [UInt8], batch: Int,
                    _ kernel: QuantKernels.Kernel?) -> [Float] {
    var out = [Float](repeating: .nan, count: outRows * batch)
    matmul(type, w, outRows: outRows, cols: cols, a, batch: batch, kernel, into: &out)
    return out
}

/// Float additions on the longest chain of a dot of n values: one per value for float types,
/// two per block (scaled integer, offset) for the quantized ones; plus slack for the final sums.
private func terms(_ type: GGMLType, _ n: Int) -> Double {
    floatTypes.contains(type) ? Double(n + 16) : Double(2 * (n / type.blockSize) + 16)
}

/// M = Σ (|w_i| + 2 o_i)·|x̂_i| in Double: every float term of any kernel is bounded by its share
/// of M, so a sum in any order is within terms·2⁻²⁴·M of the exact value (the recursive-sum bound
/// γ_k ≈ k·u, u = 2⁻²⁴). Two results computed in different orders are then within
/// terms·2⁻²³·M of each other.
private func magnitude(_ w: [Float], _ o: [Float], _ x: [Float]) -> Double {
    var m = 0.0
    for i in 0..<w.count { m += (Double(abs(w[i])) + 2 * Double(o[i])) * Double(abs(x[i])) }
    return m
}

private func exactDot(_ w: [Float], _ x: [Float]) -> Double {
    var s = 0.0
    for i in 0..<w.count { s += Double(w[i]) * Double(x[i]) }
    return s
}

private let fastKernels = QuantKernels.Kernel.allCases.filter { $0 != .reference && $0.isAvailable }

final class QuantKernelTests: XCTestCase {
    private func randomX(_ n: Int, _ rng: inout SeededRNG, outliers: Bool = true) -> [Float] {
        (0..<n).map { i in rng.nextNormal() * (outliers && i % 37 == 5 ? 8 : 1) }
    }

    func testKernelSetsAndSizes() {
        XCTAssertTrue(["reference", "avx2", "avx512", "neon"].contains(QuantKernels.kernelName))
        XCTAssertTrue(QuantKernels.selected.isAvailable)
        XCTAssertTrue(QuantKernels.Kernel.reference.isAvailable)
        #if arch(x86_64)
        // This machine class has AVX2 and AVX-512 VNNI; a CPU without them would still pass the
        // rest, this line says which sets the comparisons below covered.
        print("QuantKernels: selected \(QuantKernels.kernelName), fast sets tested: \(fastKernels.map(\.name))")
        #endif
        for t in QuantKernels.types { XCTAssertTrue(QuantKernels.supports(t), "\(t)") }
        XCTAssertFalse(QuantKernels.supports(GGMLType(rawValue: 10)))  // Q2_K
        // avx512 has no K-quant kernels: they run avx2's.
        if QuantKernels.Kernel.avx512.isAvailable {
            XCTAssertEqual(QuantKernels.effectiveKernel(.avx512, for: .q6_K), .avx2)
            XCTAssertEqual(QuantKernels.effectiveKernel(.avx512, for: .q4_1), .avx512)
        }
        XCTAssertEqual(QuantKernels.effectiveKernel(.reference, for: .q4_K), .reference)
        // Layout sizes (cquant.h): rows are multiples of 64 bytes.
        XCTAssertEqual(QuantKernels.activationRowBytes(type: .q8_0, cols: 576), 576 + 128)       // q, d[18]
        XCTAssertEqual(QuantKernels.activationRowBytes(type: .q4_1, cols: 576), 576 + 128 + 128) // q, d, s
        XCTAssertEqual(QuantKernels.activationRowBytes(type: .q4_K, cols: 512), 512 + 64 + 64)   // q, d[2], bsum[32]
        XCTAssertEqual(QuantKernels.activationRowBytes(type: .f16, cols: 10), 64)
        XCTAssertEqual(QuantKernels.activationBytes(type: .q8_0, cols: 576, rows: 3), 3 * 704)
    }

    /// Every set writes the same activation bytes, and they are what cquant.h documents:
    /// d = max|x|/127, q = x/d rounded half to even, |q| ≤ 127, s = d·Σq, bsum = Σ of 16 q.
    func testActivationQuantizationMatchesLayoutOnEverySet() {
        var rng = SeededRNG(seed: 11)
        for type in [GGMLType.f32, .q8_0, .q4_1, .q6_K] {
            for n in kQuants.contains(type) ? [256, 768] : [32, 96, 608] {
                var x = randomX(n * 2, &rng)
                for i in 0..<min(32, n) { x[i] = 0 }              // an all-zero block: d = 0, q = 0
                if n >= 64 && !kQuants.contains(type) {             // ties: amax 127 makes d = 1
                    for i in 32..<64 { x[i] = Float(i % 5) - 2 + 0.5 }
                    x[33] = 127
                }
                let ref = quantizeActivations(type, x, rows: 2, .reference)
                for k in fastKernels {
                    XCTAssertEqual(quantizeActivations(type, x, rows: 2, k), ref, "\(type) n=\(n) \(k) activation bytes")
                }
                let rb = QuantKernels.activationRowBytes(type: type, cols: n)
                for r in 0..<2 {
                    let row = Array(ref[r * rb..<(r + 1) * rb])
                    let xr = Array(x[r * n..<(r + 1) * n])
                    let xh = dequantizeActivation(type, row, n)
                    if type == .f32 { XCTAssertEqual(xh, xr); continue }
                    let blk = kQuants.contains(type) ? 256 : 32
                    for b in 0..<(n / blk) {
                        let vals = xr[b * blk..<(b + 1) * blk]
                        let amax = vals.map { abs($0) }.max()!
                        let d = Float(bitPattern: row[a64(n) + 4 * b..<a64(n) + 4 * b + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                        XCTAssertEqual(d, amax / 127, "\(type) block \(b)")
                        var qsum = 0
                        for i in b * blk..<(b + 1) * blk {
                            let q = Int(Int8(bitPattern: row[i]))
                            qsum += q
                            XCTAssertLessThanOrEqual(abs(q), 127)
                            let want = d == 0 ? 0 : Int((xr[i] * (1 / d)).rounded(.toNearestOrEven))
                            XCTAssertEqual(q, want, "\(type) value \(i)")
                            XCTAssertLessThanOrEqual(abs(xh[i] - xr[i]), d / 2 * 1.0001, "\(type) value \(i)")
                        }
                        if type == .q4_1 {
                            let at = a64(n) + a64(4 * (n / 32)) + 4 * b
                            let s = Float(bitPattern: row[at..<at + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                            XCTAssertEqual(s, d * Float(qsum))
                        }
                    }
                    if type == .q6_K {
                        let at = a64(n) + a64(4 * (n / 256))
                        for g in 0..<(n / 16) {
                            let bs = Int(Int16(bitPattern: UInt16(row[at + 2 * g]) | UInt16(row[at + 2 * g + 1]) << 8))
                            XCTAssertEqual(bs, (16 * g..<16 * g + 16).reduce(0) { $0 + Int(Int8(bitPattern: row[$1])) })
                        }
                    }
                }
                if n >= 64 && !kQuants.contains(type) && type != .f32 {
                    // 0.5 → 0, 1.5 → 2, -1.5 → -2, -0.5 → -0 (half to even), in block 1 of row 0
                    let q = (32..<64).map { Int(Int8(bitPattern: ref[$0])) }
                    let want = (32..<64).map { i -> Int in i == 33 ? 127 : Int((Float(i % 5) - 1.5).rounded(.toNearestOrEven)) }
                    XCTAssertEqual(q, want)
                }
            }
        }
    }

    /// (a) Each fast kernel against the reference, on realistic and random-byte weights. The
    /// K-quant kernels reduce a super-block to one exact integer and then do the reference's float
    /// steps in its order: equal bit for bit. The others sum per-block float terms in vector lanes,
    /// so they differ by summation order only: within terms·2⁻²³·M (see `magnitude`).
    func testFastKernelsAgreeWithReference() {
        var rng = SeededRNG(seed: 21)
        var worst = [String: Double]()
        for type in QuantKernels.types {
            let ns = kQuants.contains(type) ? [256, 512, 1536] : floatTypes.contains(type) ? [7, 64, 576, 1001] : [32, 96, 576, 608, 1536]
            for n in ns {
                let nOut = 5, B = 5
                for source in 0..<2 {
                    let w: [UInt8] = (0..<nOut).flatMap { _ in
                        source == 0 ? Blocks.quantize(type, randomX(n, &rng)) : Blocks.random(type, n, &rng)
                    }
                    let x = randomX(n * B, &rng)
                    let a = quantizeActivations(type, x, rows: B, .reference)
                    let ref = matmul(type, w, outRows: nOut, cols: n, a, batch: B, .reference)
                    for k in fastKernels where QuantKernels.effectiveKernel(k, for: type) != .reference {
                        let got = matmul(type, w, outRows: nOut, cols: n, a, batch: B, k)
                        let rb = type.byteCount(elements: n), ab = QuantKernels.activationRowBytes(type: type, cols: n)
                        for b in 0..<B {
                            let xh = dequantizeActivation(type, Array(a[b * ab..<(b + 1) * ab]), n)
                            for r in 0..<nOut {
                                let (g, e) = (got[b * nOut + r], ref[b * nOut + r])
                                let label = "\(type) n=\(n) \(source == 0 ? "quantized" : "random") \(k) b=\(b) r=\(r)"
                                if kQuants.contains(type) {
                                    XCTAssertEqual(g.bitPattern, e.bitPattern, "\(label): \(g) vs \(e)")
                                    continue
                                }
                                let row = Array(w[r * rb..<(r + 1) * rb])
                                let m = magnitude(Blocks.dequantize(type, row, n), Blocks.offsets(type, row, n), xh)
                                let bound = terms(type, n) * 0x1p-23 * m
                                XCTAssertLessThanOrEqual(Double(abs(g - e)), bound, "\(label): \(g) vs \(e)")
                                if bound > 0 { worst["\(type) \(k)", default: 0] = max(worst["\(type) \(k)", default: 0], Double(abs(g - e)) / bound) }
                            }
                        }
                    }
                }
            }
        }
        print("QuantKernels fast vs reference, worst |diff| / bound:", worst.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.3g", $0.value))" })
    }

    /// (b) The reference dot against the Double dot of the dequantized weight row (GGUFQuant; the
    /// test's own Q5_0/Q5_1 decoding) with the dequantized activation: the same bound,
    /// terms·2⁻²³·M (both sides round each term once or twice). And against the float
    /// activation before quantization: off by at most Σ_blocks d/2·Σ|w_i| (each |x̂ − x| ≤ d/2)
    /// plus that rounding.
    func testReferenceMatchesDequantizedDot() {
        var rng = SeededRNG(seed: 31)
        for type in QuantKernels.types {
            for n in kQuants.contains(type) ? [256, 1536] : floatTypes.contains(type) ? [9, 576] : [32, 576, 1536] {
                for source in 0..<2 {
                    let w = source == 0 ? Blocks.quantize(type, randomX(n, &rng)) : Blocks.random(type, n, &rng)
                    let x = randomX(n, &rng)
                    let a = quantizeActivations(type, x, rows: 1, .reference)
                    let got = Double(matmul(type, w, outRows: 1, cols: n, a, batch: 1, .reference)[0])
                    let wf = Blocks.dequantize(type, w, n)
                    let xh = dequantizeActivation(type, a, n)
                    let m = magnitude(wf, Blocks.offsets(type, w, n), xh)
                    let label = "\(type) n=\(n) \(source == 0 ? "quantized" : "random")"
                    XCTAssertLessThanOrEqual(abs(got - exactDot(wf, xh)), terms(type, n) * 0x1p-23 * m, label)
                    XCTAssertLessThanOrEqual(abs(got - exactDot(wf, x)), quantizationBound(type, wf, x) + terms(type, n) * 0x1p-23 * m, label)
                }
            }
        }
    }

    /// Σ_blocks (d_b / 2)·Σ_{i in b} |w_i| with d_b = max|x| / 127 of the activation block.
    private func quantizationBound(_ type: GGMLType, _ w: [Float], _ x: [Float]) -> Double {
        if floatTypes.contains(type) { return 0 }
        let blk = kQuants.contains(type) ? 256 : 32
        var s = 0.0
        for b in stride(from: 0, to: x.count, by: blk) {
            let d = Double(x[b..<b + blk].map { abs($0) }.max()!) / 127
            s += d / 2 * w[b..<b + blk].reduce(0.0) { $0 + Double(abs($1)) } * 1.0001
        }
        return s
    }

    /// (c) A batch of B activation rows gives, bit for bit, what B single-row calls give (every
    /// set keeps one accumulation structure whatever the tile width: one, two or four weight
    /// rows, read from the blocks or, from 8 rows on, unpacked once per chunk; float activations
    /// in blocks of 256 KB), and row ranges
    /// write only their rows. The 32-value types run an odd block count with one and with
    /// several passes of each accumulator.
    func testBatchesAndRowRangesEqualSingleRows() {
        var rng = SeededRNG(seed: 41)
        for type in QuantKernels.types {
          for n in kQuants.contains(type) ? [512] : floatTypes.contains(type) ? [200] : [96, 352] {
            let nOut = 37
            let w: [UInt8] = (0..<nOut).flatMap { _ in Blocks.quantize(type, randomX(n, &rng)) }
            for k in [QuantKernels.Kernel.reference] + fastKernels {
                // 330 float rows of 200 (832 bytes each) span two of the driver's activation blocks.
                for B in floatTypes.contains(type) ? [1, 3, 8, 33, 330] : [1, 3, 8, 33] {
                    let a = quantizeActivations(type, randomX(n * B, &rng), rows: B, k)
                    let ab = QuantKernels.activationRowBytes(type: type, cols: n)
                    let all = matmul(type, w, outRows: nOut, cols: n, a, batch: B, k)
                    for b in 0..<B {
                        let one = matmul(type, w, outRows: nOut, cols: n, Array(a[b * ab..<(b + 1) * ab]), batch: 1, k)
                        XCTAssertEqual(one.map(\.bitPattern), all[b * nOut..<(b + 1) * nOut].map(\.bitPattern), "\(type) \(k) B=\(B) row \(b)")
                    }
                    // Three ranges into a wider output (ldOut = nOut + 3): the same values, padding untouched.
                    let ld = nOut + 3
                    var split = [Float](repeating: .nan, count: ld * B)
                    for range in [0..<10, 10..<11, 11..<nOut] {
                        matmul(type, w, outRows: nOut, cols: n, a, batch: B, k, rows: range, ldOut: ld, into: &split)
                    }
                    for b in 0..<B {
                        XCTAssertEqual(split[b * ld..<b * ld + nOut].map(\.bitPattern), all[b * nOut..<(b + 1) * nOut].map(\.bitPattern), "\(type) \(k) B=\(B) ranges")
                        XCTAssertTrue(split[b * ld + nOut..<(b + 1) * ld].allSatisfy(\.isNaN), "\(type) \(k) padding written")
                    }
                    var empty = [Float](repeating: .nan, count: nOut * B)
                    matmul(type, w, outRows: nOut, cols: n, a, batch: B, k, rows: 5..<5, into: &empty)
                    XCTAssertTrue(empty.allSatisfy(\.isNaN))
                }
            }
          }
        }
    }

    /// Rows read with a leading dimension (ldx > cols) quantize as the same rows packed.
    func testQuantizeActivationsWithLeadingDimension() {
        var rng = SeededRNG(seed: 61)
        for type in [GGMLType.f16, .q8_0, q5_1, .q4_K] {
            let n = kQuants.contains(type) ? 256 : 64, B = 3, ld = n + 5
            let padded = randomX(ld * B, &rng)
            let packed = (0..<B).flatMap { padded[$0 * ld..<$0 * ld + n] }
            var a = [UInt8](repeating: 0, count: QuantKernels.activationBytes(type: type, cols: n, rows: B))
            padded.withUnsafeBufferPointer { xp in
                a.withUnsafeMutableBytes { QuantKernels.quantizeActivations(type: type, xp.baseAddress!, rows: B, cols: n, ldx: ld, into: $0.baseAddress!) }
            }
            XCTAssertEqual(a, quantizeActivations(type, packed, rows: B, nil), "\(type)")
        }
    }

    /// The largest integer products (all nibbles 15, Q8_0's -128, Q6_K's 63 with scale -128,
    /// activations at ±127): no int16 saturation anywhere; every set equals the exact value to
    /// float rounding.
    func testExtremeBlocksDoNotSaturate() {
        for type in blockTypes {
            let n = kQuants.contains(type) ? 512 : 64
            var w = [UInt8](repeating: 0xFF, count: type.byteCount(elements: n))
            if type == .q8_0 { w = [UInt8](repeating: 0x80, count: w.count) }
            for b in 0..<(n / type.blockSize) {  // scales 1 (minima 0 where the type has them)
                let at = b * type.typeSize
                switch type {
                case .q6_K: Blocks.put16(&w, at + 208, 1)
                case .q4_1, q5_1: Blocks.put16(&w, at, 1); Blocks.put16(&w, at + 2, 0)
                case .q4_K, .q5_K: Blocks.put16(&w, at, 1); Blocks.put16(&w, at + 2, 0)
                default: Blocks.put16(&w, at, 1)
                }
            }
            if type == .q6_K { for b in 0..<(n / 256) { for j in 0..<16 { w[b * 210 + 192 + j] = 0x80 } } }  // scale -128
            let wf = Blocks.dequantize(type, w, n)
            for sign: Float in [1, -1] {
                let x = [Float](repeating: 127 * sign, count: n)  // d = 1, q = ±127
                let a = quantizeActivations(type, x, rows: 1, .reference)
                let want = exactDot(wf, x)
                for k in [QuantKernels.Kernel.reference] + fastKernels {
                    let got = Double(matmul(type, w, outRows: 1, cols: n, a, batch: 1, k)[0])
                    XCTAssertEqual(got, want, accuracy: abs(want) * 1e-6, "\(type) \(k) sign \(sign)")
                    // Two weight rows × two activation rows (the sets' two-row kernels), four ×
                    // four, and four × sixteen (weight rows unpacked once for the batch).
                    for (rows, batch) in [(2, 2), (4, 4), (4, 16)] {
                        let many = matmul(type, Array([[UInt8]](repeating: w, count: rows).joined()), outRows: rows, cols: n,
                                          Array([[UInt8]](repeating: a, count: batch).joined()), batch: batch, k)
                        for v in many { XCTAssertEqual(Double(v), want, accuracy: abs(want) * 1e-6, "\(type) \(k) sign \(sign) \(rows)x\(batch)") }
                    }
                }
            }
        }
    }

    /// Arguments the C side refuses come back as CQ_ERR_ARGS, not crashes (the Swift layer
    /// stops on them before calling; this is the C layer's own guard).
    func testCLayerRefusesBadArguments() {
        var w = [UInt8](repeating: 0, count: 4096), a = [UInt8](repeating: 0, count: 4096)
        var out = [Float](repeating: 0, count: 64)
        var x = [Float](repeating: 1, count: 512)
        let err = Int32(CQ_ERR_ARGS)
        func mm(_ type: Int32, _ rowBytes: Int, _ nOut: Int32, _ nIn: Int32, _ B: Int32, _ ld: Int32, _ r0: Int32, _ r1: Int32) -> Int32 {
            cq_matmul(type, &w, rowBytes, nOut, nIn, &a, B, &out, ld, r0, r1)
        }
        let q80 = Int32(CQ_TYPE_Q8_0)
        XCTAssertEqual(mm(q80, 34, 1, 32, 1, 1, 0, 1), 0)
        XCTAssertEqual(mm(q80, 34, 1, 48, 1, 1, 0, 1), err)   // not whole blocks
        XCTAssertEqual(mm(q80, 33, 1, 32, 1, 1, 0, 1), err)   // row shorter than a block
        XCTAssertEqual(mm(q80, 34, 2, 32, 1, 2, 1, 3), err)   // range past nOut
        XCTAssertEqual(mm(q80, 34, 2, 32, 1, 2, 2, 1), err)   // reversed range
        XCTAssertEqual(mm(q80, 34, 4, 32, 2, 3, 0, 4), err)   // ldOut < nOut with a batch
        XCTAssertEqual(mm(10, 84, 1, 256, 1, 1, 0, 1), err)   // Q2_K: no kernel
        XCTAssertEqual(cq_quantize_activations(Int32(CQ_TYPE_Q4_K), &x, 1, 128, &a), err)
        XCTAssertEqual(cq_act_row_bytes(Int32(CQ_TYPE_Q4_K), 128), 0)
        XCTAssertTrue(cq_dot(-1, q80, 31, &w, &a).isNaN)
        XCTAssertNil(cq_kernel_name(7))
        XCTAssertEqual(cq_effective_kernel(-1, 10), -1)
    }

    // MARK: Real model

    /// SmolLM2-135M-Instruct Q4_1 (scripts/setup.sh fetches it): rows of blk.0.attn_q.weight
    /// (Q4_1) and token_embd.weight (Q8_0) against the Double dot of GGUFQuant's dequantized rows
    /// with the float activation, within the quantization bound plus rounding, on every set; and
    /// the whole attn_q product for three activation rows, each set against the reference.
    func testRealModelTensors() throws {
        let path = ProcessInfo.processInfo.environment["LORAFUSE_SMOLLM2_GGUF"] ?? ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: path) else {
            return XCTFail("SmolLM2 model missing at \(path): run scripts/setup.sh (or `make test`) to fetch it, or set LORAFUSE_SMOLLM2_GGUF")
        }
        let f = try GGUFFile(path: path)
        var rng = SeededRNG(seed: 51)
        let embedRow = try f.floats("token_embd.weight", rows: 1000..<1001)  // a real hidden-state-like vector
        for (name, type, rows) in [("blk.0.attn_q.weight", GGMLType.q4_1, [0, 1, 287, 575]),
                                   ("token_embd.weight", GGMLType.q8_0, [0, 1, 1000, 49151])] {
            let info = try XCTUnwrap(f.tensorInfo(name))
            XCTAssertEqual(info.type, type, name)
            let n = info.dims[0], nOut = info.rowCount
            let raw = try f.rawBytes(name)
            let rb = type.byteCount(elements: n)
            XCTAssertEqual(raw.count, rb * nOut)
            for (xi, x) in [randomX(n, &rng, outliers: false), embedRow.map { $0 * 30 }].enumerated() {
                for k in [QuantKernels.Kernel.reference] + fastKernels {
                    let a = quantizeActivations(type, x, rows: 1, k)
                    let xh = dequantizeActivation(type, a, n)
                    for r in rows {
                        let wb = Array(raw[r * rb..<(r + 1) * rb])
                        let wf = try f.floats(name, rows: r..<r + 1)
                        let got = Double(matmul(type, wb, outRows: 1, cols: n, a, batch: 1, k)[0])
                        let m = magnitude(wf, Blocks.offsets(type, wb, n), xh)
                        let label = "\(name) row \(r) x\(xi) \(k)"
                        XCTAssertLessThanOrEqual(abs(got - exactDot(wf, xh)), terms(type, n) * 0x1p-23 * m, label)
                        XCTAssertLessThanOrEqual(abs(got - exactDot(wf, x)), quantizationBound(type, wf, x) + terms(type, n) * 0x1p-23 * m, label)
                    }
                }
            }
        }
        // The whole of attn_q, three activation rows: each fast set against the reference, and the
        // relative error of the product against the f32 one.
        let name = "blk.0.attn_q.weight"
        let raw = try f.rawBytes(name)
        let wf = try f.floats(name)
        let n = 576, B = 3
        let x = randomX(n * B, &rng, outliers: false)
        let a = quantizeActivations(.q4_1, x, rows: B, .reference)
        let ref = matmul(.q4_1, raw, outRows: n, cols: n, a, batch: B, .reference)
        var num = 0.0, den = 0.0
        for b in 0..<B {
            for r in 0..<n {
                let e = exactDot(Array(wf[r * n..<(r + 1) * n]), Array(x[b * n..<(b + 1) * n]))
                num += (Double(ref[b * n + r]) - e) * (Double(ref[b * n + r]) - e)
                den += e * e
            }
        }
        // Gaussian x: d ≈ 2.1σ/127 per block, rounding error ≈ d/√12 ≈ 0.5 % of σ per value, so
        // ‖ŷ − y‖/‖y‖ ≈ 0.5 %; 1 % leaves room.
        XCTAssertLessThan((num / den).squareRoot(), 0.01, "relative error of the Q4_1 × Q8_1 product")
        let rb = GGMLType.q4_1.byteCount(elements: n), ab = QuantKernels.activationRowBytes(type: .q4_1, cols: n)
        for k in fastKernels {
            let got = matmul(.q4_1, raw, outRows: n, cols: n, a, batch: B, k)
            for b in 0..<B {
                let xh = dequantizeActivation(.q4_1, Array(a[b * ab..<(b + 1) * ab]), n)
                for r in 0..<n {
                    let wb = Array(raw[r * rb..<(r + 1) * rb])
                    let m = magnitude(Array(wf[r * n..<(r + 1) * n]), Blocks.offsets(.q4_1, wb, n), xh)
                    XCTAssertLessThanOrEqual(Double(abs(got[b * n + r] - ref[b * n + r])), terms(.q4_1, n) * 0x1p-23 * m, "\(k) b=\(b) r=\(r)")
                }
            }
        }
    }
}
