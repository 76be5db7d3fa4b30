"""kitseg: kidney and kidney-tumor segmentation in CT, the cascaded KiTS methods side by side."""

from kitseg.errors import KitsegError
from kitseg.volume import Volume

__version__ = "0.1.0"

__all__ = ["KitsegError", "Volume", "__version__"]
