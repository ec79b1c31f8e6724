"""Talking DICOM to a peer (PACS): sending instances with C-STORE (or STOW-RS), checking
with C-ECHO, and query/retrieve for a job.

The public names are re-exported by the package (``dcm_processor_service.DicomSender``,
``SendReport``, ``InstanceResult``, ``Outcome``, ``EchoResult``). The modules, from the
top down (each imports only those below it):

* :mod:`.retrieve` - ``retrieve_series``/``retrieve_study``: fetch into the session
  through the ingest;
* :mod:`.peer_sender` - the sender for a peer record (STOW-RS or C-STORE);
* :mod:`.query` - ``find_studies``/``find_series``/``find_priors`` on either kind of
  peer (QIDO-RS or C-FIND), the peer and protocol choice;
* :mod:`.qr_dimse` - C-FIND, C-GET and C-MOVE to ourselves with pynetdicom;
* :mod:`.dicomweb` - DICOMweb: :class:`~.dicomweb.stow.StowSender`, QIDO-RS/WADO-RS,
  multipart bodies, credentials;
* :mod:`.sender` - :class:`~.sender.DicomSender`: settings, :meth:`~.sender.DicomSender.send`
  and C-ECHO;
* :mod:`.send_api` - the original's ``send_dicom_from_*`` API and the frame of every
  send, shared by both senders;
* :mod:`.options` - the sender's defaults and argument checks;
* :mod:`.delivery` - the one send loop: association groups, worker threads, retries
  with backoff, the in-doubt policy, the per-instance bookkeeping;
* :mod:`.instances` - what is sent: the inputs reduced to instances, and their payloads
  (stored bytes, or converted);
* :mod:`.contexts` - presentation contexts proposed from the data, and the route of
  each instance;
* :mod:`.results` - what a send reports: statuses, outcomes, the report;
* :mod:`.association` - one association (requestor side): negotiation, the PS3.8
  states, C-STORE/C-ECHO, release (with collisions) and abort;
* :mod:`.dimse` - command sets, and messages split into P-DATA-TF PDUs;
* :mod:`.transport` - socket I/O against whole-step deadlines (TLS, non-blocking +
  poll, ``TCP_NODELAY``/``TCP_QUICKACK``);
* :mod:`.pdu` - the Upper Layer PDUs as bytes;
* :mod:`.failures` - whether a failure is transient, and whether a request is in doubt;
* :mod:`.tls` - the client's :class:`ssl.SSLContext`.
"""
