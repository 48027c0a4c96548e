"""Real parts for tests and benchmarks: Ray clusters started with ``ray start`` (another
release, another user), CastRay servers on free ports, transfers driven through the REST API,
and waiting on a condition with a deadline."""
