"""Reading results files and writing tables for the GPU session's comparison scripts
(attention_ratios.py, split_sweep.py): errors name the file, the object and the field at fault.

Python standard library only; the scripts import it from their own folder.
"""

import json
import sys


class InputError(Exception):
    """A results file that cannot be read as expected; the message names the file and field."""


def load(path, kind):
    """The JSON document at `path`, whose `kind` must be `kind`."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        got = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{path}: kind: expected `{kind}`, found `{got}`")
    return doc


def field(obj, key, where, kinds=(int, float)):
    """obj[key], checked to be of `kinds`; `where` names the file and the object for errors."""
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(f"{where}.{key}: missing")
    v = obj[key]
    if not isinstance(v, kinds) or isinstance(v, bool):
        raise InputError(f"{where}.{key}: expected {'/'.join(k.__name__ for k in kinds)}, "
                         f"found {json.dumps(v)}")
    return v


# What an attention shape computes besides its sizes: its sliding window (keys), Gemma 2's score
# soft-cap and ALiBi's max bias. Rows that differ in them are different shapes, never compared (no
# SDPA row has any); 0 stands for none, so keys sort.
ATTENTION_OPTIONS = (("window", (int,), "a key count"), ("softcap", (int, float), "a positive cap"),
                     ("alibi", (int, float), "a positive max bias"))


def attention_options(shape, where):
    """(window, softcap, alibi) of an attention shape dict, 0 where absent; `where` names it in errors."""
    out = ()
    for key, kinds, what in ATTENTION_OPTIONS:
        v = shape.get(key) or 0
        if not isinstance(v, kinds) or isinstance(v, bool) or v < 0:
            raise InputError(f"{where}.shape.{key}: expected {what}, found {v!r}")
        out += (v,)
    return out


def with_attention_options(shape, options):
    """`shape` plus the attention options that are set (the inverse of attention_options)."""
    for (key, _, _), v in zip(ATTENTION_OPTIONS, options):
        if v:
            shape[key] = v
    return shape


def attention_label(sh):
    """", window W, soft-cap C, ALiBi M" for the options a shape dict has, for a table cell."""
    return (f", window {sh['window']}" if sh.get("window") else "") + (
        f", soft-cap {sh['softcap']:g}" if sh.get("softcap") else "") + (
        f", ALiBi {sh['alibi']:g}" if sh.get("alibi") else "")


def rows_of(doc, path):
    """[(where, row)] for the file's `rows`; `where` ("FILE: rows[i]") names a row in errors."""
    rows = doc.get("rows")
    if not isinstance(rows, list):
        raise InputError(f"{path}: rows: missing")
    return [(f"{path}: rows[{i}]", row) for i, row in enumerate(rows)]


def fmt(v, digits=2, suffix=""):
    """A number for a table: `digits` decimals and `suffix`, or — for a missing one."""
    return "—" if v is None else f"{v:.{digits}f}{suffix}"


def emit(markdown, result, out_md, out_json):
    """Print the Markdown table and write it and the JSON result where asked; the exit status."""
    print(markdown, end="")
    for path, text in ((out_md, markdown), (out_json, json.dumps(result, indent=2) + "\n")):
        if path:
            try:
                with open(path, "w") as f:
                    f.write(text)
            except OSError as e:
                print(f"error: {path}: cannot write: {e.strerror or e}", file=sys.stderr)
                return 1
    return 0
