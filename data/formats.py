"""What the readers share: the file kinds slicewise accepts and the message for anything else."""

from __future__ import annotations

from data.errors import InvalidInput

NOT_SUPPORTED = (
    "file is not a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha) or a zip of one DICOM series "
    "(or of a .nhdr/.mhd header with its data file)"
)
# Streaming reads (gzip, zip members) go in pieces of this many bytes, so a size limit stops them early.
CHUNK = 1 << 20


def kind_from_name(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return "nii.gz"
    if lower.endswith(".nii"):
        return "nii"
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".nrrd", ".mha")):
        return "itk"
    if lower.endswith((".nhdr", ".mhd")):
        return "itk-header"
    raise InvalidInput(f"{name}: {NOT_SUPPORTED} (unsupported file name extension)")
