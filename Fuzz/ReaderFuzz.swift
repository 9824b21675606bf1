// libFuzzer entry point for lorafuse's file readers (see scripts/fuzz.sh). The input's first
// byte picks the reader; the rest is the file. Any trap or sanitizer report is a bug: readers
// must return or throw.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let body = Data(bytes: data + 1, count: size - 1)
    switch data[0] % 3 {
    case 0:
        if let f = try? GGUFFile(data: body) {
            for t in f.tensors.prefix(8) { _ = try? f.floats(t.name) }
            _ = try? GGUFLoRA.read(file: f, hints: ModelHints(architecture: "llama", heads: AttentionHeads(heads: 2, kvHeads: 1)))
        }
    case 1:
        _ = try? JSONValue.parse(Array(body))
        _ = try? MLXAdapter.parseConfig(Array(body), path: "<fuzz>")
    default:
        let path = NSTemporaryDirectory() + "lorafuse-fuzz-\(getpid()).safetensors"
        FileManager.default.createFile(atPath: path, contents: body)
        if let f = try? SafetensorsFile(path: path) {
            for n in f.names.prefix(8) { _ = try? f.matrix(n) }
        }
    }
    return 0
}
