"""The shared delivery machinery: endpoint declarations, payload building, chunking, HTTP, retries, limits.

Vendors declare endpoints (fields, limits, auth, response parsing); everything else is written once here.
"""
