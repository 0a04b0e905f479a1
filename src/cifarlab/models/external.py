"""Your own model: `path/to/net.py:Net` or `package.module:make_net`, wherever a model is named.

`resolve(cfg)` finds the file and records its absolute path and sha256 in `cfg.source` without running
it; `model_from_config(cfg)` then imports it - which runs the user's code - and calls the object (an
nn.Module class or a function returning one) with the options, checked against its signature exactly
as a registry model's are. The file is run from the bytes that were hashed, so the recorded sha256 is
the code that ran, and a file that changed since it was recorded is refused, not silently mixed in.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from torch import nn

from cifarlab.config import ModelConfig
from cifarlab.errors import ConfigError, exception_line
from cifarlab.models.registry import check_options, create_model

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # an object (Net, Outer.Inner) or a module (pkg.mod)

# (path, sha256) -> the module run from it: a file is run once per process, however often it is built.
_LOADED: dict[tuple[str, str], ModuleType] = {}


def is_external(name: str) -> bool:
    """Whether a model name points at a file or module (registry names never hold a ':')."""
    return ":" in name


def _split(name: str) -> tuple[str, str, bool]:
    """'dir/net.py:Net' -> ('dir/net.py', 'Net', True); 'pkg.mod:make' -> ('pkg.mod', 'make', False)."""
    target, _, obj = name.rpartition(":")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if not target or not _DOTTED.fullmatch(obj) or not (is_file or _DOTTED.fullmatch(target)):
        raise ConfigError(f"model '{name}': expected FILE.py:NAME or package.module:NAME, NAME being a class "
                          "or function in it")
    return target, obj, is_file


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    # The user's folder first on sys.path while their code is imported, so `from blocks import Res` next to
    # their model file works as it does when they run the file themselves.
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        try:
            sys.path.remove(str(folder))
        except ValueError:  # their code took it off itself
            pass


def locate(name: str, base: str | os.PathLike | None = None) -> dict[str, Any]:
    """The source record of model `name`: absolute path, object name, sha256 (and module, root); runs nothing
    but a package's `__init__` for a module name. A relative path is taken from `base` (default: cwd)."""
    target, obj, is_file = _split(name)
    root = Path(base if base is not None else os.getcwd()).resolve()
    if is_file:
        path = (root / Path(target).expanduser()).resolve()
        if not path.is_file():
            where = f" ({path})" if str(path) != target else ""
            raise ConfigError(f"model file '{target}' not found{where}")
        return {"path": str(path), "object": obj, "sha256": _sha256(path.read_bytes())}
    with _on_path(root):
        try:
            spec = importlib.util.find_spec(target)
        except Exception as exc:  # noqa: BLE001 - a parent package that fails to import
            raise ConfigError(f"model '{name}': cannot import module '{target}': {exception_line(exc)}") from None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ConfigError(f"model '{name}': no module '{target}' on the Python path or in {root}")
    return {"module": target, "root": str(root), "path": spec.origin, "object": obj,
            "sha256": _sha256(Path(spec.origin).read_bytes())}


def resolve(cfg: ModelConfig, base: str | os.PathLike | None = None) -> ModelConfig:
    """`cfg` with its source recorded when it names a file or module; registry models are returned as they are.

    A config that already carries its source (read back from a run's config.json) keeps it: the file is
    then checked against that sha256 when it is built.
    """
    if not is_external(cfg.name) or cfg.source:
        return cfg
    return replace(cfg, source=locate(cfg.name, base))


def _read(source: dict[str, Any], label: str) -> bytes:
    path = Path(source["path"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {path} ({exc.strerror or exc})") from None
    if _sha256(data) != source["sha256"]:
        raise ConfigError(f"{label}: {path} changed since it was recorded (sha256 {source['sha256'][:12]}... is now "
                          f"{_sha256(data)[:12]}...)")
    return data


def _module(source: dict[str, Any], label: str) -> ModuleType:
    """Import the file or module of `source` once, after checking it is the version that was recorded."""
    data = _read(source, label)
    key = (source["path"], source["sha256"])
    if key in _LOADED:
        return _LOADED[key]
    path = Path(source["path"])
    if "module" in source:
        with _on_path(Path(source["root"])):
            try:
                module = importlib.import_module(source["module"])
            except Exception as exc:  # noqa: BLE001 - whatever their module raises at import
                raise ConfigError(f"{label}: importing {source['module']} failed: "
                                  f"{exception_line(exc, source['path'])}") from None
    else:
        # A name of its own per file and version: two files called model.py (or two versions of one) never collide.
        stem, tag = re.sub(r"\W", "_", path.stem), _sha256(f"{path}\0{source['sha256']}".encode())[:12]
        module = ModuleType(f"cifarlab_user_{stem}_{tag}")
        module.__file__ = str(path)
        sys.modules[module.__name__] = module  # dataclasses, pickle and torch.fx look modules up by name
        try:
            code = compile(data, str(path), "exec")  # the hashed bytes, not a second read of the file
            with _on_path(path.parent):
                exec(code, module.__dict__)  # noqa: S102 - running the user's model file is the point
        except (Exception, SystemExit) as exc:  # SystemExit: a course file that calls sys.exit() at import
            del sys.modules[module.__name__]
            raise ConfigError(f"{label}: importing {path.name} failed: {exception_line(exc, str(path))}") from None
    _LOADED[key] = module
    return module


def _defined_here(module: ModuleType) -> list[str]:
    """Classes of nn.Module and functions the module defines itself (not the ones it imports)."""
    return sorted(n for n, v in vars(module).items()
                  if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
                  and (isinstance(v, type) and issubclass(v, nn.Module) or callable(v) and not isinstance(v, type)))


def create_external(cfg: ModelConfig, *, recorded: bool = False) -> nn.Module:
    """Build the file or module model `cfg` names, with its options; every failure is one ConfigError line.

    `recorded`: `cfg` was read from a run folder (predict, export), so its name, object and options may come
    from someone else. Then only a class or function the imported file defines itself is called: a forged
    `os.py:system` or `net.py:os.system` (an attribute the file imported) must not be reachable.
    """
    cfg = resolve(cfg)
    source, label = cfg.source, f"model '{cfg.name}'"
    module = _module(source, label)
    if recorded and Path(getattr(module, "__file__", "") or "").resolve() != Path(source["path"]).resolve():
        raise ConfigError(f"{label}: module '{source.get('module')}' imports from {module.__file__}, not from the "
                          f"recorded {source['path']}")
    obj: Any = module
    for part in source["object"].split("."):
        if not hasattr(obj, part):
            defined = _defined_here(module)
            where = Path(source["path"]).name if "module" not in source else source["module"]
            raise ConfigError(f"{label}: {where} has no '{source['object']}'"
                              + (f" (it defines {', '.join(defined)})" if defined else ""))
        obj = getattr(obj, part)
    what = source["object"]
    if recorded and not (getattr(obj, "__module__", None) == module.__name__
                         and (isinstance(obj, type) and issubclass(obj, nn.Module) or inspect.isfunction(obj))):
        raise ConfigError(f"{label}: '{what}' is not an nn.Module class or a function defined in "
                          f"{Path(source['path']).name}")
    if isinstance(obj, nn.Module):
        raise ConfigError(f"{label}: '{what}' is a model instance; name its class or a function that builds it")
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise ConfigError(f"{label}: '{what}' is a class that is not an nn.Module")
    if not callable(obj):
        raise ConfigError(f"{label}: '{what}' is a {type(obj).__name__}, not an nn.Module class or a function "
                          "that returns one")
    check_options(label, obj, cfg.options)
    try:
        model = obj(**cfg.options)
    except Exception as exc:  # noqa: BLE001 - their constructor's error, as one line
        raise ConfigError(f"{label}: {what}(...) failed: {exception_line(exc, source['path'])}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{label}: {what}(...) returned a {type(model).__name__}, not an nn.Module")
    return model


def model_from_config(cfg: ModelConfig) -> nn.Module:
    """The model a ModelConfig names: from the registry, or from a file or module."""
    if is_external(cfg.name):
        return create_external(cfg)
    return create_model(cfg.name, **cfg.options)


def run_name(name: str) -> str:
    """A folder-safe short name: 's8-net', 'dir/net.py:Net' -> 'net-Net', 'pkg.mod:make' -> 'pkg.mod-make'."""
    if not is_external(name):
        return name
    target, _, obj = name.rpartition(":")
    stem = Path(target).stem if target.endswith(".py") or "/" in target else target
    return re.sub(r"[^\w.-]", "_", f"{stem}-{obj}")


def source_code(source: dict[str, Any]) -> bytes | None:
    """The recorded source file's bytes for a run folder's copy (refused when it changed since); None if none."""
    return _read(source, f"model file {source['path']}") if source.get("path") else None


def source_change(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """'the model file ... changed (sha256 ...)' when two run configs' model files differ in content, else None."""
    old, new = recorded.get("model", {}).get("source") or {}, current.get("model", {}).get("source") or {}
    if old.get("sha256") and new.get("sha256") and old["sha256"] != new["sha256"]:
        return (f"the model file {new.get('path', '')} changed (sha256 {old['sha256'][:12]}... is now "
                f"{new['sha256'][:12]}...)")
    return None
