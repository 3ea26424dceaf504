from transfer_pipe.store import embedding_key, feature_set_key

PRE = {"image_size": 64, "mean": [0.5, 0.5, 0.5]}


def test_same_inputs_same_key() -> None:
    a = feature_set_key(embedding_key("b", "w", PRE, "float32"), ["penultimate"], "data")
    b = feature_set_key(embedding_key("b", "w", dict(PRE), "float32"), ["penultimate"], "data")
    assert a == b


def test_every_input_changes_the_key() -> None:
    base = feature_set_key(embedding_key("b", "w", PRE, "float32"), ["penultimate"], "data")
    variants = [
        feature_set_key(embedding_key("b2", "w", PRE, "float32"), ["penultimate"], "data"),
        feature_set_key(embedding_key("b", "w2", PRE, "float32"), ["penultimate"], "data"),
        feature_set_key(
            embedding_key("b", "w", {**PRE, "image_size": 32}, "float32"), ["penultimate"], "data"
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
