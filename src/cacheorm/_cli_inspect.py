"""``cacheorm inspect``: read records from a backend and print them decoded.

Primary keys on the command line are text; each part is converted to its
field's annotation: ``int``, ``float``, ``bool`` (true/false/1/0), ``str`` as
written, an ``Enum`` by value (or member name), ``UUID`` and ``Decimal`` from
their text, ``date`` / ``datetime`` / ``time`` from ISO 8601, a ``Literal`` by
the text of one of its values. A composite key is written ``PART,PART`` (split
into exactly as many parts as the key has), or as a JSON list
(``'["a,b", 42]'``) when a part holds a comma. With ``--raw`` the arguments
are backend keys, as stored, instead.
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import enum
import importlib
import json
import os
import sys
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, get_args, get_origin

import cacheorm as co

__all__ = ["add_parser", "load_model", "parse_pk"]

_DESCRIPTION = """\
Print the records stored under the given primary keys (or, with --raw, backend
keys), decoded into the model. A record that does not decode prints its
DeserializationError on stderr. Exit status 0 when every record was found and
decoded, 1 otherwise, 2 for a bad command line.

Primary keys are converted to the key fields' types (int, str, float, bool,
Enum by value, UUID, Decimal, ISO dates). A composite key is written
PART,PART in key order, or as a JSON list when a part holds a comma:
'["a,b", 42]'. Pass the same --namespace, --prefix, --key-template and
--serializer as the application's Repository.
"""

_EPILOG = """\
examples:
  cacheorm inspect --model myapp.models:User --redis redis://127.0.0.1:6379/0 42 43
  cacheorm inspect --model myapp.models:Membership --memcached 127.0.0.1:11211 core,7
  cacheorm inspect --model myapp.models:User --filesystem ./records --raw user:42
"""


def add_parser(new_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``inspect`` with the CLI's subcommands."""
    from cacheorm._cli import add_backend_options

    inspect = new_parser(
        "inspect",
        help="print stored records, decoded (or why they do not decode)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument(
        "--model",
        required=True,
        metavar="MODULE:CLASS",
        help="the dataclass, imported from MODULE (the current directory is on the path)",
    )
    add_backend_options(inspect, required=True)
    repo = inspect.add_argument_group("the Repository's settings (as in your application)")
    repo.add_argument("--namespace", help="the key namespace (default: the lower-cased class name)")
    repo.add_argument("--prefix", default="", help="prepended to every key (default: none)")
    repo.add_argument(
        "--key-template", metavar="TEMPLATE", help="a key template such as 'user.{id}'"
    )
    repo.add_argument(
        "--serializer",
        default="json",
        metavar="NAME",
        help=f"a registered serializer: {', '.join(co.registry.names())} (default: json; "
        "pickle runs code from the store, so only on data you trust)",
    )
    inspect.add_argument(
        "--raw", action="store_true", help="the arguments are backend keys, not primary keys"
    )
    inspect.add_argument("keys", nargs="+", metavar="PK", help="primary keys (or keys with --raw)")
    inspect.set_defaults(run=_run)


def load_model(spec: str) -> type[Any]:
    """The class named by ``MODULE:CLASS`` (``CLASS`` may be dotted).

    Raises:
        ValueError: the spec is malformed, or the module or class is not found.
    """
    module_name, colon, qualname = spec.partition(":")
    if not colon or not module_name or not qualname:
        raise ValueError(f"--model must be MODULE:CLASS, such as myapp.models:User, not {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's project
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no {qualname!r}") from None
    if not isinstance(target, type):
        raise ValueError(f"{spec} is a {type(target).__name__}, not a class")
    return target


def _unwrap(tp: Any) -> Any:
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif getattr(tp, "__supertype__", None) is not None:  # NewType
            tp = tp.__supertype__
        else:
            return tp


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _convert(text: str, annotation: Any) -> Any:
    """``text`` as a value of ``annotation``; ValueError if it is not one."""
    tp = _unwrap(annotation)
    if tp is str or tp is Any:
        return text
    if tp is bool:
        lowered = text.lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise ValueError("expected true or false")
    if tp in (int, float, decimal.Decimal, uuid.UUID):
        return tp(text)
    if tp in (datetime.datetime, datetime.date, datetime.time):
        return tp.fromisoformat(text)
    if get_origin(tp) is typing.Literal:
        choices: tuple[Any, ...] = get_args(tp)
        for value in choices:
            if str(value) == text:
                return value
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if str(member.value) == text or member.name == text:
                return member
        raise ValueError(f"expected one of {', '.join(str(m.value) for m in tp)}")
    if get_origin(tp) in (typing.Union, types.UnionType):
        raise ValueError("a primary key cannot be a union")
    name: object = getattr(annotation, "__qualname__", annotation)
    raise ValueError(f"cannot read a {name} from the command line")


def parse_pk(text: str, parts: Sequence[tuple[str, Any]], model: type) -> Any:
    """The primary key written ``text`` for a key of ``parts`` (attribute, annotation).

    Raises:
        ValueError: ``text`` does not fit the key; the message names the field.
    """
    if len(parts) == 1:
        pieces: list[Any] = [text]
    elif text.startswith("["):
        try:
            pieces = json.loads(text)  # starts with "[": a list if it parses
        except json.JSONDecodeError as exc:
            raise ValueError(f"{text!r} is not a JSON list: {exc}") from None
    else:
        pieces = text.split(",", len(parts) - 1)
    if len(pieces) != len(parts):
        names = ",".join(attr.upper() for attr, _ in parts)
        raise ValueError(
            f"{model.__qualname__} has a {len(parts)}-part key: write {names} "
            f"(or a JSON list), not {text!r}"
        )
    values: list[Any] = []
    for piece, (attr, annotation) in zip(pieces, parts, strict=True):
        if not isinstance(piece, str):
            values.append(piece)  # from a JSON list: already typed
            continue
        try:
            values.append(_convert(piece, annotation))
        except ValueError as exc:
            where = f"{model.__qualname__}.{attr}"
            raise ValueError(f"{where}: {piece!r} does not fit ({exc})") from None
    return values[0] if len(values) == 1 else tuple(values)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from cacheorm._cli import open_backend

    try:
        model = load_model(args.model)
    except ValueError as exc:
        parser.error(str(exc))
    backend, _ = open_backend(args)
    try:
        repo = co.Repository(
            model,
            backend=backend,
            serializer=args.serializer,
            key=args.key_template,
            namespace=args.namespace,
            prefix=args.prefix,
        )
        if args.raw:
            keys = list(args.keys)
        else:
            # The key parts as the Repository resolved them (fields or template names).
            keys_scheme = repo._keys  # pyright: ignore[reportPrivateUsage]
            parts = [(part.attr, part.annotation) for part in keys_scheme.parts]
            try:
                keys = [repo.key_for(parse_pk(text, parts, model)) for text in args.keys]
            except ValueError as exc:
                parser.error(str(exc))
        return _show(repo, keys)
    finally:
        backend.close()


def _show(repo: co.Repository[Any], keys: list[str]) -> int:
    """Print each key's record; 0 if every one was found and decoded, else 1."""
    status = 0
    for key, payload in zip(keys, repo.backend.get_many(keys), strict=True):
        if payload is None:
            print(f"{key}  (not found)")
            status = 1
            continue
        try:
            # The Repository's own decode path and key check, so the error is the one
            # `get` raises (a raw key has no pk to compare, so compare the rendered key).
            record = repo._load_by_key(key, payload)  # pyright: ignore[reportPrivateUsage]
        except co.DeserializationError as exc:
            print(f"{key}  (does not decode)")
            print(f"error: DeserializationError: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{key}  {record!r}")
    sys.stdout.flush()
    return status
