"""A head's card holds its result as a field, and ``card.json`` the result's fields among
the card's own, as every release wrote it: a card written before reads into that shape."""

from __future__ import annotations

import json
from pathlib import Path

from transfer_pipe.heads.card import HeadCard, HeadListing

FLAT = Path(__file__).parents[2] / "fixtures" / "head_card_flat.json"


def test_a_card_written_flat_reads_into_its_result() -> None:
    # Mutation: a from_dict that drops a field of the result (selection, layer_choice,
    # the draw) fails below.
    data = json.loads(FLAT.read_text())
    card = HeadCard.from_dict(data)
    result = card.result
    assert card.card_id == result.head_id == data["head_id"]
    assert (result.head, result.layer, result.task) == (data["head"], data["layer"], "source")
    assert (result.shots, result.shot_seed, result.label_fraction) == (None, 1, 0.25)
    assert result.chosen == data["chosen"] and result.seconds == data["seconds"]
    assert result.metrics.to_dict() == data["metrics"]
    assert result.selection is not None and result.selection.to_dict() == data["selection"]
    assert result.layer_choice is not None
    assert result.layer_choice.to_dict() == data["layer_choice"]
    assert (result.url, result.reused) == (None, False)
    assert card.warnings == data["warnings"] and card.model_file == data["model_file"]


def test_a_card_writes_the_json_it_was_read_from_and_lists_as_before() -> None:
    # Mutation: writing the result nested (older releases cannot read it), or with its
    # url and reused, fails the first line.
    data = json.loads(FLAT.read_text())
    card = HeadCard.from_dict(data)
    written = card.to_dict()
    assert json.loads(json.dumps(written)) == data
    assert HeadCard.from_dict(json.loads(json.dumps(written))) == card
    listing = HeadListing.of(card)
    assert (listing.head_id, listing.head, listing.layer) == (
        "source-logreg-a753cce812",
        "logreg",
        "penultimate",
    )


def test_a_reused_card_gives_its_result_found_at_its_folder() -> None:
    card = HeadCard.from_dict(json.loads(FLAT.read_text()))
    reused = card.reused("/store/heads/x")
    assert (reused.url, reused.reused) == ("/store/heads/x", True)
    assert reused.metrics == card.result.metrics and reused.head_id == card.result.head_id
