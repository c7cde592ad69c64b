# The two set-up commands of README.md. Each installs what it needs first (ops/bootstrap.sh).
.PHONY: demo test bootstrap down

bootstrap:
	@ops/bootstrap.sh

# The main job: stack, topics, migrations, processor, projections, a demo workload, a read-model summary.
demo: bootstrap
	.venv/bin/esflow demo

# Unit, integration and e2e tests plus lint/types/architecture checks, against real servers.
test: bootstrap
	.venv/bin/python -m pytest -q

down:
	.venv/bin/esflow stack down
