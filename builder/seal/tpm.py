"""The TPM edge (tpm2-pytss ESAPI): storage key, create a sealed object, unseal it.

Secrets cross the TPM interface encrypted: sealing uses an HMAC session salted to the
storage key with parameter encryption, unsealing a salted policy session with response
encryption, so a bus or socket sniffer sees no key.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_RC,
    TPM2_SE,
    TPMA_OBJECT,
    TPMA_SESSION,
)
from tpm2_pytss.ESAPI import ESAPI
from tpm2_pytss.TCTILdr import TCTILdr
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import (
    TPM2B_DIGEST,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
)

from builder.errors import BuildError
from builder.run import debug_enabled
from builder.seal.srk import SRK_HANDLE, SrkAlg, alg_of, name_of, srk_template

# A sealed data object: no sign/decrypt (Unseal refuses those), policy only (userWithAuth
# clear), and the admin role through the policy too.
SEALED_ATTRIBUTES = TPMA_OBJECT.ADMINWITHPOLICY | TPMA_OBJECT.NODA
LOCAL_ATTRIBUTES = SEALED_ATTRIBUTES | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
# TPM2_Import wants fixedTPM and fixedParent clear on a duplicated object.
IMPORT_ATTRIBUTES = SEALED_ATTRIBUTES

POLICY_FAILURES = {TPM2_RC.POLICY_FAIL, TPM2_RC.VALUE, TPM2_RC.PCR_CHANGED}


class PolicyRefused(BuildError):
    """The TPM refused the policy: the PCRs are not those of an allowed mode."""


@contextmanager
def open_tpm(tcti: str) -> Iterator[Any]:
    """An ESAPI context on `tcti` (`swtpm:host=...,port=...`, `device:/dev/tpmrm0`)."""
    # The TSS logs every TPM error on stderr; a refused policy is an expected outcome
    # that we report ourselves. --debug (ACTVSM_DEBUG) keeps the TSS's own log.
    if not debug_enabled():
        os.environ.setdefault("TSS2_LOG", "all+NONE")
    name, _, conf = tcti.partition(":")
    try:
        ctx = ESAPI(TCTILdr(name, conf or None))
    except TSS2_Exception as exc:
        raise BuildError(
            f"cannot reach the TPM at {tcti!r}: {exc}",
            hint="check the TCTI string and that the TPM (or swtpm) is running",
        ) from None
    try:
        yield ctx
    finally:
        ctx.close()


@dataclass
class Parent:
    handle: Any  # ESYS_TR
    public: Any  # TPMT_PUBLIC
    persistent: bool

    @property
    def name(self) -> bytes:
        return name_of(self.public)


def _persistent_srk(ctx: Any) -> Parent | None:
    _, handles = ctx.get_capability(TPM2_CAP.HANDLES, SRK_HANDLE, 1)
    if SRK_HANDLE not in list(handles.data.handles):
        return None
    handle = ctx.tr_from_tpmpublic(SRK_HANDLE)
    public, _, _ = ctx.read_public(handle)
    return Parent(handle, public.publicArea, True)


@contextmanager
def storage_parent(ctx: Any, alg: SrkAlg, name: bytes | None = None) -> Iterator[Parent]:
    """The SRK at 0x81000001 if it fits (`alg`, and `name` when given), else a transient
    primary from the TCG template (flushed afterwards)."""
    srk = _persistent_srk(ctx)
    if srk is not None and alg_of(srk.public) is alg and name in (None, srk.name):
        yield srk
        return
    handle, public, _, _, _ = ctx.create_primary(None, srk_template(alg), ESYS_TR.OWNER)
    try:
        yield Parent(handle, public.publicArea, False)
    finally:
        ctx.flush_context(handle)


def srk_public(tcti: str, alg: SrkAlg = SrkAlg.ECC) -> bytes:
    """The marshalled TPM2B_PUBLIC of this TPM's SRK (what an offline seal targets)."""
    with open_tpm(tcti) as ctx, storage_parent(ctx, alg) as parent:
        return bytes(TPM2B_PUBLIC(publicArea=parent.public).marshal())


def _sym() -> Any:
    return TPMT_SYM_DEF.parse("aes128cfb")


def sealed_template(policy_digest: bytes, attributes: int) -> Any:
    pub = TPMT_PUBLIC(type=TPM2_ALG.KEYEDHASH, nameAlg=TPM2_ALG.SHA256, objectAttributes=attributes)
    pub.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
    pub.authPolicy = policy_digest
    return TPM2B_PUBLIC(publicArea=pub)


def seal_here(ctx: Any, parent: Parent, secret: bytes, policy_digest: bytes) -> tuple[bytes, bytes]:
    """TPM2_Create of a sealed data object; returns marshalled (TPM2B_PUBLIC, TPM2B_PRIVATE)."""
    session = ctx.start_auth_session(
        parent.handle, ESYS_TR.NONE, TPM2_SE.HMAC, _sym(), TPM2_ALG.SHA256
    )
    try:
        ctx.trsess_set_attributes(session, TPMA_SESSION.DECRYPT | TPMA_SESSION.CONTINUESESSION)
        sensitive = TPM2B_SENSITIVE_CREATE(sensitive=TPMS_SENSITIVE_CREATE(data=secret))
        template = sealed_template(policy_digest, LOCAL_ATTRIBUTES)
        private, public, _, _, _ = ctx.create(parent.handle, sensitive, template, session1=session)
    finally:
        ctx.flush_context(session)
    return bytes(public.marshal()), bytes(private.marshal())


def import_here(ctx: Any, parent: Parent, public: bytes, duplicate: bytes, seed: bytes) -> bytes:
    """TPM2_Import of an offline duplicate; returns the marshalled TPM2B_PRIVATE."""
    pub, _ = TPM2B_PUBLIC.unmarshal(public)
    dup, _ = TPM2B_PRIVATE.unmarshal(duplicate)
    sym_seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(seed)
    private = ctx.import_(
        parent.handle, b"", pub, dup, sym_seed, TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)
    )
    return bytes(private.marshal())


def unseal_here(
    ctx: Any,
    parent: Parent,
    public: bytes,
    private: bytes,
    selection: str,
    or_branches: Sequence[bytes],
) -> bytes:
    """PolicyPCR on the current PCRs, PolicyOR over the branches if any, then Unseal.

    Raises PolicyRefused when the TPM says the PCRs fit no branch.
    """
    pub, _ = TPM2B_PUBLIC.unmarshal(public)
    priv, _ = TPM2B_PRIVATE.unmarshal(private)
    obj = ctx.load(parent.handle, priv, pub)
    session = None
    try:
        session = ctx.start_auth_session(
            parent.handle, ESYS_TR.NONE, TPM2_SE.POLICY, _sym(), TPM2_ALG.SHA256
        )
        ctx.trsess_set_attributes(session, TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION)
        try:
            ctx.policy_pcr(session, TPM2B_DIGEST(), TPML_PCR_SELECTION.parse(selection))
            if or_branches:
                ctx.policy_or(session, TPML_DIGEST([TPM2B_DIGEST(b) for b in or_branches]))
            data = ctx.unseal(obj, session1=session)
        except TSS2_Exception as exc:
            if exc.error in POLICY_FAILURES:
                raise PolicyRefused(f"the TPM refused the policy ({exc})") from None
            raise
        return bytes(data)
    finally:
        if session is not None:
            with suppress(TSS2_Exception):
                ctx.flush_context(session)
        ctx.flush_context(obj)


def read_pcrs(ctx: Any, selection: str) -> dict[int, bytes]:
    """Current values of the selected PCRs (one bank), one PCR per read: TPM2_PCR_Read
    returns at most 8 digests per call."""
    bank, _, pcrs = selection.partition(":")
    values = {}
    for pcr in sorted(int(p) for p in pcrs.split(",")):
        _, _, digests = ctx.pcr_read(f"{bank}:{pcr}")
        (values[pcr],) = (bytes(d) for d in digests)
    return values
