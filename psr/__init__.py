"""psr: Process-based Self-Rewarding Language Models, as a small typed library.

One module per concept (see ../shared/design.md in the team's notes, mirrored in README).
"""

__version__ = "0.1.0"
