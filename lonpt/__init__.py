"""LONPT: Aeron's domain-cycled training pipeline (training.md §5), built on ``core.train``.

Modules, one idea each (importing this package stays torch-free; import the modules you need):

* :mod:`lonpt.config`  — ``LonptConfig`` (every adapter key), presets ``smoke|light|standard|heavy``
* :mod:`lonpt.akap`    — domain assignment, per-domain split, ordering, token estimates
* :mod:`lonpt.pncec`   — the compression/stabilize/expansion/settle learning-rate phases
* :mod:`lonpt.act`     — micro-batch control towards a memory target, OOM back-off
* :mod:`lonpt.hpf`     — ``HPFLinear`` low-rank layers and the reversible rewrite pass
* :mod:`lonpt.rails`   — non-finite skips, spike rollback, update-norm monitor
* :mod:`lonpt.log`     — the seed-style run log, formatted from events
* :mod:`lonpt.trainer` — ``LonptTrainer``, run with ``aeron-tui train lonpt --set preset=NAME``
"""
