"""Imaging: DICOM <-> NIfTI and derived DICOM objects a PACS accepts.

The modules, from the top down (each imports only those below it, the index and
:mod:`dcm_processor_service.sources`):

* :mod:`.series_nifti` - a stored series straight to NIfTI (``get_series_nifti``);
* :mod:`.nifti_read` - DICOM -> NIfTI with dcm2niix;
* :mod:`.nifti_write` - NIfTI -> DICOM (``nifti_to_dicom``): geometry of the affine,
  values kept;
* :mod:`.sr` - structured reports (text, TID 1500 measurements);
* :mod:`.seg` - DICOM Segmentation from a label volume;
* :mod:`.source_images` - the source series of a SEG/SR, in slice order;
* :mod:`.derived` - derived image series, Encapsulated PDF, writing datasets;
* :mod:`.reference` - joining a reference's patient and study (tags, character set,
  series numbers);
* :mod:`.provenance` - ``AlgorithmInfo``: AI provenance;
* :mod:`.pixels` - how values are stored in 16-bit pixels;
* :mod:`.geometry` - affines, display orientation, whether images form one volume.

The public names are re-exported by the package (``dcm_processor_service.nifti_to_dicom``,
``make_segmentation``, ...).
"""
