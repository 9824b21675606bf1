import Foundation

/// What other commands read from a task-suite `manifest.json` (`lorafuse tasks generate` writes
/// it; `TaskSuite.readManifest` reads all of a generated suite's).
public enum TaskManifest {
    /// Larger files are refused before reading (the suite's manifest is a few kB).
    public static let maxBytes = 16 << 20

    /// Task name → description, from `path` (a manifest.json, or a folder holding one): every
    /// entry of its `tasks` array with a string `name`; entries without a string `description`
    /// are left out. SG-LoRA (`generate-adapter --manifest`) embeds these descriptions. Any
    /// other manifest with the same shape works too (hand-written, a subset of tasks).
    public static func descriptions(path: String) throws -> [String: String] {
        var isDir: ObjCBool = false
        let file = FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
            ? (path as NSString).appendingPathComponent("manifest.json") : path
        try InputFile.requireRegularFile(file, maxBytes: maxBytes, what: "task manifest")
        guard let data = FileManager.default.contents(atPath: file) else { throw TaskSuiteError.io(path: file, reason: "cannot read") }
        let root: JSONValue
        do { root = try JSONValue.parse(Array(data)) } catch { throw TaskSuiteError.io(path: file, reason: "\(error)") }
        guard let tasks = root["tasks"]?.arrayValue else {
            throw TaskSuiteError.io(path: file, reason: "field tasks: expected an array of {\"name\", \"description\"}")
        }
        var out: [String: String] = [:], seen = Set<String>()
        for (i, t) in tasks.enumerated() {
            guard let name = t["name"]?.stringValue else { throw TaskSuiteError.io(path: file, reason: "tasks[\(i)].name: expected a string") }
            if !seen.insert(name).inserted { throw TaskSuiteError.io(path: file, reason: "tasks[\(i)].name: '\(name)' is listed twice") }
            if let d = t["description"]?.stringValue { out[name] = d }
        }
        return out
    }
}
