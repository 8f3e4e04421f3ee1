# Everyday commands. `make help` lists them. COMPOSE files: docker-compose.yml (production)
# and docker-compose.dev.yml (development); API_KEYS, REDIS_PASSWORD and MONGO_PASSWORD must be
# set in the shell for production.
COMPOSE ?= docker compose
PROD = $(COMPOSE) -f docker-compose.yml
DEV = $(COMPOSE) -f docker-compose.dev.yml
WORKERS ?= 1

.PHONY: help dev test dev-up dev-down dev-logs prod-up prod-down build logs logs-api logs-worker status restart restart-api restart-worker scale worker-local api-local

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

dev: ## run everything locally, no containers (API, worker, private Redis and MongoDB)
	./scripts/dev
test: ## the gate: format, lint, types, the whole test suite
	./scripts/test
dev-up: ## start the development stack (source mounted, reloaded on change)
	$(DEV) up -d --build
dev-down: ## stop the development stack
	$(DEV) down
dev-logs: ## follow the development stack's logs
	$(DEV) logs -f
prod-up: ## start production (API_KEYS=... REDIS_PASSWORD=... MONGO_PASSWORD=... make prod-up WORKERS=3)
	$(PROD) up -d --scale worker=$(WORKERS)
prod-down: ## stop production (volumes are kept)
	$(PROD) down
build: ## build the image
	$(PROD) build
logs: ## follow the logs of every service
	$(PROD) logs -f
logs-api: ## follow the API's logs
	$(PROD) logs -f app
logs-worker: ## follow the workers' logs
	$(PROD) logs -f worker
status: ## containers, their health, then queues, workers and recent failures
	$(PROD) ps
	$(PROD) exec app python -m service status
restart: ## restart the API and the workers
	$(PROD) restart app worker
restart-api: ## restart the API only (workers keep running)
	$(PROD) restart app
restart-worker: ## restart the workers only (the API keeps accepting jobs)
	$(PROD) restart worker
scale: ## run WORKERS worker containers (make scale WORKERS=5)
	$(PROD) up -d --no-recreate --scale worker=$(WORKERS) worker
worker-local: ## run a worker on this machine, no containers (uses your environment's Redis)
	WORKER_MODE=true .venv/bin/python -m service
api-local: ## run the API on this machine, no containers
	.venv/bin/python -m service
