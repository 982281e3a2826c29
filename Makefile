# buildmaster: day-to-day commands. `make help` lists them.
#
# The stack targets are thin wrappers around deploy/stack.sh, which reads
# BUILDMASTER_SETTINGS (default deploy/example/settings.yaml),
# BUILDMASTER_RUN_DIR (default run/) and BUILDMASTER_BIN_DIR (default
# target/release); see the top of deploy/stack.sh.

SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo

# Services the tests use; deploy/services.sh ensure provides them on this
# machine. Override any of them on the command line or in the environment.
BUILDMASTER_TEST_DATABASE_URL ?= postgres://buildmaster:buildmaster@127.0.0.1:5432/postgres
BUILDMASTER_TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/%2f
BUILDMASTER_TEST_REDIS_URL ?= redis://127.0.0.1:6379/
export BUILDMASTER_TEST_DATABASE_URL BUILDMASTER_TEST_AMQP_URL BUILDMASTER_TEST_REDIS_URL

.PHONY: help update-master stop-master restart-master status checkconfig \
	upgrade-master logs services test fmt lint update-deps

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## / { printf "  make %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

update-master: ## check config, migrate, start the stack, reload it (SIGHUP), roll out a new binary
	deploy/stack.sh up

stop-master: ## stop the masters and HAProxy started by update-master
	deploy/stack.sh down

restart-master: ## check config, migrate, restart the masters one at a time
	deploy/stack.sh restart

status: ## show what runs and whether it is healthy
	deploy/stack.sh status

checkconfig: ## build, then validate the configuration without starting anything
	deploy/stack.sh checkconfig

upgrade-master: ## build, then create the database and apply migrations
	deploy/stack.sh upgrade-master

logs: ## follow the stack's logs
	deploy/stack.sh logs

services: ## install and start PostgreSQL, RabbitMQ, Redis (and haproxy, and what the tests use)
	deploy/services.sh ensure --tests

# The integration tests spawn target/debug/buildmaster and
# target/debug/buildmaster-worker, so the binaries are built first.
test: ## run every test against the real services
	deploy/services.sh ensure --tests
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --workspace"; \
		$(CARGO) nextest run --workspace; \
	else \
		echo "cargo-nextest not installed; $(CARGO) test --workspace"; \
		$(CARGO) test --workspace; \
	fi

fmt: ## format the code
	$(CARGO) fmt --all

lint: ## layering and ARCHITECTURE.md checks, rustfmt check, clippy with warnings as errors
	tools/check-layers.sh
	tools/check-architecture.sh
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

update-deps: ## update Cargo.lock on a branch update-deps-DATE, run lint and tests, commit there
	deploy/update-deps.sh
