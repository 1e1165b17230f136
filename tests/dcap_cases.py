"""Every DCAP quote/collateral pair of tests/assets, with what MANIFEST.md says it verifies to.

``expected`` is (status, advisories) for a verified quote, or the confide error class name.
``qvl`` is what dcap-qvl 0.7.0 says (MANIFEST.md, "Result matrix"), for the differential test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class Case:
    quote: str
    collateral: str
    at: str
    expected: tuple[str, tuple[str, ...]] | str
    qvl: tuple[str, tuple[str, ...]] | str
    why_different: str = ""

    @property
    def id(self) -> str:
        return f"{Path(self.quote).name}@{Path(self.collateral).name}"

    @property
    def time(self) -> datetime:
        return datetime.fromisoformat(self.at.replace("Z", "+00:00"))

    def quote_bytes(self) -> bytes:
        from confide.evidence._reader import decode_evidence_text

        return decode_evidence_text((ASSETS / self.quote).read_bytes())

    def collateral_bytes(self) -> bytes:
        return (ASSETS / self.collateral).read_bytes()


NO_LEVEL = "TcbLevelNotFoundError"
QVL_NO_LEVEL = "No matching TCB level found"
SGX_0825 = "sgx/automata-dcap-attestation/collateral_0825_00606a000000.dcapqvl.json"
SGX_0225 = "sgx/automata-dcap-rs/collateral_2025-02.dcapqvl.json"
TDX_V5_MIXED = "tdx/google-go-tdx-guest/collateral_v5_2026-02.mixed.dcapqvl.json"
TDX_OUTDATED = "tdx/phala-dcap-qvl/tdx_quote_outdated_collateral.json"
TDX_PHALA = "tdx/phala-dcap-qvl/tdx_quote_collateral.json"
TDX_2023 = "tdx/google-go-tdx-guest/collateral_v4_2023-06.dcapqvl.json"
T0625_00806 = "tdx/automata-dcap-attestation/collateral_0625_00806f050000.dcapqvl.json"
T1025_00806 = "tdx/automata-dcap-attestation/collateral_1025_00806f050000.dcapqvl.json"
T0225_00806 = "tdx/automata-dcap-rs/collateral_2025-02.dcapqvl.json"
T0625_90C06 = "tdx/automata-dcap-attestation/collateral_0625_90c06f000000.dcapqvl.json"
OCCLUM_ADV = (
    "INTEL-SA-00586", "INTEL-SA-00614", "INTEL-SA-00615", "INTEL-SA-00657", "INTEL-SA-00730",
    "INTEL-SA-00738", "INTEL-SA-00767", "INTEL-SA-00828", "INTEL-SA-00837", "INTEL-SA-00960",
)  # fmt: skip
AZURE_ADV = ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986")
ALI_2026_ADV = ("INTEL-SA-01036", "INTEL-SA-01079", "INTEL-SA-01099", "INTEL-SA-01103", "INTEL-SA-01111")
DEBUG = "dcap-qvl refuses debug enclaves/TDs outright; confide verifies them and reports debug=true for the policy"
TCBV2 = "dcap-qvl cannot read SGX TCB Info v2; confide reads v2 and v3"
SERVICETD = (
    "dcap-qvl refuses a non-zero MRSERVICETD; confide reports mr_servicetd as a claim (Automata accepts it)"
)
SEPTVE = "dcap-qvl refuses TDs without SEPT_VE_DISABLE; confide reports sept_ve_disable=false as a claim"

CASES = [
    Case("sgx/phala-dcap-qvl/sgx_quote", "sgx/phala-dcap-qvl/sgx_quote_collateral.json", "2025-06-19T10:57:11Z",
         ("ConfigurationAndSWHardeningNeeded", ("INTEL-SA-00289", "INTEL-SA-00615")),
         ("ConfigurationAndSWHardeningNeeded", ("INTEL-SA-00289", "INTEL-SA-00615"))),
    Case("sgx/automata-dcap-rs/sgx_quote_v3_from_lib_rs.dat", SGX_0825, "2025-08-15T05:42:26Z",
         ("OutOfDate", ("INTEL-SA-00960", "INTEL-SA-00657", "INTEL-SA-00767", "INTEL-SA-00615")),
         ("OutOfDate", ("INTEL-SA-00960", "INTEL-SA-00657", "INTEL-SA-00767", "INTEL-SA-00615"))),
    Case("sgx/automata-dcap-rs/sgx_quote_v3_from_lib_rs.dat", SGX_0225, "2025-02-13T03:41:28Z",
         ("OutOfDate", ()), "Failed to decode TcbInfo", TCBV2),
    Case("sgx/trustee/occlum_quote.dat", SGX_0825, "2025-08-15T05:42:26Z", ("OutOfDate", OCCLUM_ADV),
         "Debug mode is enabled", DEBUG),
    Case("sgx/trustee/occlum_quote.dat", SGX_0225, "2025-02-13T03:41:28Z", ("OutOfDate", ()),
         "Failed to decode TcbInfo", TCBV2),
    Case("tdx/phala-dcap-qvl/tdx_quote", TDX_PHALA, "2025-06-19T10:33:27Z", ("UpToDate", ()), ("UpToDate", ())),
    Case("tdx/phala-dcap-qvl/tdx_quote_outdated", TDX_V5_MIXED, "2026-02-18T10:43:15Z", NO_LEVEL, QVL_NO_LEVEL),
    Case("tdx/phala-dcap-qvl/tdx_quote_outdated", TDX_OUTDATED, "2026-02-18T10:59:51Z", NO_LEVEL, QVL_NO_LEVEL),
    Case("tdx/phala-dcap-qvl/tdx-quote.hex", TDX_PHALA, "2025-06-19T10:33:27Z", NO_LEVEL, QVL_NO_LEVEL),
    Case("tdx/phala-dcap-qvl/quote-from-tappd.hex", TDX_PHALA, "2025-06-19T10:33:27Z", NO_LEVEL, QVL_NO_LEVEL),
    Case("tdx/google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat", TDX_2023, "2023-06-18T08:43:58Z", NO_LEVEL,
         QVL_NO_LEVEL),
    Case("tdx/google-go-tdx-guest/quote_v5_sample.dat", TDX_V5_MIXED, "2026-02-18T10:43:15Z", ("UpToDate", ()),
         ("UpToDate", ())),
    Case("tdx/google-go-tdx-guest/quote_v5_sample.dat", TDX_OUTDATED, "2026-02-18T10:59:51Z", ("UpToDate", ()),
         ("UpToDate", ())),
    Case("tdx/google-go-tdx-guest/cos-113-tdx-quote.dat", T0625_00806, "2025-06-04T09:52:38Z", ("UpToDate", ()),
         ("UpToDate", ())),
    Case("tdx/google-go-tdx-guest/cos-113-tdx-quote.dat", T1025_00806, "2025-10-19T17:49:50Z", ("UpToDate", ()),
         ("UpToDate", ())),
    Case("tdx/google-go-tdx-guest/cos-113-tdx-quote.dat", T0225_00806, "2025-02-13T03:51:41Z", ("UpToDate", ()),
         ("UpToDate", ())),
    Case("tdx/automata-dcap-attestation/quotes/alibaba_quote_5.dat", T0625_90C06, "2025-06-14T16:05:26Z",
         ("UpToDate", ()), "Invalid MR service TD", SERVICETD),
    Case("tdx/automata-dcap-attestation/quotes/alibaba_quote_5.dat", TDX_V5_MIXED, "2026-02-18T10:43:15Z",
         ("OutOfDate", ALI_2026_ADV), "Invalid MR service TD", SERVICETD),
    Case("tdx/automata-dcap-attestation/quotes/alibaba_quote_5.dat", TDX_OUTDATED, "2026-02-18T10:59:51Z",
         ("OutOfDate", ALI_2026_ADV), "Invalid MR service TD", SERVICETD),
    Case("tdx/automata-dcap-attestation/quotes/tdx_quote_5.dat", T0625_90C06, "2025-06-05T03:44:45Z", NO_LEVEL,
         QVL_NO_LEVEL),
    Case("tdx/automata-dcap-attestation/quotes/tdx_quote_5.dat", TDX_V5_MIXED, "2026-02-18T10:43:15Z", NO_LEVEL,
         QVL_NO_LEVEL),
    Case("tdx/automata-dcap-attestation/quotes/tdx_quote_5.dat", TDX_OUTDATED, "2026-02-18T10:59:51Z", NO_LEVEL,
         QVL_NO_LEVEL),
    Case("tdx/trustee/tdx_quote_4.dat", TDX_2023, "2023-06-18T08:43:58Z", ("UpToDate", ()),
         "Debug mode is enabled", DEBUG),
    Case("tdx/trustee-az-tdx-vtpm/td-quote.bin", T0625_00806, "2025-06-04T09:52:38Z", ("OutOfDate", AZURE_ADV),
         "SEPT_VE_DISABLE is not enabled", SEPTVE),
    Case("tdx/trustee-az-tdx-vtpm/td-quote.bin", T1025_00806, "2025-10-19T17:49:50Z", ("OutOfDate", AZURE_ADV),
         "SEPT_VE_DISABLE is not enabled", SEPTVE),
    Case("tdx/trustee-az-tdx-vtpm/td-quote.bin", T0225_00806, "2025-02-13T03:51:41Z", ("OutOfDate", AZURE_ADV),
         "SEPT_VE_DISABLE is not enabled", SEPTVE),
]  # fmt: skip

QUOTES = sorted({c.quote for c in CASES})
