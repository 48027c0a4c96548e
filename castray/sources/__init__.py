"""Origins: files that start outside the cluster (S3, HTTP(S)), fetched once by one endpoint.

``policy`` says which URLs may be fetched (the SSRF guard) and how a URL is shown; ``origins``
reads an object's ranges from S3 or HTTP behind one small interface; ``fetch`` writes an
object into an endpoint's storage with parallel ranged reads, checking it as it arrives.
"""
