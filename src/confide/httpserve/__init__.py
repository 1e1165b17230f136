"""The hardened HTTP/1.1 serving layer shared by the CAS and the ledger's servers: uvicorn on
uvloop with httptools, connection limits (in total and per client) applied before a TLS
handshake, bounded and timed request heads and bodies (:mod:`confide.httpserve.limits`),
per-client token buckets (:mod:`confide.httpserve.ratelimit`), and a server on a bound
socket that runs in the foreground or in a thread (:mod:`confide.httpserve.server`)."""
