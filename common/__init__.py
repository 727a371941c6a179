"""Code shared by the edge clients and the server: transform, optimizer, models, data.

Nothing in this package imports Flower; Flower types live in ``client/`` and ``server/``.
"""
