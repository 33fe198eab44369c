import pytest

from config import ConfigError, load_config
from config.settings import REPO_DIR


def test_defaults_put_the_root_under_the_repository():
    cfg = load_config(environ={})
    assert cfg.root == f"file://{REPO_DIR}/var/ebr"
    assert cfg.warehouse_uri == f"file://{REPO_DIR}/var/ebr/warehouse"
    assert cfg.store.keep_versions == 5
    assert cfg.world.size == "small" and cfg.world.count("n_events") == 400_000


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
