"""psr: Process-based Self-Rewarding Language Models, as a small typed library.

The paper's concepts live in this package's modules; the study runner in `psr.study`, the
generation engines in `psr.engines`, the tools in `psr.tools` (see ARCHITECTURE.md).
"""

__version__ = "0.1.0"
