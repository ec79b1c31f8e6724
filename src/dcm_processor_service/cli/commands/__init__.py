"""The commands of ``dcm-service``, one module per command or group.

Each module defines Click commands that take the call's
:class:`~dcm_processor_service.cli.options.CliState`; :mod:`..app` registers them and
adds the global options (``-v``, ``--json``). What is heavy (the runner, the DICOM
index, imaging, the network stack) is imported inside the command functions.
"""
