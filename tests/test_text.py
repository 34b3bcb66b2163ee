import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from captioner import CaptionerError, text
from captioner.text import Vocabulary


def test_clean_lowercases_strips_punctuation_and_keeps_alphabetic_words():
    assert text.clean("A dog's 2 toys, in the PARK !") == ["a", "dogs", "toys", "in", "the", "park"]


def test_wrap_and_strip_special_are_inverse():
    tokens = text.wrap(["a", "dog"])
    assert tokens == [text.START, "a", "dog", text.END]
    assert text.strip_special(tokens + ["ignored", "after", "end"]) == ["a", "dog"]
    assert text.strip_special([text.START, "a", text.UNK, text.PAD, "dog"]) == ["a", "dog"]


def test_vocabulary_counts_train_words_and_keeps_special_ids_fixed():
    captions = [text.wrap("a dog runs".split()), text.wrap("a dog sits".split()), text.wrap("a cat".split())]
    vocab = Vocabulary.build(captions, min_count=2, max_length=10)
    assert vocab.tokens[:4] == list(text.SPECIAL_TOKENS)
    assert vocab.pad_id == 0 and vocab.tokens[vocab.end_id] == text.END
    assert set(vocab.tokens[4:]) == {"a", "dog"}
    assert vocab.encode(["a", "cat"]) == [vocab.ids["a"], vocab.unk_id]
    assert vocab.max_length == 5


def test_vocabulary_ignores_captions_over_max_length():
    captions = [text.wrap(["short"]), text.wrap("far too long a caption here".split())]
    vocab = Vocabulary.build(captions, min_count=1, max_length=4)
    assert "long" not in vocab.ids and "short" in vocab.ids
    assert vocab.max_length == 3


def test_vocabulary_round_trips_through_json(tmp_path):
    vocab = Vocabulary.build([text.wrap("a red circle".split())], min_count=1, max_length=8)
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded.tokens == vocab.tokens and loaded.max_length == vocab.max_length
    assert loaded.decode([vocab.start_id, *vocab.encode(["a", "red"]), vocab.end_id, vocab.ids["circle"]]) == [
        "a",
        "red",
    ]


def test_vocabulary_refuses_a_file_with_other_special_tokens(tmp_path):
    (tmp_path / "vocab.json").write_text('{"max_length": 3, "tokens": ["<start>", "<pad>", "<end>", "<unk>", "a"]}')
    with pytest.raises(CaptionerError, match=r"vocab.json: its special tokens differ from this version's"):
        Vocabulary.load(tmp_path / "vocab.json")


def test_glove_loader_takes_known_vectors_and_counts_the_rest(tmp_path):
    glove = tmp_path / "glove.3d.txt"
    glove.write_text("the 0.1 0.2 0.3\ndog 1.0 -1.0 0.5\nzebra 9 9 9\n")
    vocab = Vocabulary(["dog", "cat", "the"], max_length=5)
    matrix, missing = text.load_glove(glove, vocab, seed=0)
    assert matrix.shape == (len(vocab), 3) and missing == 1  # cat
    np.testing.assert_allclose(matrix[vocab.ids["dog"]], [1.0, -1.0, 0.5])
    np.testing.assert_allclose(matrix[vocab.ids["the"]], [0.1, 0.2, 0.3])
    assert (matrix[vocab.pad_id] == 0).all() and (matrix[vocab.ids["cat"]] != 0).all()
    again, _ = text.load_glove(glove, vocab, seed=0)
    np.testing.assert_array_equal(matrix, again)


def test_the_packaged_glove_6b_50d_puts_the_right_words_in_the_right_rows():
    words = ["dog", "dogs", "cat", "puppy", "car", "truck", "beach", "the", "zzzunknownzzz"]
    vocab = Vocabulary(words, max_length=5)
    matrix = text.initial_embeddings(text.PACKAGED_GLOVE, 50, vocab, seed=0)
    assert matrix.shape == (len(vocab), 50) and (matrix[vocab.pad_id] == 0).all()

    def nearest(word, among):
        vector = matrix[vocab.ids[word]]
        cosine = {other: vector @ matrix[vocab.ids[other]] / np.linalg.norm(vector) / np.linalg.norm(
            matrix[vocab.ids[other]]) for other in among if other != word}  # fmt: skip
        return max(cosine, key=cosine.get)

    assert nearest("dog", ["cat", "dogs", "car", "truck", "beach"]) in {"cat", "dogs"}
    assert nearest("car", ["dog", "cat", "truck", "beach", "puppy"]) == "truck"
    np.testing.assert_allclose(matrix[vocab.ids["the"]][:3], [0.418, 0.24968, -0.41242], atol=1e-5)  # glove.6B.50d
    with pytest.raises(CaptionerError, match="holds 50-d vectors; set decoder.embedding_dim to match"):
        text.initial_embeddings(text.PACKAGED_GLOVE, 256, vocab, seed=0)


@pytest.mark.parametrize(
    ("content", "message"),
    [("dog 1 2\ncat 1\n", r"glove.txt:2: expected a word and 2 numbers"), ("dog 1 x\n", "glove.txt:1:"), ("", "empty")],
)
def test_glove_loader_names_the_bad_line(tmp_path, content, message):
    (tmp_path / "glove.txt").write_text(content)
    with pytest.raises(CaptionerError, match=message):
        text.load_glove(tmp_path / "glove.txt", Vocabulary(["dog", "cat"], max_length=3), seed=0)


def test_clean_keeps_letters_as_written_and_drops_punctuation_of_any_script():
    assert text.clean("A “café” — naïve ¿qué? dog’s 日本") == ["a", "café", "naïve", "qué", "dogs", "日本"]
    # Letters with their marks in any script; compatibility forms folded (NFKC); a composed and a decomposed é agree.
    assert text.clean("красный шар, دائرة حمراء; हिन्दी") == ["красный", "шар", "دائرة", "حمراء", "हिन्दी"]
    assert text.clean("Ｆｕｌｌ ﬁsh cafe\u0301") == ["full", "fish", "café"]
    # Invisible characters never split or drop a word: zero-width space, joiners, byte-order mark, soft hyphen.
    assert text.clean("a re\u200bd ca\u200dr\ufeff on gr\u00adass") == ["a", "red", "car", "on", "grass"]


@given(st.text(max_size=60))
def test_clean_gives_lowercase_words_of_letters_and_is_stable(caption):
    words = text.clean(caption)
    assert all(word and not any(character.isspace() for character in word) for word in words)
    assert text.clean(" ".join(words)) == words  # cleaning cleaned text changes nothing


def test_a_vocabulary_without_captions_or_words_is_an_error():
    captions = [text.wrap("a dog runs".split()), text.wrap("a cat".split())]
    with pytest.raises(CaptionerError, match="no train caption fits in vocab.max_length 3 tokens"):
        Vocabulary.build(captions, min_count=1, max_length=3)
    with pytest.raises(CaptionerError, match="no train word occurs vocab.min_count 5 times"):
        Vocabulary.build(captions, min_count=5, max_length=10)
