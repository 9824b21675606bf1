import Foundation

/// What `lorafuse tasks experts` scores: every task of a suite folder that has a
/// `<task>.<split>.jsonl` file there and a PEFT adapter folder `<adapters>/<task>/` (with
/// `adapter_config.json`), in task-name order; tasks without an adapter are left out.
public struct ExpertInputs: Sendable {
    public var tasks: [EvalTask]
    /// `adapterPaths[i]` is the adapter of `tasks[i]`.
    public var adapterPaths: [String]

    /// Finds the pairs and reads their examples (the first `limit` of each task; nil: all).
    public static func find(tasks tasksDir: String, adapters adaptersDir: String, split: String, limit: Int? = nil) throws -> ExpertInputs {
        if let l = limit, l < 1 { throw ExpertInputsError.badLimit(l) }
        let fm = FileManager.default
        let files: [String]
        do { files = try fm.contentsOfDirectory(atPath: tasksDir) } catch {
            throw TaskSuiteError.io(path: tasksDir, reason: "cannot list the task folder: \(error.localizedDescription)")
        }
        let suffix = ".\(split).jsonl"
        let names = Set(files.filter { $0.hasSuffix(suffix) }.map { String($0.dropLast(suffix.count)) }).sorted()
        let paired = names.filter { fm.fileExists(atPath: adapterPath(adaptersDir, $0) + "/" + PEFTAdapter.configFile) }
        guard !paired.isEmpty else { throw ExpertInputsError.nothingPaired(tasks: tasksDir, adapters: adaptersDir, split: split) }
        var tasks = try paired.map { try TaskData.read(path: (tasksDir as NSString).appendingPathComponent("\($0)\(suffix)")) }
        if let l = limit { for i in tasks.indices { tasks[i].examples = Array(tasks[i].examples.prefix(l)) } }
        return ExpertInputs(tasks: tasks, adapterPaths: paired.map { adapterPath(adaptersDir, $0) })
    }

    static func adapterPath(_ dir: String, _ task: String) -> String { (dir as NSString).appendingPathComponent(task) }
}

public enum ExpertInputsError: Error, CustomStringConvertible, Equatable {
    case nothingPaired(tasks: String, adapters: String, split: String)
    case badLimit(Int)

    public var description: String {
        switch self {
        case let .nothingPaired(t, a, s):
            return "no task in \(t) with a .\(s).jsonl file has an adapter folder in \(a)/<task>/"
        case let .badLimit(l):
            return "the example limit must be at least 1, got \(l)"
        }
    }
}
