import Foundation

/// The report cache: one JSON file per (method, inputs, model, code) key under `<out>/cache`.
extension ReportRunner {
    // MARK: Cache

    struct CacheKey: Codable, Equatable {
        var method: ReportMethod
        var adapters: [String: String]
        var model: String
        var accuracy: Bool
        var adapterMode: String
        /// `Digest.file` of the model and `Digest.executable` of the build that computed the row
        /// (absent in entries from before they were keyed: those never match).
        var modelDigest: String?
        var code: String?
        /// Learned rows: what the fit depends on besides the method and the adapters.
        var learned: [String: String]?
    }

    struct CachedTask: Codable, Equatable {
        var digest: String
        var result: TaskEvalResult
    }

    struct CacheEntry: Codable {
        var key: CacheKey
        var tasks: [String: CachedTask] = [:]
        var fuseSeconds: Double?
        var evalSeconds: Double = 0
        var warnings: [String] = []
        var coefficients: ReportCoefficients?
        var icm: ReportICMDetails?
        var routing: ReportRouting?
        var rankUsage: ReportRankUsage?

        func results(for tasks: [EvalTask]) -> [String: TaskEvalResult] {
            var out: [String: TaskEvalResult] = [:]
            for t in tasks { out[t.name] = self.tasks[t.name]?.result }
            return out
        }
    }

    func cacheKey(_ m: ReportMethod, adapters: [String], accuracy: Bool? = nil) -> CacheKey {
        CacheKey(method: m, adapters: Dictionary(uniqueKeysWithValues: adapters.map { ($0, adapterDigests[$0]!) }),
                 model: settings.model, accuracy: accuracy ?? settings.accuracy, adapterMode: settings.adapterMode,
                 modelDigest: modelDigest, code: codeVersion)
    }

    /// Cache files are named after the row id with anything unsafe for a file name replaced.
    func cachePath(_ id: String) -> String {
        let safe = String(id.unicodeScalars.map { CharacterSet.alphanumerics.contains($0) || "-_.@".unicodeScalars.contains($0) ? Character($0) : "_" })
        let name = safe == id ? safe : safe + "-" + String(Digest.fnv(Array(id.utf8)), radix: 16)
        return (cacheDirectory as NSString).appendingPathComponent(name + ".json")
    }

    func loadCache(_ id: String, key: CacheKey) throws -> CacheEntry {
        let path = cachePath(id)
        guard !force, let data = FileManager.default.contents(atPath: path) else { return CacheEntry(key: key) }
        let entry: CacheEntry
        do {
            entry = try JSONDecoder().decode(CacheEntry.self, from: data)
        } catch {
            throw ReportError.cacheUnreadable(file: path, detail: "\(error)")
        }
        // A different key means the row itself changed: start it over.
        return entry.key == key ? entry : CacheEntry(key: key)
    }

    func saveCache(_ id: String, _ entry: CacheEntry) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let path = cachePath(id)
        let tmp = path + ".tmp"
        try enc.encode(entry).write(to: URL(fileURLWithPath: tmp))
        _ = try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.moveItem(atPath: tmp, toPath: path)
    }
}

/// Content digests for the cache (FNV-1a 64, hex): equal inputs give equal digests.
enum Digest {
    static func fnv(_ bytes: [UInt8], _ h0: UInt64 = 0xCBF2_9CE4_8422_2325) -> UInt64 {
        var h = h0
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return h
    }

    static func fnv(floats: [Float], _ h0: UInt64) -> UInt64 {
        var h = h0
        for f in floats {
            var bits = f.bitPattern
            for _ in 0..<4 { h = (h ^ UInt64(bits & 0xFF)) &* 0x100_0000_01B3; bits >>= 8 }
        }
        return h
    }

    /// Every module's name, scale and factors.
    static func adapter(_ a: LoRAAdapter) -> String {
        var h = fnv(Array(a.name.utf8))
        for n in a.moduleNames {
            let m = a.modules[n]!
            h = fnv(Array(n.utf8), h)
            h = fnv(floats: [m.scale], h)
            h = fnv(floats: m.A.data, h)
            h = fnv(floats: m.B.data, h)
            // FlyLoRA / SMoRA: the rank choice is part of what the adapter computes.
            if let g = m.rankGate {
                h = fnv(floats: [Float(g.topK), Float(g.ranksPerExpert)] + g.bias + (g.router ?? []), h)
                if g.wholeFFN { h = fnv(Array("mixlora".utf8), h) }
            }
        }
        return String(h, radix: 16)
    }

    /// A content digest of a file that stays cheap for a model of any size: its size and 64
    /// blocks of 64 KiB spread evenly over it (the header, the end and everything between in
    /// steps), so a different model, quantization or fine-tune of the same size changes it.
    /// A folder (HF checkpoint) digests its safetensors and config files that way, by name.
    static func file(_ path: String) -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return "absent" }
        if isDir.boolValue {
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
                .filter { $0.hasSuffix(".safetensors") || $0.hasSuffix(".json") }
            var h = fnv([])
            for n in names { h = fnv(Array((n + "=" + file((path as NSString).appendingPathComponent(n))).utf8), h) }
            return String(h, radix: 16)
        }
        guard let fh = FileHandle(forReadingAtPath: path) else { return "unreadable" }
        defer { try? fh.close() }
        let size = (try? fh.seekToEnd()) ?? 0
        var h = fnv(Array(String(size).utf8))
        let block: UInt64 = 1 << 16, blocks: UInt64 = 64
        let stride = size > block ? (size - block) / (blocks - 1) : 0
        for i in 0..<blocks {
            try? fh.seek(toOffset: min(i * stride, size))
            if let d = try? fh.read(upToCount: Int(block)) { h = fnv(Array(d), h) }
            if stride == 0 { break }
        }
        return String(h, radix: 16)
    }

    /// The running build: the executable's size and modification time, which every rebuild
    /// changes (a sampled digest could miss a one-constant change in a large binary).
    static func executable() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? Bundle.main.executablePath ?? CommandLine.arguments[0]
        var st = stat()
        guard stat(exe, &st) == 0 else { return "unknown" }
        return "\(st.st_size)-\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }

    /// The examples (prompt and answer) in order.
    static func task(_ t: EvalTask) -> String {
        var h = fnv(Array(t.name.utf8))
        for e in t.examples {
            h = fnv(Array(e.prompt.utf8) + [0], h)
            h = fnv(Array(e.answer.utf8) + [1], h)
        }
        return String(h, radix: 16)
    }
}
