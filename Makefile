.PHONY: run test bench

run:  ## run the service on SQLite with a development key and printed tokens
	./scripts/run

test:  ## run every test (SQLite and PostgreSQL, OpenBao, SMTP servers)
	./scripts/test

bench:  ## run the benchmarks and print their figures
	./scripts/bench
