from nest_integrations.index import chunk_documents, token_counter
from nest_integrations.passages import Document, chunk_document


def test_passages_are_exact_slices_of_their_document() -> None:
    text = "First sentence here. Second one follows!\n\nA new paragraph starts. " + "Word " * 300
    doc = Document(id="d", title="T", text=text)
    passages = list(chunk_document(doc, max_tokens=30))
    assert len(passages) > 3
    for p in passages:
        assert p.start is not None and p.end is not None
        assert text[p.start : p.end] == p.text
        assert p.document_id == "d" and p.title == "T"
    assert len({p.id for p in passages}) == len(passages)


def test_chunks_respect_token_budget_and_sentence_boundaries(lm) -> None:
    doc = Document(
        id="x",
        text=" ".join(f"Sentence number {i} talks about the topic at some length." for i in range(40)),
    )
    passages = chunk_documents([doc], tokenizer=lm.tokenizer, max_tokens=50)
    count = token_counter(lm.tokenizer)
    assert all(count(p.text) <= 50 for p in passages)
    assert all(p.text.startswith("Sentence") and p.text.endswith(".") for p in passages)


def test_short_paragraphs_such_as_headings_are_skipped() -> None:
    doc = Document(id="h", text="Early life\n\nHe was born in a small town and lived there for many years.")
    passages = list(chunk_document(doc))
    assert [p.text for p in passages] == ["He was born in a small town and lived there for many years."]


def test_default_corpus_passages_fit_100_tokens(corpus_retriever, lm) -> None:
    count = token_counter(lm.tokenizer)
    sample = corpus_retriever.passages[::50]
    assert max(count(p.text) for p in sample) <= 100
