"""How a transfer's bytes travel: ``stream`` (TCP between endpoints, the default) and
``object_store`` (chunks through Ray's object store; between clusters through the agents)."""
