#!/usr/bin/env python3
"""Renders every chat template in tests/data/chat/templates with every conversation in
tests/data/chat/cases.json through Python's jinja2, set up as transformers'
apply_chat_template sets it up (ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks, loop controls, tojson = json.dumps(ensure_ascii=False), raise_exception,
strftime_now, the `generation` tag), and writes tests/data/chat/expected.json: the text,
or the message of a raise_exception, per (template, case). tests/jinja_test.cpp renders
the same pairs with Cascade's interpreter and compares.

    python3 scripts/make_chat_fixtures.py        # needs python3-jinja2
"""
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "chat")


class Generation(Extension):
    """transformers' AssistantTracker marks {% generation %} blocks; rendering is unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class Raised(Exception):
    pass


def environment():
    def raise_exception(message):
        raise Raised(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def main():
    env = environment()
    cases = json.load(open(os.path.join(ROOT, "cases.json")))
    tdir = os.path.join(ROOT, "templates")
    expected = {}
    for name in sorted(os.listdir(tdir)):
        source = open(os.path.join(tdir, name), encoding="utf-8").read()
        template = env.from_string(source)
        for case in cases:
            key = f"{name}/{case['name']}"
            try:
                # apply_chat_template always passes tools and documents (None when absent).
                expected[key] = {"text": template.render(**{"tools": None, "documents": None, **case["context"]})}
            except Raised as e:
                expected[key] = {"raised": str(e)}
            except jinja2.TemplateError as e:
                expected[key] = {"error": f"{type(e).__name__}: {e}"}
            except (TypeError, IndexError, KeyError, ValueError, AttributeError) as e:
                expected[key] = {"error": f"{type(e).__name__}: {e}"}
    json.dump(expected, open(os.path.join(ROOT, "expected.json"), "w"), ensure_ascii=False, indent=1, sort_keys=True)
    ok = sum("text" in v for v in expected.values())
    print(f"{len(expected)} renders: {ok} texts, {len(expected) - ok} raised or failed", file=sys.stderr)


if __name__ == "__main__":
    main()
