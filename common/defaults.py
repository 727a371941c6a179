"""The transform's defaults and bounds, importable without torch (the command line's
``--help`` shows them before any heavy import)."""

DEFAULT_TARGET_VFE = 0.8
DEFAULT_REGION_SIZE = 8
MAX_TARGET_VFE = 1.2  # a full shuffle scores about 1; some images reach a little more
