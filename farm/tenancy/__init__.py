"""Sharing a farm (issue 23), pure: API keys (their format, the HMAC the ledger keeps instead of
the key, constant-time checks), scopes, and what a remote client may name in a submission (no path
on the server's machine: its uploads, its own jobs and batches, the s3:// prefixes the operator
allowed its tenant).

May import: ``farm.errors``, ``farm.models`` (names). Never the ledger, storage, fleet, CLI or
service (import-linter contracts in pyproject.toml).
"""
