"""Record ``Metadata`` values by the platform's rules (``metadata_values``), and the
clean-up of values stored under 0.1's rules (``platform_metadata``).

The expected values are written out from the platform's provider
(``dcm_processor_db_provider.conversion.create_simplified_json`` run on the same
elements, see ``docs/dicom-index.md``); ``tests/platform_checks`` compares whole
series with the platform's own code.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dcm_processor_service.index.metadata import metadata_values
from dcm_processor_service.store.record_values import platform_metadata


def _dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = "123"
    ds.PatientAge = "045Y"
    ds.PatientSex = ""
    ds.PatientWeight = "80.50"
    ds.ReferringPhysicianName = "Doe^John^^Dr"
    ds.StudyDescription = "  padded "
    ds.SeriesNumber = "0012"
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.FrameIncrementPointer = 0x00181063
    ds.AccessionNumber = ""
    ds.PatientSize = None
    ds.PixelData = b"\0\0"
    ds.add_new(0x00091010, "LO", "private")
    return ds


def test_metadata_values_follow_the_platform_rules() -> None:
    assert metadata_values(_dataset()) == {
        "PatientName": "",  # always text, "" when empty
        "PatientID": "123",
        "PatientAge": 45,
        "PatientWeight": 80.5,
        "ReferringPhysicianName": "Doe^John^^Dr",  # the platform loses it ([{}])
        "StudyDescription": "  padded ",
        "SeriesNumber": 12,
        "ImageType": ["ORIGINAL", "", "AXIAL"],
        "PixelSpacing": [0.5, 0.25],
        "FrameIncrementPointer": "00181063",
    }  # empty tags, binary and private tags left out


def test_metadata_values_of_chosen_keywords() -> None:
    assert metadata_values(_dataset(), ("PatientID", "PatientSex", "NotAKeyword", "Modality")) == {
        "PatientID": "123"
    }


@pytest.mark.parametrize(
    ("age", "expected"), [("045Y", 45), ("018M", 1), ("006W", 0), ("ABC", "ABC")]
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # "ABC": as a PACS may send it
def test_patient_age(age: str, expected: object) -> None:
    ds = Dataset()
    ds.add_new(0x00101010, "AS", age)
    assert metadata_values(ds) == {"PatientAge": expected}


def test_values_stored_under_the_old_rules_are_brought_to_the_platform_rules() -> None:
    old = {"PatientName": None, "PatientAge": "043Y", "PatientSex": "", "Other": [], "K": 0}
    assert platform_metadata(old) == {"PatientName": "", "PatientAge": 43, "K": 0}
    new = metadata_values(_dataset())
    assert platform_metadata(new) == new
