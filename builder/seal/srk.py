"""Storage root keys: the TCG SRK templates and target SRK public areas read from files.

The templates follow the TCG TPM v2.0 Provisioning Guidance (section 7.5.1, SRK at
persistent handle 0x81000001) applied to the EK Credential Profile templates L-1 (RSA
2048) and L-2 (ECC NIST P-256): AES-128-CFB symmetric, with an EMPTY unique field, as
systemd (tpm2_get_srk_template, 255+) and tpm2_createprimary's defaults use it. (A
zero-filled unique gives another key; tpm2-tools 5.4 ignores `-u` files here, so the
initramfs script could not recreate it.) A primary created from them has the same
name as an SRK that systemd provisioned, so a token can name its parent by that name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_PUBLIC, TPMT_SYM_DEF_OBJECT

from builder.errors import input_error

SRK_HANDLE = 0x81000001

SRK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
)


class SrkAlg(StrEnum):
    ECC = "ecc"
    RSA = "rsa"


def aes128cfb() -> Any:
    return TPMT_SYM_DEF_OBJECT.parse("aes128cfb")


def srk_template(alg: SrkAlg) -> Any:
    """TPM2B_PUBLIC template of the TCG SRK for `alg`."""
    pub = TPMT_PUBLIC(nameAlg=TPM2_ALG.SHA256, objectAttributes=SRK_ATTRIBUTES)
    if alg is SrkAlg.ECC:
        pub.type = TPM2_ALG.ECC
        pub.parameters.eccDetail.symmetric = aes128cfb()
        pub.parameters.eccDetail.scheme.scheme = TPM2_ALG.NULL
        pub.parameters.eccDetail.curveID = TPM2_ECC.NIST_P256
        pub.parameters.eccDetail.kdf.scheme = TPM2_ALG.NULL
    else:
        pub.type = TPM2_ALG.RSA
        pub.parameters.rsaDetail.symmetric = aes128cfb()
        pub.parameters.rsaDetail.scheme.scheme = TPM2_ALG.NULL
        pub.parameters.rsaDetail.keyBits = 2048
        pub.parameters.rsaDetail.exponent = 0
    return TPM2B_PUBLIC(publicArea=pub)


def alg_of(public: Any) -> SrkAlg:
    """ECC or RSA from a TPMT_PUBLIC; anything else cannot be an import parent here."""
    if public.type == TPM2_ALG.ECC:
        return SrkAlg.ECC
    if public.type == TPM2_ALG.RSA:
        return SrkAlg.RSA
    raise ValueError(f"key type {public.type} is neither ECC nor RSA")


def name_of(public: Any) -> bytes:
    """The TPM name (nameAlg id || H(TPMT_PUBLIC)) of a TPMT_PUBLIC."""
    return bytes(public.get_name())


@dataclass(frozen=True)
class TargetSrk:
    """A target TPM's storage key public area, read from `source`."""

    source: Path
    public: Any  # TPMT_PUBLIC

    @property
    def alg(self) -> SrkAlg:
        return alg_of(self.public)

    @property
    def name(self) -> bytes:
        return name_of(self.public)


def read_target_srk(path: Path) -> TargetSrk:
    """Parse TPM2B_PUBLIC (tpm2_readpublic -o, systemd's .tpm2b_public), TPMT_PUBLIC or PEM.

    A PEM key gets the TCG SRK attributes and symmetric definition, which makes its name
    that of the SRK holding this key.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise input_error(f"cannot read target SRK: {exc.strerror}", file=path) from None
    try:
        public = _parse_public(data)
        alg_of(public)
    except Exception as exc:  # tpm2-pytss raises assorted types on bad bytes
        raise input_error(
            f"not a TPM public area or PEM public key ({exc})",
            file=path,
            hint="give `tpm2_readpublic -c 0x81000001 -o FILE` output, "
            "/var/lib/systemd/tpm2-srk-public-key.tpm2b_public or a PEM public key",
        ) from None
    if not public.objectAttributes & TPMA_OBJECT.RESTRICTED or not (
        public.objectAttributes & TPMA_OBJECT.DECRYPT
    ):
        raise input_error(
            "this key is not a storage key (restricted and decrypt must be set)", file=path
        )
    return TargetSrk(path, public)


def _parse_public(data: bytes) -> Any:
    if data.lstrip().startswith(b"-----BEGIN"):
        return TPM2B_PUBLIC.from_pem(
            data, objectAttributes=SRK_ATTRIBUTES, symmetric=aes128cfb()
        ).publicArea
    if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
        public, used = TPM2B_PUBLIC.unmarshal(data)
        area = public.publicArea
    else:
        area, used = TPMT_PUBLIC.unmarshal(data)
    if used != len(data):
        raise ValueError(f"{len(data) - used} trailing bytes")
    return area
