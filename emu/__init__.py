"""emu: a Kubernetes pod-network emulator that works on raw frames.

Layers point down only: wire <- net <- flannel/k8s <- scenario <- cli.
"""

__version__ = "0.1.0"
