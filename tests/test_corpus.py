import json

import pytest

from nest_integrations.corpus import (
    UnreadableFileError,
    default_corpus,
    detokenize_wikitext,
    parse_wikitext,
    read_documents,
)


def test_detokenize_undoes_wikitext_escapes() -> None:
    raw = ' He had a guest @-@ starring role , earning $ 1 @,@ 000 @.@ 5 ( roughly ) in " Teddy \'s Story " . '
    assert detokenize_wikitext(raw) == 'He had a guest-starring role, earning $1,000.5 (roughly) in "Teddy\'s Story".'


def test_parse_wikitext_splits_articles_not_equation_lines() -> None:
    raw = (
        " = Alpha = \n\n\n\n Body one .\n\n = = Section = = \n\n Body two .\n\n"
        " = 1 henry = \n\n Body three .\n\n\n = Beta = \n\n\n\n Text .\n"
    )
    docs = parse_wikitext(raw)
    assert [d.title for d in docs] == ["Alpha", "Beta"]
    assert docs[0].text == "Body one.\n\nSection\n\nBody two.\n\n1 henry\n\nBody three."


def test_default_corpus_is_the_60_wikitext_test_articles() -> None:
    docs = default_corpus()
    assert len(docs) == 60
    assert docs[0].title == "Robert Boulter"
    assert not any("@-@" in d.text or "@,@" in d.text for d in docs)


def test_non_utf8_file_gives_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UnreadableFileError, match=r"latin1\.txt is not UTF-8"):
        list(read_documents([bad]))


def test_jsonl_documents_and_errors(tmp_path) -> None:
    good = tmp_path / "docs.jsonl"
    good.write_text(json.dumps({"id": "a", "title": "A", "text": "Hello.", "metadata": {"url": "u"}}) + "\n\n")
    (doc,) = read_documents([good])
    assert (doc.id, doc.title, doc.text, doc.metadata["url"]) == ("a", "A", "Hello.", "u")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text"}\n')
    with pytest.raises(UnreadableFileError, match=r"bad\.jsonl:1"):
        list(read_documents([bad]))
