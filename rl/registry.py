"""A tiny decorator registry: name -> callable, one signature per registry, open to plug-ins.

    ADVANTAGES = Registry("advantage")

    @ADVANTAGES.register("grpo")
    def grpo(rewards, group_ids, *, strata=None, **params): ...

    fn = ADVANTAGES.get("grpo")

Registering a name twice is an error (two modules silently overriding each other is a bug, not a
feature), and `get` of an unknown name lists the names that exist, so a typo in a config key is
fixed from the error message alone.

Every registry is open: `resolve(spec)` takes a registered name or a plug-in the way reward functions
are named, `"pkg.module:fn"` (importable) or `"path/to/file.py:fn"` (a file, relative to the working
directory). `load_object` is that loader, shared with `reward.registry`.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable)


class UnknownNameError(KeyError, ValueError):
    """`Registry.get` of a name nobody registered. A KeyError for dict-like callers and a
    ValueError for config validation; `str()` is the plain message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> entry map for one kind of thing ("advantage", "loss", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding `fn` under `name`; raises ValueError if the name is taken."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} registry: names must be non-empty strings, got {name!r}")

        def decorator(fn: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {_qualname(self._entries[name])}); "
                    f"pick another name for {_qualname(fn)}"
                )
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> T:
        """The entry registered under `name`; a KeyError listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def resolve(self, spec: str) -> T:
        """A registered name, or a plug-in `pkg.module:fn` / `path/to/file.py:fn` (see `load_object`)."""
        if isinstance(spec, str) and ":" in spec:
            return load_object(spec, what=self.kind)
        if spec not in self._entries:
            near = difflib.get_close_matches(str(spec), self.names(), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise UnknownNameError(f"unknown {self.kind} {spec!r}; known: {', '.join(self.names())}{hint} (or name "
                                   "your own function: 'pkg.module:fn' or 'path/to/file.py:fn')")
        return self._entries[spec]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def check_kwargs(what: str, shown: str, sig: inspect.Signature, params: dict[str, Any], *, skip: int,
                 config_key: str, exclude: tuple[str, ...] = ()) -> None:
    """TypeError unless keyword `params` fit `sig` past its first `skip` parameters (and `exclude`): no unknown
    key (unless it takes **kwargs), every parameter without a default given. One check for every plug-in kind
    (advantage estimators, policy-loss terms); messages name `config_key`, where the params are set."""
    ps = [p for p in list(sig.parameters.values())[skip:] if p.name not in exclude
          and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted = sorted(p.name for p in ps)
    any_params = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [] if any_params else sorted(set(params) - set(accepted))
    if unknown:
        near = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise TypeError(f"{what} {shown!r} got unknown params {unknown}{hint}; it accepts {accepted}: drop the "
                        f"others (config: {config_key}) or use a function that takes them")
    missing = sorted(p.name for p in ps if p.default is p.empty and p.name not in params)
    if missing:
        raise TypeError(f"{what} {shown!r} needs params {missing} (no default): give each a value "
                        f"(config: {config_key}={{{missing[0]}: ...}})")


class PluginError(ValueError):
    """A `pkg.module:fn` / `path/to/file.py:fn` spec that does not name a callable."""


def is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def load_object(spec: str, *, what: str, shown: str | None = None) -> Callable[..., Any]:
    """The callable `spec` names: "pkg.module:attr" (imported) or "path/to/file.py:attr" (loaded from the
    file, relative to the working directory; one module per absolute path). PluginError otherwise, with
    `what` and the spec as written (`shown`) in the message."""
    shown = spec if shown is None else shown
    where, _, attr = spec.strip().rpartition(":")
    if not where or not attr:
        raise PluginError(f"{what} {shown!r}: expected 'pkg.module:fn' or 'path/to/file.py:fn'")
    if is_file_spec(where):
        module = _import_file(where, what, shown)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise PluginError(f"{what} {shown!r}: cannot import module {where!r} ({exc}); check the spelling and "
                              "that it is on PYTHONPATH, or name a file instead: 'path/to/file.py:fn'") from exc
    try:
        fn = getattr(module, attr)
    except AttributeError:
        names = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        near = difflib.get_close_matches(attr, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; it defines {sorted(names)[:20]}"
        raise PluginError(f"{what} {shown!r}: {where} has no attribute {attr!r}{hint}") from None
    if not callable(fn):
        raise PluginError(f"{what} {shown!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def _import_file(path: str, what: str, shown: str) -> Any:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise PluginError(f"{what} {shown!r}: file {path} does not exist (relative paths start at {os.getcwd()})")
    mod_name = "_plugin_file_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    if mod_name in sys.modules:  # loading the same file twice gives the same functions
        return sys.modules[mod_name]
    file_spec = importlib.util.spec_from_file_location(mod_name, path)
    if file_spec is None or file_spec.loader is None:
        raise PluginError(f"{what} {shown!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[mod_name] = module
    try:
        file_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise PluginError(f"{what} {shown!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module
