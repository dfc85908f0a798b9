"""``serve/config.yaml`` and ``serve.app``, a shim kept for old import paths: the Serve application is
:mod:`kosent.serve`, installed with kosent."""
