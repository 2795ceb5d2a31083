"""bdia workers: each loads one model and runs the jobs queued for it (see ``workers.worker``)."""
