"""The queue contract shared by the API (``bdia.app``) and the workers (``bdia.workers``).

The Redis key layout (``keys``), the job record and its state machine (``jobs``, ``states``), the
latent-pair cache and its key (``cache``), settings (``settings``), statistics (``stats``), logging
(``logs``) and the local-stack harness (``stack``). Torch-free and FastAPI-free: the two sides of
the service meet only here and in Redis.
"""
