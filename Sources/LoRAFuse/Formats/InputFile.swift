import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Checks made on an input path before it is opened. Opening a FIFO blocks until something writes
/// to it (a hang), and devices or pipes (`/dev/stdin`, `<(…)`) cannot be memory-mapped or read
/// twice, so every reader asks for a regular file (or a directory) first and says what it got.
public enum InputFile {
    /// What `stat` (following symlinks) says `path` is; nil when it does not exist.
    public static func kind(of path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return "regular file"
        case S_IFDIR: return "directory"
        case S_IFIFO: return "FIFO"
        case S_IFCHR: return "character device"
        case S_IFBLK: return "block device"
        case S_IFSOCK: return "socket"
        case S_IFLNK: return "symbolic link"
        default: return "special file"
        }
    }

    /// Throws unless `path` is a regular file; returns its size in bytes.
    @discardableResult
    public static func requireRegularFile(_ path: String, maxBytes: Int? = nil, what: String = "file") throws -> Int {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw InputFileError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw InputFileError.notRegular(path: path, kind: kind(of: path) ?? "special file")
        }
        let size = Int(st.st_size)
        if let m = maxBytes, size > m { throw InputFileError.tooLarge(path: path, what: what, size: size, limit: m) }
        return size
    }

    /// Throws when `path` exists but is not a regular file; a missing path is left to the
    /// caller's own "not found" error.
    public static func refuseSpecialFile(_ path: String) throws {
        if let k = kind(of: path), k != "regular file" { throw InputFileError.notRegular(path: path, kind: k) }
    }

    /// True when `path` exists and is a regular file (no error: for format sniffing).
    public static func isRegularFile(_ path: String) -> Bool { kind(of: path) == "regular file" }
}

public enum InputFileError: Error, CustomStringConvertible, Equatable {
    case notRegular(path: String, kind: String)
    case unreadable(path: String, reason: String)
    case tooLarge(path: String, what: String, size: Int, limit: Int)

    public var description: String {
        switch self {
        case let .notRegular(p, k):
            let article = k.first.map { "aeiouAEIOU".contains($0) } == true ? "an" : "a"
            return "\(p) is not a regular file (\(article) \(k)); inputs are read more than once or memory-mapped, so copy it to a file first"
        case let .unreadable(p, r):
            return "\(p): cannot read (\(r))"
        case let .tooLarge(p, w, s, l):
            return "\(p): \(w) of \(s) bytes is larger than the limit of \(l) bytes"
        }
    }
}
