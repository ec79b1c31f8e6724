"""The DICOM index: instances filed under patient → study → series, and reading them back.

The modules, from the top down (each imports only those below it, the store and
:mod:`dcm_processor_service.sources`):

* :mod:`.select` - pick series by rules (``select_series``, ``SeriesSelector``);
* :mod:`.series` - series access: ``get_series_dicom`` and the typed record wrappers;
* :mod:`.ingest` - file DICOM into the store (``ingest``, ``iter_ingest``, the report);
* :mod:`.verify` - is a file whole, or truncated;
* :mod:`.metadata` - the records' ``Metadata`` schema, the patient key, and a header
  as simplified JSON (``get_simplified_json``);
* :mod:`.order` - THE slice order (applied to records and datasets), the slice normal
  and the image plane.

The public names are re-exported by the package (``dcm_processor_service.ingest``,
``get_series_dicom``, ...). The index never imports :mod:`dcm_processor_service.imaging`.
"""
