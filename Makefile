# The two entry points the README gives: `make demo` (main job) and `make test` (whole suite).
SHELL := /bin/bash
export PATH := /opt/swift/usr/bin:$(PATH)

.PHONY: demo test build bench setup clean adapters

setup:
	bash scripts/setup.sh

build: setup
	swift build -c release

demo: build
	bash scripts/demo.sh

# The whole suite on the debug build, then the fuzz and parity tests again on the release build
# (-O, what `make build` gives users): the optimiser must not change what they check.
test:
	bash scripts/setup.sh
	swift build --build-tests
	swift test --skip-build 2>&1 | tee .build/test.log; test $${PIPESTATUS[0]} -eq 0
	swift build -c release --build-tests
	swift test -c release --skip-build --filter 'FuzzTests|ParityTests' 2>&1 | tee .build/test-release.log; exit $${PIPESTATUS[0]}

bench: build
	bash scripts/bench.sh

clean:
	rm -rf .build out

adapters:
	swift build -c release
	bash scripts/train_adapters.sh
