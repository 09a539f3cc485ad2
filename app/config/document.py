"""The YAML document with the position of every key, ``${VAR}`` substitution, and the
errors that name the file, the key path, the line and the column.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Mapping

import yaml

from .schema import ConfigError


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Document:
    """A YAML document as plain values plus the position of every key path."""

    def __init__(self, path: str, text: str, environ: Mapping[str, str]):
        self.path = path
        self.environ = environ
        self.marks: dict[tuple, tuple[int, int]] = {}       # where each value starts
        self.key_marks: dict[tuple, tuple[int, int]] = {}   # where each key is written
        # key path -> the ${VAR} references in its value: [(name, taken from the environment)]
        self.substituted: dict[tuple, list[tuple[str, bool]]] = {}
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.data = self._build(loader, node, ()) if node is not None else None
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            problem = " ".join(filter(None, [error.context, error.problem]))
            raise ConfigError(f"invalid YAML: {problem}", path,
                              line=mark.line + 1 if mark else None,
                              column=mark.column + 1 if mark else None) from None
        except yaml.YAMLError as error:
            raise ConfigError(f"invalid YAML: {error}", path) from None
        finally:
            loader.dispose()

    def _build(self, loader: yaml.SafeLoader, node: yaml.Node, keypath: tuple) -> Any:
        self.marks[keypath] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node)
                if not isinstance(key, str):
                    raise self.error(keypath, f"keys must be strings, got {key!r}", key_node)
                if key in result:
                    raise self.error(keypath + (key,), "appears twice", key_node)
                self.key_marks[keypath + (key,)] = (key_node.start_mark.line + 1,
                                                    key_node.start_mark.column + 1)
                result[key] = self._build(loader, value_node, keypath + (key,))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, keypath + (index,))
                    for index, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str" \
                and "${" in node.value:
            text = self._substitute(node.value, keypath, node)
            if node.style is None:   # unquoted: let the result be a number or a boolean
                tag = loader.resolve(yaml.ScalarNode, text, (True, False))
                node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark)
            else:
                node = yaml.ScalarNode(node.tag, text, node.start_mark, node.end_mark, node.style)
        return loader.construct_object(node, deep=True)

    def _substitute(self, text: str, keypath: tuple, node: yaml.Node) -> str:
        references = self.substituted.setdefault(keypath, [])

        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise self.error(keypath, f"environment variable {name} is not set "
                                     f"(write ${{{name}:-default}} to give a default)", node)
                references.append((name, False))
                return default
            references.append((name, True))
            return value
        return _ENV_REFERENCE.sub(replace, text)

    def origin(self, keypath: tuple) -> str:
        """Where the value at ``keypath`` came from: ``file``, plus any ``${VAR}`` in it."""
        notes = []
        for path, references in self.substituted.items():
            if path[:len(keypath)] == keypath:
                notes += [f"env {name}" if from_env else f"default of ${{{name}}}"
                          for name, from_env in references]
        return ", ".join(["file", *dict.fromkeys(notes)])

    def error(self, keypath: tuple, message: str, node: yaml.Node | None = None,
              at_key: bool = False) -> ConfigError:
        if node is not None:
            line, column = node.start_mark.line + 1, node.start_mark.column + 1
        elif at_key and keypath in self.key_marks:
            line, column = self.key_marks[keypath]
        else:
            line, column = self.locate(keypath)
        return ConfigError(message, self.path, format_keypath(keypath), line, column)

    def locate(self, keypath: tuple) -> tuple[int | None, int | None]:
        while keypath not in self.marks and keypath:
            keypath = keypath[:-1]
        return self.marks.get(keypath, (None, None))


def format_keypath(keypath: tuple) -> str:
    text = ""
    for part in keypath:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _checked(document: _Document, keypath: tuple, parse_value: Callable, value: Any) -> Any:
    try:
        return parse_value(value)
    except ValueError as error:
        raise document.error(keypath, str(error)) from None
