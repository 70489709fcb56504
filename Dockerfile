# Image for the pipeline's Python processes (worker, sync, gateway, CLI); Kafka, Redis,
# PostgreSQL and Prometheus use their official images. Python packages come only from
# uv.lock (exact versions and hashes), as in `make setup`.
FROM python:3.11-slim
WORKDIR /app
ENV UV_PROJECT_ENVIRONMENT=/app/.venv UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy PATH=/app/.venv/bin:$PATH
COPY infra/uv.txt infra/uv.txt
RUN pip install --no-cache-dir --no-deps --require-hashes -r infra/uv.txt
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --group build --no-install-project --no-cache
COPY schemas schemas
COPY producers producers
COPY streams streams
COPY consumers consumers
COPY infra infra
COPY dnc dnc
RUN uv pip install --python /app/.venv/bin/python --no-deps --no-build-isolation --no-cache . \
    && useradd --system --uid 10001 dnc \
    && mkdir -p /var/lib/dnc && chown dnc /var/lib/dnc
# The worker's table (RocksDB) and Faust's files: mount a volume here (DNC_DATA_DIR).
ENV DNC_DATA_DIR=/var/lib/dnc
USER dnc
ENTRYPOINT ["dnc"]
CMD ["worker"]
