"""ENCLS leaves (SDM "Intel SGX Instruction References", supervisor
leaves), one module per group of the SDM's chapter on enclave operation:

* ``build``  — constructing an enclave: ECREATE, EADD, EEXTEND, EINIT
* ``paging`` — EPC and management of EPC pages: EPA, EBLOCK, ETRACK, EWB,
  ELDB/ELDU (and their batch entry points)
* ``sgx2``   — enclave dynamic memory management: EAUG, EMODPR, EMODT
* ``debug``  — EDBGRD, EDBGWR
* ``remove`` — EREMOVE

Operands arrive as values (the AVM sends the bytes of PAGEINFO, SECINFO and
source pages in its messages) and EPC addresses; a leaf raises a Fault
(``check`` names which check) or returns an SgxError (``Machine.refusal``
names which check). Each leaf is a plain function over a ``Machine``: no
executor, process or socket is needed to run one.
"""

from vsgx.evm.encls.build import (
    MAX_DEFERRED_RUNS,
    eadd,
    eadd_pages,
    eadd_uniform,
    ecreate,
    eextend,
    einit,
    launch_key,
    measure_pages,
)
from vsgx.evm.encls.debug import edbgrd, edbgwr
from vsgx.evm.encls.operands import secs_of
from vsgx.evm.encls.paging import (
    EvictedPage,
    eblock,
    eblock_pages,
    eld,
    eld_pages,
    eldu_deferred,
    epa,
    etrack,
    ewb,
    ewb_pages,
)
from vsgx.evm.encls.remove import destroy_enclave, eremove, eremove_enclave
from vsgx.evm.encls.sgx2 import eaug, emodpr, emodt
from vsgx.evm.epc import epc_pf

__all__ = [
    "MAX_DEFERRED_RUNS", "EvictedPage", "destroy_enclave", "eadd", "eadd_pages", "eadd_uniform",
    "eaug", "eblock",
    "eblock_pages", "ecreate", "edbgrd", "edbgwr", "eextend", "einit", "eld", "eld_pages",
    "eldu_deferred", "emodpr", "emodt", "epa", "epc_pf", "eremove", "eremove_enclave", "etrack",
    "ewb", "ewb_pages", "launch_key", "measure_pages", "secs_of",
]
