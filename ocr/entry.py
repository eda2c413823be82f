"""The OCR commands (``ocr-train``, ``ocr-eval``, ``ocr-convert``, ``ocr-predict``), checking
the ``[ocr]`` extra first.

A light install (``pip install lmdb-image-cache``) has the commands but not PyTorch or OpenCV;
they then say what to install instead of failing with an ImportError traceback.
"""

from __future__ import annotations

import importlib.util
import sys

# Module name -> what to pip install.
_NEEDED = {
    "torch": "torch",
    "yaml": "pyyaml",
    "pyclipper": "pyclipper",
    "cv2": "opencv-python-headless",
    "shapely": "shapely",
}

INSTALL_HINT = (
    'pip install "lmdb-image-cache[ocr]" (the README\'s "Install" section shows the CPU and '
    "CUDA builds of torch)"
)


def missing_modules() -> list[str]:
    """The packages of the ``[ocr]`` extra that are not installed."""
    return [pkg for module, pkg in _NEEDED.items() if importlib.util.find_spec(module) is None]


def _check() -> None:
    missing = missing_modules()
    if missing:
        print(
            f"error: the OCR commands need {', '.join(missing)}, which this install lacks "
            f"(the [ocr] extra); install it with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        sys.exit(2)


def train_main() -> None:
    _check()
    from .cli import train_main as main

    main()


def eval_main() -> None:
    _check()
    from .cli import eval_main as main

    main()


def convert_main() -> None:
    _check()
    from .cli import convert_main as main

    main()


def predict_main() -> None:
    _check()
    from .cli import predict_main as main

    main()
