"""What a submission may name, by who submits it. The operator (the local CLI and library) may name
anything this machine reads: paths, ``s3://`` objects, ``job:ID``. A remote tenant names no path on
the server's machine: only its uploads (``input:<sha256>``), its own jobs and batches (``job:ID``,
``batch:ID``; another tenant's answer "no job", as an unknown one does) and ``s3://`` objects under
the prefixes the operator allowed its tenant. Pure: the checks a reader applies before it reads."""

from __future__ import annotations

from dataclasses import dataclass

from farm.errors import InputError

UPLOAD_HINT = "upload it (POST /v1/inputs) and name input:<sha256>"


@dataclass(frozen=True)
class Policy:
    tenant: str = "local"
    remote: bool = False  # a client over the network: no server paths
    s3_prefixes: tuple[str, ...] = ()  # s3://bucket/prefix/ this tenant may read

    @property
    def scope(self) -> str | None:
        """The tenant to filter the ledger by (None: the operator sees every tenant)."""
        return self.tenant if self.remote else None

    def check_image(self, field: str, ref: str) -> None:
        """Refuse what this submitter may not name as an image (before anything is read)."""
        if ref.startswith(("job:", "input:")):
            return
        if ref.startswith("s3://"):
            self.check_s3(field, ref)
            return
        if self.remote:
            raise InputError(field, f"{_short(ref)}: a remote client names no path on the server; {UPLOAD_HINT}")

    def check_s3(self, field: str, uri: str) -> None:
        if not self.remote:
            return
        if ".." in uri.split("/") or not any(uri.startswith(p if p.endswith("/") else p + "/")
                                             for p in self.s3_prefixes):
            allowed = ", ".join(self.s3_prefixes) or "none"
            raise InputError(field, f"{_short(uri)}: not under an s3:// prefix allowed for tenant {self.tenant} "
                                    f"(allowed: {allowed})")

    def check_dataset(self, source: str) -> None:
        if source.startswith(("batch:", "dataset:")):
            return
        if source.startswith("s3://"):
            self.check_s3("data", source)
            return
        if self.remote:
            raise InputError("data", f"{_short(source)}: a remote client names no directory on the server; "
                                     "upload the dataset or name batch:ID or an allowed s3:// prefix")


OPERATOR = Policy()


def _short(ref: str) -> str:
    return ref if len(ref) <= 80 else ref[:77] + "..."
