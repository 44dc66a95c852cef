"""Feature pairs and selections: their text forms round-trip, the strings written before the types
existed still parse to the same pairs, and bad text is one line naming it."""

from __future__ import annotations

import pytest

from plankdiff.features.pairs import RAW_PIXELS, Pair, Selection

# Names as stores, results and cards written before these types existed hold them.
OLD_PAIR_NAMES = {
    "dec2@16/t=5": Pair("dec2@16", 5),
    "enc1@32/t=0": Pair("enc1@32", 0),
    "mid@8/t=700": Pair("mid@8", 700),
    "dec2@16.res0/t=25": Pair("dec2@16.res0", 25),  # a sub-block
    "layer3@8": Pair("layer3@8"),  # a baseline block: no timestep
    "pool": Pair("pool"),
    "block4": Pair("block4"),  # MAE
    "pixels": RAW_PIXELS,
}


@pytest.mark.parametrize("text", sorted(OLD_PAIR_NAMES))
def test_old_pair_names_parse_to_their_pair_and_format_back_unchanged(text: str):
    pair = Pair.parse(text)
    assert pair == OLD_PAIR_NAMES[text]
    assert pair.name == str(pair) == text


def test_file_names_are_those_stores_were_written_with():
    assert Pair("dec2@16", 5).file_name == "dec2@16__t5.npy"
    assert Pair("layer3@8").file_name == "layer3@8.npy"


def test_a_fused_selection_round_trips_in_its_order():
    text = "dec2@16/t=5+enc2@16/t=25+dec3@32/t=5"
    selection = Selection.parse(text)
    assert selection.pairs == (Pair("dec2@16", 5), Pair("enc2@16", 25), Pair("dec3@32", 5))
    assert selection.name == str(selection) == text
    assert selection.names == text.split("+")
    assert selection.fused and selection.first == Pair("dec2@16", 5)
    one = Selection.parse("layer3@8")
    assert one.pairs == (Pair("layer3@8"),) and not one.fused and one.name == "layer3@8"


def test_a_selection_is_made_from_what_the_command_line_and_the_code_give():
    expected = Selection((Pair("dec2@16", 5), Pair("pool")))
    assert Selection.of(["dec2@16/t=5", "pool"]) == expected
    assert Selection.of([Pair("dec2@16", 5), "pool"]) == expected
    assert Selection.of("dec2@16/t=5+pool") == expected
    assert Selection.of(expected) is expected
    assert Selection.of(Pair("pool")) == Selection((Pair("pool"),))


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("", "not '<block>'"),
        ("dec2@16/t=", "not a whole number"),
        ("dec2@16/t=x", "not a whole number"),
        ("dec2@16/t=-1", "not a whole number"),
        ("dec2@16/t=5/t=6", "not a whole number"),
        ("/t=5", "not '<block>'"),
        ("dec2 16/t=5", "not '<block>'"),
        ("a+b", "not '<block>'"),  # a selection is not a pair
    ],
)
def test_bad_pair_text_is_one_line_naming_it(text: str, cause: str):
    with pytest.raises(ValueError, match=cause) as error:
        Pair.parse(text)
    message = str(error.value)
    assert repr(text) in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("dec2@16/t=5+", "not '<block>'"),
        ("+dec2@16/t=5", "not '<block>'"),
        ("a++b", "not '<block>'"),
        ("dec2@16/t=5+dec2@16/t=x", "not a whole number"),
        ("dec2@16/t=5+dec2@16/t=5", "listed twice"),
    ],
)
def test_bad_selection_text_is_one_line_naming_the_whole_text(text: str, cause: str):
    with pytest.raises(ValueError, match=cause) as error:
        Selection.parse(text)
    message = str(error.value)
    assert f"selection {text!r}" in message and "\n" not in message


def test_pairs_refuse_what_no_store_can_hold():
    with pytest.raises(ValueError, match="listed twice"):
        Selection.of(["pool", "pool"])
    with pytest.raises(ValueError, match="at least one"):
        Selection.of([])
    with pytest.raises(ValueError, match="not a block name"):
        Pair("dec2@16/t=5", 5)  # a name where a block belongs
    with pytest.raises(ValueError, match="whole number"):
        Pair("dec2@16", -3)
