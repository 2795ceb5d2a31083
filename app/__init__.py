"""The bdia HTTP service: a torch-free FastAPI front end over a Redis Streams job queue.

Nothing in this package imports torch, diffusers or the engine: the workers (``workers/``) do
the numerics, and the two sides meet only in Redis, through ``app.keys`` and ``app.jobs``.
"""
