# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CORE_STAMP := $(VENV)/.installed-core
STAMP := $(VENV)/.installed

.PHONY: setup setup-core test demo reproduce bench clean

# make test: the core and every extra (diffusers, peft, transformers, accelerate, tensorboard) so that their tests run
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,all]'
	touch $(STAMP) $(CORE_STAMP)

# make demo: the core alone (torch, POT, scikit-learn's digits, matplotlib); a full install serves it too
setup-core: $(CORE_STAMP)

$(CORE_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(CORE_STAMP)

test: setup
	@$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected - failing" >&2; exit 1; fi; exit $$rc

demo: setup-core
	$(VENV)/bin/flowsteer demo

reproduce: setup
	$(PY) benchmarks/reproduce.py $(if $(WITH_BASELINES),--with-baselines)

bench: setup
	$(PY) benchmarks/bench_pretrain_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
