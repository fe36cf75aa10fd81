"""Operator tooling, never imported by a service: the CLI (``cli``, one module per command group), the embedded
stack's supervisor (``stack``), child processes (``procs``), the embedded broker (``broker``), the demo (``demo``),
model export (``export``) and how the tools print what the platform recorded (``render``).
"""

__all__ = ["broker", "cli", "demo", "export", "procs", "render", "stack"]
