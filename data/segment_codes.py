"""Coded concepts for DICOM-SEG segments: a label name that names a segmentation property type of the DICOM
standard (SNOMED CT, context group 7151) gets that type, with the category that goes with it; anything
else gets the generic Tissue / Tissue pair."""

from __future__ import annotations

import re

SYNONYMS = {
    "tumor": "Neoplasm",
    "tumour": "Neoplasm",
    "lesions": "Lesion",
    "oedema": "Edema",
    "kidneys": "Kidney",
    "lungs": "Lung",
}


def _keyword(name: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", str(name)) if w]
    if len(words) == 1 and words[0].lower() in SYNONYMS:
        return SYNONYMS[words[0].lower()]
    return "".join(w[:1].upper() + w[1:].lower() for w in words)


def segment_codes(name: str):
    """(category, type) pydicom Codes for a label name."""
    from pydicom.sr.codedict import codes

    keyword = _keyword(name)
    if keyword and keyword in codes.cid7151.dir():
        concept = getattr(codes.cid7151, keyword)
        if keyword in codes.cid7159.dir():  # lesions: masses, neoplasms, oedema ...
            return codes.SCT.MorphologicallyAbnormalStructure, concept
        return codes.SCT.AnatomicalStructure, concept
    return codes.SCT.Tissue, codes.SCT.Tissue
