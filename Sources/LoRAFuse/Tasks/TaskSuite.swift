/// The public multi-task suite: small instruction-style tasks that a 135M model (SmolLM2-135M-
/// Instruct) can learn with a rank-8 LoRA in a few hundred CPU steps, so adapters can be trained
/// per task and then fused, and the fusion judged by exact-match accuracy on held-out prompts.
///
/// Design choices (why they matter for fusion experiments):
/// - Every answer is short and checkable by exact match after trimming whitespace.
/// - `date_eu` and `date_us` take prompts of the very same form and want different answers, so
///   fusing their adapters must show interference.
/// - `reverse_upper` is long-tailed (8 training examples by default) and composes two skills
///   that other tasks teach (`reverse_word`, `uppercase`), so fusion can help it.
/// - `capital_facts` asks about a made-up fact base: the same facts are asked in every split but
///   each split has its own phrasings, so the test set is answerable only after learning the facts.
///
/// Determinism: each task and split draws from `SeededRNG(seed:stream:)` with the stream
/// `"<task>/<split>"`, so a task's data do not depend on which other tasks exist. Splits are
/// drawn test → val → train, each rejecting prompts already drawn, so the test set depends only
/// on the seed and the test size, and no prompt is in two splits. Integer draws use our own
/// rejection sampling (not the standard library's `random(in:)`, whose algorithm is not
/// specified), so the output is byte-identical across platforms and toolchains.
import Foundation

/// A split of a task's data.
public enum TaskSplit: String, CaseIterable, Sendable {
    case train, val, test
}

/// One example: the user prompt (shown through the chat template) and the expected reply.
public struct TaskExample: Sendable, Hashable {
    public var prompt: String
    public var answer: String

    public init(prompt: String, answer: String) {
        self.prompt = prompt
        self.answer = answer
    }

    /// The suite's scoring rule: a reply is correct when it equals the answer exactly after both
    /// are trimmed of surrounding whitespace.
    public func isCorrect(reply: String) -> Bool {
        reply.trimmingCharacters(in: .whitespacesAndNewlines) == answer.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The JSON Lines form, `{"prompt": "...", "answer": "..."}` (keys in that order).
    public var jsonLine: String {
        "{\"prompt\": " + JSONValue.string(prompt).serialized() + ", \"answer\": " + JSONValue.string(answer).serialized() + "}"
    }

    /// Parses a JSON Lines file of examples through the evaluator's reader (`TaskData`), strictly:
    /// every non-empty line must be an object with exactly the string keys `prompt` and `answer`.
    /// `source` names the file in errors.
    public static func parseJSONL(_ text: String, source: String = "<jsonl>") throws -> [TaskExample] {
        do {
            return try TaskData.parse(Array(text.utf8), file: source, strict: true).examples
                .map { TaskExample(prompt: $0.prompt, answer: $0.answer) }
        } catch EvalDataError.empty {
            return []
        } catch let e as EvalDataError {
            throw TaskSuiteError.badLine(file: source, line: e.line ?? 0, reason: "\(e)")
        }
    }

    /// Reads a `.jsonl` file of examples.
    public static func readJSONL(path: String) throws -> [TaskExample] {
        guard let data = FileManager.default.contents(atPath: path) else { throw TaskSuiteError.io(path: path, reason: "cannot read") }
        return try parseJSONL(String(decoding: data, as: UTF8.self), source: path)
    }
}

public enum TaskSuiteError: Error, CustomStringConvertible, Equatable {
    /// The task cannot produce that many distinct prompts for the split.
    case exhausted(task: String, split: String, wanted: Int, got: Int)
    case badSize(field: String, value: Int)
    case badLine(file: String, line: Int, reason: String)
    case io(path: String, reason: String)

    public var description: String {
        switch self {
        case let .exhausted(task, split, wanted, got):
            return "task \(task), split \(split): wanted \(wanted) distinct prompts not used by another split, could draw only \(got); ask for fewer"
        case let .badSize(field, value):
            return "\(field) must be at least \(field == "train" || field == "test" ? 1 : 0), got \(value)"
        case let .badLine(file, line, reason):
            return "\(file):\(line): \(reason)"
        case let .io(path, reason):
            return "\(path): \(reason)"
        }
    }
}

/// Deterministic draws for the generators, on top of `SeededRNG`. A wrapper rather than an
/// extension so its names cannot clash with other code extending `SeededRNG`.
public struct TaskRNG: Sendable {
    var base: SeededRNG

    public init(seed: UInt64, stream: String) { base = SeededRNG(seed: seed, stream: stream) }

    /// Uniform in 0..<n (Lemire's multiply-high with rejection, so there is no modulo bias).
    public mutating func below(_ n: Int) -> Int {
        precondition(n > 0, "below(\(n))")
        let bound = UInt64(n)
        let threshold = (0 &- bound) % bound
        while true {
            let m = base.next().multipliedFullWidth(by: bound)
            if m.low >= threshold { return Int(m.high) }
        }
    }

    /// Uniform in the closed range.
    public mutating func int(_ r: ClosedRange<Int>) -> Int { r.lowerBound + below(r.count) }

    public mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

    public mutating func coin() -> Bool { below(2) == 1 }

    /// Fisher–Yates.
    public mutating func shuffle<T>(_ a: inout [T]) {
        guard a.count > 1 else { return }
        for i in stride(from: a.count - 1, to: 0, by: -1) { a.swapAt(i, below(i + 1)) }
    }
}

/// One task of the suite. `draw(split, index, rng)` returns a candidate example; the suite
/// rejects duplicates, so a draw may repeat a prompt. `index` counts accepted examples of the split
/// so far (tasks that must cover a fixed set, like the fact base, cycle over it with it).
public struct TaskDefinition: Sendable {
    public let name: String
    /// Skill family: arithmetic, string, classification, extraction, knowledge, format.
    public let group: String
    /// One sentence saying what the task asks, in natural language (used to build adapters from
    /// descriptions).
    public let description: String
    /// Few training examples (`TaskSuiteConfig.longTailTrain`).
    public let longTailed: Bool
    /// A task whose prompts have the same form but whose answers differ.
    public let conflictsWith: String?
    let draw: @Sendable (TaskSplit, Int, inout TaskRNG) -> TaskExample

    init(name: String, group: String, description: String, longTailed: Bool = false, conflictsWith: String? = nil,
         draw: @escaping @Sendable (TaskSplit, Int, inout TaskRNG) -> TaskExample) {
        precondition(!name.contains("."), "task names must not contain dots: \(name)")
        self.name = name
        self.group = group
        self.description = description
        self.longTailed = longTailed
        self.conflictsWith = conflictsWith
        self.draw = draw
    }
}

public struct TaskSuiteConfig: Sendable, Equatable {
    public static let defaultSeed: UInt64 = 1

    public var seed: UInt64
    public var train: Int
    public var val: Int
    public var test: Int
    /// Training examples of long-tailed tasks (capped by `train`).
    public var longTailTrain: Int

    public init(seed: UInt64 = TaskSuiteConfig.defaultSeed, train: Int = 200, val: Int = 50, test: Int = 50, longTailTrain: Int = 8) {
        self.seed = seed
        self.train = train
        self.val = val
        self.test = test
        self.longTailTrain = longTailTrain
    }

    /// The number of examples of `task` in `split`.
    public func size(of split: TaskSplit, for task: TaskDefinition) -> Int {
        switch split {
        case .train: return task.longTailed ? min(train, longTailTrain) : train
        case .val: return val
        case .test: return test
        }
    }

    func validate() throws {
        if train < 1 { throw TaskSuiteError.badSize(field: "train", value: train) }
        if val < 0 { throw TaskSuiteError.badSize(field: "val", value: val) }
        if test < 1 { throw TaskSuiteError.badSize(field: "test", value: test) }
        if longTailTrain < 1 { throw TaskSuiteError.badSize(field: "train", value: longTailTrain) }
    }
}

/// A task as `manifest.json` lists it.
public struct TaskManifestEntry: Sendable, Equatable {
    public var name: String
    public var group: String
    public var description: String
    public var longTailed: Bool
    public var conflictsWith: String?
    /// File names relative to the suite folder.
    public var files: [TaskSplit: String]
}

/// A task's generated splits.
public struct GeneratedTask: Sendable {
    public let definition: TaskDefinition
    public let train: [TaskExample]
    public let val: [TaskExample]
    public let test: [TaskExample]

    public func examples(_ split: TaskSplit) -> [TaskExample] {
        switch split {
        case .train: return train
        case .val: return val
        case .test: return test
        }
    }
}

public enum TaskSuite {
    /// Bumped whenever the generated data change for a given seed and sizes.
    public static let generatorVersion = 1

    /// All tasks, in manifest order.
    public static let tasks: [TaskDefinition] =
        ArithmeticTasks.all + StringTasks.all + LanguageTasks.all + FormatTasks.all

    public static func task(named name: String) -> TaskDefinition? { tasks.first { $0.name == name } }

    /// Generates one task's splits (test, then val, then train; see the file comment).
    public static func generate(_ task: TaskDefinition, config: TaskSuiteConfig) throws -> GeneratedTask {
        try config.validate()
        var used = Set<String>()
        var splits: [TaskSplit: [TaskExample]] = [:]
        for split in [TaskSplit.test, .val, .train] {
            let want = config.size(of: split, for: task)
            var rng = TaskRNG(seed: config.seed, stream: "\(task.name)/\(split.rawValue)")
            var got: [TaskExample] = []
            var attempts = 0
            let maxAttempts = 2000 + 20 * want
            while got.count < want {
                attempts += 1
                if attempts > maxAttempts {
                    throw TaskSuiteError.exhausted(task: task.name, split: split.rawValue, wanted: want, got: got.count)
                }
                let e = task.draw(split, got.count, &rng)
                if used.insert(e.prompt).inserted { got.append(e) }
            }
            rng.shuffle(&got)
            splits[split] = got
        }
        return GeneratedTask(definition: task, train: splits[.train]!, val: splits[.val]!, test: splits[.test]!)
    }

    /// Generates every task.
    public static func generate(config: TaskSuiteConfig = TaskSuiteConfig()) throws -> [GeneratedTask] {
        try tasks.map { try generate($0, config: config) }
    }

    /// The suite's files, name (relative to the output folder) → contents: per task
    /// `<name>.<split>.jsonl`, then `manifest.json` and `README.md`.
    public static func files(config: TaskSuiteConfig = TaskSuiteConfig()) throws -> [(name: String, contents: String)] {
        let generated = try generate(config: config)
        var out: [(name: String, contents: String)] = []
        for g in generated {
            for split in TaskSplit.allCases {
                out.append((fileName(g.definition.name, split), g.examples(split).map { $0.jsonLine + "\n" }.joined()))
            }
        }
        out.append(("manifest.json", manifest(generated, config: config).serialized(indent: 2) + "\n"))
        out.append(("README.md", readme(generated, config: config)))
        return out
    }

    public static func fileName(_ task: String, _ split: TaskSplit) -> String { "\(task).\(split.rawValue).jsonl" }

    /// Writes the suite's files into `directory` through `OutputGuard` (a folder with files in it,
    /// such as the committed `tasks/`, is replaced only with `force`, as a whole); returns the
    /// paths written.
    @discardableResult
    public static func write(to directory: String, config: TaskSuiteConfig = TaskSuiteConfig(), force: Bool = false) throws -> [String] {
        let suite = try Self.files(config: config)
        try OutputGuard.buildDirectory(directory, inputs: [], force: force) { dir in
            for (name, contents) in suite {
                let path = (dir as NSString).appendingPathComponent(name)
                do { try Data(contents.utf8).write(to: URL(fileURLWithPath: path)) } catch {
                    throw TaskSuiteError.io(path: path, reason: "cannot write: \(error.localizedDescription)")
                }
            }
        }
        return suite.map { (directory as NSString).appendingPathComponent($0.name) }
    }

    // MARK: reading a generated suite

    /// Reads `manifest.json` of a generated suite (the committed `tasks/` or a `lorafuse tasks
    /// generate` output): the task list with descriptions and file names.
    public static func readManifest(directory: String) throws -> [TaskManifestEntry] {
        let path = (directory as NSString).appendingPathComponent("manifest.json")
        guard let data = FileManager.default.contents(atPath: path) else { throw TaskSuiteError.io(path: path, reason: "cannot read") }
        let root: JSONValue
        do { root = try JSONValue.parse(Array(data)) } catch { throw TaskSuiteError.io(path: path, reason: "\(error)") }
        guard let tasks = root["tasks"]?.arrayValue else { throw TaskSuiteError.io(path: path, reason: "field tasks: expected an array") }
        return try tasks.enumerated().map { i, t in
            func str(_ k: String) throws -> String {
                guard let v = t[k]?.stringValue else { throw TaskSuiteError.io(path: path, reason: "tasks[\(i)].\(k): expected a string") }
                return v
            }
            var files: [TaskSplit: String] = [:]
            for split in TaskSplit.allCases {
                guard let f = t["files"]?[split.rawValue]?.stringValue else {
                    throw TaskSuiteError.io(path: path, reason: "tasks[\(i)].files.\(split.rawValue): expected a string")
                }
                files[split] = f
            }
            return TaskManifestEntry(name: try str("name"), group: try str("group"), description: try str("description"),
                                     longTailed: t["longTailed"]?.boolValue ?? false, conflictsWith: t["conflictsWith"]?.stringValue,
                                     files: files)
        }
    }

    /// Reads one split of one task of a generated suite in `directory`.
    public static func load(directory: String, task: String, split: TaskSplit) throws -> [TaskExample] {
        try TaskExample.readJSONL(path: (directory as NSString).appendingPathComponent(fileName(task, split)))
    }

    // MARK: manifest and README

    static func manifest(_ generated: [GeneratedTask], config: TaskSuiteConfig) -> JSONValue {
        let taskEntries: [JSONValue] = generated.map { g in
            let d = g.definition
            let example = g.train.first ?? g.test[0]
            return .object([
                ("name", .string(d.name)),
                ("group", .string(d.group)),
                ("description", .string(d.description)),
                ("longTailed", .bool(d.longTailed)),
                ("conflictsWith", d.conflictsWith.map { .string($0) } ?? .null),
                ("files", .object(TaskSplit.allCases.map { ($0.rawValue, .string(fileName(d.name, $0))) })),
                ("sizes", .object(TaskSplit.allCases.map { ($0.rawValue, .int(g.examples($0).count)) })),
                ("example", .object([("prompt", .string(example.prompt)), ("answer", .string(example.answer))])),
            ])
        }
        return .object([
            ("generator", .string("lorafuse tasks generate")),
            ("generatorVersion", .int(generatorVersion)),
            ("seed", .number(String(config.seed))),
            ("splits", .object([("train", .int(config.train)), ("val", .int(config.val)), ("test", .int(config.test)),
                                ("longTailTrain", .int(config.longTailTrain))])),
            ("format", .string("JSON Lines: one {\"prompt\": ..., \"answer\": ...} object per line; an answer is correct when it equals the reply exactly after trimming whitespace")),
            ("tasks", .array(taskEntries)),
        ])
    }

    static func readme(_ generated: [GeneratedTask], config: TaskSuiteConfig) -> String {
        func code(_ s: String) -> String { "`" + s + "`" }  // no generated text contains a backtick
        var s = """
        # lorafuse task suite

        Generated by `lorafuse tasks generate --seed \(config.seed) --train \(config.train) --val \(config.val) --test \(config.test) --long-tail-train \(config.longTailTrain)` \
        (generator version \(generatorVersion)). Do not edit by hand: a test checks that these files equal the generator's output.

        Each task has `<task>.train.jsonl`, `<task>.val.jsonl` and `<task>.test.jsonl`, one example per line:
        `{"prompt": "...", "answer": "..."}`. The prompt is the user message (shown through the model's chat
        template); a reply is correct when it equals the answer exactly after trimming whitespace.
        No prompt appears in two splits of the same task. `manifest.json` lists the tasks, their one-sentence
        descriptions, files and split sizes.

        Special tasks:
        - `date_eu` and `date_us` are a conflicting pair: the prompts have the same form
          ("Convert the date YYYY-MM-DD ...") but one wants DD/MM/YYYY and the other MM/DD/YYYY (day and month
          always differ, so every answer conflicts). Fusing their adapters shows interference.
        - `reverse_upper` is long-tailed: only \(min(config.train, config.longTailTrain)) training examples. It composes the skills of
          `reverse_word` and `uppercase`.
        - `capital_facts` asks about made-up countries: every split asks the same \(LanguageTasks.countries.count) facts, each split with its
          own phrasings, so the test set can be answered only after the facts are learned.

        | task | group | train | val | test | description |
        |---|---|---|---|---|---|

        """
        for g in generated {
            let d = g.definition
            s += "| `\(d.name)` | \(d.group) | \(g.train.count) | \(g.val.count) | \(g.test.count) | \(d.description) |\n"
        }
        for g in generated {
            let d = g.definition
            let e = g.train.first ?? g.test[0]
            s += "\n## \(d.name)\n\n\(d.description)\n\n"
            if d.longTailed { s += "Long-tailed: few training examples.\n\n" }
            if let c = d.conflictsWith { s += "Conflicts with `\(c)`: same prompt form, different answers.\n\n" }
            s += "- prompt: \(code(e.prompt))\n- answer: \(code(e.answer))\n"
        }
        return s
    }
}
