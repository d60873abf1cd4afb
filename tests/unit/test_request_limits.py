"""Names a request gives (a model, an app, a user, a target) hold no control character and no
bidirectional override: they reach log lines, tables and the operator's terminal."""

from __future__ import annotations

import pytest

from quotad.daemon.errors import RequestError
from quotad.daemon.request_limits import check_name


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("sim/a\n12:00 error", "U+000A at 5"),
        ("\x1b]0;x\x07", "U+001B at 0"),
        ("a\tb", "U+0009 at 1"),
        ("a\x85b", "U+0085 at 1"),  # NEL, a C1 control
        ("abc\u202ecba", "U+202E at 3"),
        ("x\x7f", "U+007F at 1"),
    ],
)
def test_a_name_with_a_control_character_is_refused_saying_which_and_where(
    name: str, said: str
) -> None:
    with pytest.raises(RequestError) as refused:
        check_name("model", name)
    assert refused.value.message == f"model: a name cannot hold control characters ({said})"
    assert refused.value.details == {"field": "model"}


@pytest.mark.parametrize("name", ["café", "日本語\u3000アプリ", "a\u00a0b", "😀", "a b", ""])
def test_names_in_any_script_and_with_spaces_pass(name: str) -> None:
    check_name("app", name)
