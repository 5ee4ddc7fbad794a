"""deployer.plan.template.render: strict, never escaping, and errors that point at the line."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import chevron
import chevron.tokenizer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.cli.deploy import main
from deployer.errors import TemplateError
from deployer.plan.template import render, tokenize
from tests.conftest import armed_local_target, tree_digest

REPO = Path(__file__).resolve().parents[2]
HTML = '&<>"\''


def test_values_are_never_html_escaped():
    assert render("<<X>> <<&X>> < <<X>> >", {"X": HTML}, "t") == f"{HTML} {HTML} < {HTML} >"


@pytest.mark.parametrize("value", ["<<HOSTNAME>>", "{{x}}", "<<#A>>x<</A>>", "<<", ">>"])
def test_values_are_data_not_template(value):
    assert render("[<<X>>]", {"X": value, "HOSTNAME": "h", "A": "a"}, "t") == f"[{value}]"


def test_spaces_inside_a_tag_are_allowed():
    assert render("<< X >>|<<& X >>", {"X": "v"}, "t") == "v|v"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("<<MISSING>>", 1),
        ("ok <<A>>\n<<MISSING>>", 2),
        # After comments and sections, one of them mentioning the token, and
        # after a token whose name starts with the missing one.
        (
            "<<! MISSING is documented here >>\n"
            "<<#A>>\n"
            "  in section <<A>>\n"
            "<</A>>\n"
            "<<^EMPTY>>not shown<</EMPTY>>\n"
            "<<MISSINGX>>\n"
            "ServerAlias <<MISSING>>\n",
            7,
        ),
        ("<<#A>>\n<<#A>>\n<</A>>\n<</A>>\n\n\n<<#MISSING>>x<</MISSING>>", 7),
    ],
)
def test_missing_token_names_file_line_and_token(text, line):
    values = {"A": "a", "EMPTY": "", "MISSINGX": "x"}
    with pytest.raises(TemplateError) as e:
        render(text, values, "/srv/vhost.tmpl")
    assert str(e.value).startswith(f"/srv/vhost.tmpl:{line}: token <<MISSING>> has no value;")
    assert "--var MISSING=VALUE" in str(e.value)


def test_triple_brace_is_rejected_with_a_hint():
    with pytest.raises(TemplateError, match=r"^t:2: unsupported tag .*; write <<X>> \(values are never"):
        render("a\n<<{X}>>", {"X": "v"}, "t")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\n<<>X>>", r"^t:2: unsupported tag \(partial\) near <<X>>$"),
        ("<<=[[ ]]=>>[[X]]", r"^t:1: unsupported tag \(set delimiter\)"),
        ("<<= x>>", r"^t:1: unsupported tag \(set delimiter\)"),
        ("a\n<<#A>>\nb\n<</A>>\nServerName <<X", r"^t:5: unclosed tag '<<X'$"),
        ("a\n\n<<>>", r"^t:3: empty tag <<>>$"),
        ("<</A>>", r"^t:1: <</A>> closes no open section$"),
        ("<<#A>>\n<</B>>", r"^t:2: <</B>> closes section <<#A>> of line 1$"),
        ("x\n<<#A>>\nnever closed", r"^t:2: section <<#A>> is never closed$"),
    ],
)
def test_unsupported_or_broken_tags_are_rejected(text, message):
    with pytest.raises(TemplateError, match=message):
        render(text, {"A": "a", "B": "b", "X": "x"}, "t")


def test_other_template_syntaxes_are_left_alone():
    text = "ErrorLog ${APACHE_LOG_DIR}/x.log {{x}} {{{y}}} %{GLOBAL} a<b >> c"
    assert render(text, {}, "t") == text


@pytest.mark.parametrize(
    ("values", "expected"),
    [({"A": "yes"}, "[on yes]"), ({"A": ""}, "[off]")],
)
def test_sections_on_defined_keys(values, expected):
    assert render("[<<#A>>on <<A>><</A>><<^A>>off<</A>>]", values, "t") == expected


def test_standalone_section_lines_leave_no_blank_lines():
    assert render("a\n<<#A>>\nb\n<</A>>\nc\n", {"A": "1"}, "t") == "a\nb\nc\n"


def test_the_default_template_renders_completely():
    text = (REPO / "templates" / "default_template").read_text()
    out = render(text, {"HOSTNAME": "demo-acme.example.com", "DEPLOY_PATH": "/var/www/demo-acme",
                        "CONFIG_NAME": "demo-acme", "HTTP_PORT": "80"}, "default_template")
    assert "<<" not in out and ">>" not in out
    lines = [line.strip() for line in out.splitlines()]
    assert "<VirtualHost *:80>" in lines
    assert "ServerName demo-acme.example.com" in lines
    assert ("WSGIScriptAlias / /var/www/demo-acme/django.wsgi process-group=demo-acme"
            " application-group=%{GLOBAL}") in lines
    assert "<Directory /var/www/demo-acme>" in lines
    assert "ErrorLog ${APACHE_LOG_DIR}/demo-acme-error.log" in lines


def test_a_broken_structure_is_reported_before_an_earlier_missing_token():
    with pytest.raises(TemplateError, match=r"^t:2: <</A>> closes no open section$"):
        render("<<MISSING>>\n<</A>>", {"A": "a"}, "t")


# -- the same tokens and output as chevron's own tokenizer ----------------------


def chevron_tokens(text: str) -> list[tuple[str, str]]:
    """chevron's tokens, with value tags made unescaped as render does."""
    return [("no escape" if kind == "variable" else kind, key)
            for kind, key in chevron.tokenizer.tokenize(text, def_ldel="<<", def_rdel=">>")]


@pytest.mark.parametrize(
    "text",
    [
        "a\n  <<#s>>  \nb\n<</s>>\nc",  # standalone: its line's spaces and newline go
        "a\n\t<<#s>>\nb\n<</s>>",  # but only spaces are stripped on its left, not tabs
        "a\n<<#s>>\nb\n<</s>>  ",  # on a last line without a newline the blanks stay
        "<<! c >>\n<<#s>> <</s>>\n<<^s>>\n<<a>>\n<</s>>\n",  # two tags on a line: neither stands alone
        "x <<#s>>\ny\n<</s>>\n<<a>>\n<<&b>>  \n",  # a tag after text or a value tag is never standalone
    ],
)
def test_standalone_lines_as_chevron_has_them(text):
    values = {"a": "1", "b": "2", "s": "on"}
    assert [(kind, key) for kind, key, _ in tokenize(text, "t")] == chevron_tokens(text)
    assert render(text, values, "t") == chevron.render(text, values, def_ldel="<<", def_rdel=">>")


_PIECES = st.sampled_from(
    ["x", "y z", " ", "  ", "\t", "\n", " \n", "\t\n", "\r\n",
     "<<a>>", "<< a >>", "<<&b>>", "<<! c >>", "<<!\nc\n>>"])


def _section(body: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda kind, key, inner: f"<<{kind}{key}>>{inner}<</{key}>>",
                     st.sampled_from("#^"), st.sampled_from("st"), body)


_TEMPLATES = st.recursive(
    st.lists(_PIECES, max_size=8).map("".join),
    lambda inner: st.lists(inner | _section(inner), max_size=6).map("".join),
    max_leaves=40,
)
# No HTML-special characters: chevron itself would escape them in <<a>>.
_VALUES = st.fixed_dictionaries({key: st.sampled_from(["", "v", "w x", "1\n2"]) for key in "abst"})


@settings(max_examples=300, deadline=None)
@given(_TEMPLATES, _VALUES)
def test_tokens_and_output_are_chevrons(text, values):
    tokens = tokenize(text, "t")
    assert [(kind, key) for kind, key, _ in tokens] == chevron_tokens(text)
    # Every tag but a comment, on the line of its `<<`, counted from the start.
    lines = [text.count("\n", 0, m.start()) + 1 for m in re.finditer("<<(?!!)", text)]
    assert [line for kind, _, line in tokens if kind != "literal"] == lines
    assert render(text, values, "t") == chevron.render(text, values, def_ldel="<<", def_rdel=">>")


def test_rendering_is_linear_in_template_size():
    # 4 MB, 400,000 tags. Not a speed assertion: the old quadratic tokenizing
    # (newlines counted from the start for every tag, chevron copying the rest
    # of the template at every tag) took 561 s here on a 2-core box (the
    # review's 37.6 s for 1 MB gives about 600 s: 16 times for 4 times the
    # size), the linear code about 2 s. 120 s only stops a run that would not end.
    code = (
        "from deployer.plan.template import render\n"
        "out = render('SetEnv K<<A>> <<B>>\\n' * 200_000, {'A': 'a', 'B': 'b'}, 't')\n"
        "print(out.count('\\n'), out.count('SetEnv Ka b\\n'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.split() == ["200000", "200000"]


# -- through the CLI, on a real local target -----------------------------------


def run(targets: Path) -> tuple[int, list[dict]]:
    out = io.StringIO()
    code = main(["demo-acme", "demo-acme.example.com", "--targets", str(targets), "--output", "json"],
                stdout=out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_cli_deploys_a_good_template(tmp_path):
    # The control for the test below: this target does change the tree.
    code, events = run(armed_local_target(tmp_path, "ServerName <<HOSTNAME>>\n"))
    assert (code, events[-1]["error"]) == (0, None)
    assert (tmp_path / "apache2/sites-available/demo-acme.conf").read_text() == (
        "# Written by deployer for instance demo-acme; the next deploy replaces this file.\n"
        "ServerName demo-acme.example.com\n")
    assert (tmp_path / "HOOKED").exists() and (tmp_path / "MIGRATED").exists()


def test_cli_unknown_token_exits_2_and_changes_nothing(tmp_path):
    targets = armed_local_target(tmp_path, "ServerName <<HOSTNAME>>\n\nServerAlias <<ALIAS>>\n")
    before = tree_digest(tmp_path)
    code, events = run(targets)
    assert code == 2
    assert events[-1]["error"].startswith(f"{tmp_path}/vhost.tmpl:3: token <<ALIAS>> has no value")
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("token", ["my-var", "X.y", "1ST"])
def test_a_token_no_var_can_name_says_so_and_suggests_no_var(token):
    with pytest.raises(TemplateError, match=rf"t:1: token <<{re.escape(token)}>> is not a valid name") as e:
        render(f"<<{token}>>\n", {}, "t")
    assert "--var" not in str(e.value)
