# The esflow image used by the `pipeline` profile of docker-compose.yml.
# PYTHON_BASE: any image with Python 3.11 and pip on PATH; ops/images/build.sh passes its offline
# esflow-local/python:3.11 (Debian's Python), users with a registry keep python:3.11-slim.
# Metadata first, one COPY (.dockerignore admits only what the package needs), then the install: each
# instruction is a layer, and with the vfs storage driver each layer copies the whole tree.
ARG PYTHON_BASE=python:3.11-slim
FROM ${PYTHON_BASE}
WORKDIR /app
# The Avro contract is read from the schema directory at run time (not packaged into the wheel).
ENV ESFLOW_SCHEMA_DIR=/app/schemas
ENTRYPOINT []
CMD ["esflow", "--help"]
COPY . ./
RUN pip install --no-cache-dir --disable-pip-version-check -q . && rm -rf build
USER nobody
