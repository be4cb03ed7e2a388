"""The Dockerfile parser, Docker's variable substitution and .dockerignore (pure; Hypothesis
holds that every input parses or fails naming its line, never with a traceback)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.images.build.dockerfile import (BuildError, SubstitutionError, expand,
                                            key_values, parse, parse_duration, split_words)
from worker.images.build.ignore import IgnoreRules
from worker.images.build.metadata import healthcheck
from worker.images.build.state import State


# ---- lines, directives, forms ---------------------------------------------------------------
def test_continuations_comments_and_line_numbers():
    df = parse("# syntax=docker/dockerfile:1\n"
               "\n"
               "FROM busybox:1 AS Build\n"
               "# a comment\n"
               "RUN echo a \\\n"
               "  # dropped inside a continuation\n"
               "\n"
               "    && echo b\n"
               "COPY --from=x --chown=1:2 a b /dst/\n"
               "CMD [\"sh\", \"-c\", \"echo hi\"]\n"
               "ENTRYPOINT [not json\n")
    stage = df.stages[0]
    assert stage.name == "build" and stage.base == "busybox:1" and stage.line == 3
    run, copy, cmd, ep = stage.instructions
    assert (run.line, run.rest) == (5, "echo a     && echo b")
    assert copy.flags == {"from": "x", "chown": "1:2"} and copy.rest == "a b /dst/"
    assert cmd.exec_form == ["sh", "-c", "echo hi"]
    assert ep.exec_form is None and ep.rest == "[not json"  # shell form, as Docker falls back


def test_escape_directive_backtick():
    df = parse("# escape=`\nFROM scratch\nRUN echo a `\n b\nCOPY c:\\x d\n")
    assert df.escape == "`"
    assert df.stages[0].instructions[0].rest == "echo a  b"
    with pytest.raises(BuildError, match="^Dockerfile:1: escape directive"):
        parse("# escape=x\nFROM scratch\n")


def test_meta_args_and_stage_order():
    df = parse("ARG V=1\nARG BASE\nFROM busybox:${V}\nFROM scratch AS two\n")
    assert [a.rest for a in df.meta_args] == ["V=1", "BASE"]
    assert [s.name for s in df.stages] == ["", "two"]
    with pytest.raises(BuildError, match="^Dockerfile:1: RUN before the first FROM"):
        parse("RUN true\nFROM scratch\n")
    with pytest.raises(BuildError, match="no FROM"):
        parse("# only a comment\n")


@pytest.mark.parametrize("text,line,message", [
    ("FROM scratch\nBOGUS x\n", 2, "unknown instruction: BOGUS"),
    ("FROM scratch\n\nONBUILD RUN x\n", 3, "ONBUILD is not supported"),
    ("FROM --platform=linux/arm64 busybox\n", 1, "--platform is not supported"),
    ("FROM a AS b c\n", 1, "takes IMAGE"),
    ("FROM a AS x\nFROM b AS x\n", 2, "used twice"),
    ("FROM scratch\nCOPY onlyone\n", 2, "COPY takes SRC... DEST"),
    ("FROM scratch\nCOPY --frm=a b c\n", 2, "unknown flag --frm"),
    ("FROM scratch\nCOPY --from a b\n", 2, "needs a value"),
    ("FROM scratch\nRUN\n", 2, "needs an argument"),
    ("FROM scratch\nSHELL sh -c\n", 2, "JSON form"),
    ("FROM scratch\nHEALTHCHECK --interval=soon CMD true\n", 2, "not a duration"),
    ("FROM scratch\nHEALTHCHECK NONE x\n", 2, "NONE takes no"),
    ("FROM scratch\nARG 1bad\n", 2, "not a variable name"),
])
def test_refusals_name_the_line(text, line, message):
    with pytest.raises(BuildError) as info:
        parse(text, "Dockerfile.dev")
    assert str(info.value).startswith(f"Dockerfile.dev:{line}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# ---- substitution ---------------------------------------------------------------------------
ENV = {"A": "a", "EMPTY": "", "SP": "x y"}


@pytest.mark.parametrize("word,want", [
    ("$A", "a"), ("${A}", "a"), ("pre${A}post", "preapost"),
    ("$NOPE", ""), ("${NOPE:-d}", "d"), ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""),
    ("${A:-d}", "a"), ("${A:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"),
    ("${NOPE:+alt}", ""), ("${NOPE:-${A}x}", "ax"),
    ("'$A'", "$A"), ('"$A b"', "a b"), ("\\$A", "$A"), ('"\\$A"', "$A"), ('"a\\b"', "a\\b"),
    ("$", "$"), ("a$1b", "ab"), ("${SP}", "x y"),
])
def test_expand_like_docker(word, want):
    assert expand(word, ENV) == want


@pytest.mark.parametrize("word", ["${A", "${A:x}", "${}", "'open", '"open', "${NOPE:?unset!}"])
def test_expand_errors(word):
    with pytest.raises(SubstitutionError):
        expand(word, ENV)


def test_env_and_label_forms():
    df = parse('FROM scratch\nENV A=1 B="two words" C=${A}x\nENV OLD some value\n'
               'LABEL "a.b"="c d" e=f\n')
    env_new, env_old, label = df.stages[0].instructions
    assert key_values(env_new, {"A": "0"}, "\\") == [("A", "1"), ("B", "two words"),
                                                     ("C", "0x")]
    assert key_values(env_old, {}, "\\") == [("OLD", "some value")]
    assert key_values(label, {}, "\\") == [("a.b", "c d"), ("e", "f")]
    assert split_words('a "b c" d\\ e') == ["a", '"b c"', "d\\ e"]


def test_healthcheck_and_durations():
    df = parse("FROM scratch\nHEALTHCHECK --interval=1m30s --retries=3 CMD [\"true\"]\n"
               "HEALTHCHECK CMD curl -f http://x/ || exit 1\nHEALTHCHECK NONE\n")
    a, b, c = (healthcheck(i, State()) for i in df.stages[0].instructions)
    assert a == {"Test": ["CMD", "true"], "Interval": 90 * 10**9, "Retries": 3}
    assert b == {"Test": ["CMD-SHELL", "curl -f http://x/ || exit 1"]}
    assert c == {"Test": ["NONE"]}
    assert parse_duration("1.5s") == 1_500_000_000 and parse_duration("5") is None


# ---- .dockerignore --------------------------------------------------------------------------
def test_dockerignore_patterns_and_exceptions():
    rules = IgnoreRules("# comment\n*.log\n!keep.log\nbuild/\n**/secret*\n/tmp/?x\n"
                        "docs\n!docs/README.md\n")
    assert rules.ignored("a.log") and not rules.ignored("keep.log")
    assert not rules.ignored("sub/a.log")  # `*` does not cross directories
    assert rules.ignored("build/x/y")      # a matched directory covers its contents
    assert rules.ignored("secret.txt") and rules.ignored("a/b/secrets")
    assert rules.ignored("tmp/ax") and not rules.ignored("tmp/abx")
    assert rules.ignored("docs/other") and not rules.ignored("docs/README.md")
    assert not rules.ignored("src/main.c")
    last_wins = IgnoreRules("!x\nx\n")
    assert last_wins.ignored("x")


# ---- never a traceback ----------------------------------------------------------------------
INSTRUCTION_WORDS = ["FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL",
                     "EXPOSE", "VOLUME", "CMD", "ENTRYPOINT", "HEALTHCHECK", "STOPSIGNAL",
                     "SHELL", "ONBUILD", "from", "BOGUS", "#", "# escape=`", "# escape=\\",
                     "--from=a", "--chown=", "--platform=x", "--interval=1s", "AS", "[", "]",
                     '"', "'", "\\", "`", "${A:-b}", "$", "{", "}", "=", "\t", " ", "\x00",
                     "scratch", "busybox:1", "CMD", "NONE", '["a"]', "[1]"]
line = st.lists(st.one_of(st.sampled_from(INSTRUCTION_WORDS), st.text(max_size=6)),
                max_size=6).map(" ".join)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(line, max_size=8).map("\n".join))
def test_any_input_parses_or_names_a_line(text):
    try:
        df = parse(text)
    except BuildError as exc:
        assert str(exc).startswith("Dockerfile:")
        assert exc.line >= 0 and exc.line <= text.count("\n") + 1
        return
    for stage in df.stages:
        for ins in stage.instructions:
            assert 1 <= ins.line <= text.count("\n") + 1
            for w in split_words(ins.rest, df.escape):
                try:
                    expand(w, {"A": "1"}, df.escape)
                except SubstitutionError:
                    pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_expand_never_crashes(word):
    try:
        expand(word, ENV)
    except SubstitutionError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(alphabet="ab/.*?[]!\\", max_size=12))
def test_dockerignore_never_crashes(text, path):
    try:
        rules = IgnoreRules(text)
    except Exception as exc:  # noqa: BLE001 - only the named refusal is allowed
        assert str(exc).startswith(".dockerignore:"), exc
        return
    rules.ignored(path.strip("/") or "x")


def test_deep_nesting_is_refused_not_a_recursion_error():
    with pytest.raises(SubstitutionError, match="nested"):
        expand("${A:-" * 5000 + "}" * 5000, {})
