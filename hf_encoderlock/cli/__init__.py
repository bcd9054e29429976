"""The ``encoderlock`` command line: one module per sub-command (see :mod:`hf_encoderlock.cli.main`)."""
