"""Self-BLEU and MAUVE: repetitive text scores high self-BLEU, varied text low; MAUVE on MiniLM embeddings is far
higher for two samples of one corpus than for two corpora."""

import numpy as np
import pytest


def test_self_bleu_and_mauve_tell_repetitive_and_foreign_text_from_the_real_thing():
    import re

    from genlab.config import load_config
    from genlab.data import load_dataset
    from genlab.evaluation.diversity import divergence_frontier_area, mauve, self_bleu, sentence_embeddings

    assert self_bleu(["the cat sat on the mat"] * 4) == pytest.approx(1.0)
    assert self_bleu(["the cat sat on the mat", "a dog ran far away", "birds sing at dawn", "rain fell"]) < 0.05
    assert divergence_frontier_area(np.full(4, 0.25), np.full(4, 0.25)) == pytest.approx(1.0, abs=0.01)
    assert divergence_frontier_area(np.array([0.5, 0.5, 0, 0]), np.array([0, 0, 0.5, 0.5])) < 0.01
    plays = "".join(load_dataset(load_config(None, ["data.source=tinyshakespeare"]).data).train.x)
    speeches = [s for s in re.split(r"\n\n+", plays) if len(s) > 40]
    docs = [d[:300] for d in load_dataset(load_config(None, ["data.source=python_docs"]).data).train.x]
    shakespeare, more, python = (sentence_embeddings(t) for t in (speeches[:50], speeches[400:450], docs[:50]))
    same, foreign = mauve(shakespeare, more), mauve(shakespeare, python)
    print(f"MAUVE: Shakespeare against more Shakespeare {same:.3f}, against Python's docs {foreign:.3f}")
    assert same > 10 * foreign and foreign < 0.02
