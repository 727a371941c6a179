"""The transform's defaults and bounds, importable without torch (the command line's
``--help`` shows them before any heavy import)."""

DEFAULT_TARGET_VFE = 0.8
MAX_TARGET_VFE = 1.2  # a full shuffle scores about 1; some images reach a little more


def default_region_size(height: int, width: int | None = None) -> int:
    """The region side every function uses when none is given: a quarter of the image's
    shorter side rounded down to a power of two that divides both sides, so the grid of
    regions stays about 4x4 (8 px at 32, 16 at 64, 32 at 224); 2 when none does."""
    width = height if width is None else width
    size = 2
    while size * 2 <= min(height, width) // 4 and height % (size * 2) == 0 and width % (size * 2) == 0:
        size *= 2
    return size


def region_size_to_crop(height: int, width: int) -> int:
    """For an image of any size that will be cropped to whole regions (the command line):
    a quarter of the shorter side rounded down to a power of two, at least 2."""
    size = 2
    while size * 2 <= min(height, width) // 4:
        size *= 2
    return size
