"""minidock: a container engine (images, logs, the Docker verbs) and an OCI runtime
(namespaces, cgroups, pivot_root) for Linux, written so that its code explains containers.

Start reading at ``engine.py`` (what ``minidock run`` does), then ``runtime/`` (how a
bundle becomes a process in new namespaces), ``syscalls.py`` and the ``cgroups`` package.
"""

__version__ = "0.1.0"
