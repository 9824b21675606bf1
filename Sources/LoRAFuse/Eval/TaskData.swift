import Foundation

/// One evaluation example: a user prompt and the expected assistant answer.
public struct EvalExample: Sendable, Equatable {
    public var prompt: String
    public var answer: String
    /// 1-based line of the example in its file (0 when built in code).
    public var line: Int

    public init(prompt: String, answer: String, line: Int = 0) {
        self.prompt = prompt
        self.answer = answer
        self.line = line
    }
}

/// A named set of examples, read from one JSONL file.
public struct EvalTask: Sendable, Equatable {
    /// The file name up to its first dot (`math.test.jsonl` → `math`).
    public var name: String
    public var path: String?
    public var examples: [EvalExample]

    public init(name: String, path: String? = nil, examples: [EvalExample]) {
        self.name = name
        self.path = path
        self.examples = examples
    }
}

/// Errors reading task files; each names the file and, where there is one, the 1-based line.
public enum EvalDataError: Error, CustomStringConvertible, Equatable {
    case cannotRead(file: String, detail: String)
    /// The file has no example (nothing but blank lines).
    case empty(file: String)
    case notJSON(file: String, line: Int, detail: String)
    case notObject(file: String, line: Int, actual: String)
    case missingField(file: String, line: Int, field: String)
    case wrongType(file: String, line: Int, field: String, actual: String)
    /// A field other than prompt and answer, where the reader was asked to be strict.
    case unexpectedField(file: String, line: Int, field: String)
    /// Two task files give the same task name.
    case duplicateTask(name: String, files: [String])
    /// Larger than the reader takes whole (`TaskData.maxFileBytes`).
    case tooLarge(file: String, bytes: Int, limit: Int)

    /// The 1-based line the error is about, when it is about one line.
    public var line: Int? {
        switch self {
        case let .notJSON(_, l, _), let .notObject(_, l, _), let .missingField(_, l, _), let .wrongType(_, l, _, _),
             let .unexpectedField(_, l, _):
            return l
        case .cannotRead, .empty, .duplicateTask, .tooLarge:
            return nil
        }
    }

    public var description: String {
        switch self {
        case let .cannotRead(file, detail):
            return "\(file): cannot read: \(detail)"
        case let .tooLarge(file, bytes, limit):
            return "\(file): \(bytes / (1 << 20)) MiB, more than the \(limit / (1 << 20)) MiB a task file may hold (it is read whole, and every example is tokenized up front); split it, or sample the examples you need"
        case let .empty(file):
            return "\(file): no examples (expected one JSON object per line: {\"prompt\": \"...\", \"answer\": \"...\"})"
        case let .notJSON(file, line, detail):
            return "\(file):\(line): not valid JSON: \(detail)"
        case let .notObject(file, line, actual):
            return "\(file):\(line): expected a JSON object {\"prompt\": ..., \"answer\": ...}, got \(actual)"
        case let .missingField(file, line, field):
            return "\(file):\(line): missing field \"\(field)\""
        case let .wrongType(file, line, field, actual):
            return "\(file):\(line): field \"\(field)\" must be a string, got \(actual)"
        case let .unexpectedField(file, line, field):
            return "\(file):\(line): unexpected field \"\(field)\" (only prompt and answer are allowed here)"
        case let .duplicateTask(name, files):
            return "task name '\(name)' is given by more than one file: \(files.joined(separator: ", "))"
        }
    }
}

/// Reader of evaluation task files.
///
/// Format (JSON Lines): one example per line, `{"prompt": "...", "answer": "..."}`; other fields are
/// ignored; blank (whitespace-only) lines are skipped. The task is named after the file: its name up to
/// the first dot.
public enum TaskData {
    /// Reads one task file.
    /// Task files are read whole and tokenized up front: beyond this the memory would be several
    /// times the file's size, so a file this large is refused by name instead.
    public static let maxFileBytes = 1 << 30

    public static func read(path: String) throws -> EvalTask {
        let data: Data
        try InputFile.refuseSpecialFile(path)
        if let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int, size > maxFileBytes {
            throw EvalDataError.tooLarge(file: path, bytes: size, limit: maxFileBytes)
        }
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw EvalDataError.cannotRead(file: path, detail: (error as NSError).localizedDescription)
        }
        return try parse(Array(data), file: path)
    }

    /// Reads several task files; task names must be distinct.
    public static func read(paths: [String]) throws -> [EvalTask] {
        let tasks = try paths.map { try read(path: $0) }
        var seen: [String: String] = [:]
        for t in tasks {
            if let other = seen[t.name] {
                throw EvalDataError.duplicateTask(name: t.name, files: [other, t.path ?? ""])
            }
            seen[t.name] = t.path ?? ""
        }
        return tasks
    }

    /// The task name of a file path: the last path component up to its first dot (the whole
    /// component when that would be empty, as for `.hidden`).
    public static func taskName(forPath path: String) -> String {
        let file = (path as NSString).lastPathComponent
        let stem = file.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? file
        return stem.isEmpty ? file : stem
    }

    /// Parses JSONL bytes; `file` names the source in errors and gives the task name.
    /// `strict` rejects fields other than prompt and answer (the task suite's own files).
    public static func parse(_ bytes: [UInt8], file: String, strict: Bool = false) throws -> EvalTask {
        var examples: [EvalExample] = []
        var lineNo = 0
        for rawLine in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNo += 1
            var line = Array(rawLine)
            if line.last == UInt8(ascii: "\r") { line.removeLast() }  // CRLF files
            if lineNo == 1, line.starts(with: [0xEF, 0xBB, 0xBF]) { line.removeFirst(3) }  // UTF-8 BOM
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
            let value: JSONValue
            do {
                value = try JSONValue.parse(line)
            } catch {
                throw EvalDataError.notJSON(file: file, line: lineNo, detail: String(describing: error))
            }
            guard let members = value.objectMembers else {
                throw EvalDataError.notObject(file: file, line: lineNo, actual: kind(value))
            }
            if strict, let extra = members.map(\.0).first(where: { $0 != "prompt" && $0 != "answer" }) {
                throw EvalDataError.unexpectedField(file: file, line: lineNo, field: extra)
            }
            func field(_ name: String) throws -> String {
                guard let v = value[name] else { throw EvalDataError.missingField(file: file, line: lineNo, field: name) }
                guard let s = v.stringValue else {
                    throw EvalDataError.wrongType(file: file, line: lineNo, field: name, actual: kind(v))
                }
                return s
            }
            examples.append(EvalExample(prompt: try field("prompt"), answer: try field("answer"), line: lineNo))
        }
        guard !examples.isEmpty else { throw EvalDataError.empty(file: file) }
        return EvalTask(name: taskName(forPath: file), path: file, examples: examples)
    }

    private static func kind(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number(let t): return "the number \(t)"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}
