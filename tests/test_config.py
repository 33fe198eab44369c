import pytest

from artifacts import ArtifactStore
from config import ConfigError, load_config
from config.settings import REPO_DIR


def test_with_no_settings_every_folder_uses_the_store_under_the_repository(tmp_path, monkeypatch):
    """`ebr` run from anywhere, with nothing set, reads and writes the checkout's var/ebr
    (the defaults' `{repo}` is the repository, not the working directory)."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(environ={})
    assert cfg.root == f"file://{REPO_DIR}/var/ebr"
    assert cfg.warehouse_uri == f"file://{REPO_DIR}/var/ebr/warehouse"
    store = ArtifactStore.from_config(cfg)
    assert store.backend.local_path("indexes/stories/LATEST") == REPO_DIR / "var/ebr/indexes/stories/LATEST"
    assert cfg.world.size == "small" and cfg.world.count("n_events") == 400_000


def test_the_default_retention_keeps_the_five_newest_versions_and_latest(tmp_path):
    cfg = load_config(overrides=[f"root=file://{tmp_path}"], environ={})
    assert cfg.store.keep_versions == 5
    kind = ArtifactStore.from_config(cfg).kind("embeddings/users")
    names = [f"2026112{i}T000000Z-v" for i in range(8)]
    for name in names:
        with kind.new_version(name) as version:
            version.add_bytes("part-00000.parquet", name.encode())
    kind.publish(names[0], reason="the oldest is the one served")

    report = kind.retain(cfg.store.keep_versions)  # what ebr_retention runs with the default

    assert report.deleted == names[1:3]
    assert kind.complete_versions() == [names[0], *names[3:]]


def test_a_bad_value_from_the_environment_names_the_key_and_the_layer():
    with pytest.raises(ConfigError, match=r"store\.keep_versions: .*'many'.*layers read: .*environment"):
        load_config(environ={"EBR_STORE__KEEP_VERSIONS": "many"})


def test_layers_override_in_order(tmp_path):
    config_file = tmp_path / "ebr.toml"
    config_file.write_text('root = "gs://from-file/p"\n[world]\nseed = 1\nsize = "tiny"\n')
    environ = {"EBR_WORLD__SEED": "2", "EBR_STORE__KEEP_VERSIONS": "9", "HOME": "/x"}
    cfg = load_config(config_file, ["world.seed=3"], environ=environ)
    assert cfg.root == "gs://from-file/p"  # file beats defaults
    assert cfg.store.keep_versions == 9  # environment beats defaults, coerced to int
    assert cfg.world.seed == 3  # --set beats environment
    assert cfg.world.size == "tiny" and cfg.world.count("n_users") == 300


def test_explicit_counts_override_the_size_preset():
    cfg = load_config(overrides=["world.size=tiny", "world.n_events=1234"], environ={})
    assert cfg.world.count("n_events") == 1234
    assert cfg.world.count("n_stories") == 2_000


def test_ebr_root_environment_variable_selects_gcs():
    assert load_config(environ={"EBR_ROOT": "gs://bucket/prefix/"}).root == "gs://bucket/prefix"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["store.keep_verions=3"], "store.keep_verions"),
        (["store.keep_versions=0"], "store.keep_versions"),
        (["world.size=huge"], "world.size"),
        (["root=s3://bucket"], "root"),
        (["root=file://relative/path"], "root"),
        (["novalue"], "section.key=value"),
    ],
)
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(overrides=overrides, environ={})


def test_missing_or_broken_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("root = \n")
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        load_config(broken, environ={})
