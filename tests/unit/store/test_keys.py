from transfer_pipe.preprocessing import Preprocessing
from transfer_pipe.store import embedding_key, feature_set_key

PRE = Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_same_inputs_same_key() -> None:
    a = feature_set_key(embedding_key("b", "w", PRE, "float32"), ["penultimate"], "data")
    b = feature_set_key(
        embedding_key("b", "w", Preprocessing.from_dict(PRE.to_dict()), "float32"),
        ["penultimate"],
        "data",
    )
    assert a == b


def test_every_input_changes_the_key() -> None:
    base = feature_set_key(embedding_key("b", "w", PRE, "float32"), ["penultimate"], "data")
    variants = [
        feature_set_key(embedding_key("b2", "w", PRE, "float32"), ["penultimate"], "data"),
        feature_set_key(embedding_key("b", "w2", PRE, "float32"), ["penultimate"], "data"),
        feature_set_key(
            embedding_key("b", "w", PRE.replace(image_size=32), "float32"), ["penultimate"], "data"
        ),
        feature_set_key(embedding_key("b", "w", PRE, "float16"), ["penultimate"], "data"),
        feature_set_key(embedding_key("b", "w", PRE, "float32"), ["stages.0"], "data"),
        feature_set_key(embedding_key("b", "w", PRE, "float32"), ["penultimate"], "data2"),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_a_reduced_precision_forward_pass_has_its_own_key_and_float32_keeps_its_old_one() -> None:
    old = embedding_key("b", "w", PRE, "float32")  # as every key before autocast counted
    # Mutation: hashing autocast="none" into the fields re-keys every existing feature set.
    assert embedding_key("b", "w", PRE, "float32", "none") == old
    # Mutation: leaving autocast out of the key makes a bf16 set pass for a float32 one.
    keys = {old, embedding_key("b", "w", PRE, "float32", "bf16")}
    keys.add(embedding_key("b", "w", PRE, "float32", "fp16"))
    assert len(keys) == 3


def test_content_ids_are_the_digests_stores_already_hold() -> None:
    """Every id in a store comes from ``content_id``: its spelling of canonical JSON is the
    one each id was hashed with before it existed, so stored heads, runs, sweeps, cached
    records and feature sets are still found. Mutation: compact separators by default,
    unsorted keys, or a digest other than sha256 fails here."""
    import hashlib
    import json

    from transfer_pipe.store.keys import content_id

    identity = {"head": "logreg", "split": [0.1, 0.2, 0], "options": {"C": 1e-6, "x": None}}
    spaced = json.dumps(identity, sort_keys=True).encode()
    compact = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    assert content_id(identity, 10) == hashlib.sha256(spaced).hexdigest()[:10]  # head, run
    assert content_id(identity) == hashlib.sha256(spaced).hexdigest()  # a task's digest
    assert content_id(identity, 16, compact=True) == hashlib.sha256(compact).hexdigest()[:16]
    assert feature_set_key("e", ["penultimate"], "d") == content_id(
        {"embedding": "e", "layers": ["penultimate"], "data": "d"}, 16, compact=True
    )


def test_an_embedding_key_hashes_the_preprocessing_as_every_release_wrote_it() -> None:
    """The preprocessing is a record now, but the key still hashes its compact JSON form
    (a full decode and stored colours left out, the filter named): every stored feature set
    keeps its key. Mutation: hashing the record's fields (``asdict``) or dropping
    ``interpolation`` from ``Preprocessing.to_dict`` fails here."""
    from transfer_pipe.store.keys import content_id

    written = {
        "image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "resize": "squash", "interpolation": "bilinear",
    }  # fmt: skip
    fields = {"format": 2, "backbone": "b", "weights": "w", "dtype": "float32"}
    expected = content_id({**fields, "preprocessing": written}, compact=True)
    assert embedding_key("b", "w", PRE, "float32") == expected
    dct = content_id({**fields, "preprocessing": {**written, "decode": "dct"}}, compact=True)
    assert embedding_key("b", "w", PRE.replace(decode="dct"), "float32") == dct
