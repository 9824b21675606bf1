import Foundation

/// The adapters a server knows by name, of which only the recently used ones are in memory.
///
/// - An adapter is registered by name and path; it is read (any format, through `AdapterIO`) and
///   prepared for the model (`LlamaModel.prepare`, unmerged) the first time a request uses it,
///   and the prepared `AdapterSet` is kept, so every sequence on that adapter shares one set (and
///   so one group of rows in a batched decode step).
/// - A per-request combination (`adapters: [{name, weight}]`, with or without `merge`) becomes a
///   fusion entry named by a digest of names, weights, method and parameters: fused once through
///   the fusion registry (`FusionMethods`, `Fuser`), cached, listed, and usable by that name later.
///   Fusion entries beyond `maxFusions` are forgotten least recently used first (when not in use).
/// - Resident sets count their factors' bytes against `budgetBytes` (0: no limit), together with
///   the key/value blocks the server's sequences hold (`KVMemory`: S-LoRA's unified paging of
///   adapter weights and KV cache in one budget); loading a set, or a sequence taking a block,
///   past the budget first evicts the least recently used sets that no sequence holds and that
///   are not pinned. An evicted adapter stays registered and is loaded again on its next use.
/// - `unregister` refuses an adapter that a running or waiting sequence holds.
///
/// Thread-safe: requests acquire from any thread; reading and fusing happen outside the lock, so a
/// slow load delays only the requests that wait for that adapter.
public final class AdapterRegistry: KVMemory, @unchecked Sendable {
    /// adapter: one adapter file or folder; fusion: a recipe over registered adapters; routed: a
    /// routed-model folder (`lorafuse route`), its adapters chosen per token by its gates.
    public enum Kind: String, Sendable { case adapter, fusion, routed }

    /// What `GET /v1/models` shows of an entry.
    public struct Info: Sendable, Equatable {
        public var name: String
        public var kind: Kind
        public var path: String?
        /// For fusions: the adapters and weights, and the method ("stack" when applied unmerged).
        public var recipe: String?
        public var pinned: Bool
        public var resident: Bool
        public var bytes: Int
        public var inUse: Int
        public var requests: Int
    }

    struct Recipe {
        var adapters: [AdapterChoice]
        var merge: MergeSpec?
        var key: String
    }

    enum Source {
        case file(String)
        case fusion(Recipe)
    }

    final class Entry {
        let name: String
        let source: Source
        var pinned: Bool
        var set: AdapterSet?
        var bytes = 0
        /// Bytes when last loaded, kept after an eviction (to tell whether it would fit again).
        var lastBytes = 0
        var inUse = 0
        var loading = false
        var lastUse: UInt64 = 0
        var requests = 0
        /// A fusion plan registered by the operator: never forgotten like a request's cached fusion.
        var fromPlan = false
        let isRouted: Bool
        init(name: String, source: Source, pinned: Bool) {
            self.name = name
            self.source = source
            self.pinned = pinned
            if case .file(let p) = source { isRouted = RoutedModel.isRoutedDirectory(p) } else { isRouted = false }
        }
        var kind: Kind {
            if case .fusion = source { return .fusion }
            return isRouted ? .routed : .adapter
        }
    }

    public let model: LlamaModel
    /// The base model's name (`model` field); requests naming it run without adapters.
    public let baseName: String
    public let hints: ModelHints
    public let budgetBytes: Int
    public let maxFusions: Int

    private let lock = NSCondition()
    private var entries: [String: Entry] = [:]
    private var fusionNames: [String: String] = [:]     // recipe key → entry name
    private var clock: UInt64 = 0
    /// Bytes of the last set loaded: the size guess for one never loaded.
    private var lastLoadedBytes = 0
    private var stats = (loads: 0, fusions: 0, evictions: 0)
    /// Bytes of key/value blocks held by sequences (`reserveKV`).
    private var kvBytes = 0

    public init(model: LlamaModel, baseName: String, hints: ModelHints = ModelHints(), budgetBytes: Int = 0, maxFusions: Int = 32) {
        self.model = model
        self.baseName = baseName
        self.hints = hints
        self.budgetBytes = budgetBytes
        self.maxFusions = maxFusions
    }

    // MARK: Registration

    /// Names may hold letters, digits, `.`, `_` and `-` (1–128 of them); `fusion-` is reserved.
    public static func checkName(_ name: String) throws {
        let ok = !name.isEmpty && name.count <= 128 && name.unicodeScalars.allSatisfy {
            CharacterSet.alphanumerics.contains($0) && $0.isASCII || "._-".unicodeScalars.contains($0)
        }
        guard ok, name != ".", name != ".." else {
            throw ServeError.invalid("adapter name '\(name)' must be 1–128 letters, digits, '.', '_' or '-'", param: "name")
        }
        guard !name.hasPrefix("fusion-") else {
            throw ServeError.invalid("adapter names starting with 'fusion-' are reserved for cached fusions", param: "name")
        }
    }

    /// Registers `path` as `name`. With `validate`, reads and prepares it at once (and keeps it
    /// resident), so an adapter for another base or an unreadable file is refused here.
    public func register(name: String, path: String, pinned: Bool = false, validate: Bool = false) throws {
        try AdapterRegistry.checkName(name)
        lock.lock()
        if name == baseName || entries[name] != nil {
            lock.unlock()
            throw ServeError.conflict("'\(name)' is already registered", param: "name")
        }
        let entry = Entry(name: name, source: .file(path), pinned: pinned)
        entries[name] = entry
        lock.unlock()
        guard validate else { return }
        do {
            let lease = try acquire(.named(name))
            release(lease)
        } catch {
            lock.lock()
            if entries[name] === entry { entries[name] = nil }
            lock.unlock()
            throw error
        }
    }

    /// Forgets `name` (an adapter or a fusion). Refused while a sequence holds it.
    public func unregister(name: String) throws {
        lock.lock()
        defer { lock.unlock() }
        guard let e = entries[name] else { throw ServeError.notFound("no adapter named '\(name)'", param: "name") }
        guard e.inUse == 0 && !e.loading else {
            throw ServeError.conflict("'\(name)' is in use by \(e.inUse) request(s); unload it when they finish", param: "name")
        }
        entries[name] = nil
        if case .fusion(let r) = e.source { fusionNames[r.key] = nil }
    }

    /// Registers everything directly under `directory`: adapters (PEFT and mlx-lm folders, GGUF
    /// files) and routed models, each named by its folder or file name (without `.gguf`), then
    /// fusion plans (`lorafuse merge --config` YAML files, named without `.yaml`/`.yml`) over
    /// those adapters; returns the names. A plan that cannot be read or that uses an adapter not
    /// registered from this folder is an error naming the file.
    @discardableResult
    public func registerDirectory(_ directory: String) throws -> [String] {
        let items = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        var names: [String] = []
        var plans: [(name: String, path: String)] = []
        for item in items where !item.hasPrefix(".") {
            let path = (directory as NSString).appendingPathComponent(item)
            if item.hasSuffix(".yaml") || item.hasSuffix(".yml") {
                plans.append(((item as NSString).deletingPathExtension, path))
                continue
            }
            guard RoutedModel.isRoutedDirectory(path) || (try? AdapterIO.detect(path: path)) != nil else { continue }
            let name = item.hasSuffix(".gguf") ? String(item.dropLast(5)) : item
            guard (try? AdapterRegistry.checkName(name)) != nil else { continue }
            try register(name: name, path: path)
            names.append(name)
        }
        for (name, path) in plans {
            try registerPlan(name: name, path: path)
            names.append(name)
        }
        return names
    }

    /// Registers the fusion plan at `path` as `name`: its adapters must be registered already (by
    /// their files); the fusion is built at its first request and kept like a request's fusion,
    /// but never forgotten to make room for newer ones.
    public func registerPlan(name: String, path: String) throws {
        try AdapterRegistry.checkName(name)
        let plan: FusionPlan
        do { plan = try FusionPlan.load(path: path) } catch {
            throw ServeError.invalid("fusion plan \(path): \(error)", param: "path", code: "invalid_plan")
        }
        do { _ = try FusionMethods.make(name: plan.method, parameters: plan.parameters) } catch {
            throw ServeError.invalid("fusion plan \(path): \(error)", param: "path", code: "invalid_plan")
        }
        func canonical(_ p: String) -> String { URL(fileURLWithPath: p).standardizedFileURL.resolvingSymlinksInPath().path }
        // Paths resolved outside the lock (file system calls); an adapter registered meanwhile is
        // simply not seen by this plan.
        lock.lock()
        let files = entries.values.compactMap { e -> (String, String)? in
            if e.kind == .adapter, case .file(let p) = e.source { return (p, e.name) }
            return nil
        }
        lock.unlock()
        let byPath = Dictionary(files.map { (canonical($0.0), $0.1) }, uniquingKeysWith: { a, _ in a })
        lock.lock()
        defer { lock.unlock() }
        var choices: [AdapterChoice] = []
        for input in plan.adapters {
            guard let n = byPath[canonical(input.path)] else {
                throw ServeError.invalid("fusion plan \(path) uses \(input.path), which is not an adapter registered with the server "
                                         + "(plans may only combine adapters from the same folder)", param: "path", code: "invalid_plan")
            }
            choices.append(AdapterChoice(name: n, weight: input.weight))
        }
        if name == baseName || entries[name] != nil {
            throw ServeError.conflict("fusion plan \(path): '\(name)' is already registered (an adapter or the base of that name)", param: "name")
        }
        let merge = MergeSpec(method: plan.method, parameters: plan.parameters, canonical: "plan=" + name)
        let key = Self.recipeKey(choices, merge)
        let e = Entry(name: name, source: .fusion(Recipe(adapters: choices, merge: merge, key: key)), pinned: false)
        e.fromPlan = true
        entries[name] = e
        fusionNames[key] = name
    }

    /// `path` (relative paths from `root`) resolved, symlinks and `..` included, if it lies inside
    /// `root`; otherwise a 400. Keeps run-time loading to the folder the operator named.
    public static func resolve(_ path: String, under root: String) throws -> String {
        let base = URL(fileURLWithPath: root).standardizedFileURL.resolvingSymlinksInPath().path
        let full = path.hasPrefix("/") ? path : (base as NSString).appendingPathComponent(path)
        let resolved = URL(fileURLWithPath: full).standardizedFileURL.resolvingSymlinksInPath().path
        guard resolved.hasPrefix(base.hasSuffix("/") ? base : base + "/") else {
            throw ServeError.invalid("path must lie inside the server's adapters folder", param: "path", code: "path_outside_root")
        }
        guard FileManager.default.fileExists(atPath: resolved) else {
            throw ServeError.notFound("no adapter at '\(path)' in the adapters folder", param: "path", code: "adapter_not_found")
        }
        return resolved
    }

    // MARK: Use

    /// The adapter set for a request's choice, held until `release`: loaded, fused or reused.
    /// 404 for an unknown name, 400 for an adapter that does not fit the model or a bad merge,
    /// 429 when the budget is taken by sets in use.
    ///
    /// With `deferIfFull`, a set that is not resident and would not fit beside the sets in use and
    /// pinned (by its size when last loaded, else the last set loaded) is refused with the 429
    /// before it is read, instead of being read and then dropped: the scheduler queues the request
    /// and acquires it later without the estimate.
    public func acquire(_ choice: ModelChoice, deferIfFull: Bool = false) throws -> AdapterLease {
        let entry: Entry
        lock.lock()
        switch choice {
        case .named(let name):
            if name == baseName {
                lock.unlock()
                return AdapterLease(name: baseName, set: .none, registry: nil)
            }
            guard let e = entries[name] else {
                lock.unlock()
                throw ServeError.notFound("the model '\(name)' does not exist (GET /v1/models lists the base, adapters and cached fusions)",
                                          param: "model")
            }
            entry = e
        case let .combination(adapters, merge):
            for (i, a) in adapters.enumerated() {
                guard let e = entries[a.name] else {
                    lock.unlock()
                    throw ServeError.notFound("no adapter named '\(a.name)'", param: "adapters[\(i)].name")
                }
                guard e.kind == .adapter else {
                    lock.unlock()
                    throw ServeError.invalid("'\(a.name)' is a \(e.kind == .routed ? "routed model" : "fusion"); combine registered adapters",
                                             param: "adapters[\(i)].name")
                }
            }
            let key = Self.recipeKey(adapters, merge)
            if let n = fusionNames[key], let e = entries[n] {
                entry = e
            } else {
                let name = Self.fusionName(key: key)
                if let other = entries[name] {
                    // Two recipes with one 64-bit digest: refuse rather than serve the wrong weights.
                    _ = other
                    lock.unlock()
                    throw ServeError.server("fusion digest collision for \(name)")
                }
                let e = Entry(name: name, source: .fusion(Recipe(adapters: adapters, merge: merge, key: key)), pinned: false)
                entries[name] = e
                fusionNames[key] = name
                entry = e
                forgetOldFusions(keeping: e)
            }
        }
        if deferIfFull && budgetBytes > 0 && entry.set == nil && !entry.loading {
            let estimate = entry.lastBytes > 0 ? entry.lastBytes : lastLoadedBytes
            let held = kvBytes + entries.values.reduce(0) { $0 + ($1.set != nil && ($1.inUse > 0 || $1.pinned) ? $1.bytes : 0) }
            if estimate > 0 && held + estimate > budgetBytes {
                lock.unlock()
                throw Self.budgetFull(budgetBytes)
            }
        }
        clock += 1
        entry.lastUse = clock
        entry.inUse += 1
        entry.requests += 1
        while entry.loading { lock.wait() }
        if let set = entry.set {
            lock.unlock()
            return AdapterLease(name: entry.name, set: set, registry: self)
        }
        entry.loading = true
        lock.unlock()

        let result: Result<(AdapterSet, Int), any Error> = Result { try load(entry) }
        lock.lock()
        defer { lock.broadcast(); lock.unlock() }
        entry.loading = false
        switch result {
        case .failure(let error):
            entry.inUse -= 1
            if entry.kind == .fusion, entries[entry.name] === entry, entry.inUse == 0 {
                // A recipe that cannot be built is not kept (nor listed).
                entries[entry.name] = nil
                if case .fusion(let r) = entry.source { fusionNames[r.key] = nil }
            }
            throw error
        case .success(let (set, bytes)):
            entry.set = set
            entry.bytes = bytes
            entry.lastBytes = bytes
            lastLoadedBytes = bytes
            evict(toFit: entry)
            if budgetBytes > 0 && residentBytesLocked + kvBytes > budgetBytes {
                entry.set = nil
                entry.bytes = 0
                entry.inUse -= 1
                throw Self.budgetFull(budgetBytes)
            }
            return AdapterLease(name: entry.name, set: set, registry: self)
        }
    }

    /// Ends a lease (idempotent).
    public func release(_ lease: AdapterLease) {
        lock.lock()
        defer { lock.unlock() }
        guard !lease.released else { return }
        lease.released = true
        if let e = entries[lease.name], lease.registry === self { e.inUse = max(0, e.inUse - 1) }
    }

    public func list() -> [Info] {
        lock.lock()
        defer { lock.unlock() }
        return entries.values.sorted { $0.name < $1.name }.map { e in
            var path: String?, recipe: String?
            switch e.source {
            case .file(let p): path = p
            case .fusion(let r):
                recipe = (r.merge?.method ?? "stack") + "(" + r.adapters.map { "\($0.name):\($0.weight)" }.joined(separator: ",") + ")"
                    + (r.merge.map { $0.canonical.isEmpty ? "" : " " + $0.canonical } ?? "")
            }
            return Info(name: e.name, kind: e.kind, path: path, recipe: recipe, pinned: e.pinned, resident: e.set != nil,
                        bytes: e.bytes, inUse: e.inUse, requests: e.requests)
        }
    }

    public func info(_ name: String) -> Info? { list().first { $0.name == name } }

    public var residentBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return residentBytesLocked
    }

    /// Bytes of the budget held by key/value blocks now.
    public var kvReservedBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return kvBytes
    }

    // MARK: KVMemory

    /// Takes `bytes` for key/value blocks, evicting least-recently-used sets nobody holds to make
    /// room; false when the sets in use, the pinned ones and the blocks already held leave none.
    public func reserveKV(bytes: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if budgetBytes > 0 {
            if residentBytesLocked + kvBytes + bytes > budgetBytes { evict(extra: bytes) }
            guard residentBytesLocked + kvBytes + bytes <= budgetBytes else { return false }
        }
        kvBytes += bytes
        return true
    }

    public func releaseKV(bytes: Int) {
        lock.lock()
        kvBytes = max(0, kvBytes - bytes)
        lock.unlock()
    }

    /// Adapter files read, fusions built and sets evicted so far.
    public var counters: (loads: Int, fusions: Int, evictions: Int) {
        lock.lock()
        defer { lock.unlock() }
        return stats
    }

    // MARK: Internals

    private var residentBytesLocked: Int { entries.values.reduce(0) { $0 + ($1.set != nil ? $1.bytes : 0) } }

    /// The `error.code` of the 429 when the budget is held by sets in use.
    public static let budgetFullCode = "adapter_memory_full"

    static func budgetFull(_ budget: Int) -> ServeError {
        ServeError.busy("the memory budget (\(budget) bytes) is held by adapters and key/value caches in use; retry later",
                       code: budgetFullCode)
    }

    static func fusionName(key: String) -> String { "fusion-" + String(format: "%016llx", Digest.fnv(Array(key.utf8))) }

    /// Whether `choice`'s set, by its size when last loaded (else the last set's), exceeds the budget even with every
    /// unpinned set evicted (pinned sets fill it): waiting for releases would never help.
    public func cannotEverFit(_ choice: ModelChoice) -> Bool {
        guard budgetBytes > 0 else { return false }
        lock.lock()
        defer { lock.unlock() }
        let name: String?
        switch choice {
        case .named(let n): name = n
        case let .combination(adapters, merge): name = fusionNames[Self.recipeKey(adapters, merge)]
        }
        guard let n = name, let e = entries[n] else { return false }
        let estimate = e.lastBytes > 0 ? e.lastBytes : lastLoadedBytes
        guard estimate > 0 else { return false }
        let pinned = entries.values.reduce(0) { $0 + ($1 !== e && $1.pinned && $1.set != nil ? $1.bytes : 0) }
        return pinned + estimate > budgetBytes
    }

    /// The name a response reports for `choice` (what `acquire` would lease), without loading.
    public func responseName(for choice: ModelChoice) -> String {
        switch choice {
        case .named(let name): return name
        case let .combination(adapters, merge):
            let key = Self.recipeKey(adapters, merge)
            lock.lock()
            defer { lock.unlock() }
            return fusionNames[key] ?? Self.fusionName(key: key)
        }
    }

    static func recipeKey(_ adapters: [AdapterChoice], _ merge: MergeSpec?) -> String {
        (merge?.method ?? "stack") + "|" + (merge?.canonical ?? "") + "|"
            + adapters.map { "\($0.name.utf8.count):\($0.name)=\($0.weight.bitPattern)" }.joined(separator: ",")
    }

    /// Evicts least-recently-used, unpinned sets nobody holds until `entry` (resident already),
    /// or `extra` more bytes, fit the budget beside the key/value blocks held.
    private func evict(toFit entry: Entry? = nil, extra: Int = 0) {
        guard budgetBytes > 0 else { return }
        var candidates = entries.values.filter { $0 !== entry && $0.set != nil && $0.inUse == 0 && !$0.pinned && !$0.loading }
        candidates.sort { $0.lastUse < $1.lastUse }
        var total = residentBytesLocked + kvBytes + extra
        for c in candidates where total > budgetBytes {
            total -= c.bytes
            c.set = nil
            c.bytes = 0
            stats.evictions += 1
        }
    }

    /// Forgets the least recently used fusion entries beyond `maxFusions` (never one in use).
    private func forgetOldFusions(keeping keep: Entry) {
        var fusions = entries.values.filter { $0.kind == .fusion && $0 !== keep && !$0.fromPlan }
        guard fusions.count + 1 > maxFusions else { return }
        fusions.sort { $0.lastUse < $1.lastUse }
        var excess = fusions.count + 1 - maxFusions
        for f in fusions where excess > 0 && f.inUse == 0 && !f.loading {
            entries[f.name] = nil
            if case .fusion(let r) = f.source { fusionNames[r.key] = nil }
            excess -= 1
        }
    }

    private func readAdapter(_ name: String, _ path: String) throws -> LoRAAdapter {
        do {
            var a = try AdapterIO.read(path: path, hints: hints)
            a.name = name
            return a
        } catch {
            throw ServeError.invalid("adapter '\(name)' cannot be read: \(error)", param: "model", code: "adapter_unreadable")
        }
    }

    private func prepare(_ name: String, _ adapters: [(LoRAAdapter, Float)]) throws -> AdapterSet {
        do {
            return try model.prepare(adapters, mode: .unmerged)
        } catch let e as LoRARuntimeError {
            throw ServeError.invalid("adapter '\(name)' does not fit the base model \(baseName): \(e)", param: "model",
                                     code: "adapter_base_mismatch")
        }
    }

    /// Reads (and for fusions fuses) the entry's adapter and prepares it; returns the set and its bytes.
    private func load(_ entry: Entry) throws -> (AdapterSet, Int) {
        switch entry.source {
        case .file(let path) where entry.isRouted:
            let routed: RoutedModel
            do { routed = try RoutedModel.load(directory: path, hints: hints) } catch {
                throw ServeError.invalid("routed model '\(entry.name)' cannot be read: \(error)", param: "model", code: "adapter_unreadable")
            }
            let set: AdapterSet
            do { set = try model.prepare(routed: routed) } catch {
                throw ServeError.invalid("routed model '\(entry.name)' does not fit the base model \(baseName): \(error)", param: "model",
                                         code: "adapter_base_mismatch")
            }
            lock.lock(); stats.loads += 1; lock.unlock()
            let params = routed.adapters.reduce(0) { $0 + $1.parameterCount } + routed.gates.values.reduce(0) { $0 + $1.count }
            return (set, params * MemoryLayout<Float>.size)
        case .file(let path):
            let a = try readAdapter(entry.name, path)
            let set = try prepare(entry.name, [(a, 1)])
            lock.lock(); stats.loads += 1; lock.unlock()
            return (set, a.parameterCount * MemoryLayout<Float>.size)
        case .fusion(let r):
            var inputs: [LoRAAdapter] = []
            for a in r.adapters {
                lock.lock()
                let src = entries[a.name]?.source
                lock.unlock()
                guard case .file(let path)? = src else {
                    throw ServeError.notFound("no adapter named '\(a.name)'", param: "adapters")
                }
                inputs.append(try readAdapter(a.name, path))
            }
            let set: AdapterSet, bytes: Int
            if let m = r.merge {
                let method = try FusionMethods.make(name: m.method, parameters: m.parameters)
                let fused: LoRAAdapter
                do {
                    (fused, _) = try Fuser.fuse(inputs, weights: r.adapters.map(\.weight), method: method,
                                                seed: m.parameters.seed, name: entry.name)
                } catch let e as FusionError {
                    throw ServeError.invalid("merge: \(e)", param: "merge", code: "fusion_failed")
                } catch let e as ModuleFusionError {
                    throw ServeError.invalid("merge: \(e)", param: "merge", code: "fusion_failed")
                }
                set = try prepare(entry.name, [(fused, 1)])
                bytes = fused.parameterCount * MemoryLayout<Float>.size
            } else {
                set = try prepare(entry.name, Array(zip(inputs, r.adapters.map(\.weight))))
                bytes = inputs.reduce(0) { $0 + $1.parameterCount } * MemoryLayout<Float>.size
            }
            lock.lock(); stats.fusions += 1; lock.unlock()
            return (set, bytes)
        }
    }
}

/// A request's hold on an adapter set: the set cannot be evicted or unloaded until released.
public final class AdapterLease: @unchecked Sendable {
    /// The name responses report as `model`: the base's, the adapter's or the fusion's.
    public let name: String
    public let set: AdapterSet
    weak var registry: AdapterRegistry?
    var released = false

    init(name: String, set: AdapterSet, registry: AdapterRegistry?) {
        self.name = name
        self.set = set
        self.registry = registry
    }

    public func release() { registry?.release(self) }
}
