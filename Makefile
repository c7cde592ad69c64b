# The two set-up commands of README.md. Each installs what it needs first (ops/bootstrap.sh).
.PHONY: demo test bootstrap down

bootstrap:
	@ops/bootstrap.sh

# The main job: the local stack, the topic catalogue, and a status report.
demo: bootstrap
	.venv/bin/esflow stack up
	.venv/bin/esflow topics apply
	.venv/bin/esflow stack status

# Unit, integration and e2e tests plus lint/types/architecture checks, against real servers.
test: bootstrap
	.venv/bin/python -m pytest -q

down:
	.venv/bin/esflow stack down
