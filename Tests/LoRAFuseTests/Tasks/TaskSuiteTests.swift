import Foundation
import XCTest
@testable import LoRAFuse

/// The task suite: determinism, split sizes and disjointness, the JSONL format, per-task checkers
/// that recompute each answer from its prompt, the conflicting pair, and that the committed
/// `tasks/` folder is exactly what the generator produces.
final class TaskSuiteTests: XCTestCase {
    /// One generation with the default configuration, shared by the tests that only read it.
    static let suite: [GeneratedTask] = try! TaskSuite.generate()

    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    func generated(_ name: String) throws -> GeneratedTask {
        try XCTUnwrap(Self.suite.first { $0.definition.name == name }, "no task \(name)")
    }

    // MARK: structure

    func testAtLeastTenUniquelyNamedDescribedTasks() {
        let names = TaskSuite.tasks.map(\.name)
        XCTAssertGreaterThanOrEqual(names.count, 10)
        XCTAssertEqual(Set(names).count, names.count, "duplicate task names")
        for t in TaskSuite.tasks {
            XCTAssertFalse(t.name.contains("."), t.name)
            XCTAssertTrue(t.name.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "_") }, t.name)
            XCTAssertTrue(t.description.hasSuffix("."), t.description)
            XCTAssertFalse(t.description.dropLast().contains(". "), "one sentence: \(t.description)")
            XCTAssertGreaterThan(t.description.count, 20)
            if let c = t.conflictsWith { XCTAssertEqual(TaskSuite.task(named: c)?.conflictsWith, t.name) }
        }
        XCTAssertEqual(TaskSuite.tasks.filter(\.longTailed).map(\.name), ["reverse_upper"])
        XCTAssertEqual(Set(TaskSuite.tasks.map(\.group)),
                       ["arithmetic", "string", "classification", "extraction", "knowledge", "format"])
    }

    func testDefaultSplitSizes() {
        for g in Self.suite {
            XCTAssertEqual(g.train.count, g.definition.longTailed ? 8 : 200, g.definition.name)
            XCTAssertEqual(g.val.count, 50, g.definition.name)
            XCTAssertEqual(g.test.count, 50, g.definition.name)
        }
    }

    func testCustomSizesAndLongTailCap() throws {
        let c = TaskSuiteConfig(seed: 9, train: 30, val: 0, test: 20, longTailTrain: 4)
        for g in try TaskSuite.generate(config: c) {
            XCTAssertEqual(g.train.count, g.definition.longTailed ? 4 : 30, g.definition.name)
            XCTAssertEqual(g.val.count, 0)
            XCTAssertEqual(g.test.count, 20)
        }
        let lt = try XCTUnwrap(TaskSuite.task(named: "reverse_upper"))
        XCTAssertEqual(try TaskSuite.generate(lt, config: TaskSuiteConfig(train: 3, longTailTrain: 8)).train.count, 3)
    }

    func testImpossibleSizesAndBadSizesThrow() throws {
        let roman = try XCTUnwrap(TaskSuite.task(named: "roman_numeral"))  // 2 phrasings × 199 numbers
        XCTAssertThrowsError(try TaskSuite.generate(roman, config: TaskSuiteConfig(train: 400))) { e in
            guard case let .exhausted(task, split, wanted, got)? = e as? TaskSuiteError else { return XCTFail("\(e)") }
            XCTAssertEqual(task, "roman_numeral")
            XCTAssertEqual(split, "train")
            XCTAssertEqual(wanted, 400)
            XCTAssertEqual(got, 398 - 100)
        }
        XCTAssertThrowsError(try TaskSuite.generate(roman, config: TaskSuiteConfig(test: 0))) { e in
            XCTAssertEqual(e as? TaskSuiteError, .badSize(field: "test", value: 0))
        }
    }

    // MARK: determinism

    func testSameSeedGivesByteIdenticalFilesAndDifferentSeedDiffers() throws {
        let a = try TaskSuite.files(), b = try TaskSuite.files()
        XCTAssertEqual(a.map(\.name), b.map(\.name))
        XCTAssertEqual(a.map(\.contents), b.map(\.contents))
        let other = try TaskSuite.files(config: TaskSuiteConfig(seed: 2))
        XCTAssertEqual(a.map(\.name), other.map(\.name))
        for (x, y) in zip(a, other) where x.name.hasSuffix(".jsonl") {
            XCTAssertNotEqual(x.contents, y.contents, "\(x.name) does not depend on the seed")
        }
    }

    /// The test split is drawn first from its own stream, so it does not move when the training
    /// size changes (results stay comparable across training budgets).
    func testTestSplitDoesNotDependOnTrainSize() throws {
        let small = try TaskSuite.generate(config: TaskSuiteConfig(train: 20))
        for (g, s) in zip(Self.suite, small) {
            XCTAssertEqual(g.test, s.test, g.definition.name)
            XCTAssertEqual(g.val, s.val, g.definition.name)
        }
    }

    // MARK: data hygiene

    func testNoPromptInTwoSplitsAndNoDuplicates() {
        for g in Self.suite {
            let all = TaskSplit.allCases.flatMap { g.examples($0).map(\.prompt) }
            XCTAssertEqual(Set(all).count, all.count, "\(g.definition.name) repeats a prompt")
        }
    }

    func testAnswersAndPromptsAreNonEmptyTrimmedAndShort() {
        for g in Self.suite {
            for e in TaskSplit.allCases.flatMap({ g.examples($0) }) {
                XCTAssertFalse(e.answer.isEmpty, g.definition.name)
                XCTAssertEqual(e.answer, e.answer.trimmingCharacters(in: .whitespacesAndNewlines), g.definition.name)
                XCTAssertEqual(e.prompt, e.prompt.trimmingCharacters(in: .whitespacesAndNewlines), g.definition.name)
                XCTAssertFalse(e.answer.contains("\n") || e.prompt.contains("\n"))
            }
        }
    }

    /// Token budgets for SmolLM2-135M: prompts ≤ 60 tokens, answers ≤ 20 (SmolLM2 tokenizer from
    /// the committed vocabulary fixture).
    func testTokenBudgetsWithTheSmolLM2Tokenizer() throws {
        let url = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/tokenizer/smollm2_vocab.json")
        let meta = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let tok = try BPETokenizer.fromGGUFMetadata { meta[$0].flatMap { $0 is NSNull ? nil : $0 } }
        for g in Self.suite {
            var maxPrompt = 0, maxAnswer = 0
            for e in TaskSplit.allCases.flatMap({ g.examples($0) }) {
                maxPrompt = max(maxPrompt, tok.encode(e.prompt, parseSpecial: false).count)
                maxAnswer = max(maxAnswer, tok.encode(e.answer, parseSpecial: false).count)
            }
            XCTAssertLessThanOrEqual(maxPrompt, 60, g.definition.name)
            XCTAssertLessThanOrEqual(maxAnswer, 20, g.definition.name)
        }
    }

    func testLexiconsAreClean() {
        let words = StringTasks.words
        XCTAssertEqual(Set(words).count, words.count, "duplicate words")
        XCTAssertGreaterThanOrEqual(words.count, 250)
        for w in words {
            XCTAssertNotEqual(String(w.reversed()), w, "palindrome \(w)")
            XCTAssertTrue((3...8).contains(w.count) && w.allSatisfy { $0.isASCII && $0.isLowercase }, w)
        }
        for p in LanguageTasks.positiveWords {
            for n in LanguageTasks.negativeWords { XCTAssertFalse(p.contains(n) || n.contains(p), "\(p) / \(n)") }
        }
        XCTAssertEqual(Set(LanguageTasks.countries.map(\.country)).count, LanguageTasks.countries.count)
        XCTAssertEqual(Set(LanguageTasks.countries.map(\.capital)).count, LanguageTasks.countries.count)
    }

    // MARK: JSONL format

    func testEveryLineIsAnObjectWithExactlyPromptAndAnswer() throws {
        for (name, contents) in try TaskSuite.files() where name.hasSuffix(".jsonl") {
            XCTAssertTrue(contents.hasSuffix("\n"))
            for line in contents.split(separator: "\n") {
                // Independent parser, and the exact layout `{"prompt": ..., "answer": ...}`.
                let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], name)
                XCTAssertEqual(Set(obj.keys), ["prompt", "answer"], name)
                XCTAssertNotNil(obj["prompt"] as? String)
                XCTAssertNotNil(obj["answer"] as? String)
                XCTAssertTrue(line.hasPrefix("{\"prompt\": \"") && line.contains("\", \"answer\": \"") && line.hasSuffix("\"}"), String(line))
            }
            XCTAssertEqual(try TaskExample.parseJSONL(contents).count, contents.split(separator: "\n").count)
        }
    }

    func testJSONLRoundTripAndRejections() throws {
        let e = TaskExample(prompt: "Say \"hi\"\\ now\t", answer: "{\"a\": 1}")
        XCTAssertEqual(try TaskExample.parseJSONL(e.jsonLine + "\n\n"), [e])
        for bad in ["{\"prompt\": \"x\"}", "{\"prompt\": \"x\", \"answer\": \"y\", \"extra\": 1}",
                    "{\"prompt\": \"x\", \"answer\": 3}", "[1]", "{\"prompt\": \"x\", \"answer\": \"y\""] {
            XCTAssertThrowsError(try TaskExample.parseJSONL("{\"prompt\": \"ok\", \"answer\": \"ok\"}\n" + bad, source: "f.jsonl")) { err in
                guard case let .badLine(file, line, _)? = err as? TaskSuiteError else { return XCTFail("\(err)") }
                XCTAssertEqual(file, "f.jsonl")
                XCTAssertEqual(line, 2)
            }
        }
    }

    // MARK: per-task checkers (recompute the answer from the prompt)

    static func integers(_ s: String) -> [Int] {
        var out: [Int] = [], cur = ""
        for ch in s + " " {
            if ch.isASCII && ch.isNumber { cur.append(ch) } else if !cur.isEmpty { out.append(Int(cur)!); cur = "" }
        }
        return out
    }

    /// The text between the first pair of double quotes.
    static func quoted(_ s: String) -> String {
        let parts = s.split(separator: "\"", omittingEmptySubsequences: false)
        return parts.count >= 3 ? String(parts[1]) : ""
    }

    /// Written independently of the generator: digit by digit from per-place tables.
    static func roman(_ n: Int) -> String {
        let ones = ["", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX"]
        let tens = ["", "X", "XX", "XXX", "XL", "L", "LX", "LXX", "LXXX", "XC"]
        let hundreds = ["", "C", "CC", "CCC", "CD", "D", "DC", "DCC", "DCCC", "CM"]
        return hundreds[n / 100 % 10] + tens[n / 10 % 10] + ones[n % 10]
    }

    static let unitFactors: [String: Int] = [
        "kilometers to meters": 1000, "meters to centimeters": 100, "kilograms to grams": 1000,
        "liters to milliliters": 1000, "hours to minutes": 60, "minutes to seconds": 60, "days to hours": 24,
    ]

    /// The expected answer recomputed from the prompt, or nil when the prompt is malformed.
    static func solve(_ task: String, _ prompt: String) -> String? {
        let nums = integers(prompt)
        switch task {
        case "add_2digit":
            guard nums.count == 2, nums.allSatisfy({ (10...99).contains($0) }) else { return nil }
            return String(nums[0] + nums[1])
        case "sub_2digit":
            guard nums.count == 2, nums[0] >= nums[1], nums.allSatisfy({ (10...99).contains($0) }) else { return nil }
            return String(nums[0] - nums[1])
        case "sort_numbers":
            guard (3...5).contains(nums.count), Set(nums).count == nums.count else { return nil }
            return nums.sorted().map(String.init).joined(separator: ", ")
        case "unit_convert":
            guard nums.count == 1, let f = unitFactors.first(where: { prompt.contains(" \($0.key).") })?.value else { return nil }
            return String(nums[0] * f)
        case "reverse_word":
            return String(quoted(prompt).reversed())
        case "uppercase":
            let q = quoted(prompt)
            return q.split(separator: " ").count == 2 ? q.uppercased() : nil
        case "reverse_upper":
            return String(quoted(prompt).reversed()).uppercased()
        case "count_vowels":
            return String(quoted(prompt).filter { "aeiou".contains($0) }.count)
        case "sentiment":
            let words = Set(quoted(prompt).lowercased().split(whereSeparator: { !$0.isLetter }).map(String.init))
            let pos = !words.isDisjoint(with: LanguageTasks.positiveWords), neg = !words.isDisjoint(with: LanguageTasks.negativeWords)
            guard pos != neg else { return nil }
            return pos ? "positive" : "negative"
        case "extract_json":
            guard let r = prompt.range(of: "Sentence: ") else { return nil }
            let words = prompt[r.upperBound...].split(whereSeparator: { !$0.isLetter }).map(String.init)
            let n = words.filter { LanguageTasks.names.contains($0) }, c = words.filter { LanguageTasks.cities.contains($0) }
            guard n.count == 1, c.count == 1 else { return nil }
            return "{\"name\": \"\(n[0])\", \"city\": \"\(c[0])\"}"
        case "capital_facts":
            let hits = LanguageTasks.countries.filter { prompt.contains($0.country) }
            return hits.count == 1 ? hits[0].capital : nil
        case "date_eu", "date_us":
            let parts = prompt.split(separator: " ").first { $0.filter { $0 == "-" }.count == 2 }
            guard let iso = parts?.trimmingCharacters(in: CharacterSet(charactersIn: ".")) else { return nil }
            let ymd = iso.split(separator: "-").map(String.init)
            guard ymd.count == 3, ymd[0].count == 4, ymd[1].count == 2, ymd[2].count == 2,
                  let y = Int(ymd[0]), let m = Int(ymd[1]), let d = Int(ymd[2]), (1...12).contains(m) else { return nil }
            var comps = DateComponents()
            (comps.year, comps.month, comps.day) = (y, m, d)
            var cal = Calendar(identifier: .gregorian)
            cal.timeZone = TimeZone(identifier: "UTC")!
            guard let date = cal.date(from: comps), cal.component(.day, from: date) == d else { return nil }  // a real date
            return task == "date_eu" ? "\(ymd[2])/\(ymd[1])/\(ymd[0])" : "\(ymd[1])/\(ymd[2])/\(ymd[0])"
        case "roman_numeral":
            guard nums.count == 1, (1...199).contains(nums[0]) else { return nil }
            return roman(nums[0])
        default:
            return nil
        }
    }

    func testEveryAnswerMatchesItsCheckerRecomputedFromThePrompt() {
        for g in Self.suite {
            var checked = 0
            for e in TaskSplit.allCases.flatMap({ g.examples($0) }) {
                XCTAssertEqual(Self.solve(g.definition.name, e.prompt), e.answer, "\(g.definition.name): \(e.prompt)")
                checked += 1
            }
            XCTAssertEqual(checked, g.train.count + 100, g.definition.name)
        }
    }

    func testCheckersCatchWrongAnswers() {
        XCTAssertNotEqual(Self.solve("add_2digit", "What is 12 + 30? Reply with the number only."), "43")
        XCTAssertEqual(Self.solve("date_us", "Convert the date 2021-03-07. Reply with the converted date only."), "03/07/2021")
        XCTAssertNil(Self.solve("date_eu", "Convert the date 2021-02-30. Reply with the converted date only."))
        XCTAssertEqual(Self.roman(149), "CXLIX")
        XCTAssertEqual(FormatTasks.romanNumeral(194), Self.roman(194))
    }

    func testSentimentIsRoughlyBalanced() throws {
        let g = try generated("sentiment")
        let pos = g.train.filter { $0.answer == "positive" }.count
        XCTAssertTrue((60...140).contains(pos), "\(pos) of 200 positive")
        XCTAssertEqual(Set(g.train.map(\.answer)), ["positive", "negative"])
    }

    func testExtractionAnswersParseAsJSONWithFixedKeyOrder() throws {
        let g = try generated("extract_json")
        for e in TaskSplit.allCases.flatMap({ g.examples($0) }) {
            let v = try JSONValue.parse(e.answer)
            XCTAssertEqual(v.objectMembers?.map(\.0), ["name", "city"])
            let name = try XCTUnwrap(v["name"]?.stringValue), city = try XCTUnwrap(v["city"]?.stringValue)
            XCTAssertEqual(e.answer, "{\"name\": \"\(name)\", \"city\": \"\(city)\"}")
            XCTAssertTrue(e.prompt.contains(name) && e.prompt.contains(city))
        }
    }

    // MARK: special tasks

    /// Same prompt form, different answers: the generators draw identical prompts from the same
    /// random state, and every date task prompt has a different answer under the other task.
    func testDatePairReallyConflicts() throws {
        let eu = try XCTUnwrap(TaskSuite.task(named: "date_eu")), us = try XCTUnwrap(TaskSuite.task(named: "date_us"))
        var r1 = TaskRNG(seed: 5, stream: "x"), r2 = TaskRNG(seed: 5, stream: "x")
        for i in 0..<50 {
            let a = eu.draw(.test, i, &r1), b = us.draw(.test, i, &r2)
            XCTAssertEqual(a.prompt, b.prompt)
            XCTAssertNotEqual(a.answer, b.answer, a.prompt)
        }
        func form(_ s: String) -> String { String(s.map { $0.isNumber ? "#" : $0 }) }
        let geu = try generated("date_eu"), gus = try generated("date_us")
        let forms = Set((geu.train + gus.train).map { form($0.prompt) })
        XCTAssertEqual(forms.count, 1, "the pair must share one prompt form: \(forms)")
        for e in geu.test + geu.train {
            XCTAssertNotEqual(Self.solve("date_us", e.prompt), e.answer, e.prompt)
        }
    }

    /// Every fact asked in val and test is taught in train, always in a phrasing train never uses.
    func testCapitalFactsAskTrainedFactsInNewPhrasings() throws {
        let g = try generated("capital_facts")
        func country(_ p: String) -> String { LanguageTasks.countries.first { p.contains($0.country) }!.country }
        func phrasing(_ p: String) -> String { p.replacingOccurrences(of: country(p), with: "{c}") }
        let trainFacts = Set(g.train.map { country($0.prompt) })
        XCTAssertEqual(trainFacts.count, LanguageTasks.countries.count, "train covers the fact base")
        let trainPhrasings = Set(g.train.map { phrasing($0.prompt) })
        for e in g.val + g.test {
            XCTAssertTrue(trainFacts.contains(country(e.prompt)))
            XCTAssertFalse(trainPhrasings.contains(phrasing(e.prompt)), e.prompt)
        }
        XCTAssertEqual(Set(g.test.map { country($0.prompt) }).count, LanguageTasks.countries.count, "test covers the fact base")
        XCTAssertTrue(Set(g.val.map { phrasing($0.prompt) }).isDisjoint(with: g.test.map { phrasing($0.prompt) }))
    }

    func testLongTailedTaskComposesTwoTrainedSkills() throws {
        let g = try generated("reverse_upper")
        XCTAssertEqual(g.train.count, 8)
        for e in g.train + g.test {
            let w = Self.quoted(e.prompt)
            XCTAssertTrue(StringTasks.words.contains(w))
            XCTAssertEqual(e.answer, String(w.reversed()).uppercased())
        }
    }

    // MARK: committed files

    /// The committed `tasks/` folder is the generator's output with default settings, byte for
    /// byte, and holds nothing else (regenerate with `lorafuse tasks generate` after a change).
    func testCommittedTasksFolderEqualsGeneratorOutput() throws {
        let dir = Self.repoRoot.appendingPathComponent("tasks")
        let expected = try TaskSuite.files()
        let onDisk = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { !$0.hasPrefix(".") }
        XCTAssertEqual(Set(onDisk), Set(expected.map(\.name)), "tasks/ holds other files than the generator writes")
        var total = 0
        for (name, contents) in expected {
            let data = try Data(contentsOf: dir.appendingPathComponent(name))
            total += data.count
            let committed = String(decoding: data, as: UTF8.self)
            if committed != contents {
                // Name the first differing line rather than dumping both files.
                let a = committed.split(separator: "\n", omittingEmptySubsequences: false)
                let b = contents.split(separator: "\n", omittingEmptySubsequences: false)
                let i = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
                XCTFail("tasks/\(name) differs from the generator at line \(i + 1): committed \(i < a.count ? String(a[i]) : "<end>"), " +
                        "generated \(i < b.count ? String(b[i]) : "<end>"); regenerate with `swift run lorafuse tasks generate`")
            }
        }
        XCTAssertLessThan(total, 1_000_000)
        let manifest = try JSONValue.parse(String(decoding: try Data(contentsOf: dir.appendingPathComponent("manifest.json")), as: UTF8.self))
        XCTAssertEqual(manifest["generatorVersion"]?.intValue, TaskSuite.generatorVersion)
        XCTAssertEqual(manifest["tasks"]?.arrayValue?.compactMap { $0["name"]?.stringValue }, TaskSuite.tasks.map(\.name))
        XCTAssertEqual(manifest["tasks"]?.arrayValue?.compactMap { $0["description"]?.stringValue }, TaskSuite.tasks.map(\.description))
    }

    func testReadManifestAndLoadOfTheCommittedSuite() throws {
        let dir = Self.repoRoot.appendingPathComponent("tasks").path
        let entries = try TaskSuite.readManifest(directory: dir)
        XCTAssertEqual(entries.map(\.name), TaskSuite.tasks.map(\.name))
        XCTAssertEqual(entries.map(\.description), TaskSuite.tasks.map(\.description))
        XCTAssertEqual(entries.map(\.longTailed), TaskSuite.tasks.map(\.longTailed))
        XCTAssertEqual(entries.first { $0.name == "date_eu" }?.conflictsWith, "date_us")
        XCTAssertEqual(entries[0].files[.test], "\(entries[0].name).test.jsonl")
        let test = try TaskSuite.load(directory: dir, task: "sentiment", split: .test)
        XCTAssertEqual(test, try generated("sentiment").test)
        XCTAssertThrowsError(try TaskSuite.readManifest(directory: dir + "/nope"))
    }

    func testScoringRuleTrimsOnly() {
        let e = TaskExample(prompt: "p", answer: "{\"name\": \"Ada\", \"city\": \"Paris\"}")
        XCTAssertTrue(e.isCorrect(reply: "  {\"name\": \"Ada\", \"city\": \"Paris\"}\n"))
        XCTAssertFalse(e.isCorrect(reply: "{\"name\":\"Ada\", \"city\": \"Paris\"}"))
        XCTAssertFalse(TaskExample(prompt: "p", answer: "MAERC").isCorrect(reply: "maerc"))
    }

    // MARK: CLI

    func testCLIGenerateWritesTheSameFilesAsTheLibrary() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lf-tasks-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: tmp) }
        let r = try runCLI(["tasks", "generate", "--out", tmp.path, "--seed", "3", "--train", "12", "--val", "4",
                            "--test", "6", "--long-tail-train", "2", "--json"])
        XCTAssertEqual(r.code, 0, r.err)
        let summary = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
        XCTAssertEqual(summary["tasks"] as? [String], TaskSuite.tasks.map(\.name))
        for (name, contents) in try TaskSuite.files(config: TaskSuiteConfig(seed: 3, train: 12, val: 4, test: 6, longTailTrain: 2)) {
            XCTAssertEqual(try String(contentsOf: tmp.appendingPathComponent(name), encoding: .utf8), contents, name)
        }
        XCTAssertEqual(try TaskExample.readJSONL(path: tmp.appendingPathComponent("reverse_upper.train.jsonl").path).count, 2)

        XCTAssertEqual(try runCLI(["tasks", "generate", "--out", tmp.path, "--test", "0"]).code, 1)
        let tooMany = try runCLI(["tasks", "generate", "--out", tmp.path, "--train", "1000"])
        XCTAssertEqual(tooMany.code, 1)
        XCTAssertTrue(tooMany.err.contains("ask for fewer"), tooMany.err)
    }

    func runCLI(_ args: [String]) throws -> (code: Int32, out: String, err: String) {
        let r = try CLITests.run(args)
        return (r.code, r.stdout, r.stderr)
    }
}
