# A GPU worker: the CUDA build of PyTorch comes from the base image and is kept as is.
#   docker build -f docker/worker.Dockerfile -t bdia-worker .
# Its torch must meet every dependency's floor: transformers 5 disables torch < 2.6 (the worker would
# exit at start), and pyproject.toml's engine extra says so too (tests/deploy/test_deploy.py checks the tag).
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BDIA_LOG_FORMAT=json HF_HOME=/models/huggingface
WORKDIR /srv/bdia
COPY pyproject.toml README.md ./
COPY bdia ./bdia
COPY app ./app
COPY jobqueue ./jobqueue
COPY workers ./workers
COPY docker/worker_healthcheck.py ./
# torch is already in the base image and meets the engine extra's floor: the constraint keeps pip from
# replacing it, and the build fails here (not at start) if transformers would refuse it.
# sentencepiece and protobuf: SD 3's and Flux's T5 tokenizer from a folder that ships only spiece.model
# (the released repositories also have tokenizer.json, which the tokenizers library reads without them).
RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch.txt \
 && pip install -c /tmp/torch.txt ".[worker]" sentencepiece protobuf \
 && python -c "import diffusers, transformers, tokenizers, sentencepiece, google.protobuf, accelerate" \
 && python -c "from diffusers import StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline" \
 && python -c "import torch; assert torch.version.cuda, 'the CUDA build of torch was replaced'" \
 && python -c "from transformers.utils import is_torch_available as ok; assert ok(), 'transformers refuses this torch'" \
 && useradd --system --uid 10001 --create-home bdia \
 && mkdir -p "$HF_HOME" && chown -R bdia /models
# The model cache is created (and owned by bdia) in the image, so a fresh named volume mounted at
# $HF_HOME starts with that ownership and the worker can fill it.
USER bdia
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "/srv/bdia/worker_healthcheck.py"]
ENTRYPOINT ["bdia"]
CMD ["worker"]
