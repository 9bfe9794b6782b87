"""The learning engine: model loading, capture, the QF solve and low-rank deltas.

No database and no terminal here (DESIGN.md §2). Import submodules directly, e.g.
``from memory.qf import qf_solve``; nothing heavy happens at import time.
"""
