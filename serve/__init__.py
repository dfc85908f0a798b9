"""The Ray Serve application (``serve.app``) and its ``config.yaml``."""
