"""Real parts for tests: Ray clusters started with ``ray start``, CastRay servers, waiting."""
