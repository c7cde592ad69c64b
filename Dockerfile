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
USER nobody
ENTRYPOINT []
CMD ["esflow", "--help"]
