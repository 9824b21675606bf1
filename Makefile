# The two entry points the README gives: `make demo` (main job) and `make test` (whole suite).
SHELL := /bin/bash
export PATH := /opt/swift/usr/bin:$(PATH)

.PHONY: demo test build bench setup clean adapters report

setup:
	bash scripts/setup.sh

build: setup
	swift build -c release

demo: build
	bash scripts/demo.sh

# The whole suite on the debug build, then the fuzz and parity tests again on a release build
# (-O, as `make build` gives users, plus -enable-testing for the tests' @testable imports; in its
# own scratch directory so it does not rebuild over `make build`'s): the optimiser must not
# change what they check.
RELEASE_TESTS := .build-release-tests
test:
	bash scripts/setup.sh
	swift build --build-tests
	swift test --skip-build 2>&1 | tee .build/test.log; test $${PIPESTATUS[0]} -eq 0
	swift build -c release --build-tests -Xswiftc -enable-testing --scratch-path $(RELEASE_TESTS)
	swift test -c release --skip-build --scratch-path $(RELEASE_TESTS) --filter 'FuzzTests|ParityTests' 2>&1 \
		| tee .build/test-release.log; exit $${PIPESTATUS[0]}

# The full suite report: every method on the 14 tasks (about an hour from an empty cache; see scripts/report.sh).
report: build
	bash scripts/report.sh

bench: build
	bash scripts/bench.sh

clean:
	rm -rf .build $(RELEASE_TESTS) out

adapters:
	swift build -c release
	bash scripts/train_adapters.sh
