"""Size profiles, hardware probe, memory estimate, profile picker and the setup wizard.

Modules: ``catalog`` (size profiles), ``hardware`` / ``fake_nvml`` / ``sampler`` (what the machine
has, live), ``estimate`` (memory), ``pick`` (which profile fits), ``settings`` (the saved
choice), ``wizard`` (detect, recommend, choose, save). Depends on ``core`` only.
"""
