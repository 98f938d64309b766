"""Data set registry (detectron2 style): a name maps to a lazily called loader and to metadata.

    DatasetCatalog.register("my_set", lambda: [...])    # list of dataset dicts, see docs/CONTRACTS.md
    MetadataCatalog.get("my_set").set(thing_classes=["cat", "dog"], evaluator_type="coco")
    register_coco_instances("my_coco", {}, "ann.json", "images/")   # both of the above in one call

The readers register their own formats (register_coco_instances in coco.py, register_pascal_voc in
voc.py, as in detectron2); this module imports none of them.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from ..utils.errors import MissingFileError, UnknownNameError

# The data sets root; every built-in path is relative to it (see datasets/README.md).
ENV_DATASETS_ROOT = "RESNET_DET_DATASETS"
README_HINT = "See datasets/README.md for the expected layouts and how to register your own data."


def datasets_root() -> str:
    """``$RESNET_DET_DATASETS``, default ``./datasets`` (resolved against the current directory)."""
    return os.path.abspath(os.path.expanduser(os.environ.get(ENV_DATASETS_ROOT, "./datasets")))


class UnknownDatasetError(UnknownNameError):
    """A data set name that is not registered (a KeyError whose message prints as written)."""


class DatasetNotFoundError(MissingFileError):
    """A registered data set whose files are not on disk: says what was expected where, and how to fix it."""

    def __init__(self, name: str, paths: list[str], layout: str):
        self.name, self.paths, self.layout = name, list(paths), layout
        msg = (f"Data set {name!r} was not found: expected {' and '.join(map(repr, self.paths))}. "
               f"Expected layout: {layout}. The data sets root is ${ENV_DATASETS_ROOT} "
               f"(now {datasets_root()!r}); set it to the folder that holds your data, or register "
               f"your files under another name with register_coco_instances / register_pascal_voc. "
               f"{README_HINT}")
        super().__init__(msg)


def _unknown(kind: str, name: str, known) -> UnknownDatasetError:
    names = ", ".join(sorted(known)) or "(none)"
    return UnknownDatasetError(f"{kind}: data set {name!r} is not registered. Registered: {names}. "
                               f"Register it with DatasetCatalog.register / register_coco_instances / "
                               f"register_pascal_voc. {README_HINT}")


class _DatasetCatalog:
    """name -> zero-argument function returning list[dict]; called on every get() (nothing cached)."""

    def __init__(self):
        self._loaders: dict[str, Callable[[], list]] = {}

    def register(self, name: str, fn: Callable[[], list]) -> None:
        if not callable(fn):
            raise TypeError(f"DatasetCatalog.register({name!r}, ...): expected a zero-argument function, "
                            f"got {type(fn).__name__}")
        if name in self._loaders:
            raise ValueError(f"data set {name!r} is already registered; call DatasetCatalog.remove "
                             f"first to replace it")
        self._loaders[name] = fn

    def get(self, name: str) -> list:
        if name not in self._loaders:
            raise _unknown("DatasetCatalog", name, self._loaders)
        dicts = self._loaders[name]()
        if not isinstance(dicts, list):
            raise TypeError(f"the loader of data set {name!r} returned {type(dicts).__name__}; "
                            f"expected a list of dicts")
        return dicts

    def list(self) -> list:
        return sorted(self._loaders)

    def remove(self, name: str) -> None:
        self._loaders.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._loaders


class Metadata:
    """Attribute bag for one data set. A key, once set, keeps its value: setting a different value
    raises, so two data sets can never silently share a name with different classes."""

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __getattr__(self, key: str) -> Any:
        # Only called for missing attributes; dunders (copy/pickle probes) must not recurse on name.
        if key.startswith("__"):
            raise AttributeError(key)
        raise AttributeError(f"metadata of data set {self.__dict__.get('name')!r} has no {key!r}; "
                             f"it has: {', '.join(sorted(self.as_dict())) or '(nothing)'}")

    def __setattr__(self, key: str, value: Any) -> None:
        old = self.__dict__.get(key, _MISSING)
        if old is not _MISSING and old != value:
            raise ValueError(f"metadata {key!r} of data set {self.name!r} is already {old!r}; refusing to "
                             f"change it to {value!r} (remove the data set and register it again)")
        object.__setattr__(self, key, value)

    def set(self, **kwargs) -> "Metadata":
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"Metadata({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


_MISSING = object()


class _MetadataCatalog:
    """name -> Metadata. get() of a name known to DatasetCatalog creates its (empty) metadata."""

    def __init__(self):
        self._meta: dict[str, Metadata] = {}

    def get(self, name: str) -> Metadata:
        if name not in self._meta:
            if name not in DatasetCatalog:
                raise _unknown("MetadataCatalog", name, set(self._meta) | set(DatasetCatalog.list()))
            self._meta[name] = Metadata(name)
        return self._meta[name]

    def list(self) -> list:
        return sorted(self._meta)

    def remove(self, name: str) -> None:
        self._meta.pop(name, None)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()


def unregister(name: str) -> None:
    """Forget a data set in both catalogs (used to re-register with other paths)."""
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def require_files(name: str, paths: dict[str, str], layout: str) -> None:
    """Raise DatasetNotFoundError for data set ``name`` when any of ``{path: "file"|"dir"}`` is missing;
    ``layout`` says what was expected (readers and built-ins call this from their loaders)."""
    missing = [p for p, kind in paths.items()
               if not (os.path.isfile(p) if kind == "file" else os.path.isdir(p))]
    if missing:
        raise DatasetNotFoundError(name, missing, layout)
