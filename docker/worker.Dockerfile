# A GPU worker: the CUDA build of PyTorch comes from the base image and is kept as is.
#   docker build -f docker/worker.Dockerfile -t bdia-worker .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BDIA_LOG_FORMAT=json HF_HOME=/models/huggingface
WORKDIR /srv/bdia
COPY pyproject.toml README.md ./
COPY bdia ./bdia
COPY app ./app
COPY jobqueue ./jobqueue
COPY workers ./workers
# torch is already in the base image and satisfies the engine extra; pip must not replace it.
RUN python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && pip install ".[worker]" \
 && python -c "import torch; assert torch.version.cuda, 'the CUDA build of torch was replaced'" \
 && useradd --system --uid 10001 bdia && mkdir -p /models && chown bdia /models
USER bdia
# Health is the worker's heartbeat in Redis: docker-compose.yml checks it (it knows the Redis URL).
ENTRYPOINT ["bdia"]
CMD ["worker"]
