// libFuzzer entry point for lorafuse's file readers and the server's request parser (see
// scripts/fuzz.sh). The input's first byte picks the reader; the rest is the file or request
// body. LORAFUSE_FUZZ_READER=gguf|json|safetensors|request pins
// the reader instead (the first byte is still skipped, so the same seeds serve both modes), which
// is how scripts/fuzz.sh runs and measures one target at a time. Any trap or sanitizer report is a
// bug: readers must return or throw.
import Foundation

/// 0 = GGUF + GGUF LoRA, 1 = JSON + MLX config, 2 = safetensors, 3 = a /v1/chat/completions and
/// /v1/completions body; nil = chosen by the first byte.
private let pinnedReader: UInt8? = {
    switch ProcessInfo.processInfo.environment["LORAFUSE_FUZZ_READER"] {
    case "gguf": return 0
    case "json": return 1
    case "safetensors": return 2
    case "request": return 3
    case nil, "", "all": return nil
    case let other?:
        FileHandle.standardError.write("LORAFUSE_FUZZ_READER=\(other): expected gguf, json, safetensors, request or all\n".data(using: .utf8)!)
        exit(2)
    }
}()

private let scratchPath = NSTemporaryDirectory() + "lorafuse-fuzz-\(getpid()).safetensors"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let body = Data(bytes: data + 1, count: size - 1)
    switch pinnedReader ?? data[0] % 4 {
    case 0:
        if let f = try? GGUFFile(data: body) {
            for t in f.tensors.prefix(8) { _ = try? f.floats(t.name) }
            _ = try? GGUFLoRA.read(file: f, hints: ModelHints(architecture: "llama", heads: AttentionHeads(heads: 2, kvHeads: 1)))
        }
    case 1:
        _ = try? JSONValue.parse(Array(body))
        _ = try? MLXAdapter.parseConfig(Array(body), path: "<fuzz>")
    case 3:
        _ = try? RequestParser.parse(body, kind: .chat)
        _ = try? RequestParser.parse(body, kind: .completion)
    default:
        guard FileManager.default.createFile(atPath: scratchPath, contents: body) else { return 0 }
        if let f = try? SafetensorsFile(path: scratchPath) {
            for n in f.names.prefix(8) { _ = try? f.matrix(n) }
        }
    }
    return 0
}
