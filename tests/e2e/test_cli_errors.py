"""A mistake on the `train`, `predict`, `finetune` (and `embed`) command line ends the way
the docs promise: exit code 2, one line on stderr naming what to fix, no traceback, no
Prefect run started, and nothing written: an existing feature set and its heads stay
byte-identical, and no new store, folder or output file appears."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.images import make_dataset
from transfer_pipe.app.cli import main
from transfer_pipe.config import EmbedConfig, TrainConfig
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.train import train
from transfer_pipe.store import open_store


@dataclass(frozen=True)
class Populated:
    """A store that already holds a complete feature set and one fitted head."""

    root: Path  # everything a command could write to lives under it
    data: Path
    store: Path
    key: str
    head_id: str

    def argv(self, template: str) -> list[str]:
        """``template``'s words, each with its {placeholders} filled in."""
        fields = {
            "root": str(self.root),
            "data": str(self.data),
            "store": str(self.store),
            "key": self.key,
            "head": self.head_id,
            "image": str(next((self.data / "class0").glob("*.png"))),
        }
        return [word.format(**fields) for word in template.split()]


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    root = tmp_path_factory.mktemp("cli-errors")
    data, store = root / "data", root / "store"
    make_dataset(data, classes=2, per_class=6, bad=False)
    (root / "empty").mkdir()
    (root / "no-columns.csv").write_text("file,class\ndata/class0/img0000.png,class0\n")
    (root / "missing-files.csv").write_text(
        "path,label\ndata/class0/img0000.png,class0\ndata/class1/gone.png,class1\n"
    )
    embed(EmbedConfig(source=str(data), store=str(store), backbone="tiny_test", workers=1))
    [key] = open_store(str(store)).list_keys()
    train(TrainConfig(feature_set=key, store=str(store), heads=("logreg",), bootstrap=10))
    # One folder per fitted head, named by its id (beside the store's zarr.json marker).
    [head] = (path for path in (store / "heads").iterdir() if path.is_dir())
    return Populated(root, data, store, key, head.name)


def listing(root: Path) -> dict[str, str]:
    """Every folder and file under ``root``, files by content hash."""
    return {
        str(path.relative_to(root)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
        )
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture(autouse=True)
def no_flow_may_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A mistake must be reported before Prefect starts (seconds, not a 20-40 s server
    start): any flow the CLI reaches fails the test."""

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Prefect flow started for an input that was known to be bad")

    for module, name in (
        ("flows.embed", "embed_flow"),
        ("flows.train", "train_flow"),
        ("flows.finetune", "finetune_flow"),
    ):
        monkeypatch.setattr(f"{module}.{name}", started)
    yield


# id -> (command line, a fragment of the message that names what to fix)
USER_ERRORS = {
    "train-unknown-head": ("train {key} --store {store} --heads logreg,forest", "'forest'"),
    "train-unknown-task": ("train {key} --store {store} --task groups.txt", "groups.txt"),
    "train-unknown-backbone": (
        "train {data} --store {store} --backbone resnet-19",
        "transfer-pipe backbones",
    ),
    "train-missing-source": ("train {root}/absent --store {store}", "does not exist"),
    "train-unknown-key": ("train 0123456789abcdef --store {store}", "transfer-pipe ls"),
    "train-unknown-layer": ("train {key} --store {store} --layer stage9", "stage9"),
    "train-bad-c-grid": ("train {key} --store {store} --c-min 0", "--c-min"),
    "train-bad-val-fraction": ("train {key} --store {store} --val-fraction 2", "--val-fraction"),
    "train-bad-shots": ("train {key} --store {store} --shots 0", "--shots"),
    "train-source-option-on-a-key": (
        "train {key} --store {store} --image-size 32",
        "--image-size",
    ),
    "train-into-a-new-store": ("train {data} --store {root}/new-store --heads forest", "'forest'"),
    "predict-unknown-head": (
        "predict {image} --store {store} --head nope --out {root}/p.csv",
        "heads ls",
    ),
    "predict-unsupported-out": (
        "predict {image} --store {store} --head {head} --out {root}/p.txt",
        ".csv or .parquet",
    ),
    "predict-bad-top-k": (
        "predict {image} --store {store} --head {head} --out {root}/p.csv --top-k 0",
        "--top-k",
    ),
    "finetune-bad-policy": ("finetune {key} --store {store} --policy top-x", "freeze policy"),
    "finetune-unknown-task": ("finetune {key} --store {store} --task groups.txt", "groups.txt"),
    "finetune-unknown-backbone": (
        "finetune {data} --store {store} --backbone resnet-19",
        "transfer-pipe backbones",
    ),
    "finetune-missing-source": ("finetune {root}/absent --store {store}", "does not exist"),
    "finetune-bad-epochs": ("finetune {key} --store {store} --epochs 0", "--epochs"),
    "finetune-bad-lr": ("finetune {key} --store {store} --lr -1", "--lr"),
    "finetune-source-option-on-a-key": ("finetune {key} --store {store} --limit 4", "--limit"),
    # A source whose content is not a dataset: found before Prefect starts, into a new store.
    **{
        f"{command}-{case}": (
            f"{command} {source} --store {{root}}/new-store --backbone tiny_test",
            fragment,
        )
        for command in ("embed", "train", "finetune")
        for case, source, fragment in (
            ("empty-folder", "{root}/empty", "no image files"),
            ("manifest-without-columns", "{root}/no-columns.csv", "label"),
            ("manifest-naming-missing-files", "{root}/missing-files.csv", "gone.png"),
        )
    },
}

# Values argparse itself rejects: exit 2 with its usage line, then one line naming the option.
PARSE_ERRORS = {
    "train-non-numeric": ("train {key} --store {store} --c-values many", "--c-values"),
    "predict-non-numeric": (
        "predict {image} --store {store} --head {head} --out {root}/p.csv --top-k five",
        "--top-k",
    ),
    "finetune-non-numeric": ("finetune {key} --store {store} --batch-size 1.5", "--batch-size"),
    "finetune-unknown-choice": ("finetune {key} --store {store} --augment mixup", "--augment"),
}


@pytest.mark.parametrize(("argv", "fragment"), list(USER_ERRORS.values()), ids=list(USER_ERRORS))
def test_a_mistake_exits_2_with_one_line_and_writes_nothing(
    populated: Populated, argv: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation: dropping `except TransferPipeError` in cli.main raises here instead of 2.
    # Mutation: dropping the head check in steps.checks.check_inputs reaches the flow.
    # Mutation: dropping the --out suffix check in steps.predict writes p.txt.
    before = listing(populated.root)
    assert any(populated.key in path for path in before)
    assert any(populated.head_id in path for path in before)
    capsys.readouterr()

    assert main(populated.argv(argv)) == 2

    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [captured.err.strip()], captured.err
    assert captured.err.startswith("transfer-pipe: error: ")
    assert fragment in captured.err
    assert captured.out == ""
    assert listing(populated.root) == before, "a failed run changed or created files"


@pytest.mark.parametrize(("argv", "fragment"), list(PARSE_ERRORS.values()), ids=list(PARSE_ERRORS))
def test_a_malformed_option_exits_2_naming_it(
    populated: Populated, argv: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = listing(populated.root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(populated.argv(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: transfer-pipe")
    last = err.strip().splitlines()[-1]
    assert "error: argument " + fragment in last
    assert "Traceback" not in err
    assert listing(populated.root) == before


SUBPROCESS_ERRORS = [
    "train {key} --store {store} --heads forest",
    "predict {image} --store {store} --head {head} --out {root}/p.txt",
    "finetune {key} --store {store} --policy bottom-2",
]


@pytest.mark.parametrize("argv", SUBPROCESS_ERRORS, ids=lambda argv: argv.split()[0])
def test_the_installed_command_prints_one_line_and_exits_2(populated: Populated, argv: str) -> None:
    # Mutation: dropping `except TransferPipeError` in cli.main gives exit 1 and a traceback.
    before = listing(populated.root)
    command = Path(sys.executable).parent / "transfer-pipe"
    # An unreachable API: a command that wrongly reached Prefect would fail differently.
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    done = subprocess.run(
        [str(command), *populated.argv(argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("transfer-pipe: error: ")
    assert done.stdout == ""
    assert listing(populated.root) == before
