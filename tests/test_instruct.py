"""TinyStories-Instruct: the record format, prompts, building records, adherence metrics, the eval set."""

from __future__ import annotations

import random

import pytest

from conftest import TRAIN_TXT, TRAIN_V2_TXT
from tinystories.data.instruct.build import BuildConfig, build_record, build_records, candidate_sentences, word_document_frequencies, write_records
from tinystories.data.instruct.records import FEATURES, FIELDS, as_record, format_prompt, format_record, parse_record, read_records, split_records
from tinystories.data.instruct.words import word_used
from tinystories.evaluate.adherence import adherence, sentence_present
from tinystories.data.instruct.evalset import check_disjoint, load_instructions
from tinystories.data.instruct.words import content_words, normalize_for_match, pos_of, split_sentences, word_tokens
from tinystories.data.instruct.features import detect_features, has_dialogue, has_moral
from tinystories.errors import UserError
from tinystories.data.instruct.records import InstructRecord

PAPER_RECORD = """\
Summary: Lily and Timmy build a sandcastle together and learn to compromise, but it gets knocked over by a gust of wind.
They find beauty in the broken sandcastle and play happily with a butterfly.
Features: Dialogue, Foreshadowing, Twist
Sentence: One day, she went to the park and saw a beautiful butterfly.
Words: disagree, network, beautiful
Story: Once upon a time, there was a little girl named Lily. She loved to play with her toys and her friends. One day, she went
to the park and saw a beautiful butterfly. She tried to catch it, but it flew away.
They smiled and played together happily.
"""

DATASET_RECORD = """\
Features: Dialogue, Twist
Words: disagree, network, beautiful
Summary: Lily and Timmy build a sandcastle together and learn to compromise.
Random sentence: One day, she went to the park and saw a beautiful butterfly.
Story: Once upon a time, there was a little girl named Lily.
"""


def _plain_stories(path, n):
    return split_records(path.read_text(encoding="utf-8"))[:n]


# ---------------------------------------------------------------- parsing

def test_parse_paper_order_multiline_and_sentence_spelling():
    r = parse_record(PAPER_RECORD)
    assert r.words == ["disagree", "network", "beautiful"]
    assert r.features == ["Dialogue", "Foreshadowing", "Twist"]
    assert r.sentence == "One day, she went to the park and saw a beautiful butterfly."
    assert r.summary.startswith("Lily and Timmy") and r.summary.endswith("with a butterfly.")
    assert "\n" in r.summary  # the second summary line is kept
    assert r.story.startswith("Once upon a time") and r.story.endswith("played together happily.")
    assert r.story.count("\n") == 2
    assert r.order == ("summary", "features", "sentence", "words")


def test_parse_dataset_spelling_gives_same_fields():
    r = parse_record(DATASET_RECORD)
    assert r.sentence == "One day, she went to the park and saw a beautiful butterfly."
    assert r.order == ("features", "words", "summary", "sentence")
    assert r.story == "Once upon a time, there was a little girl named Lily."


@pytest.mark.parametrize("text, present", [
    ("Story: Tom ran.", []),
    ("Words: run\nStory: Tom ran.", ["words"]),
    ("Story: Tom ran.\nWords: run, dog", ["words"]),            # Story need not be last
    ("Random sentence: He ran.\nStory:\nTom woke up. He ran.\n", ["sentence"]),  # story on the next line
    ("features: dialogue, bad ending\nSTORY: \"Hi,\" said Tom.", ["features"]),
])
def test_parse_any_order_and_missing_fields(text, present):
    r = parse_record(text)
    assert r.present() == present
    assert r.story.startswith(("Tom", '"Hi'))
    if "features" in present:
        assert r.features == ["Dialogue", "BadEnding"]  # canonical spellings


@pytest.mark.parametrize("text, needle", [
    ("Words: run, dog\nSummary: A dog runs.", "no 'Story:' field"),
    ("Words: run\nStory:   \n", "'Story:' field is empty"),
    ("Once upon a time\nStory: x", "line 1 is not a field"),
    ("Words: a\nWords: b\nStory: x", "appears twice"),
    ("Sentence: a\nRandom sentence: b\nStory: x", "appears twice"),
])
def test_parse_errors_name_the_problem(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_record(text, where="f.txt: record 3")


def test_instruction_sets_need_no_story_but_some_instruction():
    r = parse_record("Words: dog, happy, run\n", require_story=False)
    assert r.story == "" and r.words == ["dog", "happy", "run"]
    with pytest.raises(UserError, match="no instructions"):
        parse_record("Story: Once upon a time", require_story=False)


def test_format_record_round_trips_and_file_splits(tmp_path):
    r = parse_record(PAPER_RECORD)
    again = parse_record(format_record(r))
    assert again == r
    text = format_record(r) + "\n<|endoftext|>\n" + DATASET_RECORD + "<|endoftext|>\n"
    path = tmp_path / "recs.txt"
    path.write_text(text)
    recs = read_records(path)
    assert [x.words for x in recs] == [r.words, r.words]
    assert format_record(recs[1]).startswith("Features: Dialogue, Twist\nWords: disagree")
    assert format_record(recs[1]).splitlines()[3].startswith("Random sentence: ")  # the dataset's spelling


def test_read_records_errors(tmp_path):
    with pytest.raises(UserError, match="no such"):
        read_records(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("Story: fine\n<|endoftext|>\nWords: x\n<|endoftext|>\n")
    with pytest.raises(UserError, match=r"bad.txt: record 2: has no 'Story:'"):
        read_records(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n<|endoftext|>\n")
    with pytest.raises(UserError, match="holds no records"):
        read_records(empty)


def test_as_record_takes_plain_stories_and_records():
    assert as_record("Once upon a time.\nThe end.").story == "Once upon a time.\nThe end."
    assert as_record(DATASET_RECORD).words == ["disagree", "network", "beautiful"]


# ---------------------------------------------------------------- prompts

def test_prompt_is_instructions_then_story_label():
    p = format_prompt(words=["dog", "happy", "run"], features=["dialogue", "plot twist"],
                         sentence="The dog barked.", summary="A dog finds a bone.")
    assert p == ("Features: Dialogue, Twist\nWords: dog, happy, run\nSummary: A dog finds a bone.\n"
                 "Random sentence: The dog barked.\nStory:")
    assert format_prompt(words=["dog"], story_start="Once upon a time") == "Words: dog\nStory: Once upon a time"
    # a prompt is a record's text cut at its story: the model continues in the training format
    rec = InstructRecord(story="Once upon a time, a dog ran.", words=["dog"], order=FIELDS)
    assert format_record(rec).startswith(format_prompt(rec.instructions()) + " Once")
    with pytest.raises(UserError, match="unknown feature 'Sparkles'"):
        format_prompt(features=["Sparkles"])


# ---------------------------------------------------------------- building records

HAND_STORY = ('Tom smiled at the girl. "Look at the kite!" she said. The kite was bright. '
              "They learned that sharing is fun.")


def test_part_of_speech_from_the_lexicon():
    assert pos_of("ran") == ("VERB", "run")
    assert pos_of("butterflies") == ("NOUN", "butterfly")
    assert pos_of("happy") == ("ADJ", "happy")
    assert pos_of("dog") is None        # noun or verb: ambiguous, never picked
    assert pos_of("she") is None        # the lexicon calls it a noun; it is a pronoun
    assert pos_of("Lily") is None       # names
    assert content_words("He won't go.")["VERB"] == []   # not "win" from "won't"
    cw = content_words(HAND_STORY)
    # "look" and "kite" (noun or verb), "fun" (noun or adjective) are ambiguous; "sharing" is a form of share
    assert cw == {"VERB": ["smile", "learn", "share"], "NOUN": ["girl"], "ADJ": ["bright"]}


def test_build_record_fields_are_true_of_the_story():
    seen = set()
    for seed in range(40):
        r = build_record(HAND_STORY, random.Random(seed))
        assert r.present(), "never an empty instruction set"
        assert r.story == HAND_STORY
        if r.words:
            assert r.words[1:] == ["girl", "bright"] and r.words[0] in ("smile", "learn", "share")
        if r.sentence:
            assert r.sentence in split_sentences(HAND_STORY)[1:]
            assert r.sentence != split_sentences(HAND_STORY)[0]
        if r.features:
            assert r.features == ["Dialogue", "MoralValue"]
        assert r.summary is None  # no summarizer configured
        seen.add(tuple(r.present()))
    assert len(seen) > 5  # random subsets of the available fields
    # the only sentence candidates: not the first, and not a half quotation
    assert candidate_sentences(HAND_STORY) == ['"Look at the kite!" she said.', "The kite was bright.",
                                                 "They learned that sharing is fun."]


def test_build_records_on_real_stories_is_seeded_and_honest():
    stories = _plain_stories(TRAIN_TXT, 300)
    recs = list(build_records(stories, BuildConfig(seed=3)))
    again = list(build_records(stories, BuildConfig(seed=3)))
    other = list(build_records(stories, BuildConfig(seed=4)))
    assert recs == again and recs != other
    counts = {f: 0 for f in FIELDS}
    for story, r in zip(stories, recs):
        assert r.present()
        for f in r.present():
            counts[f] += 1
        assert all(word_used(w, story) for w in r.words)
        if r.sentence:
            assert sentence_present(r.sentence, story)
            assert normalize_for_match(r.sentence) != normalize_for_match(split_sentences(story)[0])
        assert set(r.features) <= {"Dialogue", "MoralValue"}
        assert set(r.features) == set(detect_features(story)) or not r.features
    # each available field is kept about half the time (a non-empty subset: a little more)
    assert 0.45 < counts["words"] / 300 < 0.75 and 0.45 < counts["sentence"] / 300 < 0.75
    assert counts["features"] > 60 and counts["summary"] == 0


def test_rare_word_pick_asks_for_the_words_few_stories_have():
    # uniform over a story's words mostly asks for happy/girl/play, which a model writes anyway; weighting by
    # 1/document frequency spreads the asks over the vocabulary, as the dataset's uniform word draw did
    stories = _plain_stories(TRAIN_TXT, 400)
    df = word_document_frequencies(stories)
    assert df["happy"] > 100 and df["girl"] > 100 and 0 < df["octopus"] < 5
    uniform = list(build_records(stories, BuildConfig(seed=0, p_field=1.0)))
    rare = list(build_records(stories, BuildConfig(seed=0, p_field=1.0, word_df=df)))
    again = list(build_records(stories, BuildConfig(seed=0, p_field=1.0, word_df=df)))
    assert rare == again
    for story, r in zip(stories, rare):
        assert all(word_used(w, story) for w in r.words)

    def mean_df(recs):
        words = [w for r in recs for w in r.words]
        return sum(df[w] for w in words) / len(words), len(set(words))

    (u_df, u_distinct), (r_df, r_distinct) = mean_df(uniform), mean_df(rare)
    assert r_df < u_df / 2 and r_distinct > 1.4 * u_distinct


def test_build_with_a_summarizer_calls_it_only_when_drawn():
    calls = []

    def summarize(story):
        calls.append(story)
        return "  A boy   smiles\nat a girl. "

    recs = list(build_records([HAND_STORY] * 30, BuildConfig(seed=1), summarize))
    with_summary = [r for r in recs if r.summary]
    assert 5 < len(with_summary) < 25 and len(calls) == len(with_summary)
    assert {r.summary for r in with_summary} == {"A boy smiles at a girl."}


def test_write_records_is_the_txt_format(tmp_path):
    stories = _plain_stories(TRAIN_V2_TXT, 20)
    out = tmp_path / "instruct.txt"
    n = write_records(build_records(stories), out)
    assert n == 20
    text = out.read_text()
    assert text.count("\n<|endoftext|>\n") == 20 and text.endswith("<|endoftext|>\n")
    back = read_records(out)
    assert [r.story for r in back] == [s.strip() for s in stories]
    with pytest.raises(UserError, match="already exists"):
        write_records([], out)
    assert write_records([], out, force=True) == 0


# ---------------------------------------------------------------- adherence metrics

def test_word_usage_counts_inflections():
    story = "The dogs ran to the park. Tim was sad. He was running and jumping."
    assert word_used("run", story) and word_used("dog", story) and word_used("jump", story)
    assert not word_used("happy", story) and not word_used("cat", story)
    assert word_used("ran", "She runs home.")          # the required word may itself be inflected
    assert word_used("happy", "She was happier than ever.")
    assert not word_used("happy", "She danced happily.")  # a derived word is not an inflection
    assert word_used("Butterfly", "Two butterflies flew.")
    assert word_used("dog", "The dog's bone.") and not word_used("win", "He won't go.")
    # forms the lexicon's inflection table lacks: a modal-like verb, an irregular participle
    assert word_used("dare", "He dared to jump.") and word_used("prove", "It was proven.")
    a = adherence(InstructRecord(story="", words=["dare", "prove", "cat"]), "He dared it. It was proven.")
    assert a.words_used == ["dare", "prove"] and a.words_missing == ["cat"]   # the metric evaluate reports
    assert word_tokens("The dogs' ball isn't Tom's.") == ["The", "dogs", "ball", "isn't", "Tom"]
    a = adherence(InstructRecord(words=["run", "happy", "dog"]), story)
    assert a.words_used == ["run", "dog"] and a.words_missing == ["happy"]
    assert a.word_share == pytest.approx(2 / 3)


def test_sentence_present_ignores_case_quotes_and_spacing():
    story = 'Lily ran outside.\n\u201cLook,\u201d  said MOM, \u201cthe sun is out!\u201d Then they played.'
    assert sentence_present('"Look," said Mom, "the sun is out!"', story)
    assert sentence_present("then they played", story)
    assert not sentence_present("Look said Dad the sun is out", story)
    assert not sentence_present("they play", story)   # whole words only: "play" is not "played"
    assert not sentence_present("...", story)
    a = adherence(InstructRecord(sentence="Then they played."), story)
    assert a.sentence_present is True and a.word_share is None


def test_feature_detectors_on_known_stories():
    dialogue = 'Sam saw a cat. "Hello, cat!" said Sam. The cat purred.'
    curly = "Sam saw a cat. \u201cHello!\u201d said Sam."
    moral = "Sam took the toy. Mom was sad. The moral of the story is to ask first."
    learned = "Sam gave Ben a toy. Sam learned that sharing makes friends happy."
    plain = "Sam saw a cat. The cat purred. Sam learned to swim. They went home."
    assert has_dialogue(dialogue) and has_dialogue(curly)
    assert not has_dialogue(moral) and not has_dialogue('He was 6" tall.') and not has_dialogue('It said "" and "!".')
    assert has_moral(moral) and has_moral(learned)
    assert not has_moral(plain) and not has_moral(dialogue)
    inst = InstructRecord(features=["Dialogue", "MoralValue", "Twist"])
    a = adherence(inst, dialogue)
    assert a.features == {"Dialogue": True, "MoralValue": False} and a.unscored == ["Twist"]
    assert a.feature_share == 0.5
    assert adherence(inst, dialogue + " " + learned).feature_share == 1.0


# ---------------------------------------------------------------- the evaluation set

def test_packaged_eval_set_is_50_sets_disjoint_from_training_records():
    sets = load_instructions()
    assert len(sets) == 50
    assert all(len(s.words) == 3 and not s.story for s in sets)
    assert len({frozenset(s.words) for s in sets}) == 50
    assert sum(bool(s.sentence) for s in sets) >= 15 and sum(bool(s.summary) for s in sets) >= 15
    assert {f for s in sets for f in s.features} == set(FEATURES)
    stories = _plain_stories(TRAIN_TXT, 10_000) + _plain_stories(TRAIN_V2_TXT, 10_000)
    training = list(build_records(stories)) + [InstructRecord(story=s) for s in stories]
    ov = check_disjoint(sets, training)
    assert ov.disjoint and ov.checked == 2 * len(stories)


def test_check_disjoint_finds_overlaps():
    sets = [InstructRecord(words=["run", "dog", "happy"]), InstructRecord(words=["x"], sentence="The cat sat."),
            InstructRecord(words=["y"], summary="A cat sits.")]
    training = [InstructRecord(story="s", words=["happy", "dogs", "ran"]),          # same lemmas, other order
                InstructRecord(story="Once, the CAT sat! It purred."),              # sentence inside a story
                InstructRecord(story="s", summary="a cat   sits")]
    ov = check_disjoint(sets, training)
    assert (ov.word_sets, ov.sentences, ov.summaries) == ([0], [1], [2]) and not ov.disjoint
    assert check_disjoint(sets, [InstructRecord(story="The cats sat down.")]).disjoint
