import Foundation
import XCTest
@testable import LoRAFuse

/// Fixtures made by scripts/make_gguf_fixtures.py with gguf-python 0.19 (see that script).
private let ggufFixtures = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/gguf")

private func fixture(_ name: String) -> String { ggufFixtures.appendingPathComponent(name).path }

private struct Manifest: Decodable {
    struct Entry: Decodable { let name: String; let type: String; let dims: [Int]; let offset: Int; let count: Int }
    let tensors: [Entry]
}

/// Reads a manifest and its float32 blob; returns name → (entry, values).
private func loadExpected(_ json: String, _ bin: String) throws -> [String: (Manifest.Entry, [Float])] {
    let manifest = try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: fixture(json))))
    let blob = try Data(contentsOf: URL(fileURLWithPath: fixture(bin)))
    let all: [Float] = blob.withUnsafeBytes { raw in
        (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
    }
    var out = [String: (Manifest.Entry, [Float])]()
    for e in manifest.tensors { out[e.name] = (e, Array(all[e.offset ..< e.offset + e.count])) }
    return out
}

/// Little-endian byte builder for hand-made (mostly malformed) files.
private struct Bytes {
    var b: [UInt8] = []
    mutating func u8(_ v: UInt8) { b.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
    mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); b.append(contentsOf: Array(s.utf8)) }
    mutating func header(version: UInt32 = 3, tensors: UInt64, kvs: UInt64) {
        b.append(contentsOf: Array("GGUF".utf8)); u32(version); u64(tensors); u64(kvs)
    }
    /// A tensor info entry.
    mutating func tensor(_ name: String, dims: [UInt64], type: UInt32 = 0, offset: UInt64) {
        str(name); u32(UInt32(dims.count)); for d in dims { u64(d) }; u32(type); u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    mutating func data(_ n: Int) {
        while b.count % 32 != 0 { b.append(0) }
        b.append(contentsOf: [UInt8](repeating: 0x3C, count: n))
    }
}

private func open(_ bytes: [UInt8]) throws -> GGUFFile { try GGUFFile(data: Data(bytes), path: "test.gguf") }

/// Asserts that opening `bytes` fails with exactly `expected`.
private func assertError(_ bytes: [UInt8], _ expected: GGUFError, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertThrowsError(try open(bytes), file: file, line: line) { error in
        XCTAssertEqual(error as? GGUFError, expected, file: file, line: line)
        XCTAssertTrue("\(error)".contains("test.gguf"), "message must name the file: \(error)", file: file, line: line)
    }
}

final class GGUFTests: XCTestCase {
    // MARK: Fixtures from gguf-python

    func testMetadataOfEveryValueType() throws {
        let f = try GGUFFile(path: fixture("types.gguf"))
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.alignment, 32)
        XCTAssertEqual(f.metadataKeys, ["general.architecture", "test.u8", "test.i8", "test.u16", "test.i16", "test.u32",
                                        "test.i32", "test.f32", "test.bool", "test.string", "test.u64", "test.i64",
                                        "test.f64", "test.array_i32", "test.array_u8", "test.array_f32",
                                        "test.array_bool", "test.array_str", "test.array_nested"])
        let m = f.metadata
        XCTAssertEqual(m["general.architecture"], .string("test"))
        XCTAssertEqual(m["test.u8"], .uint8(200))
        XCTAssertEqual(m["test.i8"], .int8(-100))
        XCTAssertEqual(m["test.u16"], .uint16(60000))
        XCTAssertEqual(m["test.i16"], .int16(-30000))
        XCTAssertEqual(m["test.u32"], .uint32(4_000_000_000))
        XCTAssertEqual(m["test.i32"], .int32(-2_000_000_000))
        XCTAssertEqual(m["test.f32"], .float32(1.5))
        XCTAssertEqual(m["test.bool"], .bool(true))
        XCTAssertEqual(m["test.string"], .string("h\u{e9}llo \u{2713}"))
        XCTAssertEqual(m["test.u64"], .uint64(9_223_372_036_854_775_813))
        XCTAssertEqual(m["test.i64"], .int64(-4_611_686_018_427_387_904))
        XCTAssertEqual(m["test.f64"], .float64(3.141592653589793))
        XCTAssertEqual(m["test.array_i32"], .array(.int32, [.int32(1), .int32(-2), .int32(3)]))
        XCTAssertEqual(m["test.array_u8"], .array(.uint8, [.uint8(1), .uint8(2), .uint8(255)]))
        XCTAssertEqual(m["test.array_bool"], .array(.bool, [.bool(true), .bool(false)]))
        XCTAssertEqual(m["test.array_nested"], .array(.array, [.array(.int32, [.int32(1), .int32(2)]),
                                                               .array(.int32, [.int32(3)])]))
        // Accessors.
        XCTAssertEqual(m["test.u8"]?.asInt, 200)
        XCTAssertEqual(m["test.i64"]?.asInt, -4_611_686_018_427_387_904)
        XCTAssertNil(m["test.u64"]?.asInt, "2^63+5 does not fit in Int")
        XCTAssertEqual(m["test.u64"]?.asDouble, 9.223372036854775813e18)
        XCTAssertEqual(m["test.f32"]?.asFloat, 1.5)
        XCTAssertEqual(m["test.f64"]?.asDouble, 3.141592653589793)
        XCTAssertEqual(m["test.bool"]?.asBool, true)
        XCTAssertNil(m["test.bool"]?.asInt)
        XCTAssertEqual(m["test.string"]?.asString, "h\u{e9}llo \u{2713}")
        XCTAssertEqual(m["test.array_str"]?.asStringArray, ["a", "bc", ""])
        XCTAssertEqual(m["test.array_i32"]?.asIntArray, [1, -2, 3])
        XCTAssertEqual(m["test.array_f32"]?.asFloatArray, [0.5, -2.0, 1e-3])
        XCTAssertEqual(m["test.array_i32"]?.asFloatArray, [1, -2, 3])
        XCTAssertNil(m["test.array_str"]?.asIntArray)
        XCTAssertEqual(m["test.array_nested"]?.asArray?.map { $0.asIntArray ?? [] }, [[1, 2], [3]])
    }

    func testDequantizationMatchesGGUFPythonForEveryType() throws {
        let f = try GGUFFile(path: fixture("types.gguf"))
        let expected = try loadExpected("manifest.json", "expected.bin")
        let names = ["f32", "f16", "bf16", "q4_0", "q4_1", "q8_0", "q4_k", "q5_k", "q6_k"]
        XCTAssertEqual(f.tensors.map(\.name), names)
        var previousEnd = 0
        for name in names {
            let (entry, want) = try XCTUnwrap(expected[name])
            let info = try XCTUnwrap(f.tensorInfo(name))
            XCTAssertEqual(info.type.name, entry.type, name)
            XCTAssertEqual(info.dims, entry.dims, name)
            XCTAssertEqual(info.byteSize, info.type.byteCount(elements: info.elementCount))
            XCTAssertEqual(info.offset % 32, 0, "\(name) offset aligned")
            XCTAssertGreaterThanOrEqual(info.offset, previousEnd, "\(name) after the previous tensor")
            previousEnd = info.offset + info.byteSize
            let got = try f.floats(name)
            XCTAssertEqual(got.count, want.count, name)
            // Same arithmetic in the same order as gguf-python: bit-exact.
            for (i, (g, w)) in zip(got, want).enumerated() where g.bitPattern != w.bitPattern {
                XCTFail("\(name)[\(i)]: got \(g), gguf-python \(w)")
                break
            }
        }
        // The K-quant fixtures really exercise the scale/min unpacking: values are not all equal.
        XCTAssertGreaterThan(Set(try f.floats("q4_k")).count, 100)
        XCTAssertGreaterThan(Set(try f.floats("q6_k")).count, 100)
    }

    func testMatrixIsPyTorchLayoutAndRowsAreLazy() throws {
        let f = try GGUFFile(path: fixture("types.gguf"))
        let expected = try loadExpected("manifest.json", "expected.bin")
        // ggml dims [8, 3] -> PyTorch (3, 8): element (i, j) is storage index i*8 + j.
        let m = try f.matrix("f32")
        XCTAssertEqual(m.rows, 3)
        XCTAssertEqual(m.cols, 8)
        let want = expected["f32"]!.1
        for i in 0..<3 { for j in 0..<8 { XCTAssertEqual(m[i, j], want[i * 8 + j]) } }
        // Row ranges read only those rows, for quantized types too.
        let q = try f.floats("q6_k", rows: 1..<2)
        XCTAssertEqual(q, Array(expected["q6_k"]!.1[512..<1024]))
        XCTAssertThrowsError(try f.floats("q6_k", rows: 1..<3))
        XCTAssertEqual(try f.matrix("q4_1").shape, [2, 64])
        XCTAssertThrowsError(try f.floats("nope")) { error in
            XCTAssertEqual(error as? GGUFError, .tensorNotFound(path: fixture("types.gguf"), name: "nope"))
        }
    }

    func testVersion2WithAlignment64() throws {
        let f = try GGUFFile(path: fixture("aligned64_v2.gguf"))
        let expected = try loadExpected("manifest.json", "expected.bin")
        XCTAssertEqual(f.version, 2)
        XCTAssertEqual(f.alignment, 64)
        XCTAssertEqual(f.metadata["general.alignment"], .uint32(64))
        XCTAssertEqual(f.dataOffset % 64, 0)
        XCTAssertEqual(f.tensors.count, 6)
        for t in f.tensors {
            XCTAssertEqual(t.offset % 64, 0, t.name)
            XCTAssertEqual(try f.floats(t.name), expected[t.name]!.1, t.name)
        }
    }

    func testWriterQ8_0MatchesGGUFPythonBytes() throws {
        let f = try GGUFFile(path: fixture("types.gguf"))
        let source = try loadExpected("manifest.json", "expected.bin")["q8_0.source"]!.1
        XCTAssertEqual(GGUFQuant.quantizeQ8_0(source), try f.rawBytes("q8_0"))
    }

    // MARK: Real model (SmolLM2-135M-Instruct Q4_1)

    /// A slice of the real model (its scalar metadata and the first two rows of four tensors,
    /// original bytes) against gguf-python; the full file in the next test.
    func testSmolLM2MatchesGGUFPython() throws {
        let expected = try loadExpected("smollm2_rows.json", "smollm2_rows.bin")
        let slice = try GGUFFile(path: fixture("smollm2_slice.gguf"))
        XCTAssertEqual(slice.metadata["general.architecture"]?.asString, "llama")
        XCTAssertEqual(slice.metadata["tokenizer.ggml.model"]?.asString, "gpt2")
        XCTAssertEqual(slice.metadata["tokenizer.ggml.eos_token_id"]?.asInt, 2)
        XCTAssertEqual(slice.metadata["llama.attention.layer_norm_rms_epsilon"]?.asFloat, 1e-5)
        XCTAssertTrue(slice.metadata["tokenizer.chat_template"]?.asString?.contains("<|im_start|>") ?? false)
        XCTAssertEqual(slice.tensorInfo("token_embd.weight")?.type, .q8_0)
        XCTAssertEqual(slice.tensorInfo("blk.0.attn_q.weight")?.type, .q4_1)
        for (name, (entry, want)) in expected {
            XCTAssertEqual(try slice.floats(name), want, name)
            XCTAssertEqual(slice.tensorInfo(name)?.dims[0], entry.dims[0], name)
        }

    }

    /// The full model file that scripts/setup.sh fetches (LORAFUSE_SMOLLM2_GGUF, else the model
    /// `ModelLocator` finds, as every other SmolLM2 test does) against the same gguf-python rows.
    /// It runs on every `swift test`: a missing file is a failure that says how to fetch it, not a
    /// silent pass (it used to return early unless LORAFUSE_INTEGRATION=1, which nothing set).
    func testFullSmolLM2FileMatchesGGUFPython() throws {
        let expected = try loadExpected("smollm2_rows.json", "smollm2_rows.bin")
        let path = ProcessInfo.processInfo.environment["LORAFUSE_SMOLLM2_GGUF"] ?? ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: path) else {
            return XCTFail("SmolLM2 model missing at \(path): run scripts/setup.sh (or `make test`) to fetch it, or set LORAFUSE_SMOLLM2_GGUF")
        }
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.tensors.count, 272)
        var types = [String: Int]()
        for t in f.tensors { types[t.type.name, default: 0] += 1 }
        XCTAssertEqual(types, ["Q4_1": 210, "F32": 61, "Q8_0": 1])
        XCTAssertEqual(f.metadata["tokenizer.ggml.tokens"]?.asStringArray?.count, 49152)
        XCTAssertEqual(f.metadata["tokenizer.ggml.merges"]?.asStringArray?.count, 48900)
        XCTAssertEqual(f.metadata["tokenizer.ggml.tokens"]?.asStringArray?[1], "<|im_start|>")
        for (name, (entry, want)) in expected {
            let info = try XCTUnwrap(f.tensorInfo(name))
            XCTAssertEqual(info.dims, entry.dims, name)
            XCTAssertEqual(try f.floats(name, rows: 0..<min(2, info.rowCount)), want, name)
        }
        let q = try f.matrix("blk.0.attn_k.weight")  // W_k (out 192, in 576)
        XCTAssertEqual(q.shape, [192, 576])
        XCTAssertTrue(q.data.allSatisfy(\.isFinite))
    }

    // MARK: Writer

    func testWriterRoundTripsAllValueTypesAndTensors() throws {
        var w = try GGUFWriter(alignment: 16)
        let values: [(String, GGUFValue)] = [
            ("u8", .uint8(7)), ("i8", .int8(-7)), ("u16", .uint16(65535)), ("i16", .int16(-32768)),
            ("u32", .uint32(.max)), ("i32", .int32(.min)), ("f32", .float32(-0.25)), ("bool", .bool(false)),
            ("str", .string("")), ("u64", .uint64(.max)), ("i64", .int64(.min)), ("f64", .float64(.pi)),
            ("empty", .array(.float32, [])),
            ("nested", .array(.array, [.array(.string, [.string("x")]), .array(.uint64, [.uint64(1), .uint64(2)])])),
        ]
        for (k, v) in values { try w.set(k, v) }
        try w.set("u8", .uint8(9))  // replacing keeps the position
        var rng = SeededRNG(seed: 11)
        let m = Matrix.randomNormal(3, 64, rng: &rng)  // PyTorch (out 3, in 64)
        try w.addTensor("w.f32", matrix: m)
        try w.addTensor("w.f16", matrix: m, type: .f16)
        try w.addTensor("w.bf16", dims: [5], values: [1, -2, 3.5, 0, 1e-3], type: .bf16)
        try w.addTensor("w.q8", matrix: m, type: .q8_0)
        let k = try GGUFFile(path: fixture("types.gguf"))
        try w.addRawTensor("w.q5k", dims: [512, 2], type: .q5_K, bytes: k.rawBytes("q5_k"))
        XCTAssertThrowsError(try w.addTensor("w.f32", matrix: m))
        XCTAssertThrowsError(try w.addTensor("bad", dims: [40], values: [Float](repeating: 0, count: 40), type: .q8_0))
        XCTAssertThrowsError(try w.set("general.alignment", .uint32(32)))

        let path = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-roundtrip-\(ProcessInfo.processInfo.processIdentifier).gguf").path
        try w.write(to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.alignment, 16)
        XCTAssertEqual(f.metadataKeys, ["general.alignment"] + values.map(\.0))
        for (key, v) in values where key != "u8" { XCTAssertEqual(f.metadata[key], v, key) }
        XCTAssertEqual(f.metadata["u8"], .uint8(9))
        XCTAssertEqual(f.tensors.map(\.offset).map { $0 % 16 }, [0, 0, 0, 0, 0])
        XCTAssertEqual(try f.matrix("w.f32"), m)
        XCTAssertEqual(f.tensorInfo("w.f32")?.dims, [64, 3])
        XCTAssertLessThan(try f.matrix("w.f16").maxAbsDifference(m), 2e-3)
        XCTAssertEqual(try f.floats("w.bf16").prefix(4), [1, -2, 3.5, 0])
        let q8 = try f.matrix("w.q8")
        for i in 0..<m.count {
            // Q8_0 error is at most half a step, d/2 = max|block|/254 (plus the f16 rounding of d).
            XCTAssertLessThanOrEqual(abs(q8.data[i] - m.data[i]), 4.5 / 254 + 1e-3)
        }
        XCTAssertEqual(try f.floats("w.q5k"), try k.floats("q5_k"))
    }

    // MARK: Malformed files: each gives its specific error, never a crash

    func testRejectsBadMagicAndVersions() {
        var b = Bytes(); b.b = Array("GGML".utf8); b.u32(3); b.u64(0); b.u64(0)
        assertError(b.b, .badMagic(path: "test.gguf", actual: Array("GGML".utf8)))
        assertError([0x47, 0x47], .badMagic(path: "test.gguf", actual: [0x47, 0x47]))

        b = Bytes(); b.header(version: 1, tensors: 0, kvs: 0)
        XCTAssertThrowsError(try open(b.b)) { error in
            guard case .unsupportedVersion(_, 1, let reason)? = error as? GGUFError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("version 1"))
        }
        b = Bytes(); b.header(version: 3 << 24, tensors: 0, kvs: 0)
        XCTAssertThrowsError(try open(b.b)) { error in
            XCTAssertTrue("\(error)".contains("big-endian"), "\(error)")
        }
        b = Bytes(); b.header(version: 4, tensors: 0, kvs: 0)
        XCTAssertThrowsError(try open(b.b)) { error in
            guard case .unsupportedVersion(_, 4, _)? = error as? GGUFError else { return XCTFail("\(error)") }
        }
        // A minimal valid file: no tensors, no metadata.
        b = Bytes(); b.header(tensors: 0, kvs: 0)
        XCTAssertEqual(try open(b.b).tensors.count, 0)
    }

    func testRejectsTruncatedHeader() {
        var b = Bytes(); b.header(tensors: 0, kvs: 0)
        assertError(Array(b.b.prefix(10)), .truncated(path: "test.gguf", field: "tensor_count", offset: 8, needed: 8, available: 2))
        // Every prefix of a real file's header fails cleanly.
        let full = try! [UInt8](Data(contentsOf: URL(fileURLWithPath: fixture("types.gguf"))))
        let dataStart = try! GGUFFile(path: fixture("types.gguf")).dataOffset
        for n in 0..<dataStart - 31 {
            XCTAssertThrowsError(try open(Array(full.prefix(n))), "prefix \(n)") { XCTAssertTrue($0 is GGUFError) }
        }
    }

    func testRejectsStringLongerThanFile() {
        var b = Bytes(); b.header(tensors: 0, kvs: 1)
        b.u64(1000); b.b += Array("abcdefghijklmnopqrst".utf8)
        assertError(b.b, .truncated(path: "test.gguf", field: "key of metadata entry 0 bytes", offset: 32, needed: 1000, available: 20))
        b = Bytes(); b.header(tensors: 0, kvs: 1)
        b.str("k"); b.u32(GGUFValueType.string.rawValue); b.u64(.max)
        assertError(b.b, .truncated(path: "test.gguf", field: "value of \"k\" bytes", offset: 45, needed: .max, available: 0))
    }

    func testRejectsHugeCounts() {
        var b = Bytes(); b.header(tensors: 0, kvs: 1)
        b.str("a"); b.u32(GGUFValueType.array.rawValue); b.u32(GGUFValueType.uint32.rawValue); b.u64(1 << 60); b.u32(0)
        assertError(b.b, .countTooLarge(path: "test.gguf", field: "element count of \"a\"", count: 1 << 60, maximum: 1))
        b = Bytes(); b.header(tensors: 0, kvs: .max)
        assertError(b.b, .countTooLarge(path: "test.gguf", field: "kv_count", count: .max, maximum: 0))
        b = Bytes(); b.header(tensors: 1 << 40, kvs: 0)
        assertError(b.b, .countTooLarge(path: "test.gguf", field: "tensor_count", count: 1 << 40, maximum: 0))
        // Array of strings: each needs at least its 8-byte length.
        b = Bytes(); b.header(tensors: 0, kvs: 1)
        b.str("s"); b.u32(GGUFValueType.array.rawValue); b.u32(GGUFValueType.string.rawValue); b.u64(3); b.u64(0); b.u64(0)
        assertError(b.b, .countTooLarge(path: "test.gguf", field: "element count of \"s\"", count: 3, maximum: 2))
    }

    func testRejectsBadMetadata() {
        var b = Bytes(); b.header(tensors: 0, kvs: 2)
        b.str("k"); b.u32(4); b.u32(1)
        b.str("k"); b.u32(4); b.u32(2)
        assertError(b.b, .duplicateKey(path: "test.gguf", key: "k"))

        b = Bytes(); b.header(tensors: 0, kvs: 1)
        b.str("k"); b.u32(13); b.u64(0)
        assertError(b.b, .invalidValueType(path: "test.gguf", key: "k", typeID: 13))

        b = Bytes(); b.header(tensors: 0, kvs: 1)
        b.str("k"); b.u32(GGUFValueType.bool.rawValue); b.u8(2)
        assertError(b.b, .invalidValue(path: "test.gguf", key: "k", expected: "bool 0 or 1", actual: "2"))

        b = Bytes(); b.header(tensors: 0, kvs: 1)
        b.u64(2); b.b += [0xC3, 0x28]; b.u32(GGUFValueType.uint8.rawValue); b.u8(0)
        assertError(b.b, .invalidString(path: "test.gguf", field: "key of metadata entry 0"))

        for (value, shown) in [(UInt32(0), "0 (uint32)"), (UInt32(48), "48 (uint32)")] {
            b = Bytes(); b.header(tensors: 0, kvs: 1)
            b.str("general.alignment"); b.u32(GGUFValueType.uint32.rawValue); b.u32(value)
            assertError(b.b, .invalidAlignment(path: "test.gguf", value: shown))
        }
        b = Bytes(); b.header(tensors: 0, kvs: 1)
        b.str("general.alignment"); b.u32(GGUFValueType.uint64.rawValue); b.u64(32)
        assertError(b.b, .invalidAlignment(path: "test.gguf", value: "32 (uint64)"))
    }

    func testRejectsBadTensorInfos() {
        var b = Bytes(); b.header(tensors: 2, kvs: 0)
        b.tensor("t", dims: [8], offset: 0); b.tensor("t", dims: [8], offset: 32); b.data(64)
        assertError(b.b, .duplicateTensor(path: "test.gguf", name: "t"))

        b = Bytes(); b.header(tensors: 1, kvs: 0)
        b.tensor("t", dims: [1, 1, 1, 1, 1], offset: 0); b.data(4)
        assertError(b.b, .invalidTensor(path: "test.gguf", tensor: "t", field: "n_dims", expected: "1...4", actual: "5"))

        b = Bytes(); b.header(tensors: 1, kvs: 0)
        b.tensor("t", dims: [4, 0], offset: 0); b.data(4)
        assertError(b.b, .invalidTensor(path: "test.gguf", tensor: "t", field: "dims[1]", expected: "1...\(Int64.max)", actual: "0"))

        b = Bytes(); b.header(tensors: 1, kvs: 0)
        b.tensor("t", dims: [1 << 32, 1 << 32], offset: 0); b.data(4)
        assertError(b.b, .invalidTensor(path: "test.gguf", tensor: "t", field: "element count",
                                        expected: "at most \(Int64.max)", actual: "overflow at dims[1] = \(UInt64(1) << 32)"))

        b = Bytes(); b.header(tensors: 1, kvs: 0)
        b.tensor("q", dims: [40, 2], type: GGMLType.q8_0.rawValue, offset: 0); b.data(200)
        assertError(b.b, .invalidTensor(path: "test.gguf", tensor: "q", field: "dims[0]",
                                        expected: "a multiple of Q8_0's block size 32", actual: "40"))

        b = Bytes(); b.header(tensors: 1, kvs: 0)
        b.tensor("u", dims: [8], type: 99, offset: 0); b.data(64)
        assertError(b.b, .unknownTensorType(path: "test.gguf", tensor: "u", typeID: 99))
    }

    func testRejectsMisalignedOrOutOfOrderOffsets() {
        // f32 [9] takes 36 bytes, so the next tensor must start at align(36, 32) = 64.
        var b = Bytes(); b.header(tensors: 2, kvs: 0)
        b.tensor("a", dims: [9], offset: 0); b.tensor("b", dims: [8], offset: 36); b.data(128)
        assertError(b.b, .badTensorOffset(path: "test.gguf", tensor: "b", expected: 64, actual: 36))

        b = Bytes(); b.header(tensors: 2, kvs: 0)
        b.tensor("a", dims: [8], offset: 32); b.tensor("b", dims: [8], offset: 0); b.data(128)
        assertError(b.b, .badTensorOffset(path: "test.gguf", tensor: "a", expected: 0, actual: 32))

        b = Bytes(); b.header(tensors: 2, kvs: 0)
        b.tensor("a", dims: [9], offset: 0); b.tensor("b", dims: [8], offset: 64); b.data(96)
        XCTAssertEqual(try open(b.b).tensors.map(\.offset), [0, 64])
    }

    func testRejectsDataPastEndOfFile() throws {
        var b = Bytes(); b.header(tensors: 1, kvs: 0)
        b.tensor("a", dims: [16], offset: 0); b.data(63)
        let dataStart = b.b.count - 63
        assertError(b.b, .dataOutOfBounds(path: "test.gguf", tensor: "a", end: dataStart + 64, fileSize: b.b.count))
        // The last tensor's trailing padding is optional.
        b.b.append(0)
        XCTAssertEqual(try open(b.b).floats("a").count, 16)
        // Cutting a real file anywhere inside its data section fails on the tensor it cuts.
        let full = try [UInt8](Data(contentsOf: URL(fileURLWithPath: fixture("types.gguf"))))
        let f = try GGUFFile(path: fixture("types.gguf"))
        let last = f.tensors.last!
        XCTAssertThrowsError(try open(Array(full.prefix(f.dataOffset + last.offset + last.byteSize - 1)))) { error in
            guard case .dataOutOfBounds(_, "q6_k", _, _)? = error as? GGUFError else { return XCTFail("\(error)") }
        }
    }

    func testKnownButUnsupportedTypeOpensButDoesNotDequantize() throws {
        var b = Bytes(); b.header(tensors: 1, kvs: 0)
        b.tensor("q5", dims: [32], type: 6, offset: 0); b.data(22)  // Q5_0: 22 bytes per 32 values
        let f = try open(b.b)
        XCTAssertEqual(f.tensors[0].byteSize, 22)
        XCTAssertEqual(try f.rawBytes("q5").count, 22)
        XCTAssertThrowsError(try f.floats("q5")) { error in
            XCTAssertEqual(error as? GGUFError, .unsupportedTensorType(path: "test.gguf", tensor: "q5", type: GGMLType(rawValue: 6)))
            XCTAssertTrue("\(error)".contains("Q5_0"))
        }
    }

    /// Random byte corruption of a real header: every outcome is a parsed file or a GGUFError.
    func testCorruptedHeadersNeverCrash() throws {
        let full = try [UInt8](Data(contentsOf: URL(fileURLWithPath: fixture("types.gguf"))))
        let headerEnd = try GGUFFile(path: fixture("types.gguf")).dataOffset
        var rng = SeededRNG(seed: 5)
        var failures = 0
        for _ in 0..<400 {
            var bytes = full
            for _ in 0..<3 {
                let i = Int(rng.next() % UInt64(headerEnd))
                bytes[i] = UInt8(truncatingIfNeeded: rng.next())
            }
            do {
                let f = try open(bytes)
                for t in f.tensors where t.type.canDequantize { _ = try f.floats(t.name) }
            } catch {
                XCTAssertTrue(error is GGUFError, "\(error)")
                failures += 1
            }
        }
        XCTAssertGreaterThan(failures, 0)
    }
}
