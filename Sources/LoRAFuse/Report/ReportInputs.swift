import Foundation

public enum ReportError: Error, CustomStringConvertible, Equatable {
    case noTasks
    case noAdapters
    case duplicateMethod(String)
    case emptyShots(task: String, file: String?)
    case notAnAdapterDirectory(path: String)
    case noTaskFiles(path: String, suffix: String)
    case unknownTask(String, known: [String])
    case unknownLearnedMethod(String)
    case cacheUnreadable(file: String, detail: String)
    case unknownICMVariant(String)
    case missingAdapter(task: String)
    /// Two adapters (or two test tasks) with one name: rows, caches and tables are keyed by it.
    case duplicateName(kind: String, name: String)
    /// A `trained` row whose adapter is not among `ReportInputs.trained`.
    case missingTrainedAdapter(row: String, name: String)

    public var description: String {
        switch self {
        case .noTasks:
            return "report: no test tasks (give --test FILES or a directory holding NAME.test.jsonl files)"
        case .noAdapters:
            return "report: no adapters (give --adapters DIRS or a directory of adapter directories)"
        case let .duplicateMethod(m):
            return "report: method '\(m)' is listed twice"
        case let .emptyShots(task, file):
            return "report: task \(task) has no shots\(file.map { " in \($0)" } ?? "") (learned methods need at least one)"
        case let .notAnAdapterDirectory(path):
            return "report: \(path) is neither an adapter nor a directory of adapters (no adapter_config.json / adapters.safetensors / .gguf inside)"
        case let .noTaskFiles(path, suffix):
            return "report: directory \(path) holds no *\(suffix) files"
        case let .unknownTask(t, known):
            return "report: --tasks names '\(t)', which is not among the test tasks (\(known.joined(separator: ", ")))"
        case let .unknownLearnedMethod(m):
            return "report: unknown learned method '\(m)'; known: \(LearnedFusionMethod.allCases.map(\.rawValue).joined(separator: ", "))"
        case let .unknownICMVariant(m):
            return "report: unknown ICM row '\(m)'; known: \(ICMVariant.allCases.map(\.rawValue).joined(separator: ", "))"
        case let .missingAdapter(task):
            return "report: ICM-Fusion needs an adapter for every task, and none is named \(task)"
        case let .duplicateName(kind, name):
            return "report: two \(kind) are named '\(name)' (the report keys \(kind) by name); rename one of them"
        case let .missingTrainedAdapter(row, name):
            return "report: row '\(row)' scores the trained adapter '\(name)', which is not among the --trained adapters"
        case let .cacheUnreadable(file, detail):
            return "report: cache file \(file) is unreadable (\(detail)); delete it or rerun with --force"
        }
    }
}

/// What the report compares: adapters named after their tasks, and per task its held-out test
/// examples, the pool its shots are drawn from (first lines first) and validation examples.
public struct ReportInputs: Sendable {
    public var adapters: [LoRAAdapter]
    public var test: [EvalTask]
    public var shots: [EvalTask]
    public var val: [EvalTask]
    /// Adapters trained on the union of the tasks (`--trained`), each a row of its own.
    public var trained: [LoRAAdapter] = []
    /// Composite prompts (`--composite`, made by `lorafuse tasks composite`): every row but the
    /// experts is also scored on them, apart from the suite's means; each adapter alone too.
    public var composite: [EvalTask] = []

    public init(adapters: [LoRAAdapter], test: [EvalTask], shots: [EvalTask] = [], val: [EvalTask] = [],
                trained: [LoRAAdapter] = []) {
        self.adapters = adapters
        self.test = test
        self.shots = shots
        self.val = val
        self.trained = trained
    }

    /// Keeps only the named tasks (and the adapters named after them), in the given order.
    public func restricted(to names: [String]) throws -> ReportInputs {
        let known = test.map(\.name)
        for n in names where !known.contains(n) { throw ReportError.unknownTask(n, known: known) }
        func pick(_ ts: [EvalTask]) -> [EvalTask] { names.compactMap { n in ts.first { $0.name == n } } }
        var r = ReportInputs(adapters: names.compactMap { n in adapters.first { $0.name == n } },
                             test: pick(test), shots: pick(shots), val: pick(val), trained: trained)
        r.composite = composite
        return r
    }

    /// The first `k` examples of each task (all when it has fewer).
    public static func firstExamples(_ tasks: [EvalTask], _ k: Int?) -> [EvalTask] {
        guard let k else { return tasks }
        return tasks.map { EvalTask(name: $0.name, path: $0.path, examples: Array($0.examples.prefix(k))) }
    }

    /// Task files from paths that are files or directories; a directory contributes its
    /// `*<suffix>` files (e.g. `.test.jsonl`), sorted by name.
    public static func taskFiles(_ paths: [String], suffix: String) throws -> [String] {
        var out: [String] = []
        for p in paths {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []
                let files = names.filter { $0.hasSuffix(suffix) }.sorted()
                if files.isEmpty { throw ReportError.noTaskFiles(path: p, suffix: suffix) }
                out += files.map { (p as NSString).appendingPathComponent($0) }
            } else {
                out.append(p)
            }
        }
        return out
    }

    /// Adapter paths from paths that are adapters or directories of adapters (the coordinator's
    /// `adapters/` with one sub-directory per task); sub-directories that are not adapters, and
    /// files, are skipped in a directory of adapters.
    public static func adapterPaths(_ paths: [String]) throws -> [String] {
        var out: [String] = []
        for p in paths {
            if isAdapter(p) { out.append(p); continue }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue else {
                out.append(p)                            // let the reader name the problem
                continue
            }
            let subs = ((try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []).sorted()
                .map { (p as NSString).appendingPathComponent($0) }.filter(isAdapter)
            if subs.isEmpty { throw ReportError.notAnAdapterDirectory(path: p) }
            out += subs
        }
        return out
    }

    /// Whatever `AdapterIO` can open (PEFT, MLX, NOLA folders, GGUF LoRAs), by its own detection,
    /// so a format added there is found here too.
    static func isAdapter(_ p: String) -> Bool {
        (try? AdapterIO.detect(path: p)) != nil
    }
}

/// Progress of a report run over its whole plan, in work units (one unit ≈ one example scored).
public struct ReportProgress: Sendable {
    public var done: Int
    public var total: Int
    public var detail: String
}

/// Runs the report's plan: every method's adapter (base: none; experts: each task's own; static:
/// one fusion; learned: one fit per shots count), evaluated on every task's held-out examples, with
/// the results of each (method, task) cached as JSON under `<directory>/cache/` so a rerun, or a
/// crashed run, only computes what is missing. Cached entries are reused only when everything they
/// depend on is unchanged: the method's definition, the model, accuracy on/off, the digests of the
/// adapters and of the task's examples (and, for learned rows, of the shots and the step count).
