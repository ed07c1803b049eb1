"""Clients of a remote farm (issue 23): ``remote.RemoteFarm``, the library API over HTTP (httpx is
imported here and nowhere else). May import: ``farm.errors``, ``farm.jobs``, ``farm.results``' pure
presentation (progress, gallery). Never the ledger, the broker, the store or the service."""
