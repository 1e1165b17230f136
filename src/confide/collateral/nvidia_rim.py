"""Where NVIDIA Reference Integrity Manifests (RIMs) come from when the runtime sent none
(``cas serve --nvidia-rim URL|DIR``; verified by :mod:`confide.verify.nvidia_rim`, never here).

A GPU's two RIMs are named by RIM IDs built from its attestation report's opaque data, as
NVIDIA's verifier (nvtrust) names them (:func:`rim_ids`):

* driver: ``NV_GPU_DRIVER_GH100_<driver version>`` (opaque field DRIVER_VERSION);
* VBIOS: ``NV_GPU_VBIOS_<project>_<project SKU>_<chip SKU>_<VBIOS version>``, upper case, from
  PROJECT, PROJECT_SKU and CHIP_SKU, and the VBIOS version as NVIDIA prints it (bytes 3.2.1.0.4
  of VBIOS_VERSION in hex) without its dots.

Every part is checked to be a short run of ``[0-9A-Za-z.-]``: the IDs are put into a URL path and
a file name, and the report's bytes are the request's (hostile).

One interface, :class:`RimSource` (``fetch(rim_id)``, the RIM's XML bytes, unverified), two
implementations:

* :class:`HttpRimSource` GETs ``<base URL><RIM ID>`` (default :data:`DEFAULT_RIM_URL`, NVIDIA's
  RIM service) whose JSON answer carries the RIM base64-encoded in ``rim``. The answer is read up
  to :data:`MAX_ANSWER_SIZE` bytes, the decoded RIM bounded by
  :data:`~confide.evidence.nvidia_rim.MAX_RIM_SIZE`; a transport error or an HTTP status but 200
  is a :class:`NetworkError`, a malformed answer a :class:`ParseError`.
* :class:`DirRimSource` reads ``DIR/<RIM ID>.xml`` (e.g. saved from the service or from NVIDIA's
  RIM bundles).

:func:`source_for` picks one for a ``URL|DIR`` option.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Protocol

import httpx2

from confide import jsonstrict
from confide.collateral import public_url
from confide.errors import CollateralMissingError, NetworkError, ParseError, UsageError
from confide.evidence.nvidia import NvidiaAttestationReport, OpaqueFieldType
from confide.evidence.nvidia_rim import MAX_RIM_SIZE
from confide.fsutil import read_regular
from confide.httpbody import answer_client, fetch

__all__ = [
    "DEFAULT_RIM_URL",
    "MAX_ANSWER_SIZE",
    "DirRimSource",
    "HttpRimSource",
    "RimSource",
    "rim_id_version",
    "rim_ids",
    "rim_targets",
    "source_for",
]

DEFAULT_RIM_URL = "https://rim.attestation.nvidia.com/v1/rim/"
MAX_ANSWER_SIZE = MAX_RIM_SIZE * 4 // 3 + 64 * 1024
"""The service's JSON answer: the base64 of a RIM of at most ``MAX_RIM_SIZE`` and a few fields."""
_HTTP_OK = 200
ANSWER_TIME = 30.0
"""Seconds one answer of the RIM service may take to arrive, its connection, status line,
headers and body (:func:`confide.httpbody.fetch`); longer is a :class:`NetworkError`."""
_PART = re.compile(r"[0-9A-Za-z.\-]{1,32}")
_STRUCTURE = "NVIDIA RIM ID"


class RimSource(Protocol):
    def fetch(self, rim_id: str) -> bytes:
        """The RIM named ``rim_id`` (a RIM ID of :func:`rim_ids`), unverified."""
        ...


def _field_text(report: NvidiaAttestationReport, field: OpaqueFieldType, what: str) -> str:
    value = report.response.field(field)
    if value is None:
        raise ParseError(
            f"the report has no {what} opaque field: no RIM ID can be named", structure=_STRUCTURE
        )
    try:
        text = value.rstrip(b"\x00").decode("ascii")
    except UnicodeDecodeError:
        raise ParseError(f"{what}: got non-ASCII bytes, expected text", structure=_STRUCTURE) from None
    if not _PART.fullmatch(text):
        raise ParseError(f"{what}: got {text[:40]!r}, expected 1-32 of [0-9A-Za-z.-]", structure=_STRUCTURE)
    return text


def rim_ids(report: NvidiaAttestationReport) -> tuple[str, str]:
    """(driver RIM ID, VBIOS RIM ID) of the GPU that made ``report`` (module docstring)."""
    (driver_id, _), (vbios_id, _) = rim_targets(report)
    return driver_id, vbios_id


def rim_targets(report: NvidiaAttestationReport) -> tuple[tuple[str, str], tuple[str, str]]:
    """((driver RIM ID, driver version), (VBIOS RIM ID, VBIOS version)) of ``report``: the
    versions as a RIM's ``colloquialVersion`` must give them (the VBIOS version dotted, NVIDIA's
    ``96.00.9f.00.01`` form; compared without regard to case)."""
    driver = _field_text(report, OpaqueFieldType.DRIVER_VERSION, "DRIVER_VERSION")
    project = _field_text(report, OpaqueFieldType.PROJECT, "PROJECT")
    project_sku = _field_text(report, OpaqueFieldType.PROJECT_SKU, "PROJECT_SKU")
    chip_sku = _field_text(report, OpaqueFieldType.CHIP_SKU, "CHIP_SKU")
    vbios = report.response.field(OpaqueFieldType.VBIOS_VERSION)
    if vbios is None or len(vbios) < 5:
        raise ParseError("the report has no 5-byte VBIOS_VERSION opaque field", structure=_STRUCTURE)
    parts = [f"{vbios[i]:02x}" for i in (3, 2, 1, 0, 4)]
    return (
        (f"NV_GPU_DRIVER_GH100_{driver}", driver),
        (f"NV_GPU_VBIOS_{project}_{project_sku}_{chip_sku}_{''.join(parts)}".upper(), ".".join(parts)),
    )


_DRIVER_PREFIX = "NV_GPU_DRIVER_GH100_"
_VBIOS_VERSION = re.compile(r"NV_GPU_VBIOS_.*_([0-9A-Fa-f]{10})")


def rim_id_version(rim_id: str) -> str | None:
    """The version a RIM ID of :func:`rim_targets` names (what the RIM's ``colloquialVersion``
    must be, compared without regard to case), or ``None`` for an ID of another form."""
    if rim_id.startswith(_DRIVER_PREFIX):
        return rim_id[len(_DRIVER_PREFIX) :] or None
    match = _VBIOS_VERSION.fullmatch(rim_id)
    if match is None:
        return None
    digits = match.group(1).lower()
    return ".".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def _check_id(rim_id: str) -> None:
    if not re.fullmatch(r"NV_GPU_(DRIVER|VBIOS)_[0-9A-Za-z._\-]{1,160}", rim_id):
        raise UsageError(f"got RIM ID {rim_id[:60]!r}, expected NV_GPU_DRIVER_... or NV_GPU_VBIOS_...")


def source_for(location: str, option: str = "--nvidia-rim") -> HttpRimSource | DirRimSource:
    """The source ``location`` names: an http(s) RIM service URL, else a directory of RIM files
    (:class:`UsageError` when it is neither)."""
    if location.startswith(("http://", "https://")):
        return HttpRimSource(location, option=option)
    return DirRimSource(Path(location), option=option)


class HttpRimSource:
    """NVIDIA's RIM service (or a mirror): ``GET <url><RIM ID>``, JSON ``{"rim": base64, ...}``."""

    def __init__(
        self,
        url: str = DEFAULT_RIM_URL,
        *,
        transport: httpx2.BaseTransport | None = None,
        timeout: float = 10.0,
        option: str = "--nvidia-rim",
        answer_time: float = ANSWER_TIME,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{option}: got {public_url(url)!r}, expected an http(s) URL or a directory")
        self.url = url if url.endswith("/") else url + "/"
        self.answer_time = answer_time
        self._client = answer_client(transport=transport, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def fetch(self, rim_id: str) -> bytes:
        _check_id(rim_id)
        where = f"NVIDIA RIM service {public_url(self.url)}"

        def status(resp: httpx2.Response) -> None:
            if resp.status_code != _HTTP_OK:
                raise NetworkError(f"{where}: got HTTP {resp.status_code} for {rim_id}, expected 200")

        try:
            data = fetch(
                self._client, "GET", self.url + rim_id, headers={"Accept": "application/json"},
                limit=MAX_ANSWER_SIZE, within=self.answer_time, check=status,
                too_large=lambda how: ParseError(how, structure=f"answer of {where}"),
                too_slow=lambda how: NetworkError(f"{where}: the answer {how}"),
            ).content  # fmt: skip
        except httpx2.HTTPError as exc:
            raise NetworkError(f"{where}: {type(exc).__name__}: {exc}") from None
        return _rim_from_answer(data, where)


def _rim_from_answer(data: bytes, where: str) -> bytes:
    structure = f"answer of {where}"
    answer = jsonstrict.loads(data, structure=structure)
    encoded = answer.get("rim") if isinstance(answer, dict) else None
    if not isinstance(encoded, str):
        raise ParseError('expected a JSON object with a string "rim"', structure=structure)
    if len(encoded) > MAX_RIM_SIZE * 4 // 3 + 4:
        raise ParseError(f"RIM of more than {MAX_RIM_SIZE} bytes", structure=structure)
    try:
        rim = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError('"rim" is not base64', structure=structure) from None
    if len(rim) > MAX_RIM_SIZE:  # pragma: no cover - bounded by the length check above
        raise ParseError(f"RIM of more than {MAX_RIM_SIZE} bytes", structure=structure)
    return rim


class DirRimSource:
    """Stored RIMs in a directory: ``<RIM ID>.xml``."""

    def __init__(self, root: Path, *, option: str = "--nvidia-rim") -> None:
        if not root.is_dir():
            raise UsageError(f"{option}: {str(root)!r} is not a directory (or give an http(s) URL)")
        self.root = root

    def fetch(self, rim_id: str) -> bytes:
        _check_id(rim_id)
        path = self.root / f"{rim_id}.xml"
        try:
            data = read_regular(path, MAX_RIM_SIZE)  # a FIFO there is refused, not waited on
        except FileNotFoundError:
            raise CollateralMissingError(f"no RIM {rim_id}: expected {str(path)!r}") from None
        except OSError as exc:
            raise CollateralMissingError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        if len(data) > MAX_RIM_SIZE:
            raise ParseError(f"more than {MAX_RIM_SIZE} bytes", structure=f"RIM {str(path)!r}")
        return data
