"""torchmetrics without its catalogue: importing this module makes `import torchmetrics.<part>`
load that part (and what it imports), not the whole library.

`import torchmetrics` runs the package's `__init__`, which imports every metric family it has:
`functional.audio` (and with it scipy.signal and scipy.stats), `functional.text` (transformers,
when installed), image, detection, retrieval, ... Every command that trains paid seconds for
modules no metric of ours uses. The metrics here need `torchmetrics.metric`,
`torchmetrics.collections`, `torchmetrics.classification` and `torchmetrics.regression` only.

So, when torchmetrics is not imported yet, `torchmetrics` and `torchmetrics.functional` are put
into `sys.modules` as their package modules with their `__init__` not yet run: the import system
finds their submodules through `__path__` as usual, and the classes are torchmetrics' own, with
the same code and the same results. What the root `__init__` sets that the submodules read (its
logger, its root paths, the `__about__` fields such as `__version__`) is set the same way here;
its other work is compatibility patches for the audio and image families (numpy.Inf, PIL, scipy).

Nothing is lost: the first attribute looked up that a shell lacks (`torchmetrics.Accuracy`,
`from torchmetrics import BLEUScore`, `torchmetrics.functional.accuracy`) runs the real
`__init__` into it, and from then on it is the complete package. When torchmetrics was imported
already, or the shells do not fit this torchmetrics version, nothing is changed and the complete
package is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Any

#: the packages whose `__init__` is deferred (it imports every family of metrics)
DEFERRED = ("torchmetrics", "torchmetrics.functional")
#: what our metrics use; imported here, so that a torchmetrics that does not fit falls back at once
PARTS = ("torchmetrics.utilities", "torchmetrics.metric", "torchmetrics.collections")


def _shell(name: str) -> ModuleType:
    """The package `name` as a module whose `__init__` has not run; it runs on the first attribute
    the module lacks."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a package here")
    module = importlib.util.module_from_spec(spec)

    def complete(attribute: str) -> Any:
        if attribute.startswith("__") and attribute.endswith("__"):  # probes such as __wrapped__, __all__
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
        module.__dict__.pop("__getattr__", None)
        spec.loader.exec_module(module)  # type: ignore[union-attr]  the real __init__, into this module
        return getattr(module, attribute)

    module.__getattr__ = complete  # type: ignore[attr-defined]  PEP 562
    return module


def _install() -> bool:
    """Put the shells in place and import PARTS; False (and everything undone) when that fails."""
    if any(name in sys.modules for name in DEFERRED):
        return False
    try:
        root = _shell("torchmetrics")
    except ImportError:
        return False
    # what the root __init__ sets for its submodules (torchmetrics/__init__.py, 1.x)
    root._logger = logging.getLogger("torchmetrics")  # type: ignore[attr-defined]
    if not root._logger.handlers:  # type: ignore[attr-defined]
        root._logger.addHandler(logging.StreamHandler())  # type: ignore[attr-defined]
    root._logger.setLevel(logging.INFO)  # type: ignore[attr-defined]
    root._PACKAGE_ROOT = os.path.dirname(root.__file__ or "")  # type: ignore[attr-defined]
    root._PROJECT_ROOT = os.path.dirname(root._PACKAGE_ROOT)  # type: ignore[attr-defined]
    sys.modules["torchmetrics"] = root  # before the next shell: finding a submodule imports its parent
    try:
        functional = _shell("torchmetrics.functional")
        sys.modules["torchmetrics.functional"] = functional
        root.functional = functional  # type: ignore[attr-defined]
        about = importlib.import_module("torchmetrics.__about__")
        for key, value in vars(about).items():
            if key.startswith("__") and key.endswith("__") and key not in vars(root) and key != "__builtins__":
                setattr(root, key, value)
        for part in PARTS:
            importlib.import_module(part)
    except Exception:  # noqa: BLE001  a torchmetrics laid out differently: undo, and import it whole
        for name in [n for n in sys.modules if n == "torchmetrics" or n.startswith("torchmetrics.")]:
            del sys.modules[name]
        return False
    return True


def _load() -> ModuleType:
    if not _install():
        importlib.import_module("torchmetrics")
    return sys.modules["torchmetrics"]


#: the torchmetrics package (a shell until something asks for more than its parts)
torchmetrics = _load()
