import Foundation
import XCTest
@testable import LoRAFuse

final class TaskDataTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorafuse-taskdata-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    private func write(_ name: String, _ text: String) throws -> String {
        let url = dir.appendingPathComponent(name)
        try Data(text.utf8).write(to: url)
        return url.path
    }

    func testReadsExamplesSkipsBlankLinesKeepsLineNumbers() throws {
        let path = try write("math.test.jsonl", """
        {"prompt": "What is 2+3?", "answer": "5"}

        {"answer": "7", "prompt": "What is 3+4?", "source": "x"}\r
           \t
        {"prompt": "Say \\"hi\\" ☃", "answer": "hi"}

        """)
        let t = try TaskData.read(path: path)
        XCTAssertEqual(t.name, "math")
        XCTAssertEqual(t.path, path)
        XCTAssertEqual(t.examples, [
            EvalExample(prompt: "What is 2+3?", answer: "5", line: 1),
            EvalExample(prompt: "What is 3+4?", answer: "7", line: 3),
            EvalExample(prompt: "Say \"hi\" ☃", answer: "hi", line: 5),
        ])
    }

    func testTaskName() {
        XCTAssertEqual(TaskData.taskName(forPath: "/a/b.c/arith.jsonl"), "arith")
        XCTAssertEqual(TaskData.taskName(forPath: "x.y.z"), "x")
        XCTAssertEqual(TaskData.taskName(forPath: "plain"), "plain")
        XCTAssertEqual(TaskData.taskName(forPath: ".hidden"), ".hidden")
    }

    func testErrorsNameFileAndLine() throws {
        let cases: [(String, String, (String) -> EvalDataError)] = [
            ("notjson.jsonl", "{\"prompt\": \"a\", \"answer\": \"b\"}\n{\"prompt\": \"a\",", { _ in .notJSON(file: "", line: 2, detail: "") }),
            ("noprompt.jsonl", "{\"prompt\": \"a\", \"answer\": \"b\"}\n\n{\"answer\": \"b\"}\n", { .missingField(file: $0, line: 3, field: "prompt") }),
            ("noanswer.jsonl", "{\"prompt\": \"a\"}\n", { .missingField(file: $0, line: 1, field: "answer") }),
            ("wrongtype.jsonl", "{\"prompt\": \"a\", \"answer\": \"b\"}\n{\"prompt\": \"a\", \"answer\": 5}\n", { .wrongType(file: $0, line: 2, field: "answer", actual: "the number 5") }),
            ("nullprompt.jsonl", "{\"prompt\": null, \"answer\": \"b\"}\n", { .wrongType(file: $0, line: 1, field: "prompt", actual: "null") }),
            ("array.jsonl", "[\"a\", \"b\"]\n", { .notObject(file: $0, line: 1, actual: "an array") }),
        ]
        for (name, text, expected) in cases {
            let path = try write(name, text)
            XCTAssertThrowsError(try TaskData.read(path: path), name) { error in
                guard let e = error as? EvalDataError else { return XCTFail("\(name): \(error)") }
                let want = expected(path)
                if case let .notJSON(file, line, detail) = e {
                    XCTAssertEqual(file, path)
                    XCTAssertEqual(line, 2)
                    XCTAssertFalse(detail.isEmpty)
                } else {
                    XCTAssertEqual(e, want, name)
                }
                let lineNo: Int
                switch e {
                case let .notJSON(_, l, _), let .missingField(_, l, _), let .wrongType(_, l, _, _), let .notObject(_, l, _): lineNo = l
                default: lineNo = -1
                }
                XCTAssertTrue(e.description.hasPrefix("\(path):\(lineNo): "), e.description)
            }
        }
    }

    func testEmptyAndMissingFiles() throws {
        let empty = try write("empty.jsonl", "")
        XCTAssertThrowsError(try TaskData.read(path: empty)) { XCTAssertEqual($0 as? EvalDataError, .empty(file: empty)) }
        let blank = try write("blank.jsonl", "\n  \n\n")
        XCTAssertThrowsError(try TaskData.read(path: blank)) {
            XCTAssertEqual($0 as? EvalDataError, .empty(file: blank))
            XCTAssertTrue(String(describing: $0).contains(blank))
        }
        let missing = dir.appendingPathComponent("nope.jsonl").path
        XCTAssertThrowsError(try TaskData.read(path: missing)) {
            guard case let .cannotRead(file, _)? = $0 as? EvalDataError else { return XCTFail("\($0)") }
            XCTAssertEqual(file, missing)
        }
        // A file past the limit is refused before it is read (a sparse file: no disk used).
        let huge = dir.appendingPathComponent("huge.jsonl").path
        XCTAssertTrue(FileManager.default.createFile(atPath: huge, contents: nil))
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: huge))
        try h.truncate(atOffset: UInt64(TaskData.maxFileBytes + 1))
        try h.close()
        defer { try? FileManager.default.removeItem(atPath: huge) }
        XCTAssertThrowsError(try TaskData.read(path: huge)) {
            XCTAssertEqual($0 as? EvalDataError, .tooLarge(file: huge, bytes: TaskData.maxFileBytes + 1, limit: TaskData.maxFileBytes))
            XCTAssertTrue("\($0)".contains("1024 MiB") && "\($0)".contains("split it"), "\($0)")
        }
    }

    func testDuplicateTaskNames() throws {
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("sub"), withIntermediateDirectories: true)
        let a = try write("arith.jsonl", "{\"prompt\": \"a\", \"answer\": \"b\"}\n")
        let b = try write("sub/arith.v2.jsonl", "{\"prompt\": \"a\", \"answer\": \"b\"}\n")
        XCTAssertThrowsError(try TaskData.read(paths: [a, b])) {
            XCTAssertEqual($0 as? EvalDataError, .duplicateTask(name: "arith", files: [a, b]))
        }
        let c = try write("other.jsonl", "{\"prompt\": \"a\", \"answer\": \"b\"}\n")
        XCTAssertEqual(try TaskData.read(paths: [a, c]).map(\.name), ["arith", "other"])
    }
}
