import XCTest
@testable import LoRAFuse

/// A fresh temporary directory per test, removed afterwards.
class TempDirTestCase: XCTestCase {
    var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lorafuse-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: tmp)
    }

    /// Writes bytes: u64 LE header length (or `declaredLength`), the header text, then `data`.
    func rawFile(_ name: String = "t.safetensors", header: String, data: [UInt8], declaredLength: UInt64? = nil) throws -> String {
        let h = Array(header.utf8)
        var bytes: [UInt8] = []
        let n = declaredLength ?? UInt64(h.count)
        for k in 0..<8 { bytes.append(UInt8((n >> (8 * UInt64(k))) & 0xFF)) }
        bytes += h
        bytes += data
        let url = tmp.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    func f32Bytes(_ v: [Float]) -> [UInt8] {
        v.flatMap { x -> [UInt8] in let b = x.bitPattern; return (0..<4).map { UInt8((b >> (8 * UInt32($0))) & 0xFF) } }
    }

    /// Asserts that `body` throws a `SafetensorsError` accepted by `matches`.
    func assertSTError(_ body: @autoclosure () throws -> Any, _ what: String, file: StaticString = #filePath, line: UInt = #line,
                       _ matches: (SafetensorsError) -> Bool) {
        do {
            _ = try body()
            XCTFail("expected \(what), got success", file: file, line: line)
        } catch let e as SafetensorsError {
            XCTAssertTrue(matches(e), "expected \(what), got \(e)", file: file, line: line)
            XCTAssertFalse(e.description.isEmpty)
        } catch {
            XCTFail("expected SafetensorsError \(what), got \(error)", file: file, line: line)
        }
    }
}

final class SafetensorsTests: TempDirTestCase {
    func roundTrip(_ dtype: DType) throws {
        var rng = SeededRNG(seed: 7)
        let m = Matrix.randomNormal(3, 5, rng: &rng)
        let v = (0..<7).map { Float($0) * 0.37 - 1 }
        let cube = (0..<24).map { Float($0) / 8 }
        let url = tmp.appendingPathComponent("rt-\(dtype.rawValue).safetensors")
        try SafetensorsWriter.write(tensors: [
            SafetensorsTensor(name: "w.weight", matrix: m),
            SafetensorsTensor(name: "b.bias", shape: [7], values: v),
            SafetensorsTensor(name: "c.cube", shape: [2, 3, 4], values: cube),
            SafetensorsTensor(name: "empty", shape: [0, 4], values: []),
            SafetensorsTensor(name: "scalar", shape: [], values: [2.5]),
        ], metadata: ["format": "pt", "note": "ünïcode \"quoted\""], dtype: dtype, to: url)

        let f = try SafetensorsFile(url: url)
        XCTAssertEqual((8 + f.headerLength) % 8, 0, "header padded to a multiple of 8")
        XCTAssertEqual(f.metadata, ["format": "pt", "note": "ünïcode \"quoted\""])
        XCTAssertEqual(Set(f.names), ["w.weight", "b.bias", "c.cube", "empty", "scalar"])
        // Data in sorted-name order, and `names` in offset order.
        XCTAssertEqual(f.names.filter { $0 != "empty" }, ["b.bias", "c.cube", "scalar", "w.weight"])
        let info = try f.info("c.cube")
        XCTAssertEqual(info.dtype, dtype.rawValue)
        XCTAssertEqual(info.shape, [2, 3, 4])
        XCTAssertEqual(info.byteRange.count, 24 * dtype.byteSize)

        func rounded(_ xs: [Float]) -> [Float] {
            switch dtype {
            case .f32: return xs
            case .f16: return xs.map { HalfConversion.floatFromHalf(HalfConversion.halfFromFloat($0)) }
            case .bf16: return xs.map { HalfConversion.floatFromBFloat(HalfConversion.bfloatFromFloat($0)) }
            }
        }
        XCTAssertEqual(try f.matrix("w.weight"), Matrix(rows: 3, cols: 5, data: rounded(m.data)))
        let bias = try f.matrix("b.bias")
        XCTAssertEqual(bias.shape, [1, 7])
        XCTAssertEqual(bias.data, rounded(v))
        let c = try f.matrix("c.cube")
        XCTAssertEqual(c.shape, [6, 4], "leading dimensions flattened")
        XCTAssertEqual(c.data, rounded(cube))
        XCTAssertEqual(try f.matrix("empty").shape, [0, 4])
        XCTAssertEqual(try f.matrix("scalar"), Matrix(rows: 1, cols: 1, data: [2.5]))
        if dtype != .f32 {
            XCTAssertNotEqual(rounded(m.data), m.data, "the 16-bit dtype really rounds")
        }
    }

    func testRoundTripF32() throws { try roundTrip(.f32) }
    func testRoundTripF16() throws { try roundTrip(.f16) }
    func testRoundTripBF16() throws { try roundTrip(.bf16) }

    func testHeaderKeysSortedAndMetadataFirst() throws {
        let url = tmp.appendingPathComponent("s.safetensors")
        try SafetensorsWriter.write(tensors: [SafetensorsTensor(name: "z", shape: [1], values: [1]),
                                              SafetensorsTensor(name: "a", shape: [1], values: [2])],
                                    metadata: ["format": "pt"], dtype: .f32, to: url)
        let bytes = try Data(contentsOf: url)
        let header = String(decoding: bytes[8..<(8 + Int(bytes[0]))], as: UTF8.self)
        let posMeta = header.range(of: "__metadata__")!.lowerBound
        let posA = header.range(of: "\"a\"")!.lowerBound
        let posZ = header.range(of: "\"z\"")!.lowerBound
        XCTAssertLessThan(posMeta, posA)
        XCTAssertLessThan(posA, posZ)
        XCTAssertTrue(header.hasSuffix(" ") || (8 + header.utf8.count) % 8 == 0)
        let f = try SafetensorsFile(url: url)
        XCTAssertEqual(try f.floats("a"), [2])
        XCTAssertEqual(try f.info("a").dataOffsets, 0..<4)
    }

    func testUnalignedHeaderLengthsReadFine() throws {
        // Header lengths 8k+1 … 8k+7: tensor data starts at an odd address.
        let values: [Float] = [1.5, -2.25, 3.125]
        for pad in 0..<8 {
            let header = "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}" + String(repeating: " ", count: pad)
            let p = try rawFile("u\(pad).safetensors", header: header, data: f32Bytes(values))
            let f = try SafetensorsFile(path: p)
            XCTAssertEqual(f.headerLength % 8, (header.utf8.count) % 8)
            XCTAssertEqual(try f.floats("x"), values)
        }
        // F16 and BF16 at odd offsets too.
        let h16 = "{\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[4,6]}}"
        let p = try rawFile("h.safetensors", header: h16, data: [0x00, 0x3C, 0x00, 0xC0, 0x80, 0x3F])
        let f = try SafetensorsFile(path: p)
        XCTAssertEqual(try f.floats("h"), [1, -2])
        XCTAssertEqual(try f.floats("b"), [1])
    }

    func testEmptyFileWithNoTensors() throws {
        let p = try rawFile(header: "{}", data: [])
        let f = try SafetensorsFile(path: p)
        XCTAssertTrue(f.names.isEmpty)
        XCTAssertTrue(f.metadata.isEmpty)
    }

    // MARK: malformed files

    let goodEntry = "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

    func testTooSmall() throws {
        let url = tmp.appendingPathComponent("small.safetensors")
        try Data([1, 2, 3, 4, 5]).write(to: url)
        assertSTError(try SafetensorsFile(url: url), "fileTooSmall") { if case .fileTooSmall(_, 5) = $0 { return true }; return false }
        let empty = tmp.appendingPathComponent("empty.safetensors")
        try Data().write(to: empty)
        assertSTError(try SafetensorsFile(url: empty), "fileTooSmall") { if case .fileTooSmall(_, 0) = $0 { return true }; return false }
        assertSTError(try SafetensorsFile(path: tmp.appendingPathComponent("nope").path), "cannotOpen") {
            if case .cannotOpen = $0 { return true }; return false
        }
    }

    func testHeaderLengthHuge() throws {
        let p = try rawFile(header: "{}", data: [], declaredLength: 1 << 40)
        assertSTError(try SafetensorsFile(path: p), "headerTooLarge") { if case .headerTooLarge(_, 1 << 40, _) = $0 { return true }; return false }
        let p2 = try rawFile("b.safetensors", header: "{}", data: [], declaredLength: UInt64.max)
        assertSTError(try SafetensorsFile(path: p2), "headerTooLarge") { if case .headerTooLarge = $0 { return true }; return false }
    }

    func testHeaderBeyondFileAndTruncated() throws {
        let p = try rawFile(header: "{}", data: [], declaredLength: 1000)
        assertSTError(try SafetensorsFile(path: p), "headerBeyondFile") { if case .headerBeyondFile(_, 1000, 10) = $0 { return true }; return false }
        // A good file cut short in its data section.
        let p2 = try rawFile("trunc.safetensors", header: "{\(goodEntry)}", data: [0, 0, 0, 0, 0])
        assertSTError(try SafetensorsFile(path: p2), "bufferNotAtEOF (truncated)") {
            if case .bufferNotAtEOF(_, 8, 5) = $0 { return true }; return false
        }
        // Cut inside the header.
        let full = try rawFile("full.safetensors", header: "{\(goodEntry)}", data: [UInt8](repeating: 0, count: 8))
        let bytes = try Data(contentsOf: URL(fileURLWithPath: full))
        let cut = tmp.appendingPathComponent("cut.safetensors")
        try bytes.prefix(20).write(to: cut)
        assertSTError(try SafetensorsFile(url: cut), "headerBeyondFile (cut header)") {
            if case .headerBeyondFile = $0 { return true }; return false
        }
    }

    func testHeaderNotJSONOrNotObject() throws {
        let p = try rawFile(header: "{not json", data: [])
        assertSTError(try SafetensorsFile(path: p), "headerNotJSON") { if case .headerNotJSON = $0 { return true }; return false }
        let p2 = try rawFile("arr.safetensors", header: "[1,2]", data: [])
        assertSTError(try SafetensorsFile(path: p2), "headerNotObject") { if case .headerNotObject = $0 { return true }; return false }
        let p3 = try rawFile("utf.safetensors", header: "{\"\u{FFFD}\":1}", data: [])
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p3)))
        bytes[10] = 0xFF  // invalid UTF-8 inside the key
        try Data(bytes).write(to: URL(fileURLWithPath: p3))
        assertSTError(try SafetensorsFile(path: p3), "headerNotJSON (bad UTF-8)") { if case .headerNotJSON = $0 { return true }; return false }
        let p4 = try rawFile("nul.safetensors", header: "{}\0\0", data: [])
        assertSTError(try SafetensorsFile(path: p4), "headerNotJSON (NUL padding)") { if case .headerNotJSON = $0 { return true }; return false }
    }

    func testBadEntries() throws {
        let cases: [(String, String)] = [
            ("{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", "negative shape"),
            ("{\"x\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", "float shape"),
            ("{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", "missing dtype"),
            ("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", "one offset"),
            ("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]}}", "negative offset"),
            ("{\"x\":[1]}", "entry not object"),
        ]
        for (i, (h, what)) in cases.enumerated() {
            let p = try rawFile("e\(i).safetensors", header: h, data: [UInt8](repeating: 0, count: 8))
            assertSTError(try SafetensorsFile(path: p), "invalidEntry: \(what)") {
                if case .invalidEntry(_, "x", _) = $0 { return true }; return false
            }
        }
        let meta = try rawFile("m.safetensors", header: "{\"__metadata__\":{\"a\":1}}", data: [])
        assertSTError(try SafetensorsFile(path: meta), "invalidMetadata") { if case .invalidMetadata(_, "a", _) = $0 { return true }; return false }
    }

    func testOffsetsReversedOverlapHole() throws {
        let rev = try rawFile("rev.safetensors", header: "{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", data: [UInt8](repeating: 0, count: 8))
        assertSTError(try SafetensorsFile(path: rev), "offsetsReversed") { if case .offsetsReversed(_, "x", 8, 0) = $0 { return true }; return false }

        let overlap = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}"
        let po = try rawFile("ov.safetensors", header: overlap, data: [UInt8](repeating: 0, count: 12))
        assertSTError(try SafetensorsFile(path: po), "overlap") { if case .overlap(_, "b", 8, 4) = $0 { return true }; return false }

        let hole = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}"
        let ph = try rawFile("hole.safetensors", header: hole, data: [UInt8](repeating: 0, count: 20))
        assertSTError(try SafetensorsFile(path: ph), "hole") { if case .hole(_, "b", 8, 12) = $0 { return true }; return false }

        let start = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}"
        let ps = try rawFile("start.safetensors", header: start, data: [UInt8](repeating: 0, count: 12))
        assertSTError(try SafetensorsFile(path: ps), "hole at start") { if case .hole(_, "a", 0, 4) = $0 { return true }; return false }
    }

    func testWrongByteSizeAndOverflow() throws {
        let p = try rawFile(header: "{\"x\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,4]}}", data: [0, 0, 0, 0])
        assertSTError(try SafetensorsFile(path: p), "byteSizeMismatch") {
            if case .byteSizeMismatch(_, "x", 8, 4) = $0 { return true }; return false
        }
        let big = "{\"x\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}"
        let p2 = try rawFile("big.safetensors", header: big, data: [UInt8](repeating: 0, count: 8))
        assertSTError(try SafetensorsFile(path: p2), "sizeOverflow") { if case .sizeOverflow(_, "x") = $0 { return true }; return false }
    }

    func testBufferNotEndingAtEOF() throws {
        let p = try rawFile(header: "{\(goodEntry)}", data: [UInt8](repeating: 0, count: 12))
        assertSTError(try SafetensorsFile(path: p), "bufferNotAtEOF") { if case .bufferNotAtEOF(_, 8, 12) = $0 { return true }; return false }
    }

    func testDuplicateNames() throws {
        let h = "{\(goodEntry),\(goodEntry)}"
        let p = try rawFile(header: h, data: [UInt8](repeating: 0, count: 8))
        assertSTError(try SafetensorsFile(path: p), "duplicateName") { if case .duplicateName(_, "x") = $0 { return true }; return false }
        // An escaped spelling of the same name is the same name.
        let h2 = "{\(goodEntry),\"\\u0078\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}"
        let p2 = try rawFile("d2.safetensors", header: h2, data: [UInt8](repeating: 0, count: 8))
        assertSTError(try SafetensorsFile(path: p2), "duplicateName (escaped)") { if case .duplicateName(_, "x") = $0 { return true }; return false }
        let h3 = "{\"__metadata__\":{},\"__metadata__\":{}}"
        let p3 = try rawFile("d3.safetensors", header: h3, data: [])
        assertSTError(try SafetensorsFile(path: p3), "duplicate __metadata__") { if case .duplicateName(_, "__metadata__") = $0 { return true }; return false }
    }

    func testUnknownAndUnsupportedDTypes() throws {
        let p = try rawFile(header: "{\"x\":{\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,8]}}", data: [UInt8](repeating: 0, count: 8))
        assertSTError(try SafetensorsFile(path: p), "unknownDType") { if case .unknownDType(_, "x", "Q7") = $0 { return true }; return false }

        let h = "{\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},\"f8\":{\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[16,19]},"
            + "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[19,23]}}"
        var data = [UInt8](repeating: 0, count: 19)
        data[0] = 5
        data += f32Bytes([4])
        let p2 = try rawFile("i64.safetensors", header: h, data: data)
        let f = try SafetensorsFile(path: p2)
        XCTAssertEqual(f.names, ["ids", "f8", "x"], "non-float dtypes are listed")
        XCTAssertEqual(try f.info("ids").dtype, "I64")
        XCTAssertNil(try f.info("ids").floatType)
        XCTAssertEqual(try f.rawBytes("ids").first, 5)
        XCTAssertEqual(try f.floats("x"), [4])
        assertSTError(try f.floats("ids"), "unsupportedDType I64") { if case .unsupportedDType(_, "ids", "I64") = $0 { return true }; return false }
        assertSTError(try f.matrix("f8"), "unsupportedDType F8") { if case .unsupportedDType(_, "f8", "F8_E4M3") = $0 { return true }; return false }
        assertSTError(try f.info("nope"), "noSuchTensor") { if case .noSuchTensor(_, "nope") = $0 { return true }; return false }
    }

    func testNaNValuesNamed() throws {
        let p = try rawFile(header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", data: f32Bytes([1, .nan, .infinity]))
        let f = try SafetensorsFile(path: p)
        XCTAssertTrue(try f.floats("w")[1].isNaN, "plain reads return the raw values")
        assertSTError(try f.finiteMatrix("w"), "nonFinite") { if case .nonFinite(_, "w", 1, _) = $0 { return true }; return false }
        XCTAssertThrowsError(try SafetensorsFile.checkFinite([0, -.infinity], tensor: "t", path: "p")) { e in
            XCTAssertTrue("\(e)".contains("'t'"))
        }
    }

    func testWriterRejectsBadInput() throws {
        let url = tmp.appendingPathComponent("bad.safetensors")
        assertSTError(try SafetensorsWriter.write(tensors: [SafetensorsTensor(name: "a", shape: [2, 2], values: [1])], dtype: .f32, to: url),
                      "invalidTensor") { if case .invalidTensor(_, "a", _) = $0 { return true }; return false }
        assertSTError(try SafetensorsWriter.write(tensors: [SafetensorsTensor(name: "a", shape: [1], values: [1]),
                                                            SafetensorsTensor(name: "a", shape: [1], values: [2])], dtype: .f32, to: url),
                      "duplicateName") { if case .duplicateName(_, "a") = $0 { return true }; return false }
        XCTAssertFalse(FileManager.default.fileExists(atPath: url.path), "nothing written on error")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: tmp.path)
        XCTAssertTrue(leftovers.isEmpty, "no temporary files left: \(leftovers)")
    }

    /// `atomicWrite` names its temporary file by `OutputGuard`'s one rule (`.NAME.tmp-PID-RANDOM`
    /// beside the target) and removes it when the write fails; a missing folder is a write error.
    func testAtomicWriteUsesTheGuardsTemporaryName() throws {
        let url = tmp.appendingPathComponent("a.safetensors")
        var seen: [String] = []
        struct Boom: Error {}
        XCTAssertThrowsError(try SafetensorsWriter.atomicWrite(to: url) { _ in
            seen = try FileManager.default.contentsOfDirectory(atPath: tmp.path)
            throw Boom()
        })
        XCTAssertEqual(seen.count, 1, "\(seen)")
        XCTAssertTrue(seen[0].hasPrefix(".a.safetensors.tmp-\(getpid())-"), seen[0])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp.path), [], "temporary file removed")
        let missing = tmp.appendingPathComponent("no/such/dir/x.safetensors")
        assertSTError(try SafetensorsWriter.write(tensors: [], dtype: .f32, to: missing), "writeFailed") {
            if case .writeFailed(missing.path, _) = $0 { return true }; return false
        }
    }

    func testRawPassthroughAndReplacingAMappedFile() throws {
        let url = tmp.appendingPathComponent("r.safetensors")
        try SafetensorsWriter.write(tensors: [SafetensorsTensor(name: "ids", shape: [2], dtype: "I64", rawBytes: [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]),
                                              SafetensorsTensor(name: "w", shape: [2], values: [1, 2])], dtype: .f32, to: url)
        let old = try SafetensorsFile(url: url)
        XCTAssertEqual(try old.rawBytes("ids")[8], 2)
        // Rewriting the same path renames a new file into place: the mapped old file is untouched.
        try SafetensorsWriter.write(tensors: [SafetensorsTensor(name: "w", shape: [2], values: [7, 8])], dtype: .f32, to: url)
        XCTAssertEqual(try old.floats("w"), [1, 2])
        XCTAssertEqual(try SafetensorsFile(url: url).floats("w"), [7, 8])
    }

    // MARK: sharded

    func testShardedRoundTrip() throws {
        var tensors: [SafetensorsTensor] = []
        for i in 0..<5 {
            tensors.append(SafetensorsTensor(name: "layers.\(i).w", shape: [2, 3], values: (0..<6).map { Float(i * 10 + $0) }))
        }
        let dir = tmp.appendingPathComponent("sharded")
        let files = try ShardedSafetensorsWriter.write(tensors: tensors, metadata: ["format": "pt"], dtype: .f32,
                                                       maxShardBytes: 50, to: dir)
        XCTAssertEqual(files.count, 3, "24-byte tensors, at most 50 bytes per shard: 2+2+1")
        XCTAssertEqual(files.first, "model-00001-of-00003.safetensors")
        let index = dir.appendingPathComponent("model.safetensors.index.json").path
        let s = try ShardedSafetensors(indexPath: index)
        XCTAssertEqual(s.names, tensors.map(\.name))
        XCTAssertEqual(s.metadata["total_size"], "120")
        XCTAssertEqual(s.weightMap["layers.4.w"], "model-00003-of-00003.safetensors")
        for (i, t) in tensors.enumerated() {
            XCTAssertEqual(try s.matrix(t.name), Matrix(rows: 2, cols: 3, data: (0..<6).map { Float(i * 10 + $0) }))
        }
        XCTAssertEqual(try s.info("layers.2.w").shape, [2, 3])

        // A shard the map names is missing.
        try FileManager.default.removeItem(at: dir.appendingPathComponent(files[2]))
        assertSTError(try ShardedSafetensors(indexPath: index), "shardMissing") {
            if case .shardMissing(_, "model-00003-of-00003.safetensors") = $0 { return true }; return false
        }
        // The map puts a tensor in a shard that does not hold it.
        let wrong = """
        {"metadata": {"total_size": 48}, "weight_map": {"layers.0.w": "model-00002-of-00003.safetensors"}}
        """
        try Data(wrong.utf8).write(to: URL(fileURLWithPath: index))
        assertSTError(try ShardedSafetensors(indexPath: index), "tensorNotInShard") {
            if case .tensorNotInShard(_, "layers.0.w", "model-00002-of-00003.safetensors") = $0 { return true }; return false
        }
        try Data("{\"metadata\":{}}".utf8).write(to: URL(fileURLWithPath: index))
        assertSTError(try ShardedSafetensors(indexPath: index), "invalidIndex") { if case .invalidIndex = $0 { return true }; return false }
    }

    // MARK: JSON

    func testJSONParserStrictAndRoundTrips() throws {
        let v = try JSONValue.parse(" {\"a\\n\\u00e9\\ud83d\\ude00\": [1, -2.5e3, true, null, {}], \"b\": \"x\"} ")
        XCTAssertEqual(v.objectMembers?.first?.0, "a\né😀")
        XCTAssertEqual(v["a\né😀"]?.arrayValue?[1].doubleValue, -2500)
        XCTAssertEqual(v["a\né😀"]?.arrayValue?[0].strictUInt, 1)
        XCTAssertNil(v["a\né😀"]?.arrayValue?[1].strictUInt)
        XCTAssertEqual(try JSONValue.parse(v.serialized()), v)
        XCTAssertEqual(try JSONValue.parse(v.serialized(sortKeys: true, indent: 2)), v)
        for bad in ["{\"a\":1,}", "[01]", "{'a':1}", "\"\\ud800\"", "[1 2]", "{\"a\" 1}", "tru", "1.", "-"] {
            XCTAssertThrowsError(try JSONValue.parse(bad), bad)
        }
        XCTAssertEqual(JSONValue.double(16).serialized(), "16")
        XCTAssertEqual(JSONValue.double(0.75).serialized(), "0.75")
    }
}
