"""The agent: the Ray driver process CastRay runs for each connected cluster.

Nothing here imports ``castray.server``; the server starts ``python -m castray.agent``.
"""
