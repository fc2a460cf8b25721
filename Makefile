.PHONY: run test fuzz bench lock

run:  ## run the service on SQLite with a development key and printed tokens (BIND=HOST:PORT to move it)
	./scripts/run $(if $(BIND),--bind $(BIND))

test:  ## run every test (SQLite and PostgreSQL, OpenBao, SMTP servers), the same cases every time
	./scripts/test

fuzz:  ## random exploration of the API from a printed seed (SEED=..., EXAMPLES=... to repeat or widen)
	SEED=$(SEED) EXAMPLES=$(EXAMPLES) ./scripts/fuzz

bench:  ## run the benchmarks and print their figures
	./scripts/bench

lock:  ## pin the versions make test and CI install (tests/constraints.txt), from ./.venv
	bash -c '. scripts/venv.sh && use_venv test,bench && exec "$$PYTHON" scripts/lock'
