# indexflow — every target bootstraps .venv itself when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORPUS ?= data/corpus
TABLE  ?= corpus
DB     ?= .indexflow/lancedb
Q      ?= how do I parse command line arguments
K      ?= 5

.PHONY: help install index query plan test bench mutation emulator clean

help:
	@echo "make index            index the sample corpus in data/ (emulator unless GEMINI_API_KEY is set)"
	@echo "make query Q='...'    search the index"
	@echo "make plan             what a run would embed, cost and take, without calling the API"
	@echo "make test             the test suite (real emulator, LanceDB and Prefect server)"
	@echo "make bench            benchmarks that print figures"
	@echo "make mutation         mutation score of the guarantee-carrying modules (<= 55 min; MODULES=, BUDGET= minutes)"
	@echo "make emulator         run the Gemini API emulator on 127.0.0.1:8765"
	@echo "make server           a local Prefect server and UI on 127.0.0.1:4200 (PREFECT_PORT=N for another)"
	@echo "make pool deploy      the work pool and the deployments from prefect.yaml (configured Prefect API, else local)"
	@echo "make worker           a process worker (run it in the repo root)"
	@echo "make run-deployment   index now through the on-demand deployment"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,interop]'
	@touch $(STAMP)

install: $(STAMP)

index: $(STAMP)
	$(BIN)/indexflow index $(CORPUS) --db $(DB) --table $(TABLE)
	$(BIN)/indexflow query "$(Q)" --db $(DB) --table $(TABLE) -k 3

query: $(STAMP)
	$(BIN)/indexflow query "$(Q)" --db $(DB) --table $(TABLE) -k $(K)

plan: $(STAMP)
	$(BIN)/indexflow plan $(CORPUS) --db $(DB) --table $(TABLE)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Mutation testing (TESTING.md): cosmic-ray in its own venv, the tests in .venv. Not part of `make test`.
MVENV  := .venv-mutation
MSTAMP := $(MVENV)/.installed
MODULES ?=
BUDGET  ?=
ARGS    ?=

$(MSTAMP): pyproject.toml constraints.txt
	@test -x $(MVENV)/bin/python || $(PYTHON) -m venv $(MVENV)
	$(MVENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt cosmic-ray
	@touch $(MSTAMP)

mutation: $(STAMP) $(MSTAMP)
	nice -n 19 $(MVENV)/bin/python tools/mutation.py $(if $(BUDGET),--budget $(BUDGET)) $(ARGS) $(MODULES)

emulator: $(STAMP)
	$(BIN)/indexflow emulator --host 127.0.0.1 --port 8765

clean:
	rm -rf .indexflow .pytest_cache .mutation

# --- Run as a service (see README "Run as a service") ---------------------------------------
PREFECT_PORT ?= 4200
POOL         ?= indexflow-process
DEPLOYMENT   ?= on-demand
LOCAL_API     = http://127.0.0.1:$(PREFECT_PORT)/api
# The API Prefect is configured with: an exported PREFECT_API_URL (it wins over the profile),
# else the active profile's (`prefect config set`, `prefect cloud login`); empty when none.
# Prefect is asked only without the variable, once, on first use.
CONFIGURED_API = $(or $(PREFECT_API_URL),$(eval CONFIGURED_API := $(shell $(BIN)/python -c \
  'from prefect.settings import get_current_settings as s; print(s().api.url or "")' 2>/dev/null))$(CONFIGURED_API))
# Where pool/deploy/worker/run-deployment go: `make X PREFECT_PORT=N` means the local server on N;
# otherwise the configured API, and the local server only when nothing is configured.
SERVICE_API  = $(if $(filter command line,$(origin PREFECT_PORT)),$(LOCAL_API),$(or $(CONFIGURED_API),$(LOCAL_API)))
PREFECT      = PREFECT_API_URL=$(SERVICE_API) $(BIN)/prefect

.PHONY: server pool deploy worker run-deployment

# The UI asks /ui-settings where the API is; Prefect answers PREFECT_API_URL or host:4200, not
# --port, so the UI is told this server's own address. --no-prompt: no offer to edit the profile.
server: $(STAMP)
	PREFECT_SERVER_UI_API_URL=$(LOCAL_API) $(BIN)/prefect --no-prompt server start --host 127.0.0.1 --port $(PREFECT_PORT)

pool: $(STAMP)
	$(PREFECT) work-pool create $(POOL) --type process --overwrite

deploy: $(STAMP)
	$(PREFECT) --no-prompt deploy --all

worker: $(STAMP)
	$(PREFECT) worker start --pool $(POOL)

run-deployment: $(STAMP)
	$(PREFECT) deployment run 'index-corpus/$(DEPLOYMENT)' --param corpus=$(CORPUS) --param table=$(TABLE) --param db_uri=$(DB) --watch
