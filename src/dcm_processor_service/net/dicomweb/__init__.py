"""DICOMweb peers: sending by STOW-RS, searching by QIDO-RS, retrieving by WADO-RS.

The modules, from the top down (each imports only those below it, and the shared parts
of :mod:`dcm_processor_service.net`):

* :mod:`.stow` - :class:`~.stow.StowSender`, the DICOMweb twin of
  :class:`~dcm_processor_service.DicomSender` (same methods, same
  :class:`~dcm_processor_service.SendReport`), and its QIDO-RS probe (``send_echo``);
* :mod:`.qido_wado` - QIDO-RS searches (DICOM JSON -> datasets) and WADO-RS retrievals
  (streamed into one file per instance);
* :mod:`.multipart` - ``multipart/related`` bodies in bounded memory: the request writer
  (exact length, files read in blocks) and the response reader;
* :mod:`.auth` - secret references resolved at request time, and the verified HTTP client;
* :mod:`.errors` - HTTP and transport failures mapped onto the package's network errors.

The peer record's DICOMweb part is :class:`~dcm_processor_service.store.DicomWebEndpoint`.
"""
