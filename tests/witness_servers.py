"""Real C2SP witnesses in the test process: ``WitnessServer`` threads on 127.0.0.1 that know
one log key (``cas serve --witness URL=VKEY`` and ``request_cosignatures`` talk to them)."""

from __future__ import annotations

from pathlib import Path

from confide.ledger.note import SIG_TYPE_COSIGNATURE_V1, NoteSigner, NoteVerifier
from confide.ledger.witness import Witness
from confide.ledger.witness_http import WitnessServer


class Witnesses:
    """``n`` witness servers (``w0.example``...) whose state files are in ``directory``."""

    def __init__(self, directory: Path, log_key: NoteVerifier, n: int) -> None:
        self.witnesses = [
            Witness(NoteSigner.generate(f"w{i}.example", SIG_TYPE_COSIGNATURE_V1), directory / f"w{i}.json",
                    {log_key.name: log_key})
            for i in range(n)
        ]  # fmt: skip
        self.servers = [WitnessServer(w, ("127.0.0.1", 0)) for w in self.witnesses]
        for server in self.servers:
            server.serve_in_thread()
        self.origin = log_key.name

    @property
    def specs(self) -> tuple[tuple[str, NoteVerifier], ...]:
        """(URL, verifier key) of each witness."""
        return tuple((s.url, w.verifier) for s, w in zip(self.servers, self.witnesses, strict=True))

    def args(self, quorum: int | None = None) -> tuple[str, ...]:
        """``cas serve`` arguments naming every witness (and ``--witness-quorum``)."""
        args: list[str] = []
        for url, key in self.specs:
            args += ["--witness", f"{url}={key.vkey}"]
        if quorum is not None:
            args += ["--witness-quorum", str(quorum)]
        return tuple(args)

    def size(self, i: int = 0) -> int:
        """The size witness ``i`` last cosigned (0: none)."""
        latest = self.witnesses[i].latest(self.origin)
        return 0 if latest is None else latest.size

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
