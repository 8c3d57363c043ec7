# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo reproduce bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,all]'
	touch $(STAMP)

test: setup
	@$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected - failing" >&2; exit 1; fi; exit $$rc

demo: setup
	$(VENV)/bin/flowsteer demo

reproduce: setup
	$(PY) benchmarks/reproduce.py

bench: setup
	$(PY) benchmarks/bench_pretrain_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
