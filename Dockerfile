# The esflow image used by the `pipeline` profile of docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY producers ./producers
COPY processors ./processors
COPY projections ./projections
COPY ops ./ops
COPY schemas ./schemas
RUN pip install --no-cache-dir .
# The Avro contract is read from the schema directory at run time (not packaged into the wheel).
ENV ESFLOW_SCHEMA_DIR=/app/schemas
USER nobody
ENTRYPOINT []
CMD ["esflow", "--help"]
