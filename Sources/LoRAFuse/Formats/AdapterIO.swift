import Foundation

/// Opens an adapter from a path, detecting the format from the files. PEFT directories now;
/// the interop issue adds GGUF LoRA files and MLX adapter directories here.
public enum AdapterIO {
    public static func read(path: String) throws -> LoRAAdapter {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw AdapterIOError.notFound(path: path)
        }
        if isDir.boolValue {
            let cfg = (path as NSString).appendingPathComponent("adapter_config.json")
            if FileManager.default.fileExists(atPath: cfg) {
                return try PEFTAdapter.read(directory: path)
            }
            throw AdapterIOError.unknownFormat(path: path, found: (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [])
        }
        throw AdapterIOError.unknownFormat(path: path, found: [(path as NSString).lastPathComponent])
    }
}

public enum AdapterIOError: Error, CustomStringConvertible {
    case notFound(path: String)
    case unknownFormat(path: String, found: [String])

    public var description: String {
        switch self {
        case let .notFound(p):
            return "\(p): no such file or directory"
        case let .unknownFormat(p, found):
            let shown = found.sorted().prefix(8).joined(separator: ", ")
            return "\(p): not a recognised adapter (expected a PEFT directory with adapter_config.json; found: \(shown.isEmpty ? "nothing" : shown))"
        }
    }
}
