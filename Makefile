# The two entry points of the README. Both install what they need first (idempotent).
.PHONY: setup demo test bench clean-demo deb

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	bash scripts/test.sh

bench: setup
	bash scripts/bench-peers.sh
	bash bench/run-all.sh

clean-demo:
	bash scripts/demo.sh --clean

deb:
	bash scripts/deb.sh
