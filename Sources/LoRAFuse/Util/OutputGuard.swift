import Foundation

/// What an output path will hold.
public enum OutputKind: String, Sendable {
    case file
    case directory
}

/// An output path that passed `OutputGuard.check`: resolved, not an input, not in the way of
/// anything the user did not ask to replace.
public struct OutputTarget: Sendable, Equatable {
    /// The path as the user gave it (for messages).
    public let given: String
    /// Absolute, with symlinks of its existing part resolved.
    public let path: String
    public let kind: OutputKind
    /// Something exists at `path` and will be replaced (a file or a non-empty directory given
    /// with `force`, or an empty directory).
    public let replacesExisting: Bool
}

public enum OutputGuardError: Error, CustomStringConvertible, Equatable {
    case emptyPath(what: String)
    case isInput(output: String, input: String)
    case containsInput(output: String, input: String)
    case insideInput(output: String, input: String)
    case exists(output: String, what: String)
    case wrongKind(output: String, expected: OutputKind, actual: String)
    case writeFailed(output: String, reason: String)

    public var description: String {
        switch self {
        case let .emptyPath(what):
            return "\(what): the output path is empty; give a file or folder name"
        case let .isInput(o, i):
            return "refusing to write \(o): it is an input (\(i)); choose another output"
        case let .containsInput(o, i):
            return "refusing to write \(o): it contains the input \(i), which replacing it would destroy; choose another output"
        case let .insideInput(o, i):
            return "refusing to write \(o): it lies inside the input \(i); write outside the inputs"
        case let .exists(o, what):
            return "\(o) already exists (\(what)); choose a new path, or pass --force to replace it"
        case let .wrongKind(o, expected, actual):
            return "\(o) is \(actual), but this output is a \(expected.rawValue); choose another path"
        case let .writeFailed(o, reason):
            return "cannot write \(o): \(reason)"
        }
    }
}

/// The one rule every writer follows: an output never equals, contains or lies inside an input
/// (the model included), an existing file or non-empty folder is replaced only when the user
/// asked (`force`), an empty path is refused, and what is written appears whole or not at all
/// (built under a temporary name beside the target, then renamed).
public enum OutputGuard {
    /// Checks `output` before any work is done. `inputs` are every path the command reads.
    @discardableResult
    public static func check(_ output: String, kind: OutputKind, inputs: [String], force: Bool,
                             what: String = "-o/--output") throws -> OutputTarget {
        guard !output.trimmingCharacters(in: .whitespaces).isEmpty else { throw OutputGuardError.emptyPath(what: what) }
        let out = resolve(output)
        for input in inputs where !input.isEmpty {
            let inp = resolve(input)
            if out == inp { throw OutputGuardError.isInput(output: output, input: input) }
            if isAncestor(out, of: inp) { throw OutputGuardError.containsInput(output: output, input: input) }
            if isAncestor(inp, of: out) { throw OutputGuardError.insideInput(output: output, input: input) }
        }
        var st = stat()
        guard lstat(out, &st) == 0 else {
            return OutputTarget(given: output, path: out, kind: kind, replacesExisting: false)
        }
        let isDir = (st.st_mode & S_IFMT) == S_IFDIR
        let isReg = (st.st_mode & S_IFMT) == S_IFREG
        switch kind {
        case .directory:
            guard isDir else { throw OutputGuardError.wrongKind(output: output, expected: kind, actual: isReg ? "a file" : "not a regular file or folder") }
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []
            if !entries.isEmpty && !force {
                let shown = entries.sorted().prefix(4).joined(separator: ", ") + (entries.count > 4 ? ", …" : "")
                throw OutputGuardError.exists(output: output, what: "a folder holding \(shown)")
            }
        case .file:
            guard isReg else { throw OutputGuardError.wrongKind(output: output, expected: kind, actual: isDir ? "a folder" : "not a regular file") }
            if !force { throw OutputGuardError.exists(output: output, what: "a file of \(st.st_size) bytes") }
        }
        return OutputTarget(given: output, path: out, kind: kind, replacesExisting: true)
    }

    /// Builds the directory in a fresh temporary folder beside `target` through `body`, then
    /// puts it in place of whatever was there (moved aside first, removed only after the new one
    /// is in place, so an interrupted run leaves either the old folder or the new one).
    public static func writeDirectory(_ target: OutputTarget, _ body: (URL) throws -> Void) throws {
        precondition(target.kind == .directory, "writeDirectory on a file target")
        let tmp = try makeSibling(of: target, suffix: "tmp", directory: true)
        do {
            try body(URL(fileURLWithPath: tmp, isDirectory: true))
            try install(tmp, at: target)
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
    }

    /// `check` then `writeDirectory`: `body` fills the temporary folder (given as a path) and
    /// its result is returned once the folder is in place.
    public static func buildDirectory<R>(_ output: String, inputs: [String], force: Bool,
                                         _ body: (String) throws -> R) throws -> R {
        let target = try check(output, kind: .directory, inputs: inputs, force: force)
        var result: R?
        try writeDirectory(target) { tmp in result = try body(tmp.path) }
        return result!
    }

    /// Writes the file under a temporary name beside `target` through `body`, then renames it
    /// onto `target` (rename replaces atomically).
    public static func writeFile(_ target: OutputTarget, _ body: (URL) throws -> Void) throws {
        precondition(target.kind == .file, "writeFile on a directory target")
        let tmp = try makeSibling(of: target, suffix: "tmp", directory: false)
        do {
            try body(URL(fileURLWithPath: tmp))
            guard rename(tmp, target.path) == 0 else {
                throw OutputGuardError.writeFailed(output: target.given, reason: "rename failed: \(String(cString: strerror(errno)))")
            }
        } catch {
            unlink(tmp)
            throw error
        }
    }

    /// Moves a finished temporary folder onto `target`.
    public static func install(_ tmp: String, at target: OutputTarget) throws {
        let fm = FileManager.default
        var aside: String?
        if fm.fileExists(atPath: target.path) {
            let old = try makeSibling(of: target, suffix: "old", directory: nil)
            guard rename(target.path, old) == 0 else {
                throw OutputGuardError.writeFailed(output: target.given, reason: "cannot move the old folder aside: \(String(cString: strerror(errno)))")
            }
            aside = old
        }
        guard rename(tmp, target.path) == 0 else {
            let reason = String(cString: strerror(errno))
            if let a = aside { _ = rename(a, target.path) }
            throw OutputGuardError.writeFailed(output: target.given, reason: "rename failed: \(reason)")
        }
        if let a = aside { try? fm.removeItem(atPath: a) }
    }

    /// A new, unused path beside `target` (`.NAME.SUFFIX-PID-RANDOM`), created as a folder or an
    /// empty file when `directory` says so; the parent folders are made first.
    static func makeSibling(of target: OutputTarget, suffix: String, directory: Bool?) throws -> String {
        let parent = URL(fileURLWithPath: target.path).deletingLastPathComponent().path
        do { try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true) } catch {
            throw OutputGuardError.writeFailed(output: target.given, reason: "cannot create \(parent): \(error.localizedDescription)")
        }
        return try makeSibling(beside: target.path, given: target.given, suffix: suffix, directory: directory)
    }

    /// The one temporary-name rule of every writer: a new, unused path `.NAME.SUFFIX-PID-RANDOM`
    /// in `path`'s folder (which must exist), created as a folder (`directory: true`), as an empty
    /// file with `O_EXCL` (`false`), or only chosen (`nil`). `given` names the output in errors.
    static func makeSibling(beside path: String, given: String, suffix: String, directory: Bool?) throws -> String {
        let url = URL(fileURLWithPath: path)
        let parent = url.deletingLastPathComponent().path
        for _ in 0..<16 {
            let p = (parent as NSString).appendingPathComponent(".\(url.lastPathComponent).\(suffix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            switch directory {
            case true?:
                if mkdir(p, 0o755) == 0 { return p }
            case false?:
                let fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0o644)
                if fd >= 0 { close(fd); return p }
            case nil:
                if access(p, F_OK) != 0 { return p }
            }
            if errno != EEXIST && directory != nil {
                throw OutputGuardError.writeFailed(output: given, reason: "cannot create a temporary entry in \(parent): \(String(cString: strerror(errno)))")
            }
        }
        throw OutputGuardError.writeFailed(output: given, reason: "no free temporary name in \(parent)")
    }

    /// Absolute path with `.`/`..` removed and the symlinks of its longest existing prefix
    /// resolved, so two spellings of one place compare equal even when the place does not exist yet.
    public static func resolve(_ path: String) -> String {
        let abs = URL(fileURLWithPath: path).standardizedFileURL.path
        var head = abs
        var tail: [String] = []
        while head != "/" {
            if let r = realpath(head, nil) {
                defer { free(r) }
                var s = String(cString: r)
                for c in tail.reversed() { s = (s as NSString).appendingPathComponent(c) }
                return s
            }
            tail.append((head as NSString).lastPathComponent)
            head = (head as NSString).deletingLastPathComponent
        }
        return abs
    }

    static func isAncestor(_ a: String, of b: String) -> Bool {
        let prefix = a.hasSuffix("/") ? a : a + "/"
        return b.hasPrefix(prefix)
    }
}
