"""Training: the shared engine (``engine``), run configuration (``config``), control channel,
schedule, step metrics, and the trainers built on it (``simple``, ``compressed``, ``rlhf``).

Kept import-light on purpose: ``core.train.config`` must load without torch (the CLI reads run
configs before deciding to train).
"""
