"""Keyterm biasing and confidence (voxcli/engine/keyterms.py, pick.py): the walk over a phrase
trie, the bias inside every decoding path (the static step alone and batched, transformers'
forward, the offline loop), and what token events say about how sure the model was.

The tiny models are random: a phrase is "rare" when the model says it at most once in a clip
without the bias. Token ids, not words, are compared.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from voxcli.audio.decode import load_audio
from voxcli.engine.keyterms import BiasWalk, Keyterms, KeytermTrie, read_keyterms_file
from voxcli.engine.local import load_engine
from voxcli.engine.pick import pick, unpack
from voxcli.events import keyterm_counts

HELLO = "examples/hello.wav"
# Rare phrases of the tiny tokenizer: " two" and " class" are one token each; the random
# realtime model says each at most twice in hello.wav's 54 tokens without the bias.
RARE = ("two", "class")


@pytest.fixture(scope="module")
def hello():
    return load_audio(HELLO)


def ids(events) -> list[int]:
    return [e.token_id for e in events]


# ---------------------------------------------------------------------------------------------
# The walk, on a tokenizer of whole words
# ---------------------------------------------------------------------------------------------


class WordTokenizer:
    """Ids 0-9 are specials (PAD = 1, WORD = 2); every word is one id, " word" another."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, 10 + len(self.vocab))

    def encode(self, text: str, bos: bool, eos: bool) -> list[int]:
        words = text.split(" ")
        out = [self.id(words[0])] if words[0] else []
        return out + [self.id(" " + w) for w in words[1:]]

    def is_special(self, token_id: int) -> bool:
        return token_id < 10

    def id_to_byte_piece(self, token_id: int) -> bytes:
        return next(piece for piece, i in self.vocab.items() if i == token_id).encode()


PAD, WORD = 1, 2


def walk_of(phrases, bias=2.0, word_marker=None):
    tok = WordTokenizer()
    vector = torch.zeros(64)
    return tok, BiasWalk(KeytermTrie(Keyterms.of(phrases, bias), tok, word_marker=word_marker), vector)


def favoured(walk) -> set[int]:
    return set(torch.nonzero(walk.vector).flatten().tolist())


def test_without_word_markers_first_tokens_are_favoured_from_the_start_in_both_spellings():
    tok, walk = walk_of(["New York", "Voxtral"])
    assert favoured(walk) == {tok.id("New"), tok.id(" New"), tok.id("Voxtral"), tok.id(" Voxtral")}
    assert walk.vector[tok.id(" New")] == 2.0


def test_a_begun_phrase_favours_its_next_token_alone_and_blanks_do_not_break_it():
    tok, walk = walk_of(["New York City"])
    assert walk.after(tok.id(" New"), tok.id(" New"), False) is None
    assert favoured(walk) == {tok.id(" York")}  # going on, not starting again
    for special in (PAD, WORD, PAD):  # a model without markers: every special leaves the walk where it was
        assert walk.after(special, special, True) is None
    assert favoured(walk) == {tok.id(" York")}
    walk.after(tok.id(" York"), tok.id(" York"), False)
    assert favoured(walk) == {tok.id(" City")}
    assert walk.after(tok.id(" City"), tok.id(" Paris"), False) == ("New York City", True)  # the bias changed it
    assert favoured(walk) == {tok.id(" New")}  # done: first pieces again, the spelling inside a sentence now


def test_with_word_markers_first_pieces_wait_for_a_marker_and_mid_word_pieces_never_do():
    """The Realtime grammar: [STREAMING_WORD] before each word. A first piece, or a phrase's next
    word, is favoured only right after a marker; a piece inside the word goes on at every frame."""
    tok = WordTokenizer()
    tok.vocab |= {"Vox": 30, "tral": 31, " Vox": 32}
    walk = BiasWalk(KeytermTrie(Keyterms.of(["New York", "Voxtral"], 2.0), _Split(tok), word_marker=WORD),
                    torch.zeros(64))
    assert favoured(walk) == set()  # nothing before the first marker
    walk.after(PAD, PAD, True)
    assert favoured(walk) == set()
    walk.after(WORD, WORD, True)
    assert favoured(walk) == {tok.id("New"), tok.id(" New"), 30, 32}  # before the first text: both spellings
    walk.after(32, 32, False)  # " Vox": inside the word, "tral" goes on at every frame, blanks or not
    assert favoured(walk) == {31}
    walk.after(PAD, PAD, True)
    assert favoured(walk) == {31}
    assert walk.after(31, 31, False) == ("Voxtral", False)
    assert favoured(walk) == set()  # the next word waits for its marker
    walk.after(WORD, WORD, True)
    assert favoured(walk) == {tok.id(" New"), 32}  # inside a sentence: the spaced spelling alone
    walk.after(tok.id(" New"), tok.id(" New"), False)
    assert favoured(walk) == set()  # " York" begins a word: it waits for the marker
    walk.after(WORD, WORD, True)
    assert favoured(walk) == {tok.id(" York")}
    assert walk.after(tok.id(" York"), tok.id(" York"), False) == ("New York", False)


def test_a_model_that_says_no_markers_is_taken_for_one_after_a_few_pieces():
    from voxcli.engine.keyterms import GRAMMAR_PROOF

    tok, walk = walk_of(["New York"], word_marker=WORD)
    for _ in range(GRAMMAR_PROOF - 1):
        walk.after(tok.id(" big"), tok.id(" big"), False)
    assert favoured(walk) == set()
    walk.after(tok.id(" big"), tok.id(" big"), False)
    assert favoured(walk) == {tok.id(" New")}  # words begin wherever a spaced piece comes


class _Split:
    """A WordTokenizer that spells "Voxtral" in two pieces, as a real vocabulary spells a rare name."""

    def __init__(self, tok) -> None:
        self.tok = tok

    def encode(self, text, bos, eos):
        if text.strip() == "Voxtral":
            return [32, 31] if text.startswith(" ") else [30, 31]
        return self.tok.encode(text, bos, eos)

    def is_special(self, token_id):
        return self.tok.is_special(token_id)

    def id_to_byte_piece(self, token_id):
        return self.tok.id_to_byte_piece(token_id)


def test_the_real_vocabulary_biases_no_lone_mid_word_piece_where_a_word_begins():
    """mistral-common's real tekken vocabulary: what a few phrases bias where a word begins (the
    start of a stream, and after a marker inside one). No piece there is a single character
    without a leading space (the mid-word piece that, biased at every frame, once gave "cccc")."""
    from pathlib import Path

    import mistral_common
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    tok = Tekkenizer.from_file(Path(mistral_common.__file__).parent / "data" / "tekken_240911.json")
    phrases = ["country", "Voxtral", "Kubernetes", "New York", "Mistral AI", "über", "Dvořák"]
    trie = KeytermTrie(Keyterms.of(phrases, 2.0), tok, word_marker=WORD)
    for phrase in phrases:
        for spelling in (phrase, " " + phrase):
            assert [i for i in tok.encode(spelling, bos=False, eos=False) if not tok.is_special(i)], spelling

    def pieces(ids):
        return sorted(tok.id_to_byte_piece(i).decode("utf-8", "replace") for i in ids)

    walk = BiasWalk(trie, torch.zeros(tok.n_words))
    walk.after(WORD, WORD, True)
    at_start = pieces(favoured(walk))
    walk.after(tok.encode(" the", bos=False, eos=False)[0], 0, False)
    walk.after(WORD, WORD, True)
    inside = pieces(favoured(walk))
    for biased in (at_start, inside):
        assert biased and not [p for p in biased if len(p) == 1 and not p.isspace()], biased
    assert all(p.startswith(" ") for p in inside), inside  # inside a stream: only pieces that begin a word
    assert len(at_start) > len(inside)  # the spelling without a space too, at the start


def test_another_word_breaks_a_phrase_and_the_longest_completed_one_is_reported():
    tok, walk = walk_of(["New York", "York"])
    walk.after(tok.id(" New"), tok.id(" New"), False)
    walk.after(tok.id(" big"), tok.id(" big"), False)
    assert walk.after(tok.id(" York"), tok.id(" York"), False) == ("York", False)  # "New" was broken off
    walk.after(tok.id(" New"), tok.id(" Old"), False)
    assert walk.after(tok.id(" York"), tok.id(" York"), False) == ("New York", True)  # " New" needed the bias


def test_keyterms_are_cleaned_and_a_file_reads_one_a_line(tmp_path):
    assert Keyterms.of(["  New   York ", "", "New York", "Voxtral"], 1.5) == Keyterms(("New York", "Voxtral"), 1.5)
    assert Keyterms.of(["", "  "]) is None
    assert Keyterms.of(["x"], 0).bias == 0.0  # counts without favouring
    path = tmp_path / "terms.txt"
    path.write_text("# names\nVoxtral\n\n  Mistral AI  \n", encoding="utf-8")
    assert read_keyterms_file(path) == ["Voxtral", "Mistral AI"]


def test_pick_packs_the_token_what_it_would_have_been_and_the_top_k():
    logits = torch.tensor([[0.0, 3.0, 2.5, -1.0], [1.0, 1.0, 0.0, 0.0]])
    bias = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    next_id, packed = pick(logits, bias, 3)
    assert next_id.tolist() == [2, 0]
    a, b = (unpack(row, 3) for row in packed.tolist())
    assert (a.token_id, a.plain_id) == (2, 1)  # the bias turned 1 into 2
    assert [i for i, _ in a.top] == [2, 1, 0]
    expected = torch.log_softmax(logits[0] + bias[0], -1)
    assert a.logprob == pytest.approx(float(expected[2])) and a.p == pytest.approx(math.exp(a.logprob))
    assert b.top[0][0] == b.token_id == 0 and b.top[0][1] == b.top[1][1]  # an exact tie: the emitted one first
    _, plain = pick(logits, bias, 0)
    assert unpack(plain.tolist()[0], 0).logprob is None


# ---------------------------------------------------------------------------------------------
# In the model's steps
# ---------------------------------------------------------------------------------------------


def speaking(engine):
    """``engine`` with its model rigged to speak the real grammar ([STREAMING_WORD] before each word):
    the bias meets the markers a real model says (voxcli.testing.grammar)."""
    from voxcli.testing.grammar import speak_in_words

    speak_in_words(engine)
    return engine


@pytest.fixture(scope="module")
def engines(realtime_dir):
    return {step: speaking(load_engine(str(realtime_dir), device="cpu", step=step)) for step in ("static", "hf")}


@pytest.mark.parametrize("step", ["static", "hf"])
def test_a_bias_of_zero_gives_exactly_the_ids_without_keyterms_and_counts(step, engines, hello):
    engine = engines[step]
    plain = list(engine.transcribe(hello))
    counted = list(engine.transcribe(hello, keyterms=Keyterms.of(RARE, 0.0)))
    assert ids(counted) == ids(plain)
    text = "".join(e.text for e in plain)
    said = keyterm_counts(counted)
    assert sum(c["said"] for c in said.values()) == sum(text.count(" " + p) for p in RARE)
    assert all(said.get(p, {"said": 0})["said"] <= 2 for p in RARE)  # rare
    assert all(c["biased"] == 0 for c in said.values())


@pytest.mark.parametrize("step", ["static", "hf"])
def test_a_rare_keyterm_is_said_markedly_more_often_with_the_bias(step, engines, hello):
    """The bias acts where a word begins (once a word, right after its marker): a bias of 5 makes
    each rare phrase at least 4x likelier over hello.wav's 18 words."""
    engine = engines[step]
    without = keyterm_counts(engine.transcribe(hello, keyterms=Keyterms.of(RARE, 0.0)))
    events = list(engine.transcribe(hello, keyterms=Keyterms.of(RARE, 5.0)))
    said = keyterm_counts(events)
    for phrase in RARE:
        before = without.get(phrase, {"said": 0})["said"]
        assert said[phrase]["said"] >= 4 * max(before, 1), (phrase, before, said)
        assert 0 < said[phrase]["biased"] <= said[phrase]["said"]
    text = "".join(e.text for e in events)
    assert text.count(" two") >= said["two"]["said"]  # what is counted is in the text


@pytest.mark.parametrize("step", ["static", "hf"])
def test_a_high_bias_says_a_phrase_whole_and_repeats_no_biased_piece(step, engines, hello):
    """Bias 8 on a phrase the model never says, four pieces in this vocabulary (" W", "el", "d",
    "on"): it appears whole, and no biased piece follows itself (a phrase's first piece that kept its
    bias once it was said gave "cccc..." for a whole clip)."""
    engine = engines[step]
    kt = Keyterms.of(["Weldon"], 8.0)
    assert not keyterm_counts(engine.transcribe(hello, keyterms=Keyterms.of(["Weldon"], 0.0)))
    events = list(engine.transcribe(hello, keyterms=kt))
    assert keyterm_counts(events)["Weldon"]["said"] >= 1
    assert " Weldon" in "".join(e.text for e in events)
    trie = engine.bias_walk(torch.zeros(engine.model.lm_head.weight.shape[0]), kt).trie
    phrase_ids = {i for node in _nodes(trie.root) for i in node.children}
    text = [e.token_id for e in events if not e.special]
    assert not [(a, b) for a, b in zip(text, text[1:]) if a == b and a in phrase_ids]
    # Never at the cost of the grammar: every piece that begins a word still follows its marker.
    said = [e.token_id for e in events if e.token_id != 32]  # blanks aside
    starts = [i for i, t in enumerate(said) if t in trie.begins_word]
    assert starts and all(i > 0 and said[i - 1] == 33 for i in starts)


def _nodes(node):
    yield node
    for child in node.children.values():
        yield from _nodes(child)


def test_the_engines_keyterms_are_every_sessions_and_a_session_may_have_its_own(realtime_dir, engines, hello):
    favouring = speaking(load_engine(str(realtime_dir), device="cpu", keyterms=Keyterms.of(RARE, 3.0)))
    biased = ids(favouring.transcribe(hello))
    assert biased == ids(engines["static"].transcribe(hello, keyterms=Keyterms.of(RARE, 3.0)))
    assert ids(favouring.transcribe(hello, keyterms=None)) == ids(engines["static"].transcribe(hello))
    assert biased != ids(engines["static"].transcribe(hello))


def test_static_and_hf_steps_agree_with_keyterms(engines, hello):
    kt = Keyterms.of(RARE, 3.0)
    assert ids(engines["static"].transcribe(hello, keyterms=kt)) == ids(engines["hf"].transcribe(hello, keyterms=kt))


def test_rows_of_one_forward_keep_their_own_keyterms(wrap_dir, hello):
    """Three streams in one batch, each with other keyterms (one with none), stepping together:
    each gives exactly its ids alone. A bias row shared by accident would show here."""
    from test_batched import alone, clips, together

    base = speaking(load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="off", sessions=4))
    terms = [Keyterms.of(["two"], 8.0), None, Keyterms.of(["class", "two"], 2.5)]
    streams = [{"engine": base, "audio": a, "start": i, "kw": {"keyterms": kt}}
               for i, (a, kt) in enumerate(zip(clips(hello, 3), terms))]
    refs = [alone(base, s["audio"], keyterms=s["kw"]["keyterms"]) for s in streams]
    assert ids(refs[0]) != ids(alone(base, streams[0]["audio"], keyterms=None))  # the bias does something here
    together(base, streams, stall_every=5)
    assert max(b for b, _, _ in base.static.step_log) > 1
    for s, ref in zip(streams, refs):
        assert ids(s["events"]) == ids(ref)
    # A row given back and taken again starts with no bias of the last stream.
    again = alone(base, streams[0]["audio"], keyterms=None)
    assert ids(again) == ids(alone(speaking(load_engine(str(wrap_dir), device="cpu", delay_ms=480, compile="off")),
                                   streams[0]["audio"]))


def test_a_stream_that_restarts_at_end_of_sequence_keeps_its_keyterms(eos_dir):
    """The EOS model restarts its stream mid-clip five times (a fresh row state each time): with
    a bias of 0 the ids are exactly those without keyterms, and counting goes on after a restart."""
    engine = speaking(load_engine(str(eos_dir), device="cpu"))
    long = load_audio("examples/long.wav")
    plain = list(engine.transcribe(long))
    counted = list(engine.transcribe(long, keyterms=Keyterms.of(RARE, 0.0)))
    assert sum(e.restart_at_s is not None for e in plain) >= 3
    assert ids(counted) == ids(plain)
    biased = list(engine.transcribe(long, keyterms=Keyterms.of(RARE, 3.0)))
    last_restart = max(e.index for e in biased if e.restart_at_s is not None)
    assert any(e.keyterm for e in biased if e.index > last_restart)


def test_the_offline_loop_favours_keyterms_too(offline_dir, hello):
    engine = load_engine(str(offline_dir), device="cpu", max_new_tokens=24)
    plain = list(engine.transcribe(hello))
    assert ids(engine.transcribe(hello, keyterms=Keyterms.of(RARE, 0.0))) == ids(plain)
    biased = list(engine.transcribe(hello, keyterms=Keyterms.of(RARE, 4.0)))
    assert ids(biased) != ids(plain) and keyterm_counts(biased)


# ---------------------------------------------------------------------------------------------
# Confidence and alternatives
# ---------------------------------------------------------------------------------------------


def check_alternatives(events, k: int) -> None:
    assert events
    for e in events:
        alts = e.alternatives
        assert len(alts) == k, e
        assert alts[0]["token_id"] == e.token_id
        logprobs = [a["logprob"] for a in alts]
        assert logprobs == sorted(logprobs, reverse=True) and logprobs[0] <= 0
        assert e.p == pytest.approx(math.exp(logprobs[0]), rel=1e-12)
        assert all(isinstance(a["text"], str) for a in alts)


@pytest.mark.parametrize("step", ["static", "hf"])
def test_every_token_carries_p_and_its_alternatives(step, realtime_dir, engines, hello):
    engine = speaking(load_engine(str(realtime_dir), device="cpu", step=step, alternatives=3))
    events = list(engine.transcribe(hello))
    assert ids(events) == ids(engines[step].transcribe(hello))  # reading them back changes nothing
    check_alternatives(events, 3)
    assert np.mean([e.p for e in events]) < 1  # a random model is unsure
    row = events[1].to_dict()
    assert row["p"] == events[1].p and row["alternatives"][0]["token_id"] == events[1].token_id
    assert "p" not in next(iter(engines[step].transcribe(hello))).to_dict()  # not asked: not written


def test_the_offline_model_carries_them_too(offline_dir, hello):
    engine = load_engine(str(offline_dir), device="cpu", max_new_tokens=24, alternatives=2)
    check_alternatives([e for e in engine.transcribe(hello) if e.token_id >= 0], 2)


def test_p_alone_for_the_low_confidence_view(realtime_dir, hello):
    engine = load_engine(str(realtime_dir), device="cpu", confidence=True)
    events = list(engine.transcribe(hello))
    assert all(0 < e.p <= 1 and e.alternatives is None for e in events)


# ---------------------------------------------------------------------------------------------
# From the command line
# ---------------------------------------------------------------------------------------------


def _voxcli(*args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "voxcli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=root, env={**os.environ, "NO_COLOR": "1"})


@pytest.mark.slow
def test_transcribe_json_with_alternatives_and_keyterms(realtime_dir, tmp_path):
    import json

    terms = tmp_path / "terms.txt"
    terms.write_text("# from a file\nclass\n", encoding="utf-8")
    run = _voxcli("transcribe", "file", HELLO, "--model", realtime_dir, "-f", "json", "--alternatives", 3,
                  "-k", "two", "--keyterms-file", terms, "--keyterm-bias", 3)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    text_tokens = [e for e in doc["events"] if not e["special"] and e["token_id"] >= 0]
    assert text_tokens
    for e in text_tokens:
        alts = e["alternatives"]
        assert len(alts) == 3 and alts[0]["token_id"] == e["token_id"]
        assert [a["logprob"] for a in alts] == sorted((a["logprob"] for a in alts), reverse=True)
        assert e["p"] == pytest.approx(math.exp(alts[0]["logprob"]), rel=1e-12)
    assert set(doc["keyterms"]) == {"two", "class"}
    assert all(c["said"] >= c["biased"] >= 0 and c["said"] > 0 for c in doc["keyterms"].values())
    said = sum(1 for e in doc["events"] if e.get("keyterm") == "two")
    assert doc["keyterms"]["two"]["said"] == said
    two = doc["keyterms"]["two"]
    line = " ".join(run.stderr.split())  # the summary line says them too
    assert ", keyterms " in line and f"two {two['said']} ({two['biased']} biased)" in line


@pytest.mark.slow
def test_listen_jsonl_counts_keyterms_in_its_summary(realtime_dir):
    import json

    run = _voxcli("listen", "--input", HELLO, "--speed", 0, "--model", realtime_dir, "-f", "jsonl",
                  "-k", "two", "--keyterm-bias", 3, "--alternatives", 1)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    tokens = [r for r in rows if r["type"] == "token"]
    assert all(len(r["alternatives"]) == 1 and 0 < r["p"] <= 1 for r in tokens)
    assert rows[-1]["keyterms"]["two"]["said"] == sum(1 for r in tokens if r.get("keyterm") == "two") > 0


def test_alternatives_with_a_server_or_an_unreadable_keyterms_file_are_one_line(realtime_dir, tmp_path):
    """Said before any server is reached (keyterms through a server: tests/test_serve.py, test_remote.py)."""
    for flag, value in (("--alternatives", 2), ("--low-confidence", 0.5)):
        run = _voxcli("listen", "--input", HELLO, "--server", "http://127.0.0.1:9", flag, value)
        errors = [line for line in run.stderr.splitlines() if line.startswith("voxcli: error:")]
        assert run.returncode == 2 and len(errors) == 1, run.stderr
        assert f"{flag} needs a local model" in errors[0] and "--server is set" in errors[0]
    run = _voxcli("transcribe", "file", HELLO, "--model", realtime_dir, "--keyterms-file", tmp_path / "none.txt")
    assert run.returncode == 2 and "--keyterms-file" in run.stderr and "cannot read it" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.gpu
def test_on_a_gpu_in_bf16_compiled_keyterms_change_no_graph_and_zero_changes_no_id(wrap_dir, hello):
    """CUDA graphs, bfloat16 (not yet run on a GPU): a bias of 0 gives exactly the ids without
    keyterms (bf16 logits + 0 are the logits), other keyterms between sessions make no new graph,
    and the alternatives read back with each id are ordered, the emitted token first."""
    import torch._dynamo.utils

    counters = torch._dynamo.utils.counters
    engine = load_engine(str(wrap_dir), device="cuda", dtype="bfloat16", compile="on", alternatives=3)
    plain = list(engine.transcribe(hello))
    made = dict(counters["stats"])
    assert ids(engine.transcribe(hello, keyterms=Keyterms.of(RARE, 0.0))) == ids(plain)
    assert ids(engine.transcribe(hello, keyterms=Keyterms.of(RARE, 5.0))) != ids(plain)
    assert dict(counters["stats"]).get("unique_graphs") == made.get("unique_graphs")
    check_alternatives(plain, 3)
