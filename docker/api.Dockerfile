# The HTTP API: FastAPI + Redis client, no torch. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t bdia-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BDIA_LOG_FORMAT=json
WORKDIR /srv/bdia
COPY pyproject.toml README.md ./
COPY bdia ./bdia
COPY app ./app
COPY jobqueue ./jobqueue
COPY workers ./workers
# The `api` extra only: the engine's torch/diffusers are never installed in this image.
RUN pip install ".[api]" && useradd --system --uid 10001 bdia
USER bdia
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
ENTRYPOINT ["bdia"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
