"""StopStringMatcher over every way of chunking a text, against a character-by-character reference."""
import itertools

import pytest

from r1_megatron.serving.stop_strings import StopStringMatcher, first_completed, partial_suffix_len


def reference(text, stops):
    """Generation stopped at the first character after which some stop string occurs: the text before it."""
    for end in range(len(text) + 1):
        seen = text[:end]
        if any(s in seen for s in stops):
            return text[:min(seen.find(s) for s in stops if s in seen)], True
    return text, False


def run(chunks, stops):
    matcher = StopStringMatcher(stops)
    out, stopped = "", False
    for chunk in chunks:
        safe, stopped = matcher.add(chunk)
        out += safe
        if stopped:
            break
    return (out if stopped else out + matcher.flush()), stopped


def chunkings(text, cuts):
    """Every split of `text` at up to `cuts` points."""
    for n in range(cuts + 1):
        for points in itertools.combinations(range(1, len(text)), n):
            bounds = (0, *points, len(text))
            yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


CASES = [
    ("Hello world. ### Done", ["###"]),               # one stop
    ("STOPrest", ["STOP"]),                          # at the very start
    ("ababac xy", ["abac"]),                         # overlapping candidates: "ab" restarts inside "abab"
    ("a</s>b<|end|>c", ["<|end|>", "</s>"]),         # several stops: the earliest wins, not the first listed
    ("xabcd", ["abcd", "bc"]),                       # "bc" completes first although "abcd" starts earlier
    ("the end is near", ["ending", "nearly"]),       # prefixes of stops that never complete: all flushed
    ("aaaa", ["aab"]),                               # repeated partial prefix
    ("no stops at all", []),
]


@pytest.mark.parametrize("text,stops", CASES)
def test_every_chunking_matches_reference(text, stops):
    expected = reference(text, stops)
    for chunks in chunkings(text, 3 if len(text) < 12 else 2):
        assert run(chunks, stops) == expected, chunks


def test_expected_values():
    assert reference("Hello world. ### Done", ["###"]) == ("Hello world. ", True)
    assert reference("STOPrest", ["STOP"]) == ("", True)
    assert reference("a</s>b<|end|>c", ["<|end|>", "</s>"]) == ("a", True)
    assert reference("xabcd", ["abcd", "bc"]) == ("xa", True)
    assert reference("the end is near", ["ending", "nearly"]) == ("the end is near", False)


def test_holds_only_what_could_start_a_stop():
    matcher = StopStringMatcher(["</answer>"])
    assert matcher.add("x = 4 </ans") == ("x = 4 ", False)
    assert matcher.add("wer? no") == ("</answer? no", False)  # the held text was not a stop after all
    assert matcher.add(" <") == (" ", False)
    assert matcher.flush() == "<"  # the end: nothing held back any more
    assert matcher.flush() == ""
    stopped = StopStringMatcher(["\n\n"])
    assert stopped.add("one\n") == ("one", False) and stopped.add("\ntwo") == ("", True)
    assert stopped.add("more") == ("", True) and stopped.flush() == ""


def test_pieces():
    assert partial_suffix_len("abab", ["abac"]) == 2 and partial_suffix_len("abc", ["x"]) == 0
    assert partial_suffix_len("xa", ["ab"]) == 1 and partial_suffix_len("ab", ["ab"]) == 0  # whole: a match
    assert first_completed("xabcd", ["abcd", "bc"]) == (2, 4) and first_completed("x", ["y"]) is None


@pytest.mark.parametrize("stops", [[""], ["ok", None]])
def test_bad_stop_named(stops):
    with pytest.raises(ValueError, match=r"stop\[\d\]"):
        StopStringMatcher(stops)
