"""The original ``dcm_processor_service.dicom_network.dicom_sender``: the DICOM sender.

Thin, lazy re-exports. This sender negotiates presentation contexts from the data it
sends, so ``REQUESTED_SOP_CLASSES`` and ``REQUESTED_TRANSFER_SYNTAXES`` (the original's
fixed proposal) only document what the original proposed; a SOP class the peer accepted
no context for gets the status ``STATUS_CONTEXT_NOT_ACCEPTED`` - here the standard
0x0122 (SOP class not supported), not the original's made-up 0xC001.
"""

from __future__ import annotations

from typing import Final

from .._lazy import lazy_attributes

_LAZY = {"DicomSender": "net.sender"}

__all__ = [
    *_LAZY,
    "REQUESTED_SOP_CLASSES",
    "REQUESTED_TRANSFER_SYNTAXES",
    "STATUS_CONTEXT_NOT_ACCEPTED",
]

#: The SOP classes the original proposed (CT, Enhanced CT, Secondary Capture,
#: Encapsulated PDF, Segmentation, RT Structure Set, Parametric Map, Basic Text /
#: Enhanced / Comprehensive / Comprehensive 3D SR).
REQUESTED_SOP_CLASSES: Final = [
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.104.1",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.481.3",
    "1.2.840.10008.5.1.4.1.1.30",
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
]
#: Explicit and Implicit VR Little Endian, the original's fixed transfer syntaxes.
REQUESTED_TRANSFER_SYNTAXES: Final = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
#: Status of an instance whose SOP class the peer accepted no presentation context for.
STATUS_CONTEXT_NOT_ACCEPTED: Final = 0x0122

__getattr__, __dir__ = lazy_attributes("dcm_processor_service", _LAZY, globals(), owner=__name__)
