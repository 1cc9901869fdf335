"""Hyperparameters declared once: ``Param`` tables, from which validation, docstrings and CLI flags come.

An estimator declares its hyperparameters as a :class:`Params` table (the way
scikit-learn's ``_parameter_constraints`` does): name, type, paper default, range or
choices and a one-line meaning, in a module-level constant whose name ends in
``PARAMS`` and that the class names as ``hyperparameters``::

    DBC_PARAMS = FCAE_PARAMS + Params(
        Param("alpha", float, 2.0, "target sharpening exponent (eq 2)", gt=1),
        ...
    )

    class DBC(...):
        hyperparameters = DBC_PARAMS

:class:`Declared` (a base of every nbclust estimator) turns the table into the
constructor (``n_clusters`` positional, the rest keyword-only, each stored under its
name, as scikit-learn wants), the numpydoc ``Parameters`` section of the class docstring
(and ``Attributes``, from the class's :class:`Attr` declarations), the dict ``PAPER`` of
the values where the paper reads otherwise than the default, and
:meth:`Params.validate` (one ``ValueError`` line naming the parameter).

The command line (``python -m nbclust.fit``) builds its flags and help from the same
tables without importing the estimators (numpy, numba, scikit-learn):
:func:`read_hyperparameters` evaluates only the table statements of a method's module
(``from nbclust.methods.params import ...`` and the assignments to ``*PARAMS`` names),
so a table must be built from literals, :class:`Param`, :class:`Params` and earlier
tables.  This module imports nothing heavy.
"""

from __future__ import annotations

import math
import numbers
import os

from nbclust.registry import BACKENDS

__all__ = ["Param", "Params", "Attr", "Declared", "COMMON_PARAMS", "read_hyperparameters"]

_SAME = object()  # Param.paper when the paper's value is the default

# type names a Param accepts besides int, float, str and bool
PATH = "path"  # a str or os.PathLike
ARRAY = "array"  # a sequence or array (checked by the estimator's _check_params)
ANY = "any"  # not checked


def _is(value, kind) -> bool:
    if kind is ANY:
        return True
    if kind is bool:
        kind_of = type(value)
        return isinstance(value, bool) or (kind_of.__module__ == "numpy" and kind_of.__name__ in ("bool_", "bool"))
    if kind is int:
        return isinstance(value, numbers.Integral) and not _is(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not _is(value, bool)
    if kind == PATH:
        return isinstance(value, (str, os.PathLike))
    if kind == ARRAY:
        return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")
    return isinstance(value, kind)


def _num(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


class Param:
    """One hyperparameter: ``name``, ``type``, ``default`` (the paper's value unless ``paper``
    says otherwise), ``doc`` (one line: what it is, with the paper's equation or line).

    ``type``: ``int``, ``float``, ``str``, ``bool``, ``dict``, ``"path"``, ``"array"``,
    ``"any"``, or a tuple of them.  Ranges (numbers): ``ge``, ``gt``, ``le``, ``lt``;
    ``choices`` (strings); ``none=True`` also accepts None.  ``paper``: the paper's value
    where the default follows something else (released code, a fix), documented and
    collected in the class's ``PAPER`` dict.  ``flag=False``: no dedicated command-line
    flag (``--param NAME=VALUE`` still sets it).  ``type_doc``: the docstring's type
    where the checked ``type`` does not say it (``"any"``).  ``schedule=True``: the value only
    decides how long a fit runs (an epoch cap, a patience, a stopping threshold), not what
    the model computes, so a resumed fit may change it (:meth:`Params.schedule`).
    """

    __slots__ = ("name", "types", "default", "doc", "ge", "gt", "le", "lt", "choices", "none", "paper", "flag",
                 "type_doc", "schedule")

    def __init__(self, name, type, default, doc, *, ge=None, gt=None, le=None, lt=None, choices=None,
                 none=False, paper=_SAME, flag=True, type_doc=None, schedule=False):
        self.name = name
        self.types = tuple(type) if isinstance(type, tuple) else (type,)
        self.default, self.doc = default, doc
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.choices = None if choices is None else tuple(choices)
        self.none, self.paper, self.type_doc, self.schedule = bool(none), paper, type_doc, bool(schedule)
        self.flag = bool(flag) and self.cli_type is not None
        if self.choices is not None and not isinstance(self.choices[0], str):
            raise TypeError(f"{name}: choices must be strings")

    def __repr__(self):
        return f"Param({self.name!r}, default={self.default!r})"

    def __eq__(self, other):
        return isinstance(other, Param) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __hash__(self):
        return hash(self.name)

    @property
    def paper_differs(self) -> bool:
        """Whether the paper's value differs from the default (then it is ``paper``)."""
        return self.paper is not _SAME

    def replace(self, **changes) -> Param:
        """A copy with some fields changed (e.g. another default in a subclass)."""
        fields = {k: getattr(self, k) for k in self.__slots__ if k != "types"}
        fields["type"] = self.types if len(self.types) > 1 else self.types[0]
        fields.update(changes)
        name = fields.pop("name")
        return Param(name, fields.pop("type"), fields.pop("default"), fields.pop("doc"), **fields)

    # ------------------------------------------------------------------ checks
    def _in_range(self, v) -> bool:
        if not math.isfinite(v):
            return False
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def check(self, value) -> None:
        """``ValueError`` (one line naming the parameter) unless ``value`` is allowed."""
        if value is None and self.none:
            return
        for kind in self.types:
            if not _is(value, kind):
                continue
            if kind in (int, float) and not self._in_range(value):
                break
            if kind is str and self.choices is not None and value not in self.choices:
                break
            return
        raise ValueError(f"{self.name} must be {self.requirement()}, got {value!r}")

    def bounds(self) -> str:
        """The range as text: ``>= 1``, ``in [0, 1)``, or ``""``."""
        lo = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        hi = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if lo and hi:
            return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
        if lo:
            return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
        if hi:
            return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
        return ""

    def requirement(self) -> str:
        """What ``check`` accepts, as the end of "NAME must be ..."."""
        parts = []
        for kind in self.types:
            if kind is int or kind is float:
                text = "an integer" if kind is int else "a finite number"
                parts.append(f"{text} {self.bounds()}".rstrip())
            elif kind is str:
                parts.append("one of " + ", ".join(map(repr, self.choices)) if self.choices else "a string")
            elif kind is bool:
                parts.append("True or False")
            elif kind == PATH:
                parts.append("a path")
            elif kind is dict:
                parts.append("a mapping of arrays")
            elif kind == ARRAY:
                parts.append("an array of labels")
            else:
                parts.append("any value")
        if self.none:
            parts.insert(0, "None")
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]

    # --------------------------------------------------------------- documents
    def type_text(self) -> str:
        """numpydoc type: ``int``, ``{"a", "b"}``, ``str or path``, ``... or None``."""
        if self.type_doc:
            return self.type_doc
        names = []
        for kind in self.types:
            if kind is str and self.choices:
                names.append("{" + ", ".join(f'"{c}"' for c in self.choices) + "}")
            else:
                names.append({int: "int", float: "float", str: "str", bool: "bool", dict: "dict", PATH: "path",
                              ARRAY: "array of N ints", ANY: "object"}.get(kind, getattr(kind, "__name__", str(kind))))
        if self.none:
            names.append("None")
        return " or ".join(names)

    @staticmethod
    def value_text(v) -> str:
        return f'"{v}"' if isinstance(v, str) else repr(v)

    def numpydoc(self) -> str:
        doc = self.doc
        if not doc.endswith("."):
            doc += "."
        if self.bounds():
            doc += f" Range: {self.bounds()}."
        if self.paper_differs:
            doc += f" The paper's value: {self.value_text(self.paper)}."
        if self.schedule:
            doc += " May change when a fit resumes."
        return f"{self.name} : {self.type_text()}, default={self.value_text(self.default)}\n    {doc}"

    @property
    def cli_type(self):
        """The argparse type of the flag (``bool``: --x/--no-x), or None when no flag can carry it."""
        for kind in self.types:
            if kind in (int, float, str, bool):
                return kind
            if kind == PATH:
                return str
        return None


class Params(tuple):
    """An ordered table of :class:`Param` (a tuple; ``+`` appends, a later entry of a name replaces the earlier)."""

    def __new__(cls, *params):
        out, seen = [], {}
        for p in params:
            if p.name in seen:
                out[seen[p.name]] = p
            else:
                seen[p.name] = len(out)
                out.append(p)
        return super().__new__(cls, out)

    def __add__(self, other):
        return Params(*self, *other)

    def __getitem__(self, key):
        if isinstance(key, str):
            for p in self:
                if p.name == key:
                    return p
            raise KeyError(key)
        return super().__getitem__(key)

    @property
    def names(self) -> tuple:
        return tuple(p.name for p in self)

    def replace(self, name, **changes) -> Params:
        """The table with the entry ``name`` changed (e.g. another default)."""
        return Params(*(p.replace(**changes) if p.name == name else p for p in self))

    def validate(self, est) -> None:
        """Check every hyperparameter of ``est`` against its entry (ValueError naming the first bad one)."""
        for p in self:
            p.check(getattr(est, p.name))

    @property
    def schedule(self) -> tuple:
        """Names of the schedule-only entries (``schedule=True``): a resumed fit may change them."""
        return tuple(p.name for p in self if p.schedule)

    def paper_values(self) -> dict:
        """``{name: value}`` where the paper's reading differs from the default."""
        return {p.name: p.paper for p in self if p.paper_differs}

    def numpydoc(self) -> str:
        return "Parameters\n----------\n" + "\n".join(p.numpydoc() for p in self)


class Attr:
    """A fitted attribute: ``name``, numpydoc ``type``, ``doc``; ``state``: ``"array"`` (saved in the
    training state and the model as an array), ``"meta"`` (saved as a JSON value) or None."""

    __slots__ = ("name", "type", "doc", "state")

    def __init__(self, name, type, doc, *, state=None):
        if state not in (None, "array", "meta"):
            raise ValueError(f"{name}: state must be None, 'array' or 'meta'")
        self.name, self.type, self.doc, self.state = name, type, doc, state

    def numpydoc(self) -> str:
        doc = self.doc
        return f"{self.name} : {self.type}\n    {doc}{'' if doc.endswith('.') else '.'}"


COMMON_PARAMS = Params(
    Param("n_clusters", int, 10, "number of clusters K", ge=1, flag=False),
    Param("backend", str, "cpu", "array backend of the networks", choices=BACKENDS, flag=False),
    Param("random_state", ANY, None, "seed of the one random stream of the fit (weights, batches, k-means, "
          "dropout)", flag=False, type_doc="int, numpy Generator or None"),
    Param("verbose", ANY, 0, "print one line per epoch to stderr when true", flag=False, type_doc="int"),
)
"""The hyperparameters every estimator has (their command-line options are ``--n-clusters``,
``--backend``, ``--seed``, ``--quiet``)."""


def _make_init(cls, params: Params):
    """``__init__(self, n_clusters=..., *, name=default, ...)`` storing every argument as is."""
    first, rest = params[0], params[1:]
    args = [f"{first.name}=_d[{first.name!r}]", "*"] + [f"{p.name}=_d[{p.name!r}]" for p in rest]
    body = "\n".join(f"    self.{p.name} = {p.name}" for p in params)
    src = f"def __init__(self, {', '.join(args)}):\n{body}\n"
    ns: dict = {"_d": {p.name: p.default for p in params}}
    exec(src, ns)  # noqa: S102  (the dataclasses way: a real signature for scikit-learn's get_params)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = f"Store the hyperparameters (see :class:`{cls.__name__}`); nothing else happens here."
    return init


class Declared:
    """Mixin: constructor, docstring sections, ``PAPER`` and validation from the class's tables.

    Class attributes read: ``hyperparameters`` (a :class:`Params`) and ``attributes`` (a
    tuple of :class:`Attr`, added to those of the bases).  A class that declares
    ``hyperparameters`` and no ``__init__`` gets the generated constructor.
    """

    hyperparameters: Params = Params()
    attributes: tuple = ()
    _all_attributes: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        inherited = {}
        for base in reversed(cls.__mro__[1:]):
            for a in getattr(base, "_all_attributes", ()):
                inherited[a.name] = a
        for a in own.get("attributes", ()):
            inherited[a.name] = a
        cls._all_attributes = tuple(inherited.values())
        if "hyperparameters" in own and "__init__" not in own:
            cls.__init__ = _make_init(cls, cls.hyperparameters)
        cls.PAPER = cls.hyperparameters.paper_values()
        if "hyperparameters" in own or "attributes" in own:
            cls.__doc__ = cls._declared_doc(own.get("__doc__"))

    @classmethod
    def _declared_doc(cls, doc) -> str:
        import inspect

        parts = [inspect.cleandoc(doc)] if doc else []
        if cls.hyperparameters:
            parts.append(cls.hyperparameters.numpydoc())
        if cls._all_attributes:
            parts.append("Attributes\n----------\n" + "\n".join(a.numpydoc() for a in cls._all_attributes))
        return "\n\n".join(parts) + "\n"

    def _validate_hyperparameters(self) -> None:
        self.hyperparameters.validate(self)


# ------------------------------------------------------------- for the command line
_TABLES: dict = {}


def read_hyperparameters(module: str, cls: str) -> Params | None:
    """The table ``cls.hyperparameters`` of ``module`` without importing the module.

    Evaluates only the module's ``from nbclust.methods.params import ...`` statements and
    its assignments to names ending in ``PARAMS``, then the class body's
    ``hyperparameters = <expression>``.  None when the module has no such class statement
    (an estimator without a table, such as a test double).
    """
    key = (module, cls)
    if key not in _TABLES:
        _TABLES[key] = _read(module, cls)
    return _TABLES[key]


def _read(module: str, cls: str):
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), spec.origin)
    ns: dict = {}
    keep = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == __name__:
            keep.append(node)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.endswith("PARAMS")
                                                  for t in node.targets):
            keep.append(node)
    exec(compile(ast.Module(body=keep, type_ignores=[]), spec.origin, "exec"), ns)  # noqa: S102
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "hyperparameters"
                                                        for t in stmt.targets):
                    return eval(compile(ast.Expression(stmt.value), spec.origin, "eval"), ns)  # noqa: S307
    return None
