# Image for the pipeline's Python processes (worker, CLI). Kafka and Redis use official images.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY producers producers
COPY streams streams
COPY consumers consumers
COPY infra infra
COPY dnc dnc
RUN pip install --no-cache-dir . && useradd --system --uid 10001 dnc
USER dnc
ENTRYPOINT ["dnc"]
CMD ["worker"]
