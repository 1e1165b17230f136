"""CLI: ``confide cas``, ``confide identity``, ``confide policy`` and ``confide run``.

Clients read the CAS location from the variables in ``client.env`` (``source DIR/client.env``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from confide.cas import answer
from confide.cas.sealing import SEAL_PROVIDERS
from confide.clitypes import (
    MIN_TCB_EVAL_NUMBER,
    pcs_tcb_eval_number_option,
    pcs_update_option,
    tcb_recovery_grace_option,
)
from confide.errors import ConfideError, UsageError, WaitStoppedError
from confide.fsutil import read_small_file
from confide.httpserve.options import reload_interval
from confide.identity import Identity, load_identity
from confide.termsafe import printable

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from confide.runtime.nvidia import GpuQuoteProvider
    from confide.runtime.run import Launch
    from confide.sim.measure import Measurement

__all__ = ["cas", "identity", "policy", "run"]

_PATH = click.Path(path_type=Path)
MAX_SIM_KEY_FILE = 1 << 20  # the simulated platform key (PEM), as Cas.attested reads its sim_key
_IDENTITY_HELP = "Your identity file (`confide identity create --out FILE`, mode 0600): signs the request."
_TEE_CHOICES = (
    "tdx",
    "sev-snp",
    "sgx-gramine",
    "az-vtpm",
)  # confide.cas.server.TEE_CHOICES (imported lazily)
REVOCATION_REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)  # confide.cas.crl.REASONS (imported lazily), RFC 5280 §5.3.1


@click.group()
def cas() -> None:
    """Run or inspect a Configuration and Attestation Service."""


@cas.command("serve")
@click.option("--data-dir", type=_PATH, required=True, help="State directory (keys, database, client.env).")
@click.option(
    "--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT (port 0: any free port)."
)
@click.option("--dev", is_flag=True, help="Development: enable the SIMULATED TEE (never in production).")
@click.option("--db", "db_url", help="Database URL (default: SQLite in --data-dir; postgresql://...).")
@click.option("--collateral", help="DCAP collateral source for SGX/TDX evidence (file, directory or URL).")
@click.option("--min-tcb-eval-number", "min_tcb_eval", type=MIN_TCB_EVAL_NUMBER, metavar="N|auto",
              help="Refuse SGX/TDX evidence verified with Intel collateral (TCB Info, QE Identity) of a"
              " TCB evaluation data number below N; a --collateral URL's older answers are not"
              " kept but asked for again. auto: the number Intel's TCB evaluation data numbers"
              " (fetched with the collateral) require at each attestation.")  # fmt: skip
@tcb_recovery_grace_option()
@pcs_update_option()
@pcs_tcb_eval_number_option()
@click.option("--kds", metavar="URL",
              help="AMD KDS (https://kdsintf.amd.com) or a mirror: fetch the VCEK of SEV-SNP evidence"
              " sent without one, and with --tee sev-snp the CAS's own (cached in"
              " --data-dir/kds-cache).")  # fmt: skip
@click.option("--witness", "witness_specs", multiple=True, metavar="URL=VKEY",
              help="A witness that cosigns every checkpoint (C2SP tlog-witness).")  # fmt: skip
@click.option("--witness-cacert", type=click.Path(path_type=Path), metavar="FILE",
              help="Trust only the certificates in FILE (PEM) for https:// witnesses"
              " (default: the system's CAs).")  # fmt: skip
@click.option("--witness-quorum", "witness_quorum", type=click.IntRange(min=1), metavar="N",
              help="N of the --witness witnesses must cosign the log before the CAS starts (else it"
              " exits: 67 when one says the database was rolled back or forked, 40 without a"
              " quorum); while running, such an answer halts releases and changes until restart."
              ' The witness keys and N are bound into the CAS\'s evidence (docs/cas.md "Witness'
              ' quorum").')  # fmt: skip
@click.option("--witness-max-lag", "witness_max_lag", metavar="SECONDS",
              help="With --witness-quorum: refuse releases and changes while no checkpoint was"
              " cosigned by a quorum for this long (10 to 2592000; default: no bound).")  # fmt: skip
@click.option(
    "--nvidia-ocsp",
    "nvidia_ocsp",
    metavar="URL|DIR|stapled",
    help="Check every NVIDIA GPU chain (and RIM signing chain) for revocation: an OCSP responder "
    "URL (NVIDIA's is https://ocsp.ndis.nvidia.com/) or stored responses DIR/<serial hex>.der. "
    "Good responses are cached until their nextUpdate; a failed check refuses the attestation. "
    "Responses the runtime staples (confide run --gpu-ocsp) are used instead when current. "
    "'stapled': ask nobody, require a stapled response for every GPU chain certificate checked "
    "(RIM signing chains are then not checked; a directory named so: ./stapled).",
)
@click.option(
    "--nvidia-ocsp-max-age",
    "nvidia_ocsp_max_age",
    metavar="DURATION",
    help="With --nvidia-ocsp: how old a stapled OCSP response's thisUpdate may be (default "
    "'24 hours'; 1 minute to 30 days).",
)
@click.option(
    "--nvidia-rim",
    "nvidia_rim",
    metavar="URL|DIR",
    help="Compare every NVIDIA GPU report with its driver and VBIOS RIMs (those the runtime did not "
    "send), fetched from NVIDIA's RIM service URL (https://rim.attestation.nvidia.com/v1/rim/) or read from "
    "DIR/<RIM ID>.xml, verified under the pinned NVIDIA RIM root and cached for a day (a URL's "
    "also in --data-dir/rim-cache). A RIM that cannot be fetched or verified, or a mismatch, "
    "refuses the attestation.",
)
@click.option(
    "--gce-crl",
    "gce_crl",
    metavar="FILE|fetch",
    help="Check the AK certificate and intermediates of every gce-tpm attestation against Google's "
    "CRLs: those in FILE (DER or PEM, several; read again when FILE changes: replace it atomically), "
    "or 'fetch': from the CRL Distribution Points the verified certificates name, kept until their "
    "nextUpdate (also in --data-dir/gce-crl-cache, verified again when read; the newest CRL seen per "
    "issuer in --data-dir/gce-crl-newest.json, an older one refused) (a file named so: ./fetch). "
    "A certificate without a current CRL of its issuer, or revoked, refuses the attestation.",
)
@click.option(
    "--seal",
    type=click.Choice(SEAL_PROVIDERS),
    default="file",
    show_default=True,
    help="What protects the master key: file (plain, development only), gramine (SGX MRENCLAVE), "
    "gramine-mrsigner, sev-snp (measurement and policy); tdx is refused (no sealing key: use --join). "
    "With --join, file means: held in memory only.",
)
@click.option(
    "--tee",
    type=click.Choice(_TEE_CHOICES),
    help="The TEE the CAS runs in: it publishes its own evidence from that TEE (configfs-tsm for "
    "tdx/sev-snp, Gramine's /dev/attestation for sgx-gramine, the paravisor's vTPM for az-vtpm: an "
    "Azure SEV-SNP or TDX confidential VM) and refuses to start without it.",
)
@click.option(
    "--evidence-refresh",
    "evidence_refresh",
    metavar="SECONDS",
    help="With --tee or --dev: re-obtain the CAS's own evidence this often (default 3600; 0: only "
    "at startup; 10 to 2592000). A failed refresh keeps the previous evidence and is retried.",
)
@click.option(
    "--crl-validity",
    "crl_validity",
    metavar="DURATION",
    help="From a CRL's thisUpdate to its nextUpdate (default '7 days'; 60 s to 366 days). Each CA the "
    "CAS generated has a CRL, re-issued at every revocation and once half of this has passed.",
)
@click.option(
    "--public-url",
    "public_url",
    metavar="URL",
    help="The base URL (http:// or https://) relying parties reach the CAS under. Certificates the "
    "CAS issues under a CA declared crl_distribution then carry a CRL distribution point "
    "URL/v1/crl/<id>.crl, under one declared ca_issuers a caIssuers URL/v1/ca/<id>.crt, under one "
    "declared ocsp an OCSP URL/v1/ocsp/<id> "
    '(docs/cas.md "CRL distribution points").',
)
@click.option(
    "--public-http-listen",
    "public_http_listen",
    metavar="HOST:PORT",
    help="Also listen over plain HTTP there, for the public CRLs, CA certificates and OCSP "
    "responders only (GET/HEAD /v1/crl/<id>.crl and /v1/ca/<id>.crt, GET/POST /v1/ocsp/<id>; "
    "everything else 404), with connection limits "
    "of its own (the values of --max-connections and --max-connections-per-ip). Give --public-url "
    'http://HOST:PORT (or a name of it) for certificates to point there (docs/cas.md "The public '
    'HTTP listener").',
)
@click.option(
    "--metrics-listen",
    "metrics_listen",
    metavar="HOST:PORT",
    help="Serve GET /metrics on a plain-HTTP listener of its own there (everything else 404), with "
    "connection limits of its own (the values of --max-connections and --max-connections-per-ip); "
    "the API listener then answers /metrics 404. For Prometheus on an internal port "
    '(docs/cas.md "Metrics").',
)
@click.option(
    "--metrics-token-file",
    "metrics_token_file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Require 'Authorization: Bearer TOKEN' for /metrics, wherever it is served, TOKEN one of "
    "the file's: one a line, NAME:TOKEN or TOKEN (named line-N), at least 16 printable ASCII bytes, "
    "no space; blank lines and # comments skipped. Else 401. Read again on SIGHUP and at "
    "--metrics-reload-interval (a bad file keeps the tokens in use).",
)
@click.option(
    "--metrics-cert",
    "metrics_cert",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Serve the --metrics-listen listener over HTTPS (TLS 1.2+) with this PEM certificate "
    "(chain); reloaded with --metrics-key on SIGHUP and at --metrics-reload-interval.",
)
@click.option(
    "--metrics-key",
    "metrics_key",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="The --metrics-cert certificate's private key (PEM, unencrypted).",
)
@click.option(
    "--metrics-client-ca",
    "metrics_client_ca",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Require a client certificate (mutual TLS) on the --metrics-listen listener, chaining to "
    "one of this file's PEM certificates (each one a trust anchor); needs --metrics-cert. TLS 1.3 "
    "only then (no session resumed: every connection's certificate judged at its handshake). Scrapers "
    "are then named by their certificate's subject and SHA-256 in the log and the counters. With "
    "--metrics-token-file, both are required. Reloaded with --metrics-cert (a bad file keeps the "
    "CAs in use).",
)
@click.option(
    "--metrics-client-allow",
    "metrics_client_allow",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Serve only the client certificates this file lists (needs --metrics-client-ca): one a "
    "line, sha256:HEX of the certificate or its subject in RFC 4514 form (CN=prometheus,O=Example); "
    "# comments. Others get 403, counted and logged. Read again on SIGHUP and at "
    "--metrics-reload-interval (a bad file keeps the list in use).",
)
@click.option(
    "--metrics-client-crl",
    "metrics_client_crl",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Refuse revoked client certificates (needs --metrics-client-ca): the CRLs (PEM, or one "
    "DER) of the bundle's CAs, each signed by its CA. Fail-closed: a client whose CA has no CRL "
    "here, or whose CRL is past its nextUpdate, is refused too. Reloaded with --metrics-cert.",
)
@click.option(
    "--metrics-reload-interval",
    "metrics_reload_interval",
    type=click.FloatRange(min=0, max=86400),
    default=0.0,
    callback=reload_interval,
    metavar="SECONDS",
    help="Also look at --metrics-token-file, --metrics-cert, --metrics-key, --metrics-client-ca, "
    "--metrics-client-allow and --metrics-client-crl this often (at least "
    "1) and reload them when they changed (e.g. a Kubernetes Secret volume). 0 (default): on SIGHUP "
    "only.",
)
@click.option("--max-connections", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Open connections at once (TLS handshakes included); one more is closed when"
              " accepted, before its handshake. 0: no limit.")  # fmt: skip
@click.option("--max-connections-per-ip", type=click.IntRange(min=0), default=128, show_default=True,
              help="Open connections at once per client IP address (IPv6: per /64). 0: no"
              " limit.")  # fmt: skip
@click.option("--body-timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              metavar="SECONDS",
              help="A request body must be complete this long after its head, else 408 and the"
              " connection is closed. 0: no limit.")  # fmt: skip
@click.option("--tls-handshake-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              metavar="SECONDS", help="A TLS handshake must complete within this, else the connection is"
              " closed.")  # fmt: skip
@click.option("--tls-session-tickets", type=click.IntRange(min=0, max=16), default=0, show_default=True,
              metavar="N", help="TLS 1.3 session tickets sent after each handshake, for clients that"
              " resume sessions (confide's own clients do not).")  # fmt: skip
@click.option("--attest-rate", default="200", show_default=True, metavar="PER_SECOND",
              help="Per client IP address (IPv6: /64): POST /v1/attest/nonce, /v1/attest and"
              " /v1/read/nonce requests a second, answered 429 with Retry-After past it. 0: no"
              " limit.")  # fmt: skip
@click.option(
    "--attest-burst", metavar="N", help="The most such requests at once (default: twice --attest-rate)."
)
@click.option("--write-rate", default="10", show_default=True, metavar="PER_SECOND",
              help="Per client IP address (IPv6: /64): policy submissions and updates, board approvals,"
              " volume tags and lists of readable policies a second (429 past it). 0: no limit.")  # fmt: skip
@click.option(
    "--write-burst", metavar="N", help="The most such requests at once (default: twice --write-rate)."
)
@click.option("--join", metavar="URL",
              help="Obtain the master key from the CAS running at URL by attestation (needs --tee or"
              " --dev; released only if this CAS runs the same code on the same kind of TEE), for a"
              " data directory without a master key; with --seal PROVIDER it is sealed there, else"
              ' held in memory only (docs/cas.md "Joining a running CAS").')  # fmt: skip
@click.option("--join-as-successor", "join_as_successor", is_flag=True,
              help="With --join: this CAS is a new version of the running one (another measurement):"
              " the running CAS releases its key only with its successor board's authorisation of"
              " this CAS's identity claims, and this CAS accepts only the key its database names"
              ' (docs/cas.md "Handing over to a successor version").')  # fmt: skip
@click.option("--successor-board", "successor_board", type=_PATH, metavar="FILE",
              help="Only on the first start (the one that creates the master key): the board whose"
              " quorum may authorise handing the master key over to another version, YAML or JSON"
              " of one rule, {require-all: [...]} or {require-at-least-N: [...]}, over identity"
              " fingerprints or public keys. Fixed: it cannot be changed later.")  # fmt: skip
@click.option("--replica-min-tcb", "replica_min_tcb", multiple=True,
              metavar="[PRODUCT:]bootloader=N,tee=N,snp=N,microcode=N[,fmc=N]",
              help="With --tee sev-snp: release the master key only to an SEV-SNP CAS whose"
              " REPORTED_TCB reaches these SPLs (0 to 255), and with --join obtain it only from"
              " one. Once without PRODUCT: for every AMD product (fmc: Turin only); or once per"
              " product, PRODUCT milan, genoa or turin (fmc: turin only), and a replica of a"
              " product without one is refused. Without it, replicas' TCB is not judged (SEV-SNP"
              ' has no TCB status; docs/cas.md "Joining a running CAS").')  # fmt: skip
@click.option("--opaque-refusals", "opaque_refusals", is_flag=True,
              help="Answer every attestation refusal of a request that parsed (no policy, no"
              " service, any mismatch, a tolerance, a revoked or out-of-date platform, evidence"
              " that does not verify, a spent nonce) with one fixed message, HTTP 403"
              " AppraisalError (confide run: exit 31), and every refused volume tag report but a tag"
              " conflict with another (403 AccessDeniedError), so that attesters do not learn"
              " whether a policy or service exists or what it expects; the reasons go to the"
              ' ledger and the log (docs/cas.md "Opaque refusals").')  # fmt: skip
@click.option("--refusal-delay", "refusal_delay", type=float, metavar="SECONDS",
              help="With --opaque-refusals: send each such refusal's answer no earlier than this"
              " long after its request arrived (its body read), so that how long the CAS took to"
              " refuse does not tell the causes apart; acceptances are not delayed. 0 to 10;"
              " default 0.05. A refusal that took longer is answered at once, and counted"
              ' (confide_opaque_refusals_total{deadline="missed"}, docs/cas.md "Opaque'
              ' refusals").')  # fmt: skip
def cas_serve(
    data_dir: Path,
    listen: str,
    dev: bool,
    db_url: str | None,
    collateral: str | None,
    kds: str | None,
    witness_specs: tuple[str, ...],
    witness_cacert: Path | None,
    witness_quorum: int | None,
    witness_max_lag: str | None,
    seal: str,
    tee: str | None,
    evidence_refresh: str | None,
    nvidia_ocsp: str | None,
    nvidia_ocsp_max_age: str | None,
    nvidia_rim: str | None,
    gce_crl: str | None,
    crl_validity: str | None,
    public_url: str | None,
    public_http_listen: str | None,
    metrics_listen: str | None,
    metrics_token_file: Path | None,
    metrics_cert: Path | None,
    metrics_key: Path | None,
    metrics_client_ca: Path | None,
    metrics_client_allow: Path | None,
    metrics_client_crl: Path | None,
    metrics_reload_interval: float,
    max_connections: int,
    max_connections_per_ip: int,
    body_timeout: float,
    tls_handshake_timeout: float,
    tls_session_tickets: int,
    attest_rate: str,
    attest_burst: str | None,
    write_rate: str,
    write_burst: str | None,
    join: str | None,
    join_as_successor: bool,
    successor_board: Path | None,
    min_tcb_eval: int | str | None,
    tcb_recovery_grace: int | None,
    pcs_update: str | None,
    pcs_tcb_eval_number: int | None,
    replica_min_tcb: tuple[str, ...],
    opaque_refusals: bool,
    refusal_delay: float | None,
) -> None:
    """Start the CAS over TLS and keep running until killed."""
    from confide.cas.crl import DEFAULT_CRL_VALIDITY, parse_crl_validity, parse_public_url
    from confide.cas.key_release import parse_replica_min_tcb
    from confide.cas.own_evidence import DEFAULT_REFRESH_SECONDS, parse_refresh_interval
    from confide.cas.revocation import parse_stapled_max_age
    from confide.cas.sealing import provider_for
    from confide.cas.server import parse_witnesses, serve
    from confide.cas.successor_board import parse_board_file
    from confide.cas.witness_quorum import parse_max_lag
    from confide.httpserve.limits import HttpLimits
    from confide.httpserve.ratelimit import parse_rate
    from confide.ledger.http import client_tls_context
    from confide.platforms import automatic_minimum_source, tcb_evaluation_minimum

    refresh = DEFAULT_REFRESH_SECONDS
    if evidence_refresh is not None:
        refresh = parse_refresh_interval(evidence_refresh)
        if tee is None and not dev:
            raise UsageError(
                "--evidence-refresh needs --tee or --dev: without them the CAS has no evidence of its own"
            )
    max_age = None
    if nvidia_ocsp_max_age is not None:
        if not nvidia_ocsp:
            raise UsageError("--nvidia-ocsp-max-age needs --nvidia-ocsp")
        max_age = parse_stapled_max_age(nvidia_ocsp_max_age)
    provider = provider_for(seal)
    if witness_cacert is not None and not witness_specs:
        raise UsageError("--witness-cacert needs --witness")
    if witness_quorum is not None and not witness_specs:
        raise UsageError("--witness-quorum needs --witness URL=VKEY (at least as many as the quorum)")
    if witness_max_lag is not None and witness_quorum is None:
        raise UsageError("--witness-max-lag needs --witness-quorum")
    minimum = tcb_evaluation_minimum(min_tcb_eval, tcb_recovery_grace)
    automatic_minimum_source(collateral, minimum)
    if pcs_update is not None or pcs_tcb_eval_number is not None:
        from confide.collateral.dcap import check_pcs_update

        check_pcs_update(collateral, pcs_update, pcs_tcb_eval_number, minimum)
    min_tcb = None
    if replica_min_tcb:
        min_tcb = parse_replica_min_tcb(replica_min_tcb)
        if tee != "sev-snp":
            raise UsageError(
                "--replica-min-tcb needs --tee sev-snp: it judges the REPORTED_TCB of SEV-SNP replicas"
            )
    serve(
        data_dir,
        listen,
        dev=dev,
        db_url=db_url,
        collateral=collateral,
        min_tcb_evaluation_data_number=minimum,
        pcs_update=pcs_update,
        pcs_tcb_eval_number=pcs_tcb_eval_number,
        kds=kds,
        witnesses=parse_witnesses(witness_specs),
        witness_tls=None if witness_cacert is None else client_tls_context(witness_cacert),
        seal=provider,
        tee=tee,
        evidence_refresh=refresh,
        nvidia_ocsp=nvidia_ocsp,
        nvidia_ocsp_max_age=max_age,
        nvidia_rim=nvidia_rim,
        crl_validity=parse_crl_validity(crl_validity) if crl_validity is not None else DEFAULT_CRL_VALIDITY,
        public_url=None if public_url is None else parse_public_url(public_url),
        http_limits=HttpLimits(
            max_connections=max_connections,
            max_connections_per_client=max_connections_per_ip,
            body_timeout=body_timeout,
            handshake_timeout=tls_handshake_timeout,
        ),
        attest_rate=parse_rate(attest_rate, attest_burst, "attest"),
        write_rate=parse_rate(write_rate, write_burst, "write"),
        public_http_listen=public_http_listen,
        join=join,
        session_tickets=tls_session_tickets,
        join_as_successor=join_as_successor,
        successor_board=None if successor_board is None else parse_board_file(successor_board),
        witness_quorum=witness_quorum,
        witness_max_lag=None if witness_max_lag is None else parse_max_lag(witness_max_lag),
        replica_min_tcb=min_tcb,
        gce_crl=gce_crl,
        opaque_refusals=opaque_refusals,
        refusal_delay=refusal_delay,
        metrics_listen=metrics_listen,
        metrics_token_file=metrics_token_file,
        metrics_cert=metrics_cert,
        metrics_key=metrics_key,
        metrics_reload_interval=metrics_reload_interval,
        metrics_client_ca=metrics_client_ca,
        metrics_client_allow=metrics_client_allow,
        metrics_client_crl=metrics_client_crl,
    )


@cas.command("rotate-master-key")
@click.option("--data-dir", type=_PATH, required=True, help="The CAS's state directory.")
@click.option("--db", "db_url", help="Database URL, as given to cas serve (default: SQLite in --data-dir).")
@click.option(
    "--seal",
    type=click.Choice(SEAL_PROVIDERS),
    default="file",
    show_default=True,
    help="What protects the current master key (the --seal the CAS runs with).",
)
@click.option(
    "--to-seal",
    type=click.Choice(SEAL_PROVIDERS),
    help="What protects the new key (default: the same as --seal). From --seal file to a provider: "
    "the CAS moves to sealing with a key that was never written in plain.",
)
@click.option(
    "--online",
    is_flag=True,
    help="Ask the running CAS on --data-dir to rotate while it serves (over its admin socket; "
    "the only CAS on its database; its own --seal and --db). Waits until it has finished.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    help="--online: secrets re-sealed per transaction (default 100).",
)
@click.option(
    "--batch-pause-ms",
    type=click.IntRange(0, 10_000),
    help="--online: milliseconds between batches, for the attestations (default 5).",
)
def cas_rotate_master_key(
    data_dir: Path,
    db_url: str | None,
    seal: str,
    to_seal: str | None,
    online: bool,
    batch_size: int | None,
    batch_pause_ms: int | None,
) -> None:
    """Replace the master key: every secret, the TLS key and the log key are re-sealed under a
    new key, crash-safely; prints the new key id (docs/cas.md). Without --online the CAS must be
    stopped (every replica)."""
    if online:
        ctx = click.get_current_context()
        given = [
            flag
            for n, flag in (("db_url", "--db"), ("seal", "--seal"), ("to_seal", "--to-seal"))
            if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise UsageError(
                f"--online uses the running CAS's own --seal and --db: {', '.join(given)} cannot be given "
                "(to change how the key is sealed, rotate offline with --to-seal)"
            )
        _rotate_online(data_dir, batch_size, batch_pause_ms)
        return
    if batch_size is not None or batch_pause_ms is not None:
        raise UsageError("--batch-size and --batch-pause-ms are for --online (offline: one transaction)")
    from confide.cas.db import Database
    from confide.cas.ledger_sink import LedgerEventSink
    from confide.cas.master_key import PLAIN_NAME, SEALED_NAME
    from confide.cas.rotation import rotate_master_key
    from confide.cas.runlock import run_lock
    from confide.cas.sealing import provider_for

    current = provider_for(seal)
    target = provider_for(to_seal) if to_seal is not None else current
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir: {str(data_dir)!r} is not a directory")
    if not any((data_dir / name).exists() for name in (PLAIN_NAME, SEALED_NAME)):
        # Before the run lock, which creates DIR/run.lock: a mistyped --data-dir (a home
        # directory, say) is left as it was found. Under the lock, rotate_master_key checks again.
        raise UsageError(f"{str(data_dir)!r} holds no master key: nothing to rotate")
    url = db_url or f"sqlite:///{(data_dir / 'cas.db').resolve()}"
    with run_lock(data_dir, url, exclusive=True):
        database = Database(url)
        try:
            result = rotate_master_key(
                data_dir, database, seal=current, to_seal=target, events=LedgerEventSink()
            )
        finally:
            database.dispose()
    click.echo(
        f"master key rotated: {result.old_key_id} -> {result.new_key_id} ({result.sealing_from} -> "
        f"{result.sealing_to}); {result.secrets} secrets re-sealed, {result.policy_versions} policy "
        f"versions; TLS key {result.tls_key}, log key "
        f"{result.log_key}; ledger entry {result.event_seq - 1} (key.rotated)",
        err=True,
    )
    if result.wal_warning is not None:
        click.echo(f"warning: {result.wal_warning}", err=True)
    click.echo(result.new_key_id)


def _rotate_online(data_dir: Path, batch_size: int | None, pause_ms: int | None) -> None:
    import time

    from confide.cas.admin import request

    req: dict[str, object] = {"op": "rotate-master-key"}
    if batch_size is not None:
        req["batch_size"] = batch_size
    if pause_ms is not None:
        req["pause_ms"] = pause_ms
    what = "the CAS's admin reply to rotate-master-key --online"
    status = answer.mapping(request(data_dir, req), "status", what)
    while answer.text(status, "state", what) == "running":
        time.sleep(0.5)
        status = answer.mapping(request(data_dir, {"op": "rotation-status"}), "status", what)
    if answer.text(status, "state", what) != "done":
        error = answer.optional_text(status, "error")
        shown = printable(str(error))
        raise UsageError(f"the online rotation failed: {shown} (the CAS resumes it at its next start)")
    old_id, new_id = answer.text(status, "old_key_id", what), answer.text(status, "new_key_id", what)
    resealed, versions = (
        answer.integer(status, "resealed", what),
        answer.integer(status, "policy_versions", what),
    )
    batches, seq = answer.integer(status, "batches", what), answer.integer(status, "event_seq", what)
    click.echo(
        printable(
            f"master key rotated online: {old_id} -> {new_id}; {resealed} secrets re-sealed, {versions} "
            f"policy versions, in {batches} batches; ledger entry {seq - 1} (key.rotated)"
        ),
        err=True,
    )
    warning = answer.optional_text(status, "wal_warning")
    if warning:
        click.echo(printable(f"warning: {warning}"), err=True)
    click.echo(printable(new_id))


_CAS_TOLERANCES = (
    "debug-mode",
    "outdated-tcb",
    "relaunch-advised",
    "software-hardening-needed",
    "configuration-needed",
    "insecure-configuration",
    "hyperthreading",
    "insecure-igpu",
)  # confide.policy.model.Tolerance, without simulation (--sim-key) and gpu-only


@cas.command("attest")
@click.argument("url", required=False)
@click.option("--sim-key", type=_PATH, help="Simulated platform public key (default: $CONFIDE_SIM_DIR).")
@click.option("--out", type=_PATH, help="Write the verified CAS certificate here (use as CONFIDE_CAS_CERT).")
@click.option("--measurement", "measurements", multiple=True, metavar="HEX",
              help="The CAS's expected measurement (repeat to allow several): sim/sev-snp measurement,"
              " tdx mr_td, sgx mr_enclave; without it the measurement is only printed, for you to"
              " check.")  # fmt: skip
@click.option("--expect", "expect_specs", multiple=True, metavar="CLAIM=VALUE",
              help="A claim the CAS's evidence must have, e.g. rtmr1=HEX, host_data=HEX, vmpl=0"
              " (repeat; the same claim repeated allows any of its values; every claim named must"
              " match).")  # fmt: skip
@click.option("--collateral", help="SGX/TDX: DCAP collateral (dcap-qvl JSON bundle, PCS directory or "
              "URL; default: $CONFIDE_DCAP_COLLATERAL).")  # fmt: skip
@click.option("--tolerate", "tolerate", multiple=True, type=click.Choice(_CAS_TOLERANCES),
              help="Accept a CAS in this state (as a policy's security.attestation.tolerate).")  # fmt: skip
@click.option("--ignore-advisory", "ignore_advisories", multiple=True, metavar="ID",
              help="Accept this advisory ID (e.g. INTEL-SA-00615) in the CAS's TCB.")  # fmt: skip
@click.option("--expect-witnesses", "expect_witnesses", type=click.IntRange(min=1), metavar="N",
              help="Refuse a CAS whose attested witness quorum (cas serve --witness-quorum) is below"
              " N; with --expect-witness, a CAS whose quorum does not always include N of those"
              " witnesses.")  # fmt: skip
@click.option("--expect-witness", "expect_witness_keys", multiple=True, metavar="VKEY",
              help="A witness you trust (repeat): the CAS's quorum must include --expect-witnesses"
              " of them (default 1) whichever of its witnesses cosign.")  # fmt: skip
@click.option("--min-tcb-eval-number", "min_tcb_eval", type=MIN_TCB_EVAL_NUMBER, metavar="N|auto",
              help="SGX/TDX: refuse a CAS whose evidence verifies only with Intel collateral (TCB Info,"
              " QE Identity) of a TCB evaluation data number below N (exit 62); auto: the number"
              " Intel's TCB evaluation data numbers (from the --collateral directory or URL) require"
              " now.")  # fmt: skip
@tcb_recovery_grace_option()
@pcs_update_option()
@pcs_tcb_eval_number_option()
def cas_attest(
    url: str | None,
    sim_key: Path | None,
    out: Path | None,
    measurements: tuple[str, ...],
    expect_specs: tuple[str, ...],
    collateral: str | None,
    tolerate: tuple[str, ...],
    ignore_advisories: tuple[str, ...],
    expect_witnesses: int | None,
    expect_witness_keys: tuple[str, ...],
    min_tcb_eval: int | str | None,
    tcb_recovery_grace: int | None,
    pcs_update: str | None,
    pcs_tcb_eval_number: int | None,
) -> None:
    """Verify the CAS's own evidence, bound to its TLS certificate, and pin that certificate."""
    from cryptography import x509

    from confide.cas.documents import spki_sha256
    from confide.cas.pin import WitnessExpectation, attest_cas, attest_collateral, write_pin
    from confide.platforms import tcb_evaluation_minimum
    from confide.platforms.dcap import COLLATERAL_ENV
    from confide.policy.model import Tolerance
    from confide.verify.result import Platform

    url = url or os.environ.get("CONFIDE_CAS_URL")
    if not url:
        raise UsageError("give the CAS URL (or set CONFIDE_CAS_URL)")
    if sim_key is None and os.environ.get("CONFIDE_SIM_DIR"):
        sim_key = Path(os.environ["CONFIDE_SIM_DIR"]) / "platform-key.pub.pem"
    # a regular file, bounded, opened without blocking (a FIFO is refused, not waited on)
    key_pem = read_small_file(sim_key, MAX_SIM_KEY_FILE, "--sim-key") if sim_key else None
    expected = []
    for m in measurements:
        text = m.strip().lower()
        if len(text) not in (64, 96) or any(c not in "0123456789abcdef" for c in text):
            raise UsageError(f"--measurement: got {m[:40]!r}, expected 32 or 48 bytes in hex")
        expected.append(text)
    expect = _expected_claims(expect_specs)
    witness_expectation = WitnessExpectation.of(expect_witnesses, expect_witness_keys, "--expect-witness")
    location = collateral or os.environ.get(COLLATERAL_ENV)
    minimum = tcb_evaluation_minimum(min_tcb_eval, tcb_recovery_grace)
    pinned = attest_cas(
        url,
        sim_key_pem=key_pem,
        measurements=tuple(expected),
        collateral=attest_collateral(
            location, minimum, pcs_update=pcs_update, pcs_tcb_eval_number=pcs_tcb_eval_number
        ),
        tolerate=tuple(Tolerance(t) for t in tolerate),
        ignore_advisories=ignore_advisories,
        expect=expect,
        expect_witnesses=witness_expectation,
        min_tcb_evaluation_data_number=minimum,
    )
    ev = pinned.evidence
    label = " (SIMULATED)" if ev.simulated else ""
    click.echo(printable(f"CAS at {url} attested on {ev.platform.value}{label}"), err=True)
    if ev.tcb_status is not None:
        advisories = f" (advisories: {', '.join(ev.advisory_ids)})" if ev.advisory_ids else ""
        click.echo(printable(f"  TCB status: {ev.tcb_status.value}{advisories}"), err=True)
    if ev.tcb_evaluation is not None:
        numbers = ev.tcb_evaluation
        checked = f" (at least {minimum}, as expected)" if isinstance(minimum, int) else ""
        required = ev.details.get("required_tcb_evaluation")
        if isinstance(required, dict):  # --min-tcb-eval-number auto
            checked = f" (at least {required.get('required')}, as expected: {required.get('reason')})"
        click.echo(
            f"  TCB evaluation data numbers: TCB Info {numbers.tcb_info}, QE Identity {numbers.qe_identity}"
            f"{checked}",
            err=True,
        )
    checked = " (as expected)" if expected else " (not checked: pass --measurement)"
    claim = pinned.measurement_claim
    click.echo(printable(f"  {claim}: {ev.claims.get(claim)}{checked}"), err=True)
    for name in expect:
        click.echo(printable(f"  {name}: {ev.claims.get(name)} (as expected)"), err=True)
    if ev.platform is Platform.SEV_SNP:
        crl = (
            "checked (the CRL the CAS published with its evidence)"
            if ev.details.get("crl_checked") is True
            else "not checked (the CAS published none: an older CAS, a VCEK from the host's"
            " certificate table, or a KDS without a CRL)"
        )
        click.echo(f"  AMD CRL: {crl}", err=True)
    click.echo(f"  TLS certificate SHA-256: {pinned.certificate_sha256}", err=True)
    # What CONFIDE_CAS_SPKI pins (the key, not the certificate: docs/cas.md "Command-line contract").
    key_sha256 = spki_sha256(x509.load_pem_x509_certificate(pinned.certificate_pem))
    click.echo(f"  TLS key SHA-256 (CONFIDE_CAS_SPKI): {key_sha256}", err=True)
    click.echo(printable(f"  transparency log key: {pinned.log_key}"), err=True)
    witnesses = pinned.witnesses
    if witnesses is None:
        click.echo("  witness quorum: none (the CAS does not check its database against witnesses)", err=True)
    else:
        checked = " (as expected)" if witness_expectation is not None else ""
        click.echo(f"  witness quorum: {witnesses.quorum} of {len(witnesses.keys)}{checked}", err=True)
        for key in witnesses.keys:
            click.echo(printable(f"    witness: {key}"), err=True)
    click.echo(f"  evidence obtained: {_obtained(pinned.obtained_at)}", err=True)
    if out:
        write_pin(pinned, out)
        click.echo(f"  pinned: export CONFIDE_CAS_CERT={out}", err=True)
    click.echo(pinned.certificate_sha256)


def _expected_claims(specs: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """``--expect CLAIM=VALUE`` items (``cas attest``, ``cas successor approve
    --retire-attested``): each claim's allowed values, in the order given."""
    expect: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"--expect: got {spec[:60]!r}, expected CLAIM=VALUE")
        expect[name.strip()] = (*expect.get(name.strip(), ()), value.strip())
    return expect


def _obtained(at: datetime | None) -> str:
    """``confide cas attest``'s line for the document's ``obtained_at`` (the CAS's word)."""
    if at is None:
        return "not stated (a CAS that obtains its evidence only at startup)"
    age = int((datetime.now(UTC) - at).total_seconds())
    when = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if age < 0:
        return f"{when} (ahead of this machine's clock by {-age} s)"
    return f"{when} ({age // 3600} h {age % 3600 // 60} min ago)"


@cas.group("successor")
def cas_successor() -> None:
    """The successor board: authorise handing the master key over to a new CAS version."""


@cas_successor.command("show")
def cas_successor_show() -> None:
    """Show the successor board, the CAS's master key id and the approvals that have not expired."""
    from confide.cas.client import CasClient

    click.echo(json.dumps(CasClient.from_env().successor(), indent=2))


@cas_successor.command("approve")
@click.option("--platform", required=True, help="The successor's platform kind: sim, sgx, tdx or sev-snp.")
@click.option("--claim", "claims", multiple=True, required=True, metavar="NAME=VALUE",
              help="An identity claim of the successor (all those the join rule compares for the"
              " platform, e.g. measurement=HEX for sim).")  # fmt: skip
@click.option("--expires", required=True, metavar="TIME|DURATION",
              help="When the approval expires: an ISO 8601 UTC time (2027-01-31T00:00:00Z) or a"
              " duration from now (12h, 7d; at most 90 days).")  # fmt: skip
@click.option("--master-key-id", "master_key_id", metavar="HEX",
              help="The CAS the approval applies to (default: the id the CAS reports; see cas"
              " successor show).")  # fmt: skip
@click.option("--retire-claim", "retire_claims", multiple=True, metavar="NAME=VALUE",
              help="Also approve retiring the version with these identity claims (all those of"
              " --platform), which must be the one that hands the key over: once the board's quorum"
              " names it, that release retires its code, which then releases the key to no one but this"
              " successor (again, if the answer was lost) and does not start again (docs/cas.md"
              ' "Retiring the old version").')  # fmt: skip
@click.option("--retire-attested", is_flag=True,
              help="As --retire-claim, with the identity claims of the CAS this client talks to,"
              " read from its evidence verified again (as cas attest does; $CONFIDE_SIM_DIR,"
              " $CONFIDE_DCAP_COLLATERAL) and bound to the pinned certificate"
              " ($CONFIDE_CAS_CERT).")  # fmt: skip
@click.option("--expect", "expect_specs", multiple=True, metavar="CLAIM=VALUE",
              help="With --retire-attested: a claim the attested CAS's evidence must have (as cas"
              " attest --expect: repeat; the same claim repeated allows any of its values; every"
              " claim named must match), checked before anything is signed.")  # fmt: skip
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def cas_successor_approve(
    platform: str,
    claims: tuple[str, ...],
    expires: str,
    master_key_id: str | None,
    retire_claims: tuple[str, ...],
    retire_attested: bool,
    expect_specs: tuple[str, ...],
    identity_file: Path,
) -> None:
    """Sign and submit an approval of a successor version; prints the approvers so far."""
    from confide.cas.client import CasClient
    from confide.cas.successor import identity_digest
    from confide.cas.successor_client import approve_successor, check_successor_claims

    named, retire = _named_claims("--claim", claims), _named_claims("--retire-claim", retire_claims)
    # what the CAS would refuse, refused before anything is signed or sent
    check_successor_claims(platform, named)
    if retire_claims and retire_attested:
        raise UsageError("--retire-claim and --retire-attested: give one")
    if expect_specs and not retire_attested:
        raise UsageError("--expect: only with --retire-attested (it checks the attested CAS's claims)")
    expect = _expected_claims(expect_specs)
    if retire_attested:
        retire = _attested_claims(platform, expect)
    retiring = bool(retire_claims) or retire_attested
    check_successor_claims(platform, named, retire if retiring else None, retire_given=bool(retire_claims))
    if retiring:
        # shown before anything is signed: what the signature will retire
        click.echo(
            printable(f"retires the version {identity_digest(platform, retire)} when it hands the key over:"),
            err=True,
        )
        for name, value in retire.items():
            click.echo(printable(f"  {name}={value}"), err=True)
    expiry = _expiry(expires)
    ident = load_identity(identity_file)
    result = approve_successor(
        CasClient.from_env(), ident, platform, named, expiry, master_key_id=master_key_id,
        retire=retire if retiring else None,
    )  # fmt: skip
    what = "the CAS's answer to cas successor approve"
    shown = answer.obj(result, what)
    retired = answer.texts(shown, "retire", what, optional=True)
    target, digest, state = (
        answer.text(shown, "target", what),
        answer.text(shown, "digest", what),
        _state(shown, what),
    )
    retires = f" (retires {', '.join(retired)} when it hands over)" if retired else ""
    click.echo(printable(f"{target} {state}{retires}"))
    click.echo(printable(f"approval {digest} (cas successor withdraw --approval names it)"), err=True)


@cas_successor.command("withdraw")
@click.option("--approval", required=True, metavar="DIGEST",
              help="The approval to withdraw: its SHA-256, as cas successor approve and cas successor"
              " show print it.")  # fmt: skip
@click.option("--master-key-id", "master_key_id", metavar="HEX",
              help="The CAS the withdrawal applies to (default: the id the CAS reports).")  # fmt: skip
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def cas_successor_withdraw(approval: str, master_key_id: str | None, identity_file: Path) -> None:
    """Withdraw one's own approval of a successor version before it expires; prints the
    approvals of its target that still count (docs/cas.md "Withdrawing an approval")."""
    from confide.cas.client import CasClient
    from confide.cas.successor_client import withdraw_successor

    ident = load_identity(identity_file)
    result = withdraw_successor(CasClient.from_env(), ident, approval, master_key_id=master_key_id)
    what = "the CAS's answer to cas successor withdraw"
    shown = answer.obj(result, what)
    withdrawn, target = answer.text(shown, "approval", what), answer.text(shown, "target", what)
    click.echo(printable(f"{withdrawn} withdrawn: {target} {_state(shown, what)}"))


def _attested_claims(platform: str, expect: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``--retire-attested``: the identity claims (text form) of the CAS at ``$CONFIDE_CAS_URL``,
    from its evidence verified again as ``cas attest`` verifies it, whose TLS certificate must be
    the pinned one (``$CONFIDE_CAS_CERT``): the version the approver attested. ``expect``
    (``--expect``): claims it must have, a :class:`~confide.errors.MeasurementError` otherwise,
    so that the version is the one the approver means, not only the one the operator made the
    pinned certificate's CAS (docs/cas.md "Retiring the old version")."""
    import hashlib
    import hmac

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from confide.cas.client import read_cert_file
    from confide.cas.pin import attest_cas
    from confide.cas.successor_client import attested_identity_claims
    from confide.collateral.dcap import source_for
    from confide.errors import AppraisalError
    from confide.platforms.dcap import COLLATERAL_ENV

    url, cert = os.environ.get("CONFIDE_CAS_URL"), os.environ.get("CONFIDE_CAS_CERT")
    if not url or not cert:
        raise UsageError(
            "--retire-attested: set CONFIDE_CAS_URL and CONFIDE_CAS_CERT (pinned with cas attest)"
        )
    sim_dir = os.environ.get("CONFIDE_SIM_DIR")
    pinned_pem = read_cert_file(Path(cert), "CONFIDE_CAS_CERT")
    key_pem = (
        read_small_file(
            Path(sim_dir) / "platform-key.pub.pem",
            MAX_SIM_KEY_FILE,
            "--retire-attested: the simulated platform key",
        )
        if sim_dir
        else None
    )
    try:
        pinned_der = x509.load_pem_x509_certificate(pinned_pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        raise UsageError(f"--retire-attested: {cert} is not a PEM certificate") from None
    location = os.environ.get(COLLATERAL_ENV)
    attested = attest_cas(
        url, sim_key_pem=key_pem, collateral=source_for(location) if location else None, expect=expect
    )
    if not hmac.compare_digest(attested.certificate_sha256, hashlib.sha256(pinned_der).hexdigest()):
        raise AppraisalError(
            "--retire-attested: the CAS at CONFIDE_CAS_URL presented another certificate than the pinned "
            "one: attest it again (cas attest --out) before naming its version"
        )
    claims = attested_identity_claims(attested.evidence, platform)
    if expect:
        expected = ", ".join(expect)
        click.echo(printable(f"--retire-attested: the attested CAS has the expected {expected}"), err=True)
    else:
        click.echo(
            "--retire-attested without --expect: the version is the attested CAS's, which the operator "
            "chooses; compare the claims below with the version you mean",
            err=True,
        )
    return claims


def _named_claims(option: str, items: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` items as claims in text form (values lower-case), each name once."""
    from confide.cas.successor_client import named_claims

    return named_claims(option, items)


def _state(shown: Mapping[str, Any], what: str) -> str:
    """``authorised`` or ``pending (K of N approvals)``, for an approval or a withdrawal (the
    CAS's answer ``shown``, ``what`` names it)."""
    return "authorised" if answer.flag(shown, "authorised", what) else _pending_state(shown, what)


def _expiry(text: str) -> int:
    """``--expires``: an ISO 8601 time with a zone, or ``N`` followed by ``m``, ``h`` or ``d``;
    refused unless it is ahead and at most 90 days away, as the CAS would refuse it."""
    from confide.cas.successor_client import parse_expiry

    return parse_expiry(text, int(datetime.now(UTC).timestamp()))


@cas_successor.group("board")
def cas_successor_board() -> None:
    """Change the successor board with the quorum of the current board (docs/cas.md "Changing
    the successor board")."""


@cas_successor_board.command("show")
def cas_successor_board_show() -> None:
    """Show the successor board, its generation and the pending changes with their approvers."""
    from confide.cas.client import CasClient

    click.echo(json.dumps(CasClient.from_env().successor_board(), indent=2))


@cas_successor_board.command("propose")
@click.option("--board", "board_file", type=_PATH, required=True, metavar="FILE",
              help="The new board: YAML or JSON of one rule, as cas serve --successor-board"
              " reads it.")  # fmt: skip
@click.option("--expires", required=True, metavar="TIME|DURATION",
              help="When this approval expires (ISO 8601 UTC time or 12h, 7d; at most 90 days).")  # fmt: skip
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def cas_successor_board_propose(board_file: Path, expires: str, identity_file: Path) -> None:
    """Propose a new successor board, signing the first approval of the change; prints the
    change id (what the other members approve) and its state."""
    from confide.cas.client import CasClient
    from confide.cas.successor_board import parse_board_file
    from confide.cas.successor_client import new_board_change, sign_board_change

    # what the CAS would refuse, refused before anything is signed or sent
    board = parse_board_file(board_file)
    expiry = _expiry(expires)
    ident = load_identity(identity_file)
    client = CasClient.from_env()
    _echo_change(sign_board_change(client, ident, new_board_change(client, board), expiry), "propose")


@cas_successor_board.command("approve")
@click.option("--change", required=True, metavar="ID",
              help="The change to approve: its id, as cas successor board propose and show"
              " print it.")  # fmt: skip
@click.option("--expires", required=True, metavar="TIME|DURATION",
              help="When this approval expires (ISO 8601 UTC time or 12h, 7d; at most 90 days).")  # fmt: skip
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def cas_successor_board_approve(change: str, expires: str, identity_file: Path) -> None:
    """Approve a pending change of the successor board. The change the CAS lists under that id
    is checked to hash to it (its board, generation and key id) before it is signed: the
    member signs the board the id names, whatever the CAS says."""
    from confide.cas.client import CasClient
    from confide.cas.successor_client import check_hex_id, listed_board_change, sign_board_change

    wanted = check_hex_id(change, "--change", "change")
    expiry = _expiry(expires)
    ident = load_identity(identity_file)
    client = CasClient.from_env()
    draft = listed_board_change(client, wanted)
    shown = json.dumps(draft.board.to_json())
    click.echo(f"approving the board {shown} (generation {draft.generation + 1})", err=True)
    _echo_change(sign_board_change(client, ident, draft, expiry), "approve")


def _echo_change(result: object, command: str) -> None:
    """What ``cas successor board COMMAND`` prints of the CAS's answer ``result``."""
    what = f"the CAS's answer to cas successor board {command}"
    shown = answer.obj(result, what)
    if answer.flag(shown, "applied", what):
        state = f"applied (the board is now generation {answer.integer(shown, 'generation', what)})"
    else:
        state = _pending_state(shown, what)
    change, digest = answer.text(shown, "change", what), answer.text(shown, "digest", what)
    click.echo(printable(f"{change} {state}"))
    click.echo(printable(f"approval {digest} (cas successor withdraw --approval names it)"), err=True)


def _pending_state(shown: Mapping[str, Any], what: str) -> str:
    """``pending (K of N approvals)`` (the CAS's answer ``shown``, ``what`` names it)."""
    have, needed = len(answer.texts(shown, "approvers", what)), answer.integer(shown, "needed", what)
    return f"pending ({have} of {needed} approvals)"


@cas_successor.group("retire")
def cas_successor_retire() -> None:
    """Retire a version on its own, with the successor board's quorum (docs/cas.md "Retiring a
    version on its own"): it then releases the master key to no one, is released to by no one
    and does not start on the database."""


@cas_successor_retire.command("show")
def cas_successor_retire_show() -> None:
    """Show the board, its generation, the pending retirements with their approvers and the
    retired versions."""
    from confide.cas.client import CasClient

    click.echo(json.dumps(CasClient.from_env().successor_retirements(), indent=2))


@cas_successor_retire.command("propose")
@click.option("--platform", required=True, help="The version's platform kind: sim, sgx, tdx or sev-snp.")
@click.option("--claim", "claims", multiple=True, required=True, metavar="NAME=VALUE",
              help="A code identity claim of the version to retire (exactly those of the platform:"
              " sim and sev-snp measurement; sgx mr_enclave; tdx mr_td, rtmr1, rtmr2).")  # fmt: skip
@click.option("--expires", required=True, metavar="TIME|DURATION",
              help="When this approval expires (ISO 8601 UTC time or 12h, 7d; at most 90 days).")  # fmt: skip
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def cas_successor_retire_propose(
    platform: str, claims: tuple[str, ...], expires: str, identity_file: Path
) -> None:
    """Propose retiring a version, signing the first approval; prints the retirement id (what the
    other members approve) and its state. Submit it to a CAS of another version: a CAS refuses
    to retire its own."""
    from confide.cas.client import CasClient
    from confide.cas.successor import code_identity
    from confide.cas.successor_client import check_code_claims, new_retirement, sign_retirement

    code = _named_claims("--claim", claims)
    # what the CAS would refuse, refused before anything is signed or sent
    check_code_claims(platform, code)
    expiry = _expiry(expires)
    ident = load_identity(identity_file)
    client = CasClient.from_env()
    draft = new_retirement(client, platform, code)
    click.echo(printable(f"retires the code {code_identity(platform, code)} on {platform}:"), err=True)
    for name, value in code.items():
        click.echo(printable(f"  {name}={value}"), err=True)
    _echo_retirement(sign_retirement(client, ident, draft, expiry), "propose")


@cas_successor_retire.command("approve")
@click.option("--retirement", required=True, metavar="ID",
              help="The retirement to approve: its id, as cas successor retire propose and show"
              " print it.")  # fmt: skip
@click.option("--expires", required=True, metavar="TIME|DURATION",
              help="When this approval expires (ISO 8601 UTC time or 12h, 7d; at most 90 days).")  # fmt: skip
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def cas_successor_retire_approve(retirement: str, expires: str, identity_file: Path) -> None:
    """Approve a pending retirement. The version the CAS lists under that id is checked to hash to
    it (its platform, code claims, the board's generation and the key id) before it is signed:
    the member signs the version the id names, whatever the CAS says."""
    from confide.cas.client import CasClient
    from confide.cas.successor import code_identity
    from confide.cas.successor_client import check_hex_id, listed_retirement, sign_retirement

    wanted = check_hex_id(retirement, "--retirement", "retirement")
    expiry = _expiry(expires)
    ident = load_identity(identity_file)
    client = CasClient.from_env()
    draft = listed_retirement(client, wanted)
    click.echo(
        printable(f"retires the code {code_identity(draft.platform, dict(draft.code))} on {draft.platform}:"),
        err=True,
    )
    for name, value in draft.code.items():
        click.echo(printable(f"  {name}={value}"), err=True)
    _echo_retirement(sign_retirement(client, ident, draft, expiry), "approve")


def _echo_retirement(result: object, command: str) -> None:
    """What ``cas successor retire COMMAND`` prints of the CAS's answer ``result``."""
    what = f"the CAS's answer to cas successor retire {command}"
    shown = answer.obj(result, what)
    if answer.flag(shown, "applied", what):
        state = f"applied (the version {answer.text(shown, 'identity', what)} is retired)"
    else:
        state = _pending_state(shown, what)
    retirement, digest = answer.text(shown, "retirement", what), answer.text(shown, "digest", what)
    click.echo(printable(f"{retirement} {state}"))
    click.echo(printable(f"approval {digest} (cas successor withdraw --approval names it)"), err=True)


@click.group()
def identity() -> None:
    """Stakeholder identities (Ed25519 key pairs)."""


@identity.command("create")
@click.option("--out", type=_PATH, required=True, help="Identity file to write (mode 0600).")
@click.option("--name", default="", help="A label for humans.")
def identity_create(out: Path, name: str) -> None:
    """Create an identity; prints its fingerprint (what policies name)."""
    ident = Identity.generate(name)
    ident.save(out)
    click.echo(ident.fingerprint)


@identity.command("show")
@click.option(
    "--identity",
    "identity_file",
    type=_PATH,
    required=True,
    help="The identity file (written by `confide identity create --out FILE`).",
)
def identity_show(identity_file: Path) -> None:
    """Print an identity's fingerprint."""
    click.echo(load_identity(identity_file).fingerprint)


@click.group()
def policy() -> None:
    """Create, update, approve and read policies on the CAS."""


@policy.command("apply")
@click.argument("policy_file", metavar="FILE.yaml", type=_PATH)
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def policy_apply(policy_file: Path, identity_file: Path) -> None:
    """Create or update a policy; prints the new version's hash.

    An update names the version it replaces (`predecessor: HASH`, the current version's hash);
    a board's update waits for approvals (stderr says so). A secret put into a service's
    command (readable in /proc/PID/cmdline) is warned about on stderr, one line per service and
    secret. The CAS is the one of client.env.

    \b
    Example:
      confide policy apply my-policy.yaml --identity alice.id
    """
    from confide.cas.client import CasClient
    from confide.policy import load_policy, policy_warnings

    ident = load_identity(identity_file)
    doc = load_policy(policy_file)
    client = CasClient.from_env()
    name, digest, state = answer.policy_state(client.apply(doc, ident), "the CAS's answer to policy apply")
    click.echo(printable(digest))
    if state == "pending":
        click.echo(printable(f"{name}: pending approval by the update board"), err=True)
    for warning in policy_warnings(doc):  # docs/limitations.md "confide run": not a refusal
        click.echo(printable(warning), err=True)  # it names the policy's file paths


@policy.command("approve")
@click.argument("name")
@click.option("--hash", "digest", required=True, help="The version to approve.")
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def policy_approve(name: str, digest: str, identity_file: Path) -> None:
    """Approve a pending policy version; prints its state (pending or active).

    \b
    Example:
      confide policy approve my-policy --hash HASH --identity bob.id
    """
    from confide.cas.client import CasClient

    result = CasClient.from_env().approve(name, digest, load_identity(identity_file))
    click.echo(printable(answer.policy_state(result, "the CAS's answer to policy approve")[2]))


@policy.command("show")
@click.argument("name")
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def policy_show(name: str, identity_file: Path) -> None:
    """Show a policy (current version, history, public parts of secrets; never secret values).

    \b
    Example:
      confide policy show my-policy --identity alice.id
    """
    from confide.cas.client import CasClient

    click.echo(json.dumps(CasClient.from_env().show(name, load_identity(identity_file)), indent=2))


@policy.command("events")
@click.argument("name")
@click.option("--identity", "identity_file", type=_PATH, required=True, help=_IDENTITY_HELP)
def policy_events(name: str, identity_file: Path) -> None:
    """Show the recorded events of a policy (changes, attestations, releases)."""
    from confide.cas.client import CasClient

    what = "the CAS's answer to policy events"
    shown = answer.obj(CasClient.from_env().events(name, load_identity(identity_file)), what)
    for ev in answer.objects(shown, "events", what):
        click.echo(
            json.dumps({k: v for k, v in ev.items() if k not in ("entry", "inclusion_proof")}, sort_keys=True)
        )


@policy.command("crl")
@click.argument("name")
@click.argument("secret")
@click.option("--identity", "identity_file", type=_PATH,
              help="Read as this identity (a reader of the policy); without it, only the CRL of a CA "
              "declared export_public is served. The CRL is checked against the CA certificate policy "
              "show gives this identity, unless --ca is given.")  # fmt: skip
@click.option("--out", type=_PATH, help="Write the CRL here (default: standard output).")
@click.option("--der", is_flag=True, help="DER instead of PEM.")
@click.option("--ca", "ca_file", type=_PATH, metavar="FILE",
              help="Check the CRL against this CA certificate (PEM or DER): the one you trust for "
              "SECRET. Without it and without --identity, its issuer and signature are not checked "
              "(said on standard error).")  # fmt: skip
@click.option("--allow-expired", is_flag=True,
              help="Write a CRL whose nextUpdate is past (else refused, exit 26).")  # fmt: skip
def policy_crl(
    name: str,
    secret: str,
    identity_file: Path | None,
    out: Path | None,
    der: bool,
    ca_file: Path | None,
    allow_expired: bool,
) -> None:
    """The current CRL of the CA SECRET of policy NAME (a CA the CAS generated), once checked:
    one CRL in the form asked for, issued and signed by the CA's certificate (keyUsage cRLSign),
    its nextUpdate not past. What was checked (number, thisUpdate, nextUpdate, the CA
    certificate's SHA-256) goes to standard error; nothing is written when a check fails.

    \b
    Example:
      confide policy crl my-policy ca --identity alice.id --out ca.crl
      confide policy crl my-policy ca --ca ca.pem --der --out ca.crl   # public (export_public)
    """
    from confide.cas.client import CasClient
    from confide.sdk import Cas

    ident = load_identity(identity_file) if identity_file is not None else None
    with Cas(CasClient.from_env()) as cas:
        checked = cas.checked_crl(
            name, secret, ident, pem=not der, ca=ca_file, allow_expired=allow_expired,
            now=datetime.now(UTC),
        )  # fmt: skip
    if out is not None:
        from confide.fsutil import new_file_error

        try:
            out.write_bytes(checked.data)
        except OSError as exc:
            raise new_file_error(
                exc, f"--out {str(out)!r}: cannot write the CRL: {exc.strerror or exc}"
            ) from None
    else:
        sys.stdout.buffer.write(checked.data)
        sys.stdout.buffer.flush()
    hint = "" if checked.verified else " (give --ca FILE, or --identity FILE, to check it)"
    click.echo(printable(checked.summary()) + hint, err=True)


@policy.command("revoke")
@click.argument("name")
@click.argument("secret")
@click.option(
    "--identity",
    "identity_file",
    type=_PATH,
    required=True,
    help="An identity on the policy's access_policy.update rules (alone or on its board).",
)
@click.option("--serial", help="The serial (hex) of the certificate to revoke.")
@click.option("--all-valid", is_flag=True, help="Revoke every certificate of SECRET still valid.")
@click.option(
    "--reason",
    type=click.Choice(list(REVOCATION_REASONS)),
    default="unspecified",
    show_default=True,
    help="RFC 5280 §5.3.1 reason (unspecified: listed without a reason code).",
)
def policy_revoke(
    name: str, secret: str, identity_file: Path, serial: str | None, all_valid: bool, reason: str
) -> None:
    """Revoke a certificate of SECRET (one the CAS generated or issued to a runtime, under a CA
    of policy NAME) without changing its declaration; the CA's next CRL is issued at once.
    Prints what was revoked and re-issued (JSON)."""
    from confide.cas.client import CasClient

    if (serial is None) == (not all_valid):
        raise UsageError("give exactly one of --serial HEX and --all-valid")
    ident = load_identity(identity_file)
    result = CasClient.from_env().revoke(name, secret, ident, reason=reason, serial=serial)
    click.echo(json.dumps(result, indent=2))


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--config-id", required=True, help="POLICY/SERVICE")
@click.option(
    "--tee",
    type=click.Choice(["sim", "tdx", "sev-snp", "sgx-gramine", "az-vtpm", "gce-tpm", "aws-nitro"]),
    default="sim",
    show_default=True,
    help="az-vtpm: an Azure SEV-SNP or TDX confidential VM (paravisor vTPM, /dev/tpmrm0); "
    "gce-tpm: a Google Compute Engine Shielded or Confidential VM (its vTPM, /dev/tpmrm0, or "
    "$CONFIDE_TPM); aws-nitro: inside an AWS Nitro Enclave (the NSM device, /dev/nsm)",
)
@click.option(
    "--gpus",
    metavar="all|N",
    help="Also attest this VM's NVIDIA H100 GPUs in confidential-computing mode (NVML, "
    "libnvidia-ml.so.1): all of them, or the first N; with --tee tdx, sev-snp, az-vtpm or sim.",
)
@click.option(
    "--gpu-index",
    "gpu_index",
    metavar="I,J,...",
    help="Instead of --gpus: attest the GPUs with these NVML indices (e.g. 0,2, as nvidia-smi "
    "numbers them), each once, their reports sent in this order.",
)
@click.option(
    "--gpu-ready-state",
    "gpu_ready_state",
    type=click.Choice(["set", "skip"]),
    help="With --gpus/--gpu-index: 'set' (the default) sets the GPUs' confidential-computing ready "
    "state (they then accept CUDA work) after the CAS accepted them, right before COMMAND starts; "
    "it is system-wide, so every GPU must be attested, and needs root. 'skip' leaves it alone.",
)
@click.option(
    "--gpu-ocsp",
    "gpu_ocsp",
    metavar="URL|DIR",
    help="With --gpus/--gpu-index: staple the OCSP responses about each GPU's certificate chain to "
    "the evidence, fetched from this responder (NVIDIA's is https://ocsp.ndis.nvidia.com/) or read "
    "from DIR/<serial hex>.der, for a CAS that does not ask the responder itself.",
)
@click.option(
    "--volume-wait",
    "volume_wait_s",
    metavar="SECONDS",
    help="Wait up to SECONDS (0 to 86400) for the protected volumes' locks while other mounts hold "
    "them (a volume this run may seal needs it alone; an ephemeral one waits behind a writer) "
    "instead of failing at once (exit 50). Default: $CONFIDE_VOLUME_WAIT, else 0.",
)
@click.option(
    "--gce-tee",
    "gce_tee",
    type=click.Choice(["auto", "configfs-tsm", "none"]),
    default="auto",
    show_default=True,
    help="With --tee gce-tpm: also send the Confidential VM's SEV-SNP report or TDX quote, bound to "
    "the same nonce (go-tpm-tools fields 8/9), from configfs-tsm: 'auto' when "
    "/sys/kernel/config/tsm/report exists, 'configfs-tsm' always (refused without it), 'none' never "
    "(the vTPM quote alone).",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(
    config_id: str,
    tee: str,
    gpus: str | None,
    gpu_index: str | None,
    gpu_ready_state: str | None,
    gpu_ocsp: str | None,
    volume_wait_s: str | None,
    gce_tee: str,
    command: tuple[str, ...],
) -> None:
    """Attest, receive configuration and secrets, and exec COMMAND (after --).

    Exits with COMMAND's exit code, or prints a one-line reason and exits with the error's code
    (31 when the policy refuses the evidence, e.g. another measurement).

    \b
    Example:
      confide run --config-id my-policy/my-service --tee sim -- /path/to/app ARGS
    """
    from confide.cas.client import CasClient
    from confide.runtime.quote import (
        ConfigfsTsmQuoteProvider,
        GramineQuoteProvider,
        QuoteProvider,
        SimQuoteProvider,
    )
    from confide.runtime.run import attest_and_prepare, launch, supervise
    from confide.volume.lock import volume_wait
    from confide.volume.mount import end_by_signal

    policy_name, sep, service = config_id.rpartition("/")
    if not sep or not policy_name or not service:
        raise UsageError(f"--config-id: got {config_id!r}, expected POLICY/SERVICE")
    wait = volume_wait(volume_wait_s)  # a bad value is refused before the CAS is asked
    with_gpus = gpus is not None or gpu_index is not None
    gpu_count, gpu_indices = _gpu_selection(gpus, gpu_index, tee) if with_gpus else (None, None)
    if gpu_ocsp is not None and not with_gpus:
        raise UsageError("--gpu-ocsp needs --gpus or --gpu-index")
    if gpu_ready_state is not None and not with_gpus:
        raise UsageError("--gpu-ready-state needs --gpus or --gpu-index")
    if gce_tee != "auto" and tee != "gce-tpm":
        raise UsageError("--gce-tee goes with --tee gce-tpm")
    provider: QuoteProvider
    measured = None
    configfs_check = None
    if tee == "sim":
        sim_dir = os.environ.get("CONFIDE_SIM_DIR")
        if not sim_dir:
            raise UsageError("--tee sim: CONFIDE_SIM_DIR is not set (source the CAS's client.env)")
        if not command:
            raise UsageError("--tee sim measures the command: give it after --")
        sim_provider = SimQuoteProvider.for_command(Path(sim_dir), list(command))
        provider, measured = sim_provider, sim_provider.launch_measurement
    elif tee in ("tdx", "sev-snp"):
        from confide.verify.result import Platform

        configfs = ConfigfsTsmQuoteProvider(expect=Platform(tee))
        configfs_check = configfs.check
        provider = configfs
    elif tee == "az-vtpm":
        from confide.runtime.azure_vtpm import AzureVtpmQuoteProvider

        provider = AzureVtpmQuoteProvider()
    elif tee == "gce-tpm":
        from confide.runtime.gce_aia import HttpIssuerFetcher
        from confide.runtime.gce_tpm import GceTpmQuoteProvider
        from confide.runtime.quote import CONFIGFS_TSM_ROOT
        from confide.runtime.tpm import Tpm, transport_from_env

        tee_report: ConfigfsTsmQuoteProvider | None = None
        if gce_tee == "configfs-tsm" or (gce_tee == "auto" and CONFIGFS_TSM_ROOT.is_dir()):
            tee_report = ConfigfsTsmQuoteProvider()
            configfs_check = tee_report.check  # no configfs-tsm: refused before the CAS is asked
        # The AK certificate's issuers from their caIssuers URLs, as go-tpm-tools sends them
        provider = GceTpmQuoteProvider(
            Tpm(transport_from_env()), tee=tee_report, issuer_fetcher=HttpIssuerFetcher()
        )
    elif tee == "aws-nitro":
        from confide.runtime.nitro import DeviceNsmTransport, NitroQuoteProvider

        transport = DeviceNsmTransport()
        transport.check()  # no /dev/nsm: refuse before asking the CAS for a nonce
        provider = NitroQuoteProvider(transport)
    else:
        provider = GramineQuoteProvider()
    before_exec = None
    if with_gpus:
        from confide.collateral.nvidia_ocsp import source_for as ocsp_source_for
        from confide.runtime.nvidia import GpuQuoteProvider, NvmlGpuSource

        # No NVML, or no such directory: refuse before asking the CAS for a nonce.
        stapler = ocsp_source_for(gpu_ocsp, "--gpu-ocsp") if gpu_ocsp is not None else None
        gpu_provider = GpuQuoteProvider(
            provider,
            NvmlGpuSource(),
            count=gpu_count,
            indices=gpu_indices,
            ocsp=stapler,
            ready=gpu_ready_state != "skip",
            warn=lambda message: click.echo(printable(f"confide run: warning: {message}"), err=True),
        )
        provider = gpu_provider
        if gpu_ready_state != "skip":
            before_exec = functools.partial(_gpus_ready, gpu_provider)
    if configfs_check is not None:
        # No configfs-tsm, or its provider is of the other platform (an SEV-SNP guest asked for
        # --tee tdx, or the reverse) or unknown: refuse before the CAS is looked up or asked for
        # a nonce (after the GPU checks above, which come first as they did).
        configfs_check()
    client = CasClient.from_env()
    try:
        plan = attest_and_prepare(client, provider, policy_name, service, list(command))
    except ConfideError as exc:
        # Issue #4's command-line contract: a refused attestation or appraisal is a non-zero
        # exit code and a one-line reason (and nothing else on stderr: scripts read that line).
        click.echo(f"error: {printable(_one_line(exc.diagnostics()))}", err=True)
        sys.exit(exc.exit_code)
    if tee == "sim":
        # Said right before the program starts, after everything that can still refuse it: the
        # CAS's appraisal, and confide run's own once the volumes are mounted (an absent
        # component outside them, a volume's tag): before them it would be more lines next to
        # a refusal's one-line reason. Every simulated service that runs is preceded by it.
        before_exec = functools.partial(_sim_warning, measured, before_exec)
    # docs/limitations.md "confide run": said right before the program starts, as the simulated
    # TEE's warning is (after every refusal, which stays the only line), about the release the
    # program runs on (after a wait for a volume sealed anew meanwhile: the second one's)
    announce = functools.partial(_cmdline_warning, service)
    if measured is not None:
        plan = dataclasses.replace(plan, measured=measured)
    sys.stdout.flush()
    # From here on the CAS accepted the attestation and its release decrypted: only now, right
    # before the program starts, may the GPUs' ready state be set (before_exec).
    if plan.volumes:

        def reattest() -> Launch:
            # after a wait for a volume that another run sealed meanwhile: its new tag
            again = attest_and_prepare(client, provider, policy_name, service, list(command))
            return again if measured is None else dataclasses.replace(again, measured=measured)

        try:
            code = supervise(
                plan, client, before_exec=before_exec, volume_wait=wait, reattest=reattest, announce=announce
            )
        except WaitStoppedError as exc:  # nothing injected or mounted: the signal ends the run
            client.close()
            end_by_signal(exc)
        client.close()
        sys.exit(code)
    client.close()
    launch(plan, before_exec=before_exec, announce=announce)


def _cmdline_warning(service: str, plan: Launch) -> None:
    """One line per secret the policy put into the command's arguments of the release ``plan``
    (the one the program runs on), on stderr (what ``confide policy apply`` printed:
    :func:`confide.policy.command_secret_warning`)."""
    from confide.policy import command_secret_warning

    for secret in plan.command_secrets:
        click.echo(printable(_one_line(command_secret_warning(service, secret[:128]))), err=True)


def _sim_warning(measured: Measurement | None, then: Callable[[], None] | None) -> None:
    """``then`` (the GPUs' ready state), then the simulated TEE's warning and the notes on the
    components ``measured`` as absent, on stderr."""
    if then is not None:
        then()
    click.echo("confide run: SIMULATED TEE - no hardware protection", err=True)
    for item in measured.absent if measured is not None else ():
        click.echo(
            printable(
                f"confide run: {item.path} does not exist yet: measured as absent, it must be inside a "
                "protected volume once mounted"
            ),
            err=True,
        )


def _one_line(text: str) -> str:
    """``text`` on one line: its non-blank lines joined with "; " (a multi-line diagnostic,
    such as a policy's list of problems, stays readable)."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


_GPU_TEES = ("tdx", "sev-snp", "az-vtpm", "sim")  # confide.policy.attestation.GPU_HOSTS


def _gpu_selection(
    gpus: str | None, gpu_index: str | None, tee: str
) -> tuple[int | None, tuple[int, ...] | None]:
    """``--gpus`` (None for ``all``, else the number, 1 to MAX_GPUS) or ``--gpu-index`` (the
    indices): (count, indices); only with a VM TEE."""
    from confide.policy.attestation import MAX_GPUS
    from confide.runtime.nvidia import parse_gpu_indices

    option = "--gpus" if gpus is not None else "--gpu-index"
    if tee not in _GPU_TEES:
        why = (
            # a GCE VM is a VM, but its vTPM's quote proves no confidential memory: GPUs are
            # attested with a confidential VM's hardware report only (gce-tpm is no GPU host)
            "a GCE vTPM's quote is not a confidential VM's hardware report, which GPUs in "
            'confidential-computing mode are attested with: docs/limitations.md "GCE vTPM"'
            if tee == "gce-tpm"
            else "GPUs in confidential-computing mode belong to confidential VMs, not to enclaves"
        )
        raise UsageError(f"{option}: got --tee {tee}, expected one of {', '.join(_GPU_TEES)} ({why})")
    if gpus is not None and gpu_index is not None:
        raise UsageError("give --gpus (all or a number) or --gpu-index (which GPUs), not both")
    if gpu_index is not None:
        return None, parse_gpu_indices(gpu_index)
    assert gpus is not None
    if gpus == "all":
        return None, None
    if not (gpus.isascii() and gpus.isdigit()) or len(gpus) > 6 or not 1 <= int(gpus) <= MAX_GPUS:
        raise UsageError(
            f"--gpus: got {gpus[:20]!r}, expected 'all' or a number from 1 to {MAX_GPUS} (to name "
            "GPUs: --gpu-index)"
        )
    return int(gpus), None


def _gpus_ready(provider: GpuQuoteProvider) -> None:
    """``confide run``'s ``before_exec`` with ``--gpu-ready-state set``: the CAS accepted the GPUs."""
    already = provider.mark_ready()
    gpus = ", ".join(map(str, provider.attested))
    if already:
        click.echo(
            f"confide run: the GPUs' ready state was set already (left as it is); GPU(s) {gpus} attested",
            err=True,
        )
    else:
        click.echo(
            f"confide run: GPU(s) {gpus} attested and accepted by the CAS: ready state set, the GPUs "
            "accept client requests",
            err=True,
        )
