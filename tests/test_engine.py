"""End-to-end behaviour of NestEngine on the embedded model and the default corpus."""

import itertools

import pytest
import torch
from citation_checks import assert_citations_exact

from nest_integrations import (
    ConfigError,
    HybridRetriever,
    InvalidPromptError,
    NestConfig,
    NestEngine,
    Passage,
    PromptTooLongError,
    StaticRetriever,
    default_corpus,
)
from nest_integrations.lm import build_prompt_ids, normalize_messages

ENTITIES = [
    ("Tell me about Robert Boulter.", "Robert_Boulter"),
    ("Tell me about Clayton Kershaw.", "Clayton_Kershaw"),
    ("Tell me about Du Fu.", "Du_Fu"),
]


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return {d.id: d.text for d in default_corpus()}


def plain_greedy(lm, prompt: str, n: int) -> list[int]:
    ids = build_prompt_ids(lm.tokenizer, normalize_messages(prompt))
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids], device=lm.device), max_new_tokens=n, do_sample=False)
    new = out[0, len(ids) :].tolist()
    return [t for t in new if t not in lm.eos_token_ids]


def output_ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "how",
    [
        {"retrieval": False},
        {"fixed_lambda": 1.0},
    ],
)
def test_retrieval_off_equals_plain_greedy_generate(lm, boulter_passages, how) -> None:
    engine = NestEngine(lm, retriever=boulter_passages)
    prompt = "Tell me about Robert Boulter."
    result = engine.generate(prompt, max_new_tokens=40, **how)
    expected = plain_greedy(lm, prompt, 40)
    assert result.text == lm.tokenizer.decode(expected, skip_special_tokens=True)
    assert result.citations == [] and result.stats.tokens_copied == 0
    assert result.stats.tokens_generated == len(expected)


@pytest.mark.slow
@pytest.mark.parametrize("empty", [StaticRetriever([]), HybridRetriever([]), []], ids=["retriever", "corpus", "list"])
def test_retriever_returning_nothing_is_plain_lm_with_no_citations(lm, empty) -> None:
    engine = NestEngine(lm, retriever=empty)
    result = engine.generate("Tell me about Robert Boulter.", max_new_tokens=24)
    assert result.text == lm.tokenizer.decode(plain_greedy(lm, "Tell me about Robert Boulter.", 24))
    assert result.citations == [] and result.passages == []


@pytest.mark.slow
@pytest.mark.parametrize(("prompt", "article"), ENTITIES)
def test_entity_prompt_copies_a_multi_token_span_cited_to_the_right_article(engine, documents, prompt, article) -> None:
    result = engine.generate(prompt, max_new_tokens=64)
    assert_citations_exact(result, documents)
    multi = [c for c in result.citations if len(output_ids(engine.lm, c.quote)) >= 4]
    assert multi, result
    assert multi[0].document_id == article
    assert result.stats.spans_accepted >= 1 and result.stats.mean_accepted_span > 1
    assert 0 < result.stats.attribution_ratio <= 1
    assert result.stats.tokens_copied == round(result.stats.attribution_ratio * result.stats.tokens_generated)
    # Copied positions are masked: no source text is copied twice.
    ranges = sorted((c.passage_id, c.passage_start, c.passage_end) for c in result.citations)
    for (pa, _, end_a), (pb, start_b, _) in itertools.pairwise(ranges):
        assert pa != pb or start_b >= end_a, ranges


@pytest.mark.slow
def test_stream_gives_same_text_and_citations_as_generate(engine, documents) -> None:
    prompt = "Tell me about Du Fu."
    full = engine.generate(prompt, max_new_tokens=64)
    chunks = list(engine.stream(prompt, max_new_tokens=64))
    assert "".join(c.text for c in chunks) == full.text
    streamed = [cit for c in chunks for cit in c.citations]
    assert streamed == full.citations
    last = chunks[-1].result
    assert last is not None and last.text == full.text and last.finish_reason == full.finish_reason
    # generate builds no chunk before the result (a cheaper path): the same result all the same.
    assert last.citations == full.citations and last.fragments == full.fragments
    for field in ("tokens_generated", "tokens_copied", "spans_accepted"):
        assert getattr(last.stats, field) == getattr(full.stats, field), field
    # Each citation arrives no earlier than the chunk that completes its span.
    seen = 0
    for c in chunks:
        seen += len(c.text)
        assert all(cit.output_end <= seen for cit in c.citations)


@pytest.mark.slow
def test_stop_string_truncates_output_and_citations(engine, documents) -> None:
    full = engine.generate("Tell me about Robert Boulter.", max_new_tokens=64)
    cut = full.text.find(" in ")
    assert cut > 0
    stopped = engine.generate("Tell me about Robert Boulter.", max_new_tokens=64, stop=[" in "])
    assert stopped.text == full.text[:cut] and stopped.finish_reason == "stop"
    assert_citations_exact(stopped, documents)
    assert all(c.output_end <= cut for c in stopped.citations)
    one = engine.generate("Tell me about Robert Boulter.", max_new_tokens=64, stop=" in ")  # a str: a list of one
    assert one.text == stopped.text and one.finish_reason == "stop"


@pytest.mark.slow
def test_sampling_is_reproducible_with_a_seed_and_citations_hold(engine, documents) -> None:
    kwargs = {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "seed": 7, "max_new_tokens": 48}
    a = engine.generate("Tell me about Clayton Kershaw.", **kwargs)
    b = engine.generate("Tell me about Clayton Kershaw.", **kwargs)
    assert a.text == b.text
    assert_citations_exact(a, documents)


@pytest.mark.slow
def test_strict_greedy_acceptance_equals_greedy_decoding_of_the_mixture(lm, boulter_passages) -> None:
    """With exact acceptance, copying changes speed only: same text as token-by-token decoding."""
    engine = NestEngine(lm, retriever=boulter_passages)
    prompt = "Tell me about Robert Boulter."
    spec = engine.generate(prompt, max_new_tokens=40, acceptance="strict", mask_copied=False)
    one_by_one = engine.generate(prompt, max_new_tokens=40, acceptance="strict", mask_copied=False, beta=0.0)
    assert one_by_one.stats.spans_proposed == 0
    assert spec.stats.spans_proposed > 0
    assert output_ids(lm, spec.text)[:30] == output_ids(lm, one_by_one.text)[:30]


def test_invalid_config_values_are_rejected() -> None:
    for bad in ({"alpha": -1}, {"tau": 0}, {"gamma": 0}, {"span_window": 0}, {"top_p": 1.5}, {"stop": [""]}):
        with pytest.raises(ValueError):
            NestConfig(**bad)
    with pytest.raises(ValueError):
        NestConfig(unknown_knob=1)


def test_invalid_per_call_override_is_rejected(engine) -> None:
    with pytest.raises(ValueError):
        engine.generate("Hi", max_new_tokens=-3)


def test_empty_prompt_is_rejected(engine) -> None:
    with pytest.raises(ValueError, match="empty"):
        engine.generate("   ")


def test_prompt_longer_than_context_is_rejected(lm) -> None:
    engine = NestEngine(lm)
    with pytest.raises(PromptTooLongError, match="context"):
        engine.generate("word " * (lm.context_length + 10), max_new_tokens=4)


@pytest.mark.slow
def test_explicit_passages_override_the_first_stage(engine, documents) -> None:
    kershaw = [p for p in engine.retriever.passages if p.document_id == "Clayton_Kershaw"][:5]
    result = engine.generate("Tell me about Clayton Kershaw.", passages=kershaw, max_new_tokens=32)
    assert {s.passage.id for s in result.passages} == {p.id for p in kershaw}
    assert all(c.document_id == "Clayton_Kershaw" for c in result.citations)
    assert_citations_exact(result, documents)


@pytest.mark.slow
def test_passages_without_title_or_document_are_cited(lm) -> None:
    p = Passage(id="note-1", text="The Zorblax reactor was commissioned in 1987 by the Veltran Institute in Oslo.")
    engine = NestEngine(lm, retriever=[p])
    result = engine.generate("When was the Zorblax reactor commissioned, and by whom?", max_new_tokens=32)
    for c in result.citations:
        assert p.text[c.passage_start : c.passage_end] == c.quote == result.text[c.output_start : c.output_end]
        assert c.document_start is None


@pytest.fixture(scope="module")
def three_articles(corpus_retriever) -> list[Passage]:
    """Issue 7's setting: six passages each of Robert Boulter, Du Fu and Clayton Kershaw."""
    return [
        p
        for article in ("Robert_Boulter", "Du_Fu", "Clayton_Kershaw")
        for p in [q for q in corpus_retriever.passages if q.document_id == article][:6]
    ]


@pytest.mark.slow
@pytest.mark.parametrize("first_stage", ["given passages", "hybrid over them"])
def test_no_citation_of_boulters_answer_points_to_another_article(
    lm, corpus_retriever, three_articles, documents, first_stage
) -> None:
    """Issue 7's observation: with the paper's settings, Boulter's answer copied Kershaw's
    "is an American professional baseball pitcher ..."; the default config must not."""
    question = "Tell me about Robert Boulter."
    if first_stage == "given passages":
        engine = NestEngine(lm)
        passages = three_articles
    else:
        engine = NestEngine(lm, retriever=HybridRetriever(three_articles, embedder=corpus_retriever.embedder))
        passages = None
    result = engine.generate(question, passages=passages, num_passages=18)
    assert result.citations and result.stats.attribution_ratio >= 0.5
    # The other articles' passages are left out before encoding: only Boulter's six are encoded.
    assert result.stats.passages == 18 and result.stats.passages_encoded == 6
    assert all(c.document_id == "Robert_Boulter" for c in result.citations), [
        (c.document_id, c.quote) for c in result.citations if c.document_id != "Robert_Boulter"
    ]
    assert_citations_exact(result, documents)


@pytest.mark.slow
def test_paper_settings_do_copy_from_the_wrong_article_here(lm, three_articles) -> None:
    """The regression test above is not vacuous: without the guards the wrong source is cited."""
    paper = NestConfig.paper()
    result = NestEngine(lm, config=paper).generate("Tell me about Robert Boulter.", passages=three_articles)
    # (Copies: the claim layer may still decline to cite some of them.)
    assert any(c.document_id != "Robert_Boulter" for c in result.citations + result.fragments)


@pytest.mark.slow
def test_context_guard_starts_spans_only_after_agreeing_left_context(lm, three_articles) -> None:
    from nest_integrations.decoding import NestDecoder
    from nest_integrations.token_index import PassageEncoder, TokenIndex

    # The sentence lock's continuations are not new entries: test the guard on its own.
    config = NestConfig(context_guard=True, sentence_lock=False, max_new_tokens=96)
    index = TokenIndex(PassageEncoder(lm).encode(three_articles), lm.device)
    decoder = NestDecoder(lm, config, index)
    prompt = build_prompt_ids(lm.tokenizer, normalize_messages("Tell me about Du Fu."))
    boundary = lm.boundary_tokens
    previous, spans, first = prompt[-1], 0, True
    for step in decoder.run(prompt, config.max_new_tokens):
        head = step.provenance[0]
        if first and head is not None:
            # The answer's first token comes from a sentence start: the text's first token or after . ! ? newline.
            before = int(index.passages[head.passage].token_ids[head.position - 1])
            assert head.position - 1 == index.passages[head.passage].first_key or bool(boundary[before])
        if len(step.tokens) > 1 and head is not None:
            spans += 1
            before = int(index.passages[head.passage].token_ids[head.position - 1])
            starts_text = head.position - 1 == index.passages[head.passage].first_key
            assert before == previous or (bool(boundary[previous]) and (bool(boundary[before]) or starts_text))
        previous, first = step.tokens[-1], False
    assert spans >= 2


@pytest.mark.slow
def test_no_source_about_the_query_decodes_with_the_plain_lm(lm, three_articles) -> None:
    """Held out: Boulter's article is not among the passages, so nothing may be copied or cited."""
    others = [p for p in three_articles if p.document_id != "Robert_Boulter"]
    prompt = "Tell me about Robert Boulter."
    result = NestEngine(lm).generate(prompt, passages=others, max_new_tokens=32)
    assert result.text == lm.tokenizer.decode(plain_greedy(lm, prompt, 32))
    assert result.citations == [] and len(result.passages) == len(others)
    assert result.stats.passages_searched == 0 and result.stats.source_coverage == 0.0
    # The paper's settings have no such gate and copy from the other articles.
    paper = NestEngine(lm, config=NestConfig.paper()).generate(prompt, passages=others, max_new_tokens=32)
    assert paper.citations and {c.document_id for c in paper.citations} <= {"Du_Fu", "Clayton_Kershaw"}


def test_passages_of_the_wrong_shape_are_rejected_with_what_to_fix(engine, boulter_passages) -> None:
    from nest_integrations import InvalidPassagesError

    one = boulter_passages[0]
    for bad in (one, "some text", [one, "text"], 3):
        with pytest.raises(InvalidPassagesError, match="Passage or ScoredPassage"):
            engine.generate("Tell me about Robert Boulter.", passages=bad, max_new_tokens=2)
    with pytest.raises(ValueError, match="one entry per prompt"):
        engine.generate_batch(["a?", "b?"], queries="ab", max_new_tokens=2)
    with pytest.raises(InvalidPassagesError):
        engine.generate_batch(["a?", "b?"], passages=[one, one], max_new_tokens=2)  # flat, not one list per prompt
    with pytest.raises(InvalidPromptError, match="query"):
        engine.generate("Hi", query=["Robert"], max_new_tokens=2)
    surrogate = Passage(id="bad", text="Robert Boulter \udc80 is an actor.")
    with pytest.raises(InvalidPassagesError, match="lone surrogate at char 15"):
        engine.generate("Tell me about Robert Boulter.", passages=[surrogate], max_new_tokens=2)


def test_an_empty_passage_is_not_searched_and_changes_nothing(engine, boulter_passages) -> None:
    # "hi" has no content word, so relevance keeps every passage: the empty one must be left out, not encoded.
    empty = Passage(id="empty", text="")
    alone = engine.generate("hi", passages=[empty], max_new_tokens=3)
    assert alone.stats.passages_searched == 0 and alone.citations == []
    with_it = engine.generate("hi", passages=[*boulter_passages, empty], max_new_tokens=8)
    without = engine.generate("hi", passages=boulter_passages, max_new_tokens=8)
    assert with_it.text == without.text and with_it.stats.passages_searched == without.stats.passages_searched


def test_bad_input_to_stream_raises_at_the_call_not_at_the_first_chunk(engine) -> None:
    with pytest.raises(InvalidPromptError):
        engine.stream("")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        engine.stream("Hi", max_new_tokens=True)


def test_the_same_passage_given_twice_is_not_listed_as_its_own_other_holder(engine, boulter_passages) -> None:
    twice = [boulter_passages[0], boulter_passages[0], *boulter_passages[1:]]
    result = engine.generate("Tell me about Robert Boulter.", passages=twice, max_new_tokens=48)
    assert result.citations
    assert all(c.passage_id not in c.also_in for c in result.citations + result.fragments)


def test_a_paused_stream_does_not_block_its_own_thread(engine, boulter_passages) -> None:
    """Without batching a stream holds the engine until it ends; the same thread may still call it."""
    import threading

    done: list[str] = []

    def paused_then_generate() -> None:
        stream = engine.stream("Tell me about Robert Boulter.", passages=boulter_passages, max_new_tokens=12)
        next(stream)
        done.append(engine.generate("Hi", passages=[], max_new_tokens=3).text)
        done.append("".join(c.text for c in stream))
        stream.close()

    worker = threading.Thread(target=paused_then_generate, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the same thread deadlocked on its own paused stream"
    assert len(done) == 2


def test_copies_of_text_with_zero_width_spaces_are_cited(engine) -> None:
    """A byte-level token holding " " and the first bytes of U+200B: the source's char spans give
    it the whole U+200B, the output gives it the space alone; the copy is cited all the same."""
    base = (
        "Robert Boulter is an English film, television and theatre actor. He had a guest-starring role on the "
        "television series The Bill in 2000. This was followed by a starring role in the play Herons written by "
        "Simon Stephens, which was performed in 2001 at the Royal Court Theatre."
    )
    text = base.replace(" ", " \u200b")
    passage = Passage(id="zw", title="Robert Boulter", text=text)
    result = engine.generate("Tell me about Robert Boulter.", passages=[passage], max_new_tokens=40)
    assert result.citations
    for c in result.citations:
        assert c.quote == result.text[c.output_start : c.output_end] == text[c.passage_start : c.passage_end]


def test_a_vanishing_sampling_temperature_draws_the_greedy_token(engine, boulter_passages) -> None:
    """As vLLM: a temperature under 1e-5 is greedy (1e-320 overflowed the draw: a RuntimeError, a 500)."""
    greedy = engine.generate("Tell me about Robert Boulter.", passages=boulter_passages, max_new_tokens=12)
    for temperature in (1e-320, 1e-6):
        tiny = engine.generate(
            "Tell me about Robert Boulter.",
            passages=boulter_passages,
            max_new_tokens=12,
            do_sample=True,
            temperature=temperature,
            seed=1,
        )
        assert tiny.text == greedy.text


@pytest.mark.slow
def test_facts_past_the_first_512_tokens_of_a_passage_are_copied_and_cited(lm) -> None:
    # A long node (LlamaIndex's splitter makes ~1,024-token ones) with the answer near its end:
    # the passage is read in windows, so its last sentences have keys and are copied.
    bio = "Lars Berg (born 1978) is a Norwegian jazz bassist from Bergen. He recorded six albums with Nordlys."
    filler = " ".join(["The harbour of the old town is busy in the summer and quiet in the winter."] * 40)
    passage = Passage(id="p", title="Lars Berg", text=f"{filler} {bio}")
    assert len(lm.tokenizer(passage.text)["input_ids"]) > 600
    result = NestEngine(lm).generate("Tell me about Lars Berg.", passages=[passage], max_new_tokens=32)
    assert_citations_exact(result, [passage])
    assert any("Norwegian jazz bassist" in c.quote for c in result.citations), result.text


def test_messages_take_openai_text_parts_and_reject_other_parts() -> None:
    parts = [{"type": "text", "text": "Tell me about"}, {"type": "text", "text": "Robert Boulter."}]
    assert normalize_messages([{"role": "user", "content": parts}]) == [
        {"role": "user", "content": "Tell me about\nRobert Boulter."}  # joined by a newline, as vLLM does
    ]
    with pytest.raises(InvalidPromptError, match="content parts must all be text"):
        normalize_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_a_string_is_not_taken_for_a_list_of_passages(lm) -> None:
    with pytest.raises(ConfigError, match=r"HybridRetriever\.load"):
        NestEngine(lm, retriever="my-index")


def test_the_engine_checks_its_config_before_loading_the_model() -> None:
    # A model id that does not exist: the config errors come first, without trying to load it.
    with pytest.raises(ConfigError, match=r"^alpha: "):
        NestEngine("no/such-model", config={"alpha": -1})
    with pytest.raises(ConfigError, match="config must be a NestConfig"):
        NestEngine("no/such-model", config=[("alpha", 0.1)])
    with pytest.raises(ConfigError, match="retriever must be"):
        NestEngine("no/such-model", retriever="my-index")


def test_a_config_dict_and_an_empty_config_are_taken_as_given(lm) -> None:
    assert NestEngine(lm, config={"alpha": 0.1}).config.alpha == 0.1
    assert NestEngine(lm, config=NestConfig()).config == NestConfig()  # not the calibrated default


@pytest.mark.slow
def test_bfloat16_on_a_cpu_decodes_greedily_and_cites_exactly(boulter_passages, documents) -> None:
    # The opt-in fast path on CPUs with native bf16 (benchmarks/RESULTS.md, session 8).
    from nest_integrations import load_lm

    lm = load_lm("default", device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    engine = NestEngine(lm, retriever=boulter_passages)
    prompt = "Tell me about Robert Boulter."
    plain = engine.generate(prompt, max_new_tokens=24, retrieval=False)
    assert plain.text == lm.tokenizer.decode(plain_greedy(lm, prompt, 24), skip_special_tokens=True)
    result = engine.generate(prompt, max_new_tokens=48)
    assert result.stats.tokens_copied > 0
    assert_citations_exact(result, documents)
    by_id = {p.id: p.text for p in boulter_passages}
    for c in result.citations + result.fragments:  # fragments (withheld copies) are exact too
        assert (
            result.text[c.output_start : c.output_end]
            == c.quote
            == by_id[c.passage_id][c.passage_start : c.passage_end]
        )
