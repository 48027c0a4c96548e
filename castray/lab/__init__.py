"""A many-host lab on one Linux machine (root): network namespaces on one bridge, each a host
with its own shaped link and its own Ray node, and CastRay serving from host 1.

Used by ``castray lab``, by the tests marked ``lab`` and by ``benchmarks/lab_broadcast.py``.
"""
