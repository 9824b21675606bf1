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

test:
	bash scripts/setup.sh
	swift build --build-tests
	swift test --skip-build 2>&1 | tee .build/test.log; exit $${PIPESTATUS[0]}

# The full suite report: every method on the 14 tasks (about an hour from an empty cache; see scripts/report.sh).
report: build
	bash scripts/report.sh

bench: build
	bash scripts/bench.sh

clean:
	rm -rf .build out

adapters:
	swift build -c release
	bash scripts/train_adapters.sh
