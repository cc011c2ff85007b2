"""Output formats, cue building, the live view and plain streaming, on hand-made token events."""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import replace

import numpy as np
import pytest
from rich.console import Console

from voxcli.events import FileStatus, LiveStatus, TokenEvent, Transcript, TranscriptMetrics, summarize
from voxcli.output.cues import Cue, LiveCues, events_to_cues
from voxcli.output.formats import FORMATS, render_transcript
from voxcli.output.tables import format_summary, metrics_table, sig3
from voxcli.output.view import LiveTranscript, PlainTranscript, status_text

# Sub-word pieces as an incremental detokenizer yields them: leading spaces on word starts,
# punctuation on its own, and "é" split over two tokens (the first byte decodes to nothing).
SEG0 = [" Bon", "jour", ",", " je", " suis", " all", "", "é", " au", " caf", "", "é", ".",
        " Il", " fait", " tr", "ès", " beau", " aujourd", "'", "hui", "!"]
# A new segment whose first piece has no leading space: the segment change is still a boundary.
SEG1 = ["Deux", "ième", " part", "ie", " sans", " point", "ue"]

TOKEN_S = 0.08


def make_events(pieces_by_segment, *, spans=True, gap_after_segment_s=1.5):
    events = []
    t_audio = 0.0
    for segment, pieces in enumerate(pieces_by_segment):
        if segment:
            t_audio += gap_after_segment_s
        for text in pieces:
            start, end = (t_audio, t_audio + TOKEN_S) if spans else (None, None)
            events.append(
                TokenEvent(
                    index=len(events),
                    token_id=100 + len(events),
                    text=text,
                    t_emitted=time.perf_counter(),
                    audio_start_s=start,
                    audio_end_s=end,
                    segment=segment,
                )
            )
            t_audio += TOKEN_S
    return events


def make_transcript(events=None, audio_s=5.0):
    events = make_events([SEG0, SEG1]) if events is None else events
    metrics = TranscriptMetrics(audio_s=audio_s, n_tokens=len(events), ttft_ms=51.25, total_ms=812.0,
                                step_ms=[5.0, 6.0, 7.5])
    return Transcript(source="bonjour.wav", model="tiny-realtime", events=events, metrics=metrics)


def norm(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# A small strict SRT/VTT parser
# ---------------------------------------------------------------------------------------------

def _ts_pattern(sep: str) -> str:
    return r"(\d{2,}):([0-5]\d):([0-5]\d)" + re.escape(sep) + r"(\d{3})"


def _ts_seconds(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _parse_blocks(body: str, sep: str, numbered: bool) -> list[Cue]:
    ts = _ts_pattern(sep)
    pattern = re.compile(
        (r"(\d+)\n" if numbered else "") + ts + " --> " + ts + r"\n((?:[^\n]+\n)+)"
    )
    assert body.endswith("\n") and not body.endswith("\n\n\n")
    blocks = body[:-1].split("\n\n")
    cues = []
    for i, block in enumerate(blocks, 1):
        m = pattern.fullmatch(block + "\n")
        assert m, f"malformed cue block {block!r}"
        groups = m.groups()
        if numbered:
            assert int(groups[0]) == i, "cues must be numbered from 1 without gaps"
            groups = groups[1:]
        start, end = _ts_seconds(*groups[0:4]), _ts_seconds(*groups[4:8])
        cues.append(Cue(start, end, groups[8].rstrip("\n")))
    return cues


def parse_srt(out: str) -> list[Cue]:
    return _parse_blocks(out, ",", numbered=True)


def parse_vtt(out: str) -> list[Cue]:
    assert out.startswith("WEBVTT\n\n")
    cues = _parse_blocks(out[len("WEBVTT\n\n"):], ".", numbered=False)
    for cue in cues:
        assert "<" not in cue.text and "-->" not in cue.text
        cue.text = cue.text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return cues


def words_of(segments) -> list[str]:
    """The words a listener hears: segments are separate even when one starts without a space."""
    return " ".join("".join(pieces) for pieces in segments).split()


def check_cues(cues: list[Cue], transcript_text: str, words: list[str] | None = None) -> None:
    assert cues
    prev_end = 0.0
    for cue in cues:
        assert 0 <= prev_end <= cue.start_s < cue.end_s
        assert cue.text and cue.text == cue.text.strip()
        prev_end = cue.end_s
    joined = " ".join(c.text for c in cues)
    assert "".join(joined.split()) == "".join(transcript_text.split())
    # Word for word: no word was cut between two cues.
    assert joined.split() == (transcript_text.split() if words is None else words)


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


def test_text_format():
    t = make_transcript()
    assert render_transcript(t, "text") == t.text + "\n"
    assert "allé au café" in t.text


def test_json_round_trips_text_events_and_metrics():
    t = make_transcript()
    out = render_transcript(t, "json")
    assert "café" in out  # ensure_ascii=False
    data = json.loads(out)
    assert data == t.to_dict()
    assert data["text"] == t.text
    assert [TokenEvent(**e) for e in data["events"]] == t.events
    assert data["metrics"] == t.metrics.to_dict()
    assert data["metrics"]["step_ms"]["n"] == 3


def test_json_never_writes_nan():
    t = make_transcript()
    t.metrics.ttft_ms = float("nan")
    data = json.loads(render_transcript(t, "json"))
    assert data["metrics"]["ttft_ms"] is None


def test_jsonl_one_line_per_event_then_summary():
    t = make_transcript()
    lines = render_transcript(t, "jsonl").splitlines()
    assert len(lines) == len(t.events) + 1
    records = [json.loads(line) for line in lines]
    assert [r["type"] for r in records] == ["token"] * len(t.events) + ["summary"]
    for record, event in zip(records, t.events):
        record = dict(record)
        del record["type"], record["source"]
        assert TokenEvent(**record) == event
    summary = records[-1]
    assert summary["text"] == t.text
    assert summary["metrics"] == t.metrics.to_dict()
    assert summary["source"] == "bonjour.wav"


def test_srt_is_well_formed_and_matches_transcript():
    t = make_transcript()
    out = render_transcript(t, "srt")
    cues = parse_srt(out)
    check_cues(cues, t.text, words_of([SEG0, SEG1]))
    assert cues[0].start_s == 0.0
    assert any("café." in c.text for c in cues)


def test_vtt_is_well_formed_and_matches_transcript():
    t = make_transcript()
    cues = parse_vtt(render_transcript(t, "vtt"))
    check_cues(cues, t.text, words_of([SEG0, SEG1]))
    assert cues == parse_srt(render_transcript(t, "srt"))


def test_vtt_escapes_markup():
    events = make_events([[" a", " <b>", " &", " -->", " c"]])
    t = make_transcript(events)
    out = render_transcript(t, "vtt")
    assert "&lt;b&gt;" in out and "&amp;" in out
    check_cues(parse_vtt(out), t.text)


def test_timestamps_past_an_hour():
    events = [TokenEvent(0, 1, " late", 0.0, 3725.5, 3726.25)]
    out = render_transcript(make_transcript(events, audio_s=3727.0), "srt")
    assert "01:02:05,500 --> 01:02:06,250" in out


def test_empty_transcript_formats():
    t = make_transcript([])
    assert render_transcript(t, "srt") == ""
    assert render_transcript(t, "vtt") == "WEBVTT\n"
    assert render_transcript(t, "text") == "\n"
    assert json.loads(render_transcript(t, "jsonl"))["type"] == "summary"


def test_bad_format_names_the_choices():
    with pytest.raises(ValueError) as err:
        render_transcript(make_transcript(), "docx")
    for fmt in FORMATS:
        assert fmt in str(err.value)


# ---------------------------------------------------------------------------------------------
# Cues
# ---------------------------------------------------------------------------------------------


def test_never_breaks_inside_a_word_even_with_tiny_max_chars():
    events = make_events([SEG0, SEG1])
    cues = events_to_cues(events, max_chars=1)
    check_cues(cues, make_transcript(events).text, words_of([SEG0, SEG1]))
    # With no room at all, every cue is exactly one whole word.
    assert [c.text for c in cues] == words_of([SEG0, SEG1])
    assert "allé" in [c.text for c in cues]
    assert "aujourd'hui!" in [c.text for c in cues]


def test_max_chars_respected_where_a_boundary_exists():
    events = make_events([SEG0, SEG1])
    cues = events_to_cues(events, max_chars=12)
    check_cues(cues, make_transcript(events).text, words_of([SEG0, SEG1]))
    for cue in cues:
        assert len(cue.text) <= 12 or " " not in cue.text


def test_segment_change_forces_a_break():
    events = make_events([SEG0, SEG1])
    cues = events_to_cues(events, max_chars=1000, max_duration_s=1000, max_gap_s=1000)
    seg1_text = norm("".join(SEG1))
    assert seg1_text in [c.text for c in cues]
    assert all(not c.text.endswith("Deux") for c in cues)


def test_sentence_end_forces_a_break():
    events = make_events([SEG0])
    cues = events_to_cues(events, max_chars=1000, max_duration_s=1000, max_gap_s=1000)
    assert [c.text for c in cues] == ["Bonjour, je suis allé au café.", "Il fait très beau aujourd'hui!"]


def test_gap_and_duration_force_breaks():
    # Two words 2 s apart: the gap splits them.
    events = [TokenEvent(0, 1, " one", 0.0, 0.0, 0.5), TokenEvent(1, 2, " two", 0.0, 2.5, 3.0)]
    assert [c.text for c in events_to_cues(events, max_gap_s=0.8)] == ["one", "two"]
    assert [c.text for c in events_to_cues(events, max_gap_s=5.0)] == ["one two"]
    # Many close words: no multi-word cue lasts longer than max_duration_s.
    words = [TokenEvent(i, i, f" w{i}", 0.0, i * 0.3, i * 0.3 + 0.25) for i in range(40)]
    cues = events_to_cues(words, max_duration_s=2.0)
    assert len(cues) > 1
    for cue in cues:
        assert cue.end_s - cue.start_s <= 2.0 + 1e-9


def test_blanks_lend_no_time_to_the_next_word():
    """A Realtime stream says a blank (a special token, no text) for every 80 ms of silence; a
    word after two seconds of them starts where it is said, not where the silence began, and the
    pause before it breaks the cue."""
    events, t = [], 0.0
    for text in [""] * 25 + [" Hello", " world"] + [""] * 25 + [" again"]:
        events.append(TokenEvent(len(events), 1, text, 0.0, t, t + TOKEN_S, special=not text))
        t += TOKEN_S
    cues = events_to_cues(events)
    assert [c.text for c in cues] == ["Hello world", "again"]
    assert cues[0].start_s == pytest.approx(25 * TOKEN_S) and cues[0].end_s == pytest.approx(27 * TOKEN_S)
    assert cues[1].start_s == pytest.approx(52 * TOKEN_S)


def live_cues(events, *, ends=(), audio_s=0.0, **limits):
    """Cues as a running session hands them out: each event added, ``end()`` after the events at
    ``ends``, ``finish()`` last; with, for each cue, how many events had been added when it closed."""
    live = LiveCues(**limits)
    out = []
    for i, event in enumerate(events):
        out += [(c, i + 1) for c in live.add(event)]
        if i in ends:
            out += [(c, i + 1) for c in live.end()]
    out += [(c, len(events)) for c in live.finish(audio_s)]
    return [c for c, _ in out], [n for _, n in out]


def _random_session(seed: int, shared_spans: bool = False):
    """Words of 1-3 pieces, blanks between, pauses, sentence ends, utterances (segments): what a
    listen session's events look like; ``shared_spans``: every word of an utterance shares its span
    (an offline model's)."""
    rng = np.random.default_rng(seed)
    events, t, ends = [], 0.0, []
    for utterance in range(int(rng.integers(1, 5))):
        seg_start = t
        pieces = []
        for _ in range(int(rng.integers(1, 40))):
            word = [" " + "w" * int(rng.integers(1, 6))] + ["x"] * int(rng.integers(0, 3))
            if rng.random() < 0.1:
                word[-1] += "."
            pieces += [(p, False) for p in word] + [("", True)] * int(rng.choice([0, 0, 1, 3, 15]))
        for text, special in pieces:
            events.append((text, special, t, utterance))
            t += TOKEN_S
        span = (seg_start, t)
        events = [(x, sp, (span if shared_spans and u == utterance else (a, a + TOKEN_S)), u)
                  if not isinstance(a, tuple) else (x, sp, a, u) for x, sp, a, u in events]
        ends.append(len(events) - 1)
        t += float(rng.choice([0.3, 1.0]))
    return [TokenEvent(i, i, x, 0.0, a, b, segment=u, special=sp) for i, (x, sp, (a, b), u) in enumerate(events)], ends


@pytest.mark.parametrize("seed", range(40))
def test_cues_closed_while_a_session_runs_are_those_of_the_whole_session(seed):
    limits = [{}, {"max_chars": 20}, {"max_duration_s": 1.0, "max_gap_s": 0.2}][seed % 3]
    events, ends = _random_session(seed, shared_spans=seed % 4 == 3)
    whole = events_to_cues(events, **limits)
    assert whole
    for at_ends in (ends, ()):  # with an end() at each end of speech, and with none
        got, _ = live_cues(events, ends=at_ends, **limits)
        assert got == whole, (seed, at_ends)


def test_cues_close_as_the_session_goes_not_at_its_end():
    words = [f" w{i}" + ("." if i % 5 == 4 else "") for i in range(60)]
    events = make_events([words])
    got, closed_at = live_cues(events)
    assert got == events_to_cues(events) and len(got) == 12
    assert closed_at[:-1] == [5 * (k + 1) + 1 for k in range(11)]  # each when the next cue's first word came
    events = make_events([SEG0, SEG1])
    ends = {len(SEG0) - 1}
    got, closed_at = live_cues(events, ends=ends)
    assert got == events_to_cues(events) and closed_at[1] == len(SEG0)  # the end of speech closed it at once


def test_a_session_without_spans_is_one_cue_at_its_end():
    events = make_events([SEG0, SEG1], spans=False)
    got, _ = live_cues(events, ends={3}, audio_s=4.2)
    assert got == events_to_cues(events, fallback_end_s=4.2)


def test_cue_times_come_from_token_spans():
    events = make_events([SEG0])
    cues = events_to_cues(events, max_chars=1000, max_duration_s=1000, max_gap_s=1000)
    first_sentence_tokens = SEG0.index(".") + 1
    assert cues[0].start_s == 0.0
    assert cues[0].end_s == pytest.approx(first_sentence_tokens * TOKEN_S)
    assert cues[1].start_s == pytest.approx(cues[0].end_s)


def test_none_spans_use_the_fallback():
    events = make_events([SEG0, SEG1], spans=False)
    cues = events_to_cues(events, fallback_end_s=4.2)
    assert len(cues) == 1
    assert (cues[0].start_s, cues[0].end_s) == (0.0, 4.2)
    assert cues[0].text.split() == words_of([SEG0, SEG1])  # segments stay apart
    srt = parse_srt(render_transcript(make_transcript(events, audio_s=4.2), "srt"))
    assert [(c.start_s, c.end_s) for c in srt] == [(0.0, 4.2)]
    # Even with no audio duration known, the cue is valid.
    assert parse_srt(render_transcript(make_transcript(events, audio_s=0.0), "srt"))[0].end_s > 0


def test_bad_spans_are_made_monotonic_and_valid():
    events = [
        TokenEvent(0, 1, " early", 0.0, -0.4, -0.32),  # Realtime delay shift before audio start
        TokenEvent(1, 2, ".", 0.0, -0.32, -0.24),
        TokenEvent(2, 3, " same", 0.0, 1.0, 1.0),  # zero-length
        TokenEvent(3, 4, ".", 0.0, 1.0, 1.0),
        TokenEvent(4, 5, " back", 0.0, 0.5, 0.9, segment=1),  # goes back in time
        TokenEvent(5, 6, "   ", 0.0, 0.9, 1.0, segment=2),  # whitespace only: dropped
    ]
    cues = events_to_cues(events)
    assert [c.text for c in cues] == ["early.", "same.", "back"]
    check_cues(cues, "early. same. back")


# ---------------------------------------------------------------------------------------------
# Live view
# ---------------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SGR = re.compile(r"\x1b\[([0-9;]*)m")


def plain(s: str) -> str:
    return _ANSI.sub("", s)


def last_render(out: str) -> str:
    """What is left on screen: the text after Live's last cursor-up/erase sequence."""
    return out.rsplit("\x1b[2K", 1)[-1]


def sgr_before(s: str, needle: str) -> list[str]:
    """Parameters of the last SGR sequence before the last occurrence of ``needle``."""
    codes = _SGR.findall(s[: s.rindex(needle)])
    return codes[-1].split(";") if codes else []


def capture_console(height=24):
    buf = io.StringIO()
    return buf, Console(file=buf, force_terminal=True, width=80, height=height, color_system="standard")


def test_each_token_is_on_screen_before_the_next_add():
    buf, console = capture_console()
    events = make_events([SEG0, SEG1])
    with LiveTranscript(console, title="bonjour.wav") as live:
        for event in events:
            before = len(buf.getvalue())
            live.add(event)
            new = plain(buf.getvalue()[before:])
            if event.text:
                assert norm(event.text) in new, f"token {event.text!r} not drawn by its own add()"
        assert len(live.display_lag_ms) == len(events)
    final = plain(last_render(buf.getvalue()))
    assert "bonjour.wav" in final
    # Segments are separate lines; the words are all there.
    assert norm("".join(SEG0)) in norm(final)
    assert "\nDeuxième partie sans pointue" in final


def test_long_transcript_is_cropped_live_and_printed_in_full_on_exit():
    buf, console = capture_console(height=12)
    words = [f" w{i:03d}" for i in range(400)]  # about 25 lines at width 80: twice the height
    events = make_events([words])
    with LiveTranscript(console, title="long.wav") as live:
        for i, event in enumerate(events):
            live.add(event)
            live.set_status(FileStatus("long.wav", audio_s=12.0, tokens=i + 1, ttft_ms=51.25))
        live_frame = plain(last_render(buf.getvalue()))
    # While live: the frame fits the terminal, shows the newest words and the status line.
    assert len(live_frame.splitlines()) < 12
    assert "w399" in live_frame and "w000" not in live_frame
    assert "tokens 400" in live_frame and "ttft_ms 51.2" in live_frame and "total_ms -" in live_frame
    # On exit: the whole transcript stays on screen once, with the status line below it.
    final = plain(last_render(buf.getvalue()))
    assert norm(final).split()[1:401] == [w.strip() for w in words]
    assert final.count("w000") == 1
    assert final.index("w399") < final.index("tokens 400")
    assert len(live.display_lag_ms) == 400


def test_live_status_line_is_a_pure_function_of_the_status():
    quiet = LiveStatus(heard_s=3.04, level_db=-31.6, latency_ms=(212.4, 340.0), step_ms=3.14)
    line = status_text(quiet).plain
    assert line == "level -32 dB  audio 3.0 s  latency p50 212 / p95 340 ms  step 3.1/80 ms  dropped 0"
    assert status_text(quiet).plain == line  # nothing is kept between calls
    # Problems show once they exist: lost input, lost blocks, a slow step, a reconnect, stopping.
    busy = LiveStatus(heard_s=60.0, step_ms=95.0, dropped_blocks=4, input_overflows=2, endpoints=3,
                      notice="the server dropped the connection; reconnected", state="stopping")
    line = status_text(busy).plain
    for part in ("endpoints 3", "dropped 4", "overflows 2", "FALLING BEHIND real time",
                 "notice the server dropped the connection; reconnected", "state stopping", "latency -"):
        assert part in line, part
    assert LiveStatus(backlog_blocks=26).behind and not LiveStatus(backlog_blocks=25).behind


def test_file_status_shows_figures_once_there_are_tokens():
    assert status_text(FileStatus("a.wav", audio_s=4.321)).plain == "file a.wav  audio_s 4.32"
    done = status_text(FileStatus("a.wav", audio_s=4.321, tokens=0)).plain
    assert done == "file a.wav  audio_s 4.32  tokens 0  ttft_ms -  total_ms -"


def test_live_add_outside_with_is_an_error():
    _, console = capture_console()
    live = LiveTranscript(console)
    with pytest.raises(RuntimeError):
        live.add(make_events([[" x"]])[0])


def test_live_on_a_non_terminal_console_prints_the_final_text_once():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=80)
    with LiveTranscript(console, title="a.wav") as live:
        for event in make_events([SEG0]):
            live.add(event)
    assert buf.getvalue().count("Bonjour") == 1


# ---------------------------------------------------------------------------------------------
# Plain streaming
# ---------------------------------------------------------------------------------------------


class FlushCountingIO(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def test_plain_writes_and_flushes_each_delta_at_once():
    stream = FlushCountingIO()
    events = make_events([SEG0])
    expected = ""
    with PlainTranscript(stream) as out:
        for event in events:
            flushes = stream.flushes
            out.add(event)
            expected = (expected + event.text).lstrip()
            assert stream.getvalue() == expected
            if event.text:
                assert stream.flushes > flushes
        out.set_status(FileStatus("a.wav", audio_s=1.0, tokens=3))  # no-op: nothing may pollute piped text
        assert stream.getvalue() == expected
    assert stream.getvalue() == make_transcript(events).text + "\n"
    assert len(out.display_lag_ms) == len(events)


def test_plain_puts_each_segment_on_its_own_line():
    stream = io.StringIO()
    with PlainTranscript(stream) as out:
        for event in make_events([SEG0, SEG1]):
            out.add(event)
    assert stream.getvalue().splitlines() == [norm("".join(SEG0)), norm("".join(SEG1))]


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------


def test_format_summary():
    t = Transcript("hello.wav", "m", metrics=TranscriptMetrics(audio_s=3.1, n_tokens=42, ttft_ms=51.23,
                                                              total_ms=812.0))
    assert format_summary(t) == "hello.wav: 42 tokens, 3.10 s audio, ttft_ms 51.2, total_ms 812.0, rtf 0.26"
    empty = Transcript("x.wav", "m")
    assert format_summary(empty) == "x.wav: 0 tokens, 0.00 s audio, ttft_ms -, total_ms -, rtf -"


def test_metrics_table():
    table = metrics_table("bench", {"ttft_ms": summarize([50.0, 60.0, 70.0]), "total_ms": summarize([])})
    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=False).print(table)
    out = buf.getvalue()
    for header in ("metric", "n", "p50", "p90", "p95", "p99", "mean", "min", "max"):
        assert header in out
    ttft_row = next(line for line in out.splitlines() if "ttft_ms" in line)
    assert ttft_row.split() == ["ttft_ms", "3", "60.0", "68.0", "69.0", "69.8", "60.0", "50.0", "70.0"]
    total_row = next(line for line in out.splitlines() if "total_ms" in line)
    assert total_row.split()[1:] == ["0"] + ["-"] * 7


def test_metrics_table_keeps_every_figure_whole_at_80_columns():
    """The longest metric name, four-digit counts and figures of every size: nothing is cut."""
    samples = {"emitted_after_ready_ms": [0.1234, 2.5, 1068.4, 12345.6] * 300,
               "total_ms": [999.6, 1234.5, 98765.4], "rtf": [0.001234, 0.0999, 0.5]}
    table = metrics_table("a title long enough to wrap at eighty columns, " * 2,
                          {name: summarize(values) for name, values in samples.items()})
    buf = io.StringIO()
    Console(file=buf, width=80, force_terminal=False).print(table)
    out = buf.getvalue()
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for name, values in samples.items():
        row = next(line for line in out.splitlines() if line.startswith(name)).split()
        stats = summarize(values)
        assert row == [name, str(len(values)), *(sig3(stats[k]) for k in ("p50", "p90", "p95", "p99", "mean",
                                                                           "min", "max"))]
    assert sig3(1068.4) == "1070" and sig3(9.996) == "10.0" and sig3(0.1234) == "0.123"
    assert sig3(123456.7) == "123000" and sig3(None) == "-" and sig3(0.0) == "0"

# ---------------------------------------------------------------------------------------------
# Two-pass: final text, then the provisional words beyond it
# ---------------------------------------------------------------------------------------------


def _tok(text: str, end_s: float) -> TokenEvent:
    return TokenEvent(0, -1, text, time.perf_counter(), audio_start_s=end_s - 0.08, audio_end_s=end_s)


def test_provisional_words_go_whole_once_final_text_covers_their_audio():
    from voxcli.live.twopass import TwoPassText

    two = TwoPassText()
    for text, end in ((" the", 0.08), (" quick", 0.16), (" bro", 0.24), ("wn", 0.32), (" fox", 0.40)):
        assert two.add(_tok(text, end), "provisional") is None
    assert two.tail == " the quick brown fox"
    first = two.add(_tok(" the", 0.20), "final")
    assert first.words == 2  # " the" and " quick" end by 0.20
    assert first.final == ""  # the final " the" ends after " quick": it is set against what follows
    assert two.tail == " brown fox"
    # "brown" ends at 0.32: covered at 0.30 only in part, so it stays, whole.
    assert two.add(_tok(" quack", 0.30), "final") is None and two.tail == " brown fox"
    replaced = two.add(_tok(" brown", 0.34), "final")
    # Set against final text over the same audio (up to 0.32): " the quack", which lacks "brown".
    assert (replaced.provisional, replaced.final, replaced.words, replaced.changed) == (" brown", " the quack", 1, 1)
    # The word still being written is never taken, however far the final text has gone.
    assert two.add(_tok(" fox", 0.50), "final") is None and two.tail == " fox"
    # ... until speech ends: then it is whole, and covered.
    sealed = two.seal()
    assert sealed.provisional == " fox" and two.tail == ""


def test_replacement_never_loses_or_duplicates_a_word():
    import random

    from voxcli.live.twopass import TwoPassText

    rng = random.Random(7)
    for trial in range(200):
        two = TwoPassText()
        final_text, provisional_text, replaced_text = "", "", ""
        t_prov = t_final = 0.0
        for _ in range(rng.randint(1, 60)):
            if rng.random() < 0.55:
                t_prov += 0.08
                piece = rng.choice([" w", "x", "", " y", "z!"])
                provisional_text += piece
                two.add(_tok(piece, t_prov), "provisional")
            elif t_final < t_prov:
                t_final += 0.08
                piece = rng.choice([" a", "b", " c", ""])
                final_text += piece
                r = two.add(_tok(piece, t_final), "final")
                if r is not None:
                    replaced_text += r.provisional
                    assert 0 <= r.changed <= r.words
        # Every provisional piece is either replaced or still shown, once, in order.
        assert replaced_text + two.tail == provisional_text, trial


def test_the_live_view_draws_final_text_then_the_provisional_tail_dim():
    buf, console = capture_console(height=12)
    with LiveTranscript(console, title="two-pass") as live:
        live.add(_tok(" Final words", 0.4))
        live.set_tail(" and provisional ones")
        frame = last_render(buf.getvalue())
        assert "Final words and provisional ones" in plain(frame)
        assert "\x1b[2m" in frame  # the tail is dim
        live.add(_tok(" and", 0.5))
        live.set_tail(" provisional ones")
        frame = plain(last_render(buf.getvalue()))
        assert "Final words and provisional ones" in frame and frame.count("and") == 1


def test_words_the_model_was_unsure_of_are_underlined_whole():
    """--low-confidence 0.5: a word with one unlikely token is underlined, all of its pieces and not
    the space before it; sure words and tokens without ``p`` are not. Underline reads in black and
    white: it is kept with NO_COLOR (Rich's no_color drops colours, not underline)."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80, height=12, no_color=True)
    pieces = [(" Hello", 0.9), (" un", 0.9), ("sure", 0.2), ("ly", 0.95), (" again", 0.8), (" no", None),
              ("p", None), (" last", 0.49)]
    with LiveTranscript(console, title="t", low_confidence=0.5) as live:
        for text, p in pieces:
            live.add(replace(_tok(text, 1.0), p=p))
        frame = last_render(buf.getvalue())
    assert "Hello unsurely again nop last" in plain(frame)
    for word, underlined in (("Hello", False), ("unsurely", True), ("again", False), ("nop", False), ("last", True)):
        assert ("4" in sgr_before(frame, word[-2:])) == underlined, word
    assert "Hello \x1b[4mun" in frame  # the space before the word is not underlined
    quiet = io.StringIO()
    with LiveTranscript(Console(file=quiet, force_terminal=True, width=80, no_color=True), title="t") as live:
        live.add(replace(_tok(" unsure", 1.0), p=0.01))  # off by default
    assert "\x1b[4m" not in quiet.getvalue()


def test_two_pass_status_shows_both_steps_against_the_budget():
    line = status_text(LiveStatus(step_ms=30.0, final_step_ms=55.0)).plain
    assert "step 30.0 + final 55.0 = 85.0/80 ms" in line and "FALLING BEHIND real time" in line


def test_cues_from_a_model_that_speaks_in_word_markers(realtime_dir):
    """The real grammar (voxcli.testing.grammar: [STREAMING_WORD] before each word): markers are
    never text, and every cue begins at the frame of its first text piece, not at the marker
    before it (no reference times words: vLLM's realtime API sends text alone, transformers none;
    the first piece's frame is where the word's audio is)."""
    from voxcli.audio.decode import load_audio
    from voxcli.engine.local import load_engine
    from voxcli.testing.grammar import WORD, speak_in_words

    engine = load_engine(str(realtime_dir), device="cpu")
    speak_in_words(engine)
    events = list(engine.transcribe(load_audio("examples/hello.wav")))
    markers = [e for e in events if e.token_id == WORD]
    assert len(markers) >= 10 and all(e.special and e.text == "" for e in markers)
    cues = events_to_cues(events, max_chars=24)
    assert len(cues) >= 3
    text_starts = {round(e.audio_start_s, 6) for e in events if not e.special and e.text}
    assert all(round(c.start_s, 6) in text_starts for c in cues)
    words = "".join(e.text for e in events).split()
    assert " ".join(c.text for c in cues).split() == words
