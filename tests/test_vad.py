"""The endpointer on real (espeak) speech in the conditions users have: clean, room noise at 20,
10 and 0 dB SNR, a quiet microphone (-50 dBFS), run-on speech with short gaps, and noise alone.

Every assertion is about where speech starts and ends, never about how fast it was found.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from speech import make_paused_speech, pink_noise

from voxcli.audio.vad import WINDOW, Endpointer, EndpointOptions, padded_speech_regions, speech_regions

SR = 16000
CONDITIONS = {
    "clean": {},
    "20 dB SNR": {"snr_db": 20},
    "10 dB SNR": {"snr_db": 10},
    "0 dB SNR": {"snr_db": 0},
    "quiet (-50 dBFS)": {"speech_dbfs": -50, "noise_dbfs": -80},
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("vad")
    out = {}
    for name, kwargs in CONDITIONS.items():
        path, regions = make_paused_speech(d / f"{name.split()[0]}.wav", tail_s=1.0, **kwargs)
        out[name] = (sf.read(path, dtype="float32")[0], regions)
    return out


def _stream(audio: np.ndarray, options: EndpointOptions | None = None, block: int = 320):
    """Feed in capture-sized blocks (20 ms), as listen does."""
    ep = Endpointer(options)
    events = []
    for i in range(0, len(audio), block):
        events += ep.feed(audio[i:i + block])
    return events + ep.flush()


@pytest.mark.parametrize("condition", CONDITIONS)
def test_one_utterance_per_sentence_and_each_end_inside_its_pause(clips, condition):
    audio, truth = clips[condition]
    events = _stream(audio)
    starts = [e for e in events if e.kind == "start"]
    ends = [e for e in events if e.kind == "end"]
    assert len(starts) == len(ends) == len(truth), events
    for i, ((a, b), start, end) in enumerate(zip(truth, starts, ends)):
        next_start = truth[i + 1][0] if i + 1 < len(truth) else len(audio)
        assert a - 0.2 * SR <= start.sample <= a + 0.3 * SR  # found at the onset, not elsewhere
        assert b - 0.2 * SR <= end.sample < next_start  # the end lies in the pause after it
        assert end.decided_sample - end.sample >= EndpointOptions().min_silence_ms * SR // 1000
        assert end.decided_sample <= next_start  # known before the next sentence began


def test_energy_fallback_is_what_fails_in_noise(clips):
    """The reason Silero is the default: a level threshold finds the pauses in clean speech
    only; in room noise it hears one long utterance, with a quiet microphone none at all."""
    energy = EndpointOptions(detector="energy")
    clean, truth = clips["clean"]
    assert len(speech_regions(clean, energy)) == len(truth)
    assert len(speech_regions(clips["20 dB SNR"][0], energy)) < len(truth)
    assert speech_regions(clips["quiet (-50 dBFS)"][0], energy) == []


def test_run_on_speech_has_no_end_inside(tmp_path):
    path, truth = make_paused_speech(tmp_path / "runon.wav", pause_s=0.25)
    audio = sf.read(path, dtype="float32")[0]
    regions = speech_regions(audio)
    assert len(regions) == 1
    assert regions[0][0] <= truth[0][0] + 0.3 * SR and regions[0][1] >= truth[-1][1] - 0.2 * SR


def test_noise_alone_is_no_speech():
    assert speech_regions(pink_noise(6.0, -38.0)) == []
    assert speech_regions(np.zeros(3 * SR, np.float32)) == []


def test_block_size_does_not_change_the_events(clips):
    audio, _ = clips["10 dB SNR"]
    whole = Endpointer().feed(audio)
    for block in (1, 333, WINDOW, 4000):
        ep = Endpointer()
        events = []
        for i in range(0, len(audio), block):
            events += ep.feed(audio[i:i + block])
        assert events == whole


def test_input_ending_inside_speech_ends_the_utterance_there(clips):
    audio, truth = clips["clean"]
    cut = truth[0][0] + (truth[0][1] - truth[0][0]) // 2
    ep = Endpointer()
    events = ep.feed(audio[:cut])
    assert [e.kind for e in events] == ["start"]
    (end,) = ep.flush()
    assert end.kind == "end" and end.sample <= cut
    assert ep.flush() == []


def test_padded_regions_are_disjoint_and_inside_the_clip(clips):
    audio, truth = clips["clean"]
    regions = padded_speech_regions(audio, pad_s=0.1)
    assert len(regions) == len(truth)
    assert all(0 <= a < b <= len(audio) for a, b in regions)
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(regions, regions[1:]))


@pytest.mark.parametrize("bad, match", [
    ({"detector": "webrtc"}, "silero, energy"),
    ({"min_silence_ms": 0}, "min_silence_ms"),
    ({"threshold": 0.3, "neg_threshold": 0.5}, "thresholds"),
])
def test_bad_options_are_value_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        Endpointer(EndpointOptions(**bad))


def test_loading_silero_keeps_torchs_thread_count():
    """silero_vad sets torch to one thread when imported: that must not slow the model down."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2); from voxcli.audio.vad import Endpointer; Endpointer(); "
            "print(torch.get_num_threads())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "2"


def test_two_endpointers_in_two_threads_each_hear_only_their_own_stream(clips):
    """Each endpointer has its own detector state: fed side by side from two threads (bench's
    concurrent sessions, two-pass's final pass beside the live endpointer, a server), each gives
    exactly the events it gives alone. With one shared Silero model this gave wrong ends, a
    segfault or heap corruption."""
    import threading

    a, _ = clips["clean"]
    b, _ = clips["10 dB SNR"]
    alone = {"a": _stream(a), "b": _stream(b)}
    assert alone["a"] and alone["b"] and alone["a"] != alone["b"]
    for _ in range(3):
        together: dict = {}
        threads = [threading.Thread(target=lambda k=k, x=x: together.__setitem__(k, _stream(x)))
                   for k, x in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert together == alone


def test_interleaved_endpointers_do_not_reset_each_other(clips):
    """One thread, two endpointers fed in turn (the live endpointer and a final pass's region
    finding): neither one's state leaks into the other's."""
    a, _ = clips["clean"]
    b, _ = clips["20 dB SNR"]
    first, second = Endpointer(), Endpointer()
    got_a, got_b = [], []
    for i in range(0, max(len(a), len(b)), 320):
        got_a += first.feed(a[i:i + 320])
        Endpointer()  # a third, made mid-stream, must not reset the others
        got_b += second.feed(b[i:i + 320])
    assert got_a + first.flush() == _stream(a) and got_b + second.flush() == _stream(b)


@pytest.mark.parametrize("max_segment_s", [30.0, 4.0, 1.5])
def test_segments_found_as_the_clip_is_read_are_those_of_the_whole_clip(clips, max_segment_s):
    """The streaming split (the first segment ready before the clip is searched to its end) cuts
    exactly where planning over the whole clip does, with long silences between."""
    from voxcli.audio.decode import plan_segments
    from voxcli.audio.vad import stream_segments

    gap = np.zeros(3 * SR, np.float32)  # longer than MAX_GAP_S: never inside one segment
    audio = np.concatenate([clips["clean"][0], gap, clips["20 dB SNR"][0], gap, clips["quiet (-50 dBFS)"][0]])
    whole = plan_segments(audio, SR, max_segment_s=max_segment_s, regions=padded_speech_regions(audio))
    assert list(stream_segments(audio, max_segment_s)) == whole and len(whole) >= 3
    for (_, b), (a, _) in zip(whole, whole[1:]):
        assert a >= b
    for a, b in whole:  # no segment holds the 3 s of nothing
        assert not np.any(np.convolve(audio[a:b] == 0, np.ones(2 * SR), "valid") >= 2 * SR)


def test_the_first_segment_is_ready_before_the_clip_is_searched(clips):
    from voxcli.audio.vad import stream_segments

    audio = np.concatenate([clips["clean"][0], np.zeros(3 * SR, np.float32)] * 6)
    fed = []
    real_feed = Endpointer.feed

    def feed(self, samples):
        fed.append(len(samples))
        return real_feed(self, samples)

    Endpointer.feed = feed
    try:
        first = next(iter(stream_segments(audio)))
    finally:
        Endpointer.feed = real_feed
    assert first[1] <= len(clips["clean"][0]) + SR // 5
    assert sum(fed) < len(audio) / 4  # searched a quarter of the clip at most, not all of it


def _package_probabilities(audio: np.ndarray) -> list[float]:
    """Silero's speech probability of each window as the silero-vad package computes it for one
    stream: its own wrapper, fresh, fed window by window (voxcli's code out of the loop)."""
    import torch
    from silero_vad import load_silero_vad

    model = load_silero_vad()
    with torch.inference_mode():
        return [model(torch.from_numpy(audio[i:i + WINDOW].copy()), SR).item()
                for i in range(0, len(audio) // WINDOW * WINDOW, WINDOW)]


def test_streams_scored_together_get_their_solo_probabilities_and_events(clips):
    """A server scores its sessions' Silero windows in one call per window position, a row per
    stream with its own context and state (voxcli.audio.vad.feed_together). Each stream's speech
    probabilities are the ones the silero-vad package gives that stream alone, to float32 rounding
    (measured: under 1e-7), and its events are exactly its solo events, while streams of different
    lengths join and leave mid-way, fed blocks of different sizes."""
    from voxcli.audio.vad import feed_together, score_together

    rng = np.random.default_rng(3)
    audios = [clips["clean"][0], clips["10 dB SNR"][0], clips["0 dB SNR"][0][: 3 * SR],
              pink_noise(4.0, -38.0), clips["quiet (-50 dBFS)"][0]]
    joins = [0, 0, 7, 20, 3]  # the round each stream joins in (a session that connects later)
    solo_probs = [_package_probabilities(a) for a in audios]
    solo_events = [_stream(a, block=1280) for a in audios]
    assert any(solo_events) and len({len(e) for e in solo_events}) > 1  # speech, and not the same in each

    # Probabilities: windows of every stream scored together, rows coming and going.
    eps = [Endpointer() for _ in audios]
    got: list[list[float]] = [[] for _ in audios]
    pos, r = [0] * len(audios), 0
    while any(p < len(a) for p, a in zip(pos, audios)):
        rows = [i for i, a in enumerate(audios) if r >= joins[i] and pos[i] < len(a)]
        blocks = []
        for i in rows:
            n = int(rng.choice([320, 700, 1280, 4000]))
            blocks.append(audios[i][pos[i]:pos[i] + n])
            pos[i] += n
        windows = [eps[i].windows(b) for i, b in zip(rows, blocks)]
        scored = [(i, w) for i, w in zip(rows, windows) if len(w)]
        if scored:
            for (i, _), p in zip(scored, score_together([eps[i].detector for i, _ in scored], [w for _, w in scored])):
                got[i] += p
        r += 1
    for mine, theirs in zip(got, solo_probs):
        assert len(mine) == len(theirs)
        assert np.max(np.abs(np.array(mine) - np.array(theirs))) < 1e-5

    # Events: the endpointers fed together give each stream its solo events.
    eps = [Endpointer() for _ in audios]
    events: list[list] = [[] for _ in audios]
    for k in range(max(len(a) for a in audios) // 1280 + 30):
        rows = [i for i, a in enumerate(audios) if joins[i] <= k and (k - joins[i]) * 1280 < len(a)]
        found = feed_together([eps[i] for i in rows], [audios[i][(k - joins[i]) * 1280:(k - joins[i] + 1) * 1280]
                                                       for i in rows])
        for i, e in zip(rows, found):
            events[i] += e
    assert [e + ep.flush() for e, ep in zip(events, eps)] == solo_events
